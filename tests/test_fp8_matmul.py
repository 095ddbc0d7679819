"""fp8 matmul (UNETLoader ``weight_dtype`` = ``fp8_e4m3fn_fast``): the arithmetic against a naive reference,
and which devices may run it (refused at validation elsewhere, with the fix)."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.context import RuntimeOptions
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import build_registry
from graph_runtime.validation import PromptValidator
from nodes import PACKS
from nodes.quantize.capabilities import fp8_matmul_check, fp8_matmul_refusal
from nodes.quantize.methods import FP8_E4M3_MAX, FP8MatmulLinear, fp8_linear, fp8_matmul


def naive_fp8_linear(x: torch.Tensor, w8: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What fp8_linear promises, spelled out in float64: activations scaled per tensor so that their
    largest magnitude is 448, rounded to e4m3fn, multiplied by the e4m3fn weight, scaled back."""
    rows = x.reshape(-1, x.shape[-1]).double()
    scale = max(float(rows.abs().max()) / FP8_E4M3_MAX, 1e-12)
    xq = (rows / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).float().to(torch.float8_e4m3fn).double()
    out = (xq @ w8.double().t()) * scale
    if bias is not None:
        out = out + bias.double()
    return out.reshape(*x.shape[:-1], w8.shape[0])


@settings(max_examples=40, deadline=None)
@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=2), in_blocks=st.integers(1, 4),
       out_blocks=st.integers(1, 3), with_bias=st.booleans(), seed=st.integers(0, 2**31 - 1),
       x_scale=st.sampled_from([1e-3, 1.0, 300.0]))
def test_fp8_linear_matches_the_naive_reference(lead, in_blocks, out_blocks, with_bias, seed, x_scale):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, 16 * in_blocks, generator=gen) * x_scale
    w8 = (torch.randn(16 * out_blocks, 16 * in_blocks, generator=gen) * 0.1).to(torch.float8_e4m3fn)
    bias = torch.randn(16 * out_blocks, generator=gen) if with_bias else None
    got = fp8_linear(x, w8, bias, torch.float32)
    want = naive_fp8_linear(x, w8, bias)
    assert got.shape == want.shape and got.dtype == torch.float32
    # both sides multiply the same fp8 numbers; they differ only by fp32 accumulation order
    bound = 1e-5 * float((want.abs().max() if want.numel() else torch.tensor(0.0))) + 1e-6
    assert float((got.double() - want).abs().max()) <= bound


def test_fp8_linear_falls_back_where_the_kernel_cannot_take_the_shape(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **k: calls.append(1))
    x, w8 = torch.randn(3, 20), torch.randn(8, 20).to(torch.float8_e4m3fn)  # 20 input features: not 16k
    got = fp8_linear(x, w8, None, torch.float32)
    assert calls == [] and torch.allclose(got, x @ w8.float().t())


def test_fp8_matmul_replaces_every_linear_and_stores_convs_in_fp8():
    import copy

    from diffusers import UNet2DConditionModel

    from nodes.diffusion import configs
    from nodes.diffusion.types import ModelFamily
    from nodes.quantize.methods import fp8_storage

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(configs.sd_unet_config(
        ModelFamily.SD15, block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=1,
        transformer_layers=(1, 1), cross_attention_dim=32)).eval()
    x, t, ehs = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 7, 32)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=ehs).sample
        stored = copy.deepcopy(unet)
        fp8_storage(stored, torch.float8_e4m3fn, torch.float32)
        storage_only = stored(x, t, encoder_hidden_states=ehs).sample
        linears = sum(type(m) is torch.nn.Linear for m in unet.modules())
        assert fp8_matmul(unet, torch.float32) == linears
        assert not any(type(m) is torch.nn.Linear for m in unet.modules())
        for m in unet.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                assert m.weight.dtype == torch.float8_e4m3fn, m
        got = unet(x, t, encoder_hidden_states=ehs).sample
    assert isinstance(unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q, FP8MatmulLinear)
    # the weights' fp8 rounding dominates (measured: 0.111 storage only, 0.113 with fp8 activations too,
    # on this random UNet whose default init has no small-weight layers to hide the rounding)
    err, err_storage = (float((o - ref).norm() / ref.norm()) for o in (got, storage_only))
    assert err <= 1.2 * err_storage + 0.01, (err, err_storage)


