"""GGUF SD1.5/SDXL UNets and text encoders stay quantized in memory, and compute what the decoded weights compute.

Files are written by the tests from the tiny models in ComfyUI-GGUF's layouts (``models/tools/tiny_quantized.py``:
SD tensors reshaped to rows of 256 with ``comfy.gguf.orig_shape``, Q8_0).  Tolerances: relative L2 of the
3-step KSampler latent / CLIP embeddings against the safetensors model (CPU, fp32); Q8_0 measured
SD1.5 0.0033, SDXL 0.0029 → 0.01; CLIP-L + T5 embeddings 0.0086, pooled 0.012, CLIP-L alone 0.014 → 0.03
(as ``test_prequantized``).  Weight bytes measured: SD1.5 UNet 0.303×, SDXL 0.273× its fp32 bytes.

The layout property: a weight stored as GGUF blocks in *any* row shape (the real rows, or rows of 256)
decodes — and computes through the GGUF Linear/Conv2d — exactly as gguf's own numpy decoder of the same
bytes reshaped to the real shape (hypothesis, over block types including K-quants gguf cannot write).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_runtime.context import NodeContext, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from models.tools import tiny_models as tm
from models.tools.tiny_quantized import write_clip_gguf, write_sd_gguf, write_t5_gguf
from nodes import conditioning as C
from nodes import loaders as L
from nodes import sampling as S
from nodes.devices import module_bytes
from nodes.quantize import gguf as G
from nodes.quantize.loaders import CLIPLoaderGGUF, DualCLIPLoaderGGUF, UnetLoaderGGUF

FAMILIES = {"sd15": ("tiny-sd15.safetensors", "sd1", tm.build_sd15, "text_encoder"),
            "sdxl": ("tiny-sdxl.safetensors", "sdxl", tm.build_sdxl, "text_encoder")}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models_dir):
    from tests.conftest_models import link_models

    base = tmp_path_factory.mktemp("gguf-base")
    models = base / "models"
    link_models(tiny_models_dir, models)
    for fam, (_ckpt, arch, build, _te) in FAMILIES.items():
        write_sd_gguf(models / "diffusion_models" / f"tiny-{fam}-Q8_0.gguf", build()["unet"], arch)
    sd15 = tm.build_sd15()
    write_clip_gguf(models / "text_encoders" / "tiny-clip-l-Q8_0.gguf", sd15["text_encoder"])
    flux = tm.build_flux(True)
    write_t5_gguf(models / "text_encoders" / "tiny-t5xxl-Q8_0.gguf", flux["text_encoder_2"])
    import shutil

    shutil.copytree(models / "text_encoders" / "tiny-t5xxl_tokenizer", models / "text_encoders" / "tiny-t5xxl-Q8_0_tokenizer")
    paths = FolderPaths(base)
    paths.ensure_dirs()
    return NodeContext(node_id="1", class_type="X", prompt_id="p", paths=paths, models=ModelManager(),
                       options=RuntimeOptions(device="cpu"))


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def latent(ctx, model, pos):
    lat = {"samples": torch.zeros(1, 4, 8, 8)}
    return S.KSampler().execute(ctx, model, 1, 3, 2.0, "euler", "normal", pos, pos, lat, 1.0)[0]["samples"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_unet_stays_quantized_and_matches(setup, family):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    ctx = setup
    ckpt = FAMILIES[family][0]
    ref, clip, _vae = L.CheckpointLoaderSimple().execute(ctx, ckpt)
    pos = C.CLIPTextEncode().execute(ctx, "a cat", clip)[0]
    g = UnetLoaderGGUF().execute(ctx, f"tiny-{family}-Q8_0.gguf")[0]
    assert g.quantization == "gguf" and ctx.info["gguf_quantized"] is True
    unet = g.denoiser
    layers = dict(unet.named_modules())
    linears = [n for n, m in layers.items() if isinstance(m, GGUFLinear)]
    convs = [n for n, m in layers.items() if isinstance(m, G.GGUFConv2d)]
    # attention and feed-forward Linears and the 3x3 convs of the resnets compute from Q8_0 blocks
    assert any(n.endswith("attn1.to_q") for n in linears) and any(n.endswith("ff.net.2") for n in linears)
    assert any(n.endswith("resnets.0.conv1") for n in convs)
    # some were stored as rows of 256 (comfy.gguf.orig_shape) and kept so: a 3x3 conv has no whole rows
    assert any(getattr(layers[n].weight, "logical_shape", None) for n in convs)
    # Q8_0 is 34 bytes per 32 weights; the F32/F16 remainder (1-D, ≤ 1024 values, 3-channel kernels) is small
    full = module_bytes([ref.denoiser])
    assert g.weights.size_bytes < 0.40 * full, g.weights.size_bytes / full
    err = rel(latent(ctx, g, pos), latent(ctx, ref, pos))
    assert 0 < err < 0.01, err
    # UNETLoader reads the same file decoded: the same picture
    plain = L.UNETLoader().execute(ctx, f"tiny-{family}-Q8_0.gguf", "default")[0]
    assert not G.gguf_layers(plain.denoiser)
    assert torch.allclose(latent(ctx, plain, pos), latent(ctx, g, pos), atol=1e-5)


def test_gguf_clip_and_t5_stay_quantized_and_match(setup):
    ctx = setup
    ref = L.DualCLIPLoader().execute(ctx, "tiny-clip-l.safetensors", "tiny-t5xxl.safetensors", "flux")[0]
    q = DualCLIPLoaderGGUF().execute(ctx, "tiny-t5xxl-Q8_0.gguf", "tiny-clip-l-Q8_0.gguf", "flux")[0]
    encoders = q.encoders
    t5_layers = G.gguf_layers(encoders["t5xxl"])
    assert any(n.endswith("SelfAttention.q") for n in t5_layers)
    # T5's fp32 island stays quantized too, stored as an int8 view so T5 does not cast activations to bytes
    wo = [n for n in t5_layers if n.endswith(".wo")]
    assert wo and encoders["t5xxl"].get_submodule(wo[0]).weight.dtype == torch.int8
    assert any(n.endswith("self_attn.q_proj") for n in G.gguf_layers(encoders["clip_l"]))
    # the Linear weights shrink to Q8_0's 34 bytes per 32 (0.27x); the (tiny models' large) token embeddings are
    # decoded — torch has no GGUF embedding — so the bound is on what the Linears save
    assert q.weights.size_bytes <= ref.weights.size_bytes - 0.7 * _fp32_bytes(encoders, t5_layers, "t5xxl")
    a = C.CLIPTextEncode().execute(ctx, "a lighthouse at dusk", ref)[0][0]
    b = C.CLIPTextEncode().execute(ctx, "a lighthouse at dusk", q)[0][0]
    assert 0 < rel(b.embeds, a.embeds) < 0.03
    assert 0 < rel(b.options["pooled_output"], a.options["pooled_output"]) < 0.03
    # CLIPLoaderGGUF with one GGUF CLIP-L: an SD1.5 text encoder, quantized
    one = CLIPLoaderGGUF().execute(ctx, "tiny-clip-l-Q8_0.gguf", "stable_diffusion")[0]
    plain = L.CLIPLoader().execute(ctx, "tiny-clip-l.safetensors", "stable_diffusion")[0]
    assert G.gguf_layers(one.encoders["clip_l"])
    e1 = C.CLIPTextEncode().execute(ctx, "a red fox", one)[0][0].embeds
    e2 = C.CLIPTextEncode().execute(ctx, "a red fox", plain)[0][0].embeds
    assert 0 < rel(e1, e2) < 0.03


def _fp32_bytes(encoders, names, kind) -> int:
    module = encoders[kind]
    return sum(4 * module.get_submodule(n).in_features * module.get_submodule(n).out_features for n in names)


# --- the layout property ------------------------------------------------------------------------

QTYPES = ("Q8_0", "Q4_0", "Q5_1", "Q4_K", "Q6_K")


def _blocks(qtype, n_values: int, seed: int) -> np.ndarray:
    """Random GGUF blocks for ``n_values`` weights; every byte < 0x3C keeps each f16 scale below 2, so the
    decoded values stay far from fp16 overflow (diffusers decodes in fp16)."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    return rng.integers(0, 0x3C, size=(n_values // block) * type_size, dtype=np.uint8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qtype_name=st.sampled_from(QTYPES), out=st.integers(1, 6), in_blocks=st.integers(1, 4),
       conv=st.booleans(), stored_as_rows_of_256=st.booleans(), seed=st.integers(0, 2**16))
