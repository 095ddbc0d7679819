"""UniPC (Zhao et al., 2023) as ComfyUI's ``comfy/extra_samplers/uni_pc.py`` runs it: the multistep
B(h) predictor-corrector (order ≤ 3, B(h) = h for ``uni_pc``, e^h - 1 for ``uni_pc_bh2``) on the data
prediction, in variance-preserving space, down to σ = 0.001 instead of 0.
"""
from __future__ import annotations

import torch

from nodes.diffusion.k_samplers.common import SamplerEnv


def _vp_log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _vp(sigma: torch.Tensor):
    """(α, std, λ) of the variance-preserving process whose σ_k-diffusion is ``sigma``."""
    log_alpha = _vp_log_alpha(sigma)
    alpha = torch.exp(log_alpha)
    std = torch.sqrt(1.0 - torch.exp(2.0 * log_alpha))
    lam = log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))
    return alpha, std, lam


class _UniPC:
    """UniPC's multistep B(h) predictor-corrector on the data prediction, in VP space."""

    def __init__(self, model, variant: str) -> None:
        self.model = model
        self.variant = variant

    def data_prediction(self, x_vp: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        k_input = x_vp * ((sigma ** 2 + 1.0) ** 0.5)
        eps = (k_input - self.model(k_input, sigma)) / sigma
        alpha, std, _ = _vp(sigma)
        return (x_vp - std * eps) / alpha

    def update(self, x, model_prev, t_prev, t, order, use_corrector):
        _, std_prev, lam_prev = _vp(t_prev[-1])
        alpha_t, std_t, lam_t = _vp(t)
        m0 = model_prev[-1]
        h = lam_t - lam_prev
        rks, d1s = [], []
        for i in range(1, order):
            rk = (_vp(t_prev[-(i + 1)])[2] - lam_prev) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - m0) / rk)
        rks.append(1.0)
        rks_t = torch.tensor(rks, device=x.device)
        hh = -h
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(torch.pow(rks_t, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_mat = torch.stack(rows)
        b_vec = torch.tensor(b, device=x.device)
        stacked = torch.stack(d1s, dim=1) if d1s else None
        x_t_ = (std_t / std_prev) * x - (alpha_t * h_phi_1) * m0
        if stacked is not None:
            rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1],
                                                                                              b_vec[:-1])
            pred_res = torch.einsum("k,bkchw->bchw", rhos_p, stacked)
        else:
            pred_res = 0
        x_t = x_t_ - (alpha_t * b_h) * pred_res
        model_t = None
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(r_mat, b_vec)
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], stacked) if stacked is not None else 0
            x_t = x_t_ - (alpha_t * b_h) * (corr_res + rhos_c[-1] * (model_t - m0))
        return x_t, model_t


def sample_unipc(model, x, sigmas, env: SamplerEnv, variant: str = "bh1"):
    """UniPC (ComfyUI's form).  A schedule ending at 0 ends at σ = 0.001 instead: ``sigmas[-1]`` is set
    to 0.001 *in place*, as ComfyUI does, so the caller's final rescaling sees the same value."""
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001
    ts = sigmas
    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    solver = _UniPC(model, variant)
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)
    model_prev: list[torch.Tensor] = []
    t_prev: list[torch.Tensor] = []
    for step_index in range(steps):
        if step_index == 0:
            model_prev, t_prev = [solver.data_prediction(x, ts[0])], [ts[0]]
        elif step_index < order:
            t = ts[step_index]
            x, model_x = solver.update(x, model_prev, t_prev, t, step_index, use_corrector=True)
            if model_x is None:
                model_x = solver.data_prediction(x, t)
            model_prev.append(model_x)
            t_prev.append(t)
        else:
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                t = ts[step]
                step_order = min(order, steps + 1 - step)
                x, model_x = solver.update(x, model_prev, t_prev, t, step_order, use_corrector=step != steps)
                for i in range(order - 1):
                    t_prev[i] = t_prev[i + 1]
                    model_prev[i] = model_prev[i + 1]
                t_prev[-1] = t
                if step < steps:
                    if model_x is None:
                        model_x = solver.data_prediction(x, t)
                    model_prev[-1] = model_x
        env.report(step_index, x, model_prev[-1])
    return x / _vp(ts[-1])[0]
