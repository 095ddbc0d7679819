"""The published (sampler, scheduler, model kind) table: every entry runs, everything else is refused."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from graph_runtime.context import NodeError
from graph_runtime.registry import build_registry
from graph_runtime.schema import Node, Output
from graph_runtime.validation import PromptValidator
from nodes.diffusion import schedulers as T
from nodes.diffusion.sampling import flux_mu
from nodes.sampling import KSampler, KSamplerSelect, ModelSamplingDiscrete
from tests import sampling_fixtures as fx

STEPS = 2
COMBOS = T.supported_combinations()


def _model_and_conds(kind: str):
    if kind == "flow":
        tiny = fx.flux(True)
        return tiny.model, fx.flux_conds(tiny), None, 16
    tiny = fx.sd15()
    model = tiny.model if kind == "eps" else replace(tiny.model, prediction_type="v_prediction")
    pos, neg = fx.sd_conds(tiny)
    return model, pos, neg, 4


def test_table_is_published_and_covers_the_required_names():
    samplers = {s for s, _, _ in COMBOS}
    assert {"euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2m", "dpmpp_2m_sde",
            "dpmpp_sde", "ddim", "uni_pc"} <= samplers
    for kind in ("eps", "v_prediction"):
        assert {sch for s, sch, k in COMBOS if s == "euler" and k == kind} == {
            "normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta"}
    assert {s for s, _, k in COMBOS if k == "flow"} >= {"euler", "heun", "dpmpp_2m", "uni_pc"}
    assert all(s in T.SAMPLER_NAMES and sch in T.SCHEDULER_NAMES for s, sch, _ in COMBOS)
    doc = T.supported_table_markdown()
    assert all(f"| {s} |" in doc for s in samplers)


@pytest.mark.parametrize("sampler,scheduler,kind", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_every_supported_combination_runs(tmp_path, sampler, scheduler, kind):
    model, pos, neg, channels = _model_and_conds(kind)
    calls = []
    ctx = fx.make_ctx(tmp_path, progress=lambda node, v, total, preview: calls.append((v, total)),
                      preview_method="none")
    latent = {"samples": torch.zeros(1, channels, 8, 8)}
    out = KSampler().execute(ctx, model=model, seed=3, steps=STEPS, cfg=2.0 if kind != "flow" else 1.0,
                             sampler_name=sampler, scheduler=scheduler, positive=pos, negative=neg,
                             latent_image=latent)[0]["samples"]
    assert out.shape == (1, channels, 8, 8)
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0  # sampling did something
    assert calls == [(i + 1, STEPS) for i in range(STEPS)]
    assert ctx.info["sampler"] == sampler and ctx.info["scheduler"] == scheduler


def _timesteps(sampler: str, scheduler: str, steps: int = 4, kind: str = "eps", mu=None, config=None):
    cfg = config if config is not None else dict(fx.sd15().model.scheduler_config)
    built = T.build_scheduler(cfg, sampler, scheduler, kind=kind, steps=steps, mu=mu)
    built.scheduler.set_timesteps(**built.timestep_kwargs)
    return built.scheduler


def test_discrete_schedules_map_to_the_documented_spacings():
    assert _timesteps("euler", "normal").timesteps.tolist() == [999.0, 666.0, 333.0, 0.0]
    assert _timesteps("euler", "simple").timesteps.tolist() == [999.0, 749.0, 499.0, 249.0]
    assert _timesteps("euler", "sgm_uniform").timesteps.tolist() == [999.0, 749.0, 499.0, 249.0]
    assert _timesteps("euler", "ddim_uniform").timesteps.tolist() == [751.0, 501.0, 251.0, 1.0]
    assert _timesteps("ddim", "normal").timesteps.tolist() == [999, 666, 333, 0]
    karras = _timesteps("euler", "karras").sigmas
    expo = _timesteps("euler", "exponential").sigmas
    beta = _timesteps("euler", "beta").sigmas
    normal = _timesteps("euler", "normal").sigmas
    assert karras[0] == pytest.approx(14.6146, abs=1e-3) and karras[-2] == pytest.approx(0.0292, abs=1e-3)
    # exponential: constant ratio between consecutive sigmas
    ratios = (expo[1:-1] / expo[:-2]).numpy()
    assert np.allclose(ratios, ratios[0], rtol=1e-4)
    for a, b in [(karras, normal), (expo, normal), (beta, normal), (karras, beta)]:
        assert not torch.allclose(a, b)
    # the model's own config never leaks: a config with karras on still gives linspace for "normal"
    cfg = {**fx.sd15().model.scheduler_config, "use_karras_sigmas": True}
    assert _timesteps("euler", "normal", config=cfg).timesteps.tolist() == [999.0, 666.0, 333.0, 0.0]


def test_flow_schedules_and_shift():
    schnell = dict(fx.flux(False).model.scheduler_config)
    s = _timesteps("euler", "simple", kind="flow", config=schnell)
    assert s.sigmas.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    s = _timesteps("euler", "sgm_uniform", kind="flow", config=schnell)
    assert s.sigmas[:-1].tolist() == pytest.approx(np.linspace(1, 0.001, 5)[:-1].tolist(), abs=1e-6)
    dev = fx.flux(True).model
    mu = flux_mu(dev, (8, 8))  # 16 tokens
    assert mu == pytest.approx(T.calculate_shift(16))
    shifted = _timesteps("euler", "simple", kind="flow", mu=mu, config=dict(dev.scheduler_config)).sigmas
    t = np.linspace(1, 0.25, 4)
    expected = np.exp(mu) / (np.exp(mu) + (1 / t - 1))
    assert shifted[:-1].tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    # Heun's static shift exp(mu) is the same time shift as the dynamic one
    heun = _timesteps("heun", "normal", kind="flow", mu=mu, config=dict(dev.scheduler_config))
    euler_normal = _timesteps("euler", "normal", kind="flow", mu=mu, config=dict(dev.scheduler_config))
    assert heun.sigmas[0].item() == pytest.approx(euler_normal.sigmas[0].item(), abs=1e-5)


@pytest.mark.parametrize("sampler,scheduler,needle", [
    ("euler_ancestral", "karras", "supported schedulers for 'euler_ancestral'"),
    ("ddim", "exponential", "supported schedulers for 'ddim'"),
    ("dpm_fast", "normal", "supported samplers"),
    ("euler", "kl_optimal", "supported schedulers for 'euler'"),
])
def test_unsupported_pairs_fail_validation_with_the_supported_values(sampler, scheduler, needle):
    msg = KSampler.validate_inputs(sampler_name=sampler, scheduler=scheduler)
    assert isinstance(msg, str) and needle in msg
    listed = T.supported_schedulers(sampler) if "schedulers" in needle else T.supported_samplers()
    assert all(name in msg for name in listed)
    assert KSampler.validate_inputs(sampler_name="euler", scheduler="karras") is True


def test_every_pair_outside_the_table_is_refused():
    runnable = {(s, sch) for s, sch, _ in COMBOS}
    for s in T.SAMPLER_NAMES:
        for sch in T.SCHEDULER_NAMES:
            result = KSampler.validate_inputs(sampler_name=s, scheduler=sch)
            assert (result is True) == ((s, sch) in runnable), (s, sch, result)


def test_sampler_without_flow_equivalent_is_refused_for_flux(tmp_path):
    tiny = fx.flux(True)
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    with pytest.raises(NodeError) as err:
        KSampler().execute(fx.make_ctx(tmp_path), model=tiny.model, seed=0, steps=2, cfg=1.0,
                           sampler_name="euler_ancestral", scheduler="normal", positive=fx.flux_conds(tiny),
                           negative=None, latent_image=latent)
    text = str(err.value)
    assert "flow-matching" in text and all(s in text for s in T.supported_samplers("flow"))
    with pytest.raises(NodeError, match="supported schedulers for 'heun' on flow"):
        KSampler().execute(fx.make_ctx(tmp_path), model=tiny.model, seed=0, steps=2, cfg=1.0, sampler_name="heun",
                           scheduler="karras", positive=fx.flux_conds(tiny), negative=None, latent_image=latent)


def test_other_validations():
    assert KSamplerSelect.validate_inputs(sampler_name="lcm").startswith("sampler_name 'lcm'")
    assert KSamplerSelect.validate_inputs(sampler_name="uni_pc") is True
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

    assert validator.validate(prompt("euler", "karras")).ok
    bad = validator.validate(prompt("euler_ancestral", "karras"))
    assert not bad.ok
    err = bad.node_errors["3"]["errors"][0]
    assert err["type"] == "custom_validation_failed"
    assert "euler_ancestral" in err["details"] and "normal" in err["details"]
    assert bad.node_errors["3"]["class_type"] == "KSampler"


def test_uni_pc_bh1_final_step_is_the_data_prediction(tmp_path):
    """diffusers' UniPC with B(h) = h returns NaN on the last step to sigma 0; ours returns that step's exact value."""
    import diffusers

    from nodes.diffusion.sampling import RunOptions, SamplingRequest, sample

    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    cfg = dict(tiny.model.scheduler_config)
    plain = diffusers.UniPCMultistepScheduler.from_config(cfg, solver_type="bh1", timestep_spacing="linspace")
    plain.set_timesteps(3)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    out = None
    for t in plain.timesteps:
        out = plain.step(torch.ones_like(x) * 0.1, t, x).prev_sample
        x = out
    assert torch.isnan(out).all()  # if diffusers fixes this, the subclass can go
    req = SamplingRequest(model=tiny.model, positive=pos, negative=neg, latent={"samples": torch.zeros(1, 4, 8, 8)},
                          sampler="uni_pc", scheduler="normal", steps=4, cfg=5.0, seed=2)
    result = sample(req, RunOptions())
    assert torch.isfinite(result.latent["samples"]).all()
    assert torch.allclose(result.latent["samples"], result.denoised["samples"], atol=1e-5)
    bh2 = sample(SamplingRequest(**{**req.__dict__, "sampler": "uni_pc_bh2"}), RunOptions())
    assert (bh2.latent["samples"] - result.latent["samples"]).abs().max() > 1e-3  # really another variant
