"""Quantizing a loaded torch module in place, one function per method of :mod:`capabilities`.

Why by hand for bitsandbytes: diffusers' ``BitsAndBytesConfig`` refuses to run without a GPU,
while bitsandbytes 0.50.2 itself has CPU kernels; replacing each ``nn.Linear`` with a
``Linear4bit``/``Linear8bitLt`` whose weight is quantized on its first move works on CPU and
CUDA alike and serves diffusers and transformers models with one code path.

What is quantized: fp8 storage covers every layer diffusers' layerwise casting accepts (norms
and embeddings skipped); the Linear methods (NF4, int8) cover ``nn.Linear`` layers only — conv
layers (most of an SD UNet) stay in full precision, so their savings depend on the family.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from nodes.quantize import capabilities as caps

log = logging.getLogger(__name__)

FP8 = {caps.FP8_E4M3FN: torch.float8_e4m3fn, caps.FP8_E5M2: torch.float8_e5m2}
# Linear layers kept in full precision: tiny or numerically sensitive (output heads, embedders' norms).
_SKIP_LINEAR = ("proj_out", "lm_head", "norm_out", "time_embedding", "time_text_embed", "time_embed", "timestep",
                "conv_in", "conv_out", "patch_embedding", "position_embedding", "x_embedder", "context_embedder")


class QuantizeError(RuntimeError):
    """A method cannot be applied to this model (the message says which layer and why)."""


def fp8_storage(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """Store weights in ``storage`` (fp8) and upcast each layer to ``compute`` while it runs."""
    enable = getattr(module, "enable_layerwise_casting", None)
    if callable(enable):  # diffusers ModelMixin
        # Only Linear/Conv layers are cast (norm layers never are); diffusers' default also skips every
        # layer whose *name* contains "norm", which keeps FLUX's large adaLN modulation Linears
        # (norm1.linear …, a third of each block) in full precision.  ComfyUI stores those in fp8 too.
        enable(storage_dtype=storage, compute_dtype=compute, skip_modules_pattern=("pos_embed", "patch_embed"))
        return
    from diffusers.hooks import apply_layerwise_casting

    # transformers' own fp32 islands (T5's ``wo``: it casts its input to the weight's dtype itself)
    keep = tuple(rf"(^|\.){name}$" for name in getattr(module, "_keep_in_fp32_modules", None) or ())
    apply_layerwise_casting(module, storage_dtype=storage, compute_dtype=compute,
                            skip_modules_pattern=("norm", "embed", "position", "pos_", "lm_head") + keep)


def _linear_children(module: torch.nn.Module, skip: tuple[str, ...]) -> list[tuple[torch.nn.Module, str, str, torch.nn.Linear]]:
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())  # e.g. T5's "wo"
    found = []
    for parent_name, parent in module.named_modules():
        for name, child in parent.named_children():
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is torch.nn.Linear and not any(s in full for s in skip) and name not in keep:
                found.append((parent, name, full, child))
    return found


def _replace_linears(module: torch.nn.Module, make: Callable[[torch.nn.Linear], torch.nn.Module],
                     skip: tuple[str, ...]) -> int:
    count = 0
    for parent, name, _full, child in _linear_children(module, skip):
        setattr(parent, name, make(child))
        count += 1
    return count


def bnb_nf4(module: torch.nn.Module, compute: torch.dtype, device: torch.device,
            skip: tuple[str, ...] = _SKIP_LINEAR) -> int:
    """Replace Linear layers by bitsandbytes NF4 ``Linear4bit`` (double-quantized absmax); returns how many."""
    import bitsandbytes as bnb

    def make(lin: torch.nn.Linear) -> torch.nn.Module:
        q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=compute,
                              compress_statistics=True, quant_type="nf4", device="meta")
        q.weight = bnb.nn.Params4bit(lin.weight.data.to("cpu", torch.float32).contiguous(), requires_grad=False,
                                     quant_type="nf4", compress_statistics=True, module=q)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.to(compute), requires_grad=False)
        if lin.in_features % 64 and hasattr(q, "support_avx512bf16_for_cpu"):
            # bitsandbytes 0.50.2 repacks weights for AVX512-BF16 CPUs in blocks of 64 input features
            # and fails on narrower layers (tiny models); those keep the portable kernel
            q.support_avx512bf16_for_cpu = False
        return q.to(device)  # the move quantizes

    return _replace_linears(module, make, skip)


def bnb_int8(module: torch.nn.Module, compute: torch.dtype, device: torch.device,
             skip: tuple[str, ...] = _SKIP_LINEAR) -> int:
    """Replace Linear layers by bitsandbytes LLM.int8() ``Linear8bitLt`` (inference only); returns how many."""
    import bitsandbytes as bnb

    def make(lin: torch.nn.Linear) -> torch.nn.Module:
        q = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                has_fp16_weights=False, threshold=6.0, device="meta")
        q.weight = bnb.nn.Int8Params(lin.weight.data.to("cpu", torch.float16).contiguous(), requires_grad=False,
                                     has_fp16_weights=False)
        if lin.bias is not None:
            q.bias = torch.nn.Parameter(lin.bias.data.to(compute), requires_grad=False)
        return q.to(device)  # the move quantizes

    return _replace_linears(module, make, skip)


def int8_weight_only(module: torch.nn.Module, compute: torch.dtype, device: torch.device,
                     skip: tuple[str, ...] = _SKIP_LINEAR) -> int:
    """torchao int8 weight-only on Linear layers (weights int8 + per-row scales; compute in ``compute``)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    targets = {id(child) for _p, _n, _f, child in _linear_children(module, skip)}
    quantize_(module, Int8WeightOnlyConfig(), filter_fn=lambda m, _fqn: id(m) in targets)
    return len(targets)


def quantize_module(module: torch.nn.Module, method: str, compute: torch.dtype, device: torch.device) -> int:
    """Quantize ``module`` in place with ``method``; returns how many layers changed (fp8: -1, all)."""
    refused = caps.refusal(method, str(device))
    if refused:
        raise QuantizeError(refused)
    if method == caps.NONE:
        return 0
    module.to(device)
    if method in FP8:
        fp8_storage(module, FP8[method], compute)
        return -1
    fn = {caps.BNB_NF4: bnb_nf4, caps.BNB_INT8: bnb_int8, caps.INT8_WEIGHT_ONLY: int8_weight_only}[method]
    with torch.no_grad():
        count = fn(module, compute, device)
    if count == 0:
        raise QuantizeError(f"{type(module).__name__} has no Linear layers that {method} could quantize")
    log.info("quantized %d Linear layers of %s with %s", count, type(module).__name__, method)
    return count
