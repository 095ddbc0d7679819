"""QuantizeModel / QuantizeCLIP on every tiny family: close to full precision, and smaller by the expected factor.

Tolerances are relative L2 errors ``‖q − ref‖ / ‖ref‖`` of the KSampler latent (3 steps, euler, cfg 2)
or of the CLIP embeddings, measured on CPU with the tiny random-weight models (bitsandbytes 0.50.2,
torchao 0.18.0) and given ~2× headroom.  Random weights have no outliers to protect and tiny layers
(32 wide) quantize in few blocks, so the 4-bit errors are larger than on trained models
(offline-models.md §6 measured the same order on the same kinds of models):

=================  ========================  ==================  ===========
method             denoiser (max measured)   tolerance           CLIP tol. (max measured)
=================  ========================  ==================  ===========
bnb_nf4            0.022                     0.05                0.6 (0.47)
bnb_int8           0.0036                    0.01                0.03 (0.013)
fp8_e4m3fn         0.030                     0.06                0.15 (0.080)
fp8_e5m2           0.054                     0.1                 0.25 (0.113)
int8_weight_only   0.0009                    0.005               0.03 (0.0095)
=================  ========================  ==================  ===========
"""
from __future__ import annotations

import pytest
import torch

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import build_registry
from nodes import PACKS
from graph_runtime.validation import PromptValidator
from nodes import conditioning as C
from nodes import loaders as L
from nodes import sampling as S
from nodes.devices import module_bytes
from nodes.quantize.methods import _SKIP_LINEAR, _linear_children
from nodes.quantize.nodes import QuantizeCLIP, QuantizeModel

TOL = {"bnb_nf4": 0.05, "bnb_int8": 0.01, "fp8_e4m3fn": 0.06, "fp8_e5m2": 0.1, "int8_weight_only": 0.005}
CLIP_TOL = {"bnb_nf4": 0.6, "bnb_int8": 0.03, "fp8_e4m3fn": 0.15, "fp8_e5m2": 0.25, "int8_weight_only": 0.03}


def quantized_linear_bound(method: str, w: torch.Tensor) -> int:
    """Upper bound of a quantized Linear weight's bytes: NF4 = 4 bits per weight + an fp32 absmax per 64
    weights (+ the double-quantization tables); int8 = 1 byte per weight + fp32 scale (and offset) per row."""
    n, rows = w.numel(), w.shape[0]
    if method == "bnb_nf4":
        return n // 2 + 4 * -(-n // 64) + 4 * 256 + 64
    return n + 8 * rows
CHECKPOINTS = {"sd15": "tiny-sd15.safetensors", "sdxl": "tiny-sdxl.safetensors", "flux": "tiny-flux-dev.safetensors"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models_dir):
    from tests.conftest_models import link_models

    base = tmp_path_factory.mktemp("quant-base")
    link_models(tiny_models_dir, base / "models")
    paths = FolderPaths(base)
    paths.ensure_dirs()
    mm = ModelManager()
    ctx = NodeContext(node_id="1", class_type="X", prompt_id="p", paths=paths, models=mm,
                      options=RuntimeOptions(device="cpu"))
    loaded = {}
    for fam, ckpt in CHECKPOINTS.items():
        model, clip, vae = L.CheckpointLoaderSimple().execute(ctx, ckpt)
        pos = C.CLIPTextEncode().execute(ctx, "a cat on a red sofa", clip)[0]
        neg = C.CLIPTextEncode().execute(ctx, "", clip)[0]
        channels = 16 if fam == "flux" else 4
        latent = {"samples": torch.zeros(1, channels, 8, 8)}
        ref = sample(ctx, model, pos, neg, latent)
        loaded[fam] = dict(model=model, clip=clip, pos=pos, neg=neg, latent=latent, ref=ref)
    return ctx, loaded


def sample(ctx, model, pos, neg, latent):
    return S.KSampler().execute(ctx, model, 1, 3, 2.0, "euler", "normal", pos, neg, latent, 1.0)[0]["samples"]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("method", list(TOL))
