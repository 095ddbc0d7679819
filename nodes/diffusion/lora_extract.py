"""LoRA extraction: a weight difference → low-rank ``up @ down`` factors by truncated SVD.

Why SVD: the best rank-r approximation of a matrix in the Frobenius norm is its truncated SVD
(Eckart–Young), so a difference that *is* low rank (a merged LoRA) comes back exactly, and any
other difference loses the least it can at that rank.  Convolution kernels are flattened to
``(out, in·kh·kw)``; the down factor is reshaped back to a ``(r, in, kh, kw)`` kernel and the up
factor to ``(out, r, 1, 1)``, the LoCon layout our LoRA loader applies.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from nodes.diffusion.model_patches import patched_weights
from nodes.diffusion.types import DiffusionModel


def subtracted(model1: DiffusionModel, model2: DiffusionModel, multiplier: float) -> torch.nn.Module:
    """A copy of model1's denoiser (patches and merges applied) minus ``multiplier`` × model2's weights."""
    with patched_weights(model1) as m1:
        out = copy.deepcopy(m1)
    with patched_weights(model2) as m2, torch.no_grad():
        other = dict(m2.named_parameters())
        for name, p in out.named_parameters():
            q = other.get(name)
            if q is not None and q.shape == p.shape:
                p.sub_(q.to(p.dtype) * multiplier)
    return out.eval().requires_grad_(False)


def factor(delta: torch.Tensor, rank: int, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with ``up @ down ≈ delta`` (flattened to 2-D), rank ``rank`` (all of it when ``full``)."""
    mat = delta.detach().float().reshape(delta.shape[0], -1)
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    r = s.shape[0] if full else min(rank, s.shape[0])
    up = (u[:, :r] * s[:r]).contiguous()
    down = vh[:r].contiguous()
    if delta.ndim == 4:
        return up.reshape(delta.shape[0], r, 1, 1), down.reshape(r, *delta.shape[1:])
    return up, down


def extract(module: torch.nn.Module, prefix: str, rank: int, full: bool,
            check: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """LoRA tensors (``prefix + module + .lora_up/.lora_down.weight``) for every Linear/Conv weight that differs from zero."""
    out: dict[str, torch.Tensor] = {}
    for name, p in module.named_parameters():
        if not name.endswith(".weight") or p.ndim not in (2, 4) or not torch.any(p != 0):
            continue
        if check is not None:
            check()
        up, down = factor(p, rank, full)
        base = prefix + name[: -len(".weight")]
        out[base + ".lora_up.weight"] = up.to(p.dtype if p.dtype.is_floating_point else torch.float32)
        out[base + ".lora_down.weight"] = down.to(up.dtype)
    return out
