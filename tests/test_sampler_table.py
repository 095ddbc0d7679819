"""Every implemented sampler runs with every scheduler on every model kind (as in ComfyUI), makes
ComfyUI's number of model calls, and everything else is refused with a clear message."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from graph_runtime.context import NodeError
from graph_runtime.registry import build_registry
from graph_runtime.schema import Node, Output
from graph_runtime.validation import PromptValidator
from nodes.diffusion import schedulers as T
from nodes.diffusion.k_samplers import SAMPLER_FUNCTIONS
from nodes.diffusion.noise import initial_noise
from nodes.diffusion.sampling import latent_format, schedule
from nodes.sampling import (BasicGuider, KSampler, KSamplerAdvanced, KSamplerSelect, ModelSamplingDiscrete,
                            RandomNoise, SamplerCustom, SamplerCustomAdvanced)
from tests import sampling_fixtures as fx

STEPS = 3
KINDS = ("eps", "v_prediction", "flow", "sdxl")  # SD1.5 ε and v, FLUX-dev, SDXL ε


def _model_and_conds(kind: str):
    if kind == "flow":
        tiny = fx.flux(True)
        return tiny.model, fx.flux_conds(tiny), None, 16
    if kind == "sdxl":
        tiny = fx.sdxl()
        pos, neg = fx.sd_conds(tiny)
        return tiny.model, pos, neg, 4
    tiny = fx.sd15()
    model = tiny.model if kind == "eps" else replace(tiny.model, prediction_type="v_prediction")
    pos, neg = fx.sd_conds(tiny)
    return model, pos, neg, 4


TWO_CALLS_PER_STEP = ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
                      "dpmpp_sde", "dpmpp_sde_gpu", "seeds_2", "sa_solver_pece")


def comfy_model_calls(sampler: str, steps: int, to_zero: bool = True) -> int | None:
    """Denoiser evaluations ComfyUI makes for a schedule of ``steps`` steps (ending at σ = 0 unless
    ``to_zero`` is False: a KSamplerAdvanced stage that hands on its leftover noise).

    One per step, except: two for the second-order single-step samplers (one on a last step to σ = 0;
    sa_solver_pece: a re-evaluation after each correction, from the second step on), three for seeds_3
    (one on a last step to σ = 0) and for heunpp2 (two on the step before the last, one on the last).
    dpm_fast spends exactly ``steps`` calls on its own steps; dpm_adaptive's step controller decides
    (None here), three calls per attempt.
    """
    if sampler == "sa_solver_pece":
        return 2 * steps - 1
    if sampler in TWO_CALLS_PER_STEP:
        return 2 * steps - 1 if to_zero else 2 * steps
    if sampler == "seeds_3":
        return 3 * steps - 2 if to_zero else 3 * steps
    if sampler == "heunpp2":
        return 3 * steps - 3 if steps > 1 else 1
    if sampler == "dpm_adaptive":
        return None
    return steps


def dpm_fast_progress(steps: int) -> list[int]:
    """dpm_fast reports once per solver step, with the calls made by its end: orders 3, 3, …, then
    (2, 1) when steps is a multiple of 3, else steps mod 3 (⌊steps/3⌋ + 1 solver steps)."""
    m = steps // 3 + 1
    orders = [3] * (m - 2) + [2, 1] if steps % 3 == 0 else [3] * (m - 1) + [steps % 3]
    return [sum(orders[:i + 1]) for i in range(len(orders))]


class _CountCalls:
    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self) -> None:
        self.handle.remove()


def test_names_and_support():
    """Every one of ComfyUI's 42 sampler names runs: the table holds exactly those names."""
    assert set(SAMPLER_FUNCTIONS) == set(T.SAMPLER_NAMES) == set(T.supported_samplers()) == set(T.IMPLEMENTED_SAMPLERS)
    assert len(T.SAMPLER_NAMES) == 42 and all(T.check_sampler(name) is None for name in T.SAMPLER_NAMES)
    assert {"euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde",
            "dpmpp_sde", "dpmpp_3m_sde", "ddim", "uni_pc", "uni_pc_bh2"} <= set(T.supported_samplers())
    assert set(T.SCHEDULER_NAMES) == {"normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform",
                                      "beta", "linear_quadratic", "kl_optimal"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sampler", T.supported_samplers())
def test_every_sampler_runs_on_every_kind_with_comfyuis_model_calls(tmp_path, sampler, kind):
    model, pos, neg, channels = _model_and_conds(kind)
    events = []
    ctx = fx.make_ctx(tmp_path, progress=lambda node, v, total, preview: events.append((v, total)),
                      preview_method="none")
    counter = _CountCalls(model.denoiser)
    try:
        out = KSampler().execute(ctx, model=model, seed=3, steps=STEPS, cfg=2.0 if kind != "flow" else 1.0,
                                 sampler_name=sampler, scheduler="karras", positive=pos, negative=neg,
                                 latent_image={"samples": torch.zeros(1, channels, 8, 8)})[0]["samples"]
    finally:
        counter.close()
    assert out.shape == (1, channels, 8, 8) and torch.isfinite(out).all() and out.abs().max() > 0
    expected_calls = comfy_model_calls(sampler, STEPS)
    if sampler == "dpm_adaptive":  # one progress event per attempt, by the share of the σ range covered
        values = [v for v, _ in events]
        assert values == sorted(values) and values[-1] == STEPS and {t for _, t in events} == {STEPS}
        assert counter.n == 3 * len(events)
    elif sampler == "dpm_fast":
        assert events == [(v, STEPS) for v in dpm_fast_progress(STEPS)]
    else:
        assert events == [(i + 1, STEPS) for i in range(STEPS)]  # one progress event per step, `steps` steps
    if expected_calls is not None:
        assert counter.n == expected_calls  # cfg > 1: uncond and cond in one batched call
    assert ctx.info["sampler"] == sampler and ctx.info["scheduler"] == "karras"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scheduler", T.SCHEDULER_NAMES)
def test_every_scheduler_runs_on_every_kind(tmp_path, scheduler, kind):
    model, pos, neg, channels = _model_and_conds(kind)
    out = KSampler().execute(fx.make_ctx(tmp_path, preview_method="none"), model=model, seed=3, steps=STEPS,
                             cfg=2.0 if kind != "flow" else 1.0, sampler_name="euler", scheduler=scheduler,
                             positive=pos, negative=neg, latent_image={"samples": torch.zeros(1, channels, 8, 8)})[0]
    assert torch.isfinite(out["samples"]).all() and out["samples"].abs().max() > 0


@pytest.mark.parametrize("sampler,scheduler,needle", [
    ("dpm_turbo", "normal", "supported samplers"),
    ("no_such_sampler", "normal", "is unknown"),
    ("euler", "no_such_schedule", "supported schedulers"),
])
def test_unsupported_names_fail_validation_with_the_supported_values(sampler, scheduler, needle):
    msg = KSampler.validate_inputs(sampler_name=sampler, scheduler=scheduler)
    assert isinstance(msg, str) and needle in msg
    listed = T.SCHEDULER_NAMES if "schedulers" in needle else T.supported_samplers()
    assert all(name in msg for name in listed)
    assert KSampler.validate_inputs(sampler_name="euler", scheduler="kl_optimal") is True


def test_unknown_sampler_is_refused_when_the_node_runs(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    with pytest.raises(NodeError, match="dpm_turbo"):
        KSampler().execute(fx.make_ctx(tmp_path), model=tiny.model, seed=0, steps=2, cfg=1.0, sampler_name="dpm_turbo",
                           scheduler="normal", positive=pos, negative=neg,
                           latent_image={"samples": torch.zeros(1, 4, 8, 8)})


def test_other_validations():
    assert KSamplerSelect.validate_inputs(sampler_name="lcm") is True
    assert KSamplerSelect.validate_inputs(sampler_name="deis") is True
    assert KSamplerSelect.validate_inputs(sampler_name="deis2").startswith("sampler_name 'deis2' is unknown")
    msg = ModelSamplingDiscrete.validate_inputs(sampling="lcm")
    assert "eps" in msg and "v_prediction" in msg
    assert ModelSamplingDiscrete.validate_inputs(sampling="v_prediction") is True


class _StubModel(Node):
    """Test stand-in for a checkpoint loader."""

    OUTPUTS = (Output("MODEL"), Output("CONDITIONING"), Output("VAE"))

    def execute(self, ctx):  # pragma: no cover - never executed
        raise AssertionError


def test_queue_time_validation_through_the_prompt_validator():
    registry = build_registry(["nodes.image", "nodes.latent", "nodes.sampling"])
    registry.register(_StubModel, "tests")
    validator = PromptValidator(registry)

    def prompt(sampler: str, scheduler: str) -> dict:
        return {
            "1": {"class_type": "_StubModel", "inputs": {}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "seed": 1, "steps": 4, "cfg": 7.0, "sampler_name": sampler, "scheduler": scheduler,
                "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["2", 0], "denoise": 1.0}},
            "4": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["1", 2]}},
            "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "x"}},
        }

    assert validator.validate(prompt("euler_ancestral", "karras")).ok
    assert validator.validate(prompt("uni_pc", "kl_optimal")).ok
    assert validator.validate(prompt("dpm_adaptive", "karras")).ok
    assert validator.validate(prompt("sa_solver_pece", "beta")).ok
    bad = validator.validate(prompt("dpm_adaptive_pp", "karras"))  # not one of ComfyUI's names: not in the list
    assert not bad.ok
    err = bad.node_errors["3"]["errors"][0]
    assert err["type"] == "value_not_in_list" and "dpm_adaptive_pp" in err["details"]
    assert bad.node_errors["3"]["class_type"] == "KSampler"


# --- every sampler through KSamplerAdvanced and SamplerCustom ----------------------------------------

@pytest.mark.parametrize("sampler", T.SAMPLER_NAMES)
def test_ksampler_advanced_stages_make_comfyuis_model_calls(tmp_path, sampler):
    """A 6-step schedule in two KSamplerAdvanced stages (steps 0-3 handing on the leftover noise, then 4-5
    without new noise): each stage makes ComfyUI's calls for its own schedule."""
    model, pos, neg, _ = _model_and_conds("eps")
    kw = dict(model=model, noise_seed=5, steps=6, cfg=2.0, sampler_name=sampler, scheduler="karras", positive=pos,
              negative=neg)
    counter = _CountCalls(model.denoiser)
    try:
        first = KSamplerAdvanced().execute(fx.make_ctx(tmp_path, preview_method="none"), add_noise="enable",
                                           latent_image={"samples": torch.zeros(1, 4, 8, 8)}, start_at_step=0,
                                           end_at_step=4, return_with_leftover_noise="enable", **kw)[0]
        first_calls, counter.n = counter.n, 0
        second = KSamplerAdvanced().execute(fx.make_ctx(tmp_path, preview_method="none"), add_noise="disable",
                                            latent_image=first, start_at_step=4, end_at_step=10000,
                                            return_with_leftover_noise="disable", **kw)[0]
    finally:
        counter.close()
    for expected, got in ((comfy_model_calls(sampler, 4, to_zero=False), first_calls),
                          (comfy_model_calls(sampler, 2), counter.n)):
        assert got == expected if expected is not None else got % 3 == 0 and got > 0
    assert torch.isfinite(second["samples"]).all() and (second["samples"] - first["samples"]).abs().max() > 0


@pytest.mark.parametrize("sampler", T.SAMPLER_NAMES)
def test_sampler_custom_with_ksampler_select_equals_ksampler(tmp_path, sampler):
    """SamplerCustom(KSamplerSelect) on KSampler's schedule gives KSampler's latent, bit for bit: the same
    sampler, seed, initial and step noise."""
    model, pos, neg, _ = _model_and_conds("eps")
    ctx = fx.make_ctx(tmp_path, preview_method="none")
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    chosen = KSamplerSelect().execute(ctx, sampler_name=sampler)[0]
    custom = SamplerCustom().execute(ctx, model=model, add_noise=True, noise_seed=7, cfg=2.0, positive=pos,
                                     negative=neg, sampler=chosen, sigmas=schedule(model, sampler, "karras", STEPS),
                                     latent_image=latent)[0]["samples"]
    ks = KSampler().execute(ctx, model=model, seed=7, steps=STEPS, cfg=2.0, sampler_name=sampler, scheduler="karras",
                            positive=pos, negative=neg, latent_image=latent)[0]["samples"]
    assert torch.equal(custom, ks)


# --- the CFG++ samplers' unconditional estimate ---------------------------------------------------------

CFG_PP = [n for n in T.SAMPLER_NAMES if n.endswith("_cfg_pp")]


class _CountRows:
    def __init__(self, module: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        sample = args[0] if args else kwargs["hidden_states"]  # UNet: positional; FLUX: keyword tokens
        self.rows.append(int(sample.shape[0]))

    def close(self) -> None:
        self.handle.remove()


def test_cfg_pp_samplers_evaluate_the_negative_even_at_cfg_1(tmp_path):
    """ComfyUI skips the negative at cfg 1 (cond only), except for the CFG++ samplers, which need the
    unconditional estimate: [uncond, cond] in one batched call."""
    model, pos, neg, _ = _model_and_conds("eps")
    assert len(CFG_PP) == 7
    for sampler in CFG_PP + ["euler", "res_multistep", "gradient_estimation"]:
        rows = _CountRows(model.denoiser)
        try:
            KSampler().execute(fx.make_ctx(tmp_path, preview_method="none"), model=model, seed=1, steps=2, cfg=1.0,
                               sampler_name=sampler, scheduler="karras", positive=pos, negative=neg,
                               latent_image={"samples": torch.zeros(1, 4, 8, 8)})
        finally:
            rows.close()
        assert rows.rows and set(rows.rows) == ({2} if sampler in CFG_PP else {1}), sampler


def _one_step(ctx, model, positive, negative, cfg, sampler, sigmas, channels=4, seed=5):
    chosen = KSamplerSelect().execute(ctx, sampler_name=sampler)[0]
    out = SamplerCustom().execute(ctx, model=model, add_noise=True, noise_seed=seed, cfg=cfg, positive=positive,
                                  negative=negative, sampler=chosen, sigmas=sigmas,
                                  latent_image={"samples": torch.zeros(1, channels, 8, 8)})[0]
    return out["samples"]


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_cfg_pp_step_re_noises_with_the_negative_prompts_estimate(tmp_path, cfg):
    """One step σ = 3 → 1.5 on SD: euler gives x/2 + D/2, so single-prompt euler runs reveal each prompt's
    estimate; euler_cfg_pp must then give D_guided + (1.5/3)·(x - D_negative) (Chung et al., 2024)."""
    model, pos, neg, _ = _model_and_conds("eps")
    ctx = fx.make_ctx(tmp_path, preview_method="none")
    sigmas = torch.tensor([3.0, 1.5])
    scale, _ = latent_format(model)
    x = initial_noise((1, 4, 8, 8), 5) * 3.0 / scale  # in raw latent space, as the outputs are
    d_pos = 2 * _one_step(ctx, model, pos, neg, 1.0, "euler", sigmas) - x
    d_neg = 2 * _one_step(ctx, model, neg, pos, 1.0, "euler", sigmas) - x
    guided = d_neg + cfg * (d_pos - d_neg)
    pp = _one_step(ctx, model, pos, neg, cfg, "euler_cfg_pp", sigmas)
    torch.testing.assert_close(pp, guided + 0.5 * (x - d_neg), rtol=1e-4, atol=1e-4)
    assert (pp - _one_step(ctx, model, pos, neg, cfg, "euler", sigmas)).abs().max() > 1e-3


def test_cfg_pp_with_basic_guider_has_a_zero_unconditional_estimate(tmp_path):
    """With no negative at all (BasicGuider, FLUX) ComfyUI's unconditional estimate is zeros: one flow
    step σ = 0.8 → 0.5 of euler_cfg_pp is α'·D + σ'·x/σ (α' = 0.5), no extra model rows."""
    tiny = fx.flux(True)
    cond = fx.flux_conds(tiny)
    ctx = fx.make_ctx(tmp_path, preview_method="none")
    guider = BasicGuider().execute(ctx, model=tiny.model, conditioning=cond)[0]
    sigmas = torch.tensor([0.8, 0.5])
    scale, shift = latent_format(tiny.model)

    def run(sampler: str) -> torch.Tensor:
        out = SamplerCustomAdvanced().execute(ctx, noise=RandomNoise().execute(ctx, noise_seed=3)[0], guider=guider,
                                              sampler=KSamplerSelect().execute(ctx, sampler_name=sampler)[0],
                                              sigmas=sigmas, latent_image={"samples": torch.zeros(1, 16, 8, 8)})[0]
        return (out["samples"] - shift) * scale * (1 - 0.5)  # back to the model's x (leftover noise: ÷(1 - σ))

    x = initial_noise((1, 16, 8, 8), 3) * 0.8
    rows = _CountRows(tiny.model.denoiser)
    try:
        euler, pp = run("euler"), run("euler_cfg_pp")
    finally:
        rows.close()
    assert set(rows.rows) == {1}
    denoised = (euler - (0.5 / 0.8) * x) / (1 - 0.5 / 0.8)
    torch.testing.assert_close(pp, 0.5 * denoised + (0.5 / 0.8) * x, rtol=1e-4, atol=1e-4)