@pytest.mark.parametrize("family", list(CHECKPOINTS))
def test_quantized_model_is_close_and_smaller(setup, family, method):
    ctx, loaded = setup
    d = loaded[family]
    base = d["model"].denoiser
    q = QuantizeModel().execute(ctx, d["model"], method)[0]
    assert q.quantization == method and q.weights is not d["model"].weights
    out = sample(ctx, q, d["pos"], d["neg"], d["latent"])
    err = rel(out, d["ref"])
    assert 0 < err < TOL[method], f"{family} {method}: relative error {err:.4f}"
    full = module_bytes([base])
    got = q.weights.size_bytes  # measured when the quantized copy was built
    if method.startswith("fp8"):
        # every Linear/Conv weight stored in 1 byte (norms keep their few weights): the target
        # 0.27x fp32 on every family, FLUX's adaLN modulation Linears included (measured 0.251-0.253)
        assert got <= 0.27 * full, f"{got / full:.3f}"
        storage = torch.float8_e4m3fn if method == "fp8_e4m3fn" else torch.float8_e5m2
        layers = {n: m for n, m in q.denoiser.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
        linears = {n for n, m in layers.items() if isinstance(m, torch.nn.Linear)}
        assert linears and [n for n, m in layers.items() if m.weight.dtype != storage] == []
        if family == "flux":  # the modulation Linears diffusers' own "norm" skip pattern would keep in fp32
            assert {"transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
                    "single_transformer_blocks.0.norm.linear", "norm_out.linear"} <= set(linears)
    else:
        layers = [c.weight for _p, _n, _f, c in _linear_children(base, _SKIP_LINEAR)]
        lin = sum(w.numel() * 4 for w in layers)
        bound = full - lin + sum(quantized_linear_bound(method, w) for w in layers)
        assert lin > 0 and got <= bound, f"{got / full:.3f} (Linear share {lin / full:.3f})"
        assert got < full - lin * 0.5  # at least half of the Linear bytes are gone
        # only the model's own input/output layers stay: every Linear inside the blocks is quantized, the
        # per-block proj_out of FLUX's single blocks (a third of their weights) included
        kept = {n for n, m in q.denoiser.named_modules()
                if type(m) is torch.nn.Linear and type(m.weight.detach()) is torch.Tensor}  # torchao: a subclass
        assert all(n.split(".")[0] in _SKIP_LINEAR for n in kept), sorted(kept)
        if family == "flux":
            assert "single_transformer_blocks.0.proj_out" not in kept and "proj_out" in kept
    # the full-precision base is untouched and still gives the reference
    assert torch.equal(sample(ctx, d["model"], d["pos"], d["neg"], d["latent"]), d["ref"])


@pytest.mark.parametrize("method", list(CLIP_TOL))
def test_quantized_clip_is_close(setup, method):
    ctx, loaded = setup
    for family in ("sd15", "flux"):
        d = loaded[family]
        q = QuantizeCLIP().execute(ctx, d["clip"], method)[0]
        emb = C.CLIPTextEncode().execute(ctx, "a cat on a red sofa", q)[0][0].embeds
        err = rel(emb, d["pos"][0].embeds)
        assert 0 < err < CLIP_TOL[method], f"{family} {method}: {err:.4f}"
        assert q.weights.size_bytes < d["clip"].weights.size_bytes


def test_run_again_reuses_the_quantized_copy(setup):
    ctx, loaded = setup
    d = loaded["sd15"]
    a = QuantizeModel().execute(ctx, d["model"], "fp8_e4m3fn")[0]
    loads = ctx.models.loads
    b = QuantizeModel().execute(ctx, d["model"], "fp8_e4m3fn")[0]
    assert a.weights is b.weights and ctx.models.loads == loads
    # evicted, it is rebuilt from the base on the next use
    a.weights.evict()
    assert torch.equal(sample(ctx, b, d["pos"], d["neg"], d["latent"]),
                       sample(ctx, b, d["pos"], d["neg"], d["latent"]))
    assert ctx.models.loads == loads + 1


def test_lora_goes_before_quantization(setup):
    ctx, loaded = setup
    d = loaded["sd15"]
    q = QuantizeModel().execute(ctx, d["model"], "bnb_nf4")[0]
    with pytest.raises(NodeError, match="before") as err:
        L.LoraLoaderModelOnly().execute(ctx, q, "tiny-sd15-lora.safetensors", 1.0)
    assert err.value.input_name == "model"
    patched = L.LoraLoaderModelOnly().execute(ctx, d["model"], "tiny-sd15-lora.safetensors", 1.0)[0]
    baked = QuantizeModel().execute(ctx, patched, "int8_weight_only")[0]
    plain = QuantizeModel().execute(ctx, d["model"], "int8_weight_only")[0]
    assert baked.patches == () and baked.weights is not plain.weights
    assert rel(sample(ctx, baked, d["pos"], d["neg"], d["latent"]),
               sample(ctx, patched, d["pos"], d["neg"], d["latent"])) < TOL["int8_weight_only"]


def test_fp8_loader_keeps_fp8_storage_through_sampling(setup):
    ctx, loaded = setup
    d = loaded["flux"]
    model = L.UNETLoader().execute(ctx, "tiny-flux-dev.safetensors", "fp8_e4m3fn")[0]
    assert model.quantization == "fp8_e4m3fn"
    out = sample(ctx, model, d["pos"], d["neg"], d["latent"])
    assert rel(out, d["ref"]) < TOL["fp8_e4m3fn"]
    assert model.denoiser.x_embedder.weight.dtype == torch.float8_e4m3fn  # not upcast by the sampler


def test_fp8_fast_loader_multiplies_in_fp8_through_sampling(setup, monkeypatch):
    from nodes.quantize.methods import FP8MatmulLinear

    ctx, loaded = setup
    d = loaded["flux"]
    real, calls = torch._scaled_mm, []

    def counting(*args, **kwargs):
        calls.append(args[0].dtype)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", counting)
    model = L.UNETLoader().execute(ctx, "tiny-flux-dev.safetensors", "fp8_e4m3fn_fast")[0]
    assert model.quantization == "fp8_e4m3fn" and model.sampling["weight_dtype"] == "fp8_e4m3fn_fast"
    fast = [m for m in model.denoiser.modules() if isinstance(m, FP8MatmulLinear)]
    assert fast and all(m.weight.dtype == torch.float8_e4m3fn for m in fast)
    out = sample(ctx, model, d["pos"], d["neg"], d["latent"])
    assert calls and set(calls) == {torch.float8_e4m3fn}  # the products really ran in fp8
    assert rel(out, d["ref"]) < TOL["fp8_e4m3fn"]
    assert model.weights is not L.UNETLoader().execute(ctx, "tiny-flux-dev.safetensors", "fp8_e4m3fn")[0].weights


def _quantize_prompt(method: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd15.safetensors"}},
            "2": {"class_type": "QuantizeModel", "inputs": {"model": ["1", 0], "method": method}},
            "3": {"class_type": "QuantizeCLIP", "inputs": {"clip": ["1", 1], "method": method}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["3", 0]}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "positive": ["4", 0], "negative": ["4", 0],
                                                       "latent_image": ["5", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                       "sampler_name": "euler", "scheduler": "normal",
                                                       "denoise": 1.0}},
            "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
            "8": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}}


def test_refused_methods_are_refused_at_validation(setup):
    ctx, _ = setup
    registry = build_registry(PACKS)
    ok = PromptValidator(registry, ctx.paths, RuntimeOptions(device="cpu")).validate(_quantize_prompt("bnb_nf4"))
    assert ok.ok, ok.node_errors
    mps = PromptValidator(registry, ctx.paths, RuntimeOptions(device="mps")).validate(_quantize_prompt("fp8_e4m3fn"))
    assert not mps.ok
    errors = mps.node_errors["2"]["errors"]
    assert errors[0]["type"] == "custom_validation_failed"
    assert "MPS has no float8 dtype" in errors[0]["details"] and "Methods that can run here" in errors[0]["details"]
    assert "3" in mps.node_errors  # QuantizeCLIP too


def test_a_model_declares_its_sampling_working_memory(setup):
    ctx, loaded = setup
    model = loaded["sd15"]["model"]
    device, need = model.working_memory({"model": model, "latent_image": {"samples": torch.zeros(2, 4, 8, 8)}})
    assert device == "cpu" and need == 2 * 2 * 8 * 8 * (48 << 10)
    assert model.working_memory({"model": model}) is None  # no latent: nothing to reserve