def test_any_row_cut_decodes_and_computes_like_the_reference(qtype_name, out, in_blocks, conv, stored_as_rows_of_256,
                                                              seed):
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    # real shapes whose size is a multiple of 256 (so rows of 256 exist); a 3x3 kernel's rows are never whole
    # blocks, a Linear's rows of 32·k values are whole Q8_0/Q4_0/Q5_1 blocks but not K-quant (256) blocks
    shape = (out * 16, in_blocks * 16, 3, 3) if conv else (out * 8, in_blocks * 32)
    n = int(np.prod(shape))
    raw = _blocks(qtype, n, seed)
    reference = torch.from_numpy(gguf.quants.dequantize(raw.reshape(n // block, type_size), qtype).reshape(shape).copy())
    rows = n // 256 if conv or stored_as_rows_of_256 or shape[-1] % block else shape[0]
    stored = GGUFParameter(torch.from_numpy(raw.reshape(rows, -1).copy()), quant_type=qtype)
    t = G._with_shape(stored, shape) if rows != shape[0] else stored
    assert G.logical_shape(t) == shape
    got = G.dequantize(t)
    torch.testing.assert_close(got.float(), reference, rtol=2e-3, atol=1e-3 * float(reference.abs().max()) + 1e-6)
    # and through the GGUF layers, against torch's layers on the reference weights
    gen = torch.Generator().manual_seed(seed)
    if conv:
        layer = torch.nn.Conv2d(shape[1], shape[0], shape[2:], padding=shape[2] // 2)
        x = torch.randn(1, shape[1], 5, 5, generator=gen)
    else:
        layer = torch.nn.Linear(shape[1], shape[0])
        x = torch.randn(2, shape[1], generator=gen)
    layer.weight.data = reference
    blueprint = _OneLayer(layer, t)
    module = G.materialize(blueprint, torch.float32, "test.gguf")
    assert G.gguf_layers(module) == ["layer"]
    scale = float(layer(x).abs().max()) + 1e-6
    torch.testing.assert_close(module(x), layer(x), rtol=2e-3, atol=2e-3 * scale)


class _OneLayer:
    """A Blueprint-shaped stand-in: one layer whose weight is the quantized tensor."""

    what = "test layer"

    def __init__(self, layer: torch.nn.Module, weight) -> None:
        self.layer, self.state = layer, {"layer.weight": weight, "layer.bias": layer.bias.detach().clone()}

    def make(self) -> torch.nn.Module:
        from accelerate import init_empty_weights

        kind = type(self.layer)
        with init_empty_weights():
            if kind is torch.nn.Linear:
                inner = torch.nn.Linear(self.layer.in_features, self.layer.out_features)
            else:
                inner = torch.nn.Conv2d(self.layer.in_channels, self.layer.out_channels, self.layer.kernel_size,
                                        padding=self.layer.padding)
        wrapper = torch.nn.Module()
        wrapper.layer = inner
        wrapper.forward = lambda x: wrapper.layer(x)
        return wrapper
