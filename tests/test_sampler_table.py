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
from nodes.sampling import KSampler, KSamplerSelect, ModelSamplingDiscrete
from tests import sampling_fixtures as fx

STEPS = 3
KINDS = ("eps", "v_prediction", "flow")


def _model_and_conds(kind: str):
    if kind == "flow":
        tiny = fx.flux(True)
        return tiny.model, fx.flux_conds(tiny), None, 16
    tiny = fx.sd15()
    model = tiny.model if kind == "eps" else replace(tiny.model, prediction_type="v_prediction")
    pos, neg = fx.sd_conds(tiny)
    return model, pos, neg, 4


def comfy_model_calls(sampler: str, steps: int) -> int:
    """Denoiser evaluations ComfyUI makes for a full schedule of ``steps`` steps (one per step, two for
    the second-order samplers except on their last step, which goes straight to σ = 0)."""
    if sampler in ("heun", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_sde_gpu"):
        return 2 * steps - 1
    return steps


class _CountCalls:
    def __init__(self, module: torch.nn.Module) -> None:
        self.n = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def close(self) -> None:
        self.handle.remove()


def test_names_and_support():
    assert set(T.supported_samplers()) == set(T.IMPLEMENTED_SAMPLERS) <= set(T.SAMPLER_NAMES)
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
    assert events == [(i + 1, STEPS) for i in range(STEPS)]  # one progress event per step, `steps` steps
    assert counter.n == comfy_model_calls(sampler, STEPS)  # cfg > 1: uncond and cond in one batched call
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
    ("dpm_fast", "normal", "supported samplers"),
    ("res_multistep", "karras", "not implemented"),
    ("no_such_sampler", "normal", "is unknown"),
    ("euler", "no_such_schedule", "supported schedulers"),
])
def test_unsupported_names_fail_validation_with_the_supported_values(sampler, scheduler, needle):
    msg = KSampler.validate_inputs(sampler_name=sampler, scheduler=scheduler)
    assert isinstance(msg, str) and needle in msg
    listed = T.SCHEDULER_NAMES if "schedulers" in needle else T.supported_samplers()
    assert all(name in msg for name in listed)
    assert KSampler.validate_inputs(sampler_name="euler", scheduler="kl_optimal") is True


def test_unimplemented_sampler_is_refused_when_the_node_runs(tmp_path):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    with pytest.raises(NodeError, match="deis"):
        KSampler().execute(fx.make_ctx(tmp_path), model=tiny.model, seed=0, steps=2, cfg=1.0, sampler_name="deis",
                           scheduler="normal", positive=pos, negative=neg,
                           latent_image={"samples": torch.zeros(1, 4, 8, 8)})


def test_other_validations():
    assert KSamplerSelect.validate_inputs(sampler_name="lcm") is True
    assert KSamplerSelect.validate_inputs(sampler_name="deis").startswith("sampler_name 'deis'")
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
    bad = validator.validate(prompt("dpm_adaptive", "karras"))
    assert not bad.ok
    err = bad.node_errors["3"]["errors"][0]
    assert err["type"] == "custom_validation_failed"
    assert "dpm_adaptive" in err["details"] and "euler_ancestral" in err["details"]
    assert bad.node_errors["3"]["class_type"] == "KSampler"