def test_which_devices_may_multiply_in_fp8():
    assert fp8_matmul_check("cpu").ok  # torch 2.14 has a CPU kernel: probed for real
    assert fp8_matmul_check("cuda", cuda_capability=(8, 9), probe=lambda kind: "").ok
    assert fp8_matmul_check("cuda:1", cuda_capability=(9, 0), probe=lambda kind: "").ok
    ampere = fp8_matmul_refusal("cuda", cuda_capability=(8, 6), probe=lambda kind: "")
    assert "compute capability 8.9 or newer" in ampere and "this GPU is 8.6" in ampere
    assert "Use fp8_e4m3fn" in ampere
    assert "no fp8 matmul kernels" in fp8_matmul_refusal("mps")
    broken = fp8_matmul_refusal("cpu", probe=lambda kind: "torch._scaled_mm fails on cpu (x)")
    assert "torch._scaled_mm fails on cpu" in broken
    if not torch.cuda.is_available():
        assert "no CUDA device is available" in fp8_matmul_refusal("cuda")


def _unet_prompt(weight_dtype: str) -> dict:
    return {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "u.safetensors", "weight_dtype": weight_dtype}},
            "2": {"class_type": "ModelSave", "inputs": {"model": ["1", 0], "filename_prefix": "x"}}}


@pytest.mark.parametrize("device,refused", [("cpu", False), ("mps", True)])
def test_fp8_fast_is_refused_at_validation_where_the_device_cannot(tmp_path, device, refused):
    paths = FolderPaths(tmp_path)
    paths.ensure_dirs()
    (paths.model_dirs("diffusion_models")[0] / "u.safetensors").write_bytes(b"")
    registry = build_registry(PACKS)
    result = PromptValidator(registry, paths, RuntimeOptions(device=device)).validate(_unet_prompt("fp8_e4m3fn_fast"))
    assert result.ok is not refused, result.node_errors
    if refused:
        (error,) = result.node_errors["1"]["errors"]
        assert error["type"] == "custom_validation_failed"
        assert "weight_dtype" in error["details"] and "Use fp8_e4m3fn" in error["details"]
        # the plain fp8 storage runs anywhere float8 exists: only fp8 matmul is refused
        other = PromptValidator(registry, paths, RuntimeOptions(device="cpu")).validate(_unet_prompt("fp8_e4m3fn"))
        assert other.ok, other.node_errors


def test_the_tensors_cast_at_load_are_exactly_those_fp8_storage_casts():
    """Loaders cast ``fp8_tensor_names`` straight to fp8 while assigning weights; that set must be what
    diffusers' layerwise casting (``fp8_storage``) then stores in fp8 — no more (a norm in fp8 would
    be computed in fp8), no less (a compute-dtype copy would survive)."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.diffusion import configs
    from nodes.diffusion.types import ModelFamily
    from nodes.quantize.methods import fp8_storage, fp8_tensor_names

    flux_cfg = configs.flux_transformer_config(in_channels=16, num_layers=1, num_single_layers=1, head_dim=8,
                                               num_heads=2, joint_attention_dim=32, pooled_projection_dim=16,
                                               guidance_embeds=True, out_channels=16)
    flux_cfg["axes_dims_rope"] = (2, 3, 3)
    models = [UNet2DConditionModel.from_config(configs.sd_unet_config(
                  ModelFamily.SD15, block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=1,
                  transformer_layers=(1, 1), cross_attention_dim=32)),
              FluxTransformer2DModel.from_config(flux_cfg),
              CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, vocab_size=100, max_position_embeddings=16))]
    for model in models:
        names = fp8_tensor_names(model)
        fp8_storage(model, torch.float8_e4m3fn, torch.float32)
        cast = {n for n, p in model.named_parameters() if p.dtype == torch.float8_e4m3fn}
        assert names and names == cast, (type(model).__name__, sorted(names ^ cast)[:5])
