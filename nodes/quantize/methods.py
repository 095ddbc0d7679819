"""Quantizing a loaded torch module in place, one function per method of :mod:`capabilities`.

Why by hand for bitsandbytes: diffusers' ``BitsAndBytesConfig`` refuses to run without a GPU,
while bitsandbytes 0.50.2 itself has CPU kernels; replacing each ``nn.Linear`` with a
``Linear4bit``/``Linear8bitLt`` whose weight is quantized on its first move works on CPU and
CUDA alike and serves diffusers and transformers models with one code path.

What is quantized: fp8 storage covers every Linear and Conv layer of a diffusion model, FLUX's adaLN
modulation Linears included, as ComfyUI's fp8 ``weight_dtype`` does (norm layers keep their few
weights; see :data:`DIFFUSERS_FP8_SKIP`); on text encoders, norms, embeddings and output heads stay
in full precision.  The Linear methods (NF4, int8) cover ``nn.Linear`` layers only — conv
layers (most of an SD UNet) stay in full precision, so their savings depend on the family.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

from nodes.quantize import capabilities as caps

log = logging.getLogger(__name__)

FP8 = {caps.FP8_E4M3FN: torch.float8_e4m3fn, caps.FP8_E5M2: torch.float8_e5m2}
# Linear layers kept in full precision: the model's own input and output layers (embedders, output heads:
# tiny or numerically sensitive).  Each name is a *top-level* module (``proj_out`` is FLUX's and a UNet's
# final projection, not the ``proj_out`` inside every FLUX single block or UNet transformer, which are a
# third of FLUX's weights): see :func:`_skipped`.
_SKIP_LINEAR = ("proj_out", "lm_head", "norm_out", "time_embedding", "time_text_embed", "time_embed", "timestep",
                "conv_in", "conv_out", "patch_embedding", "position_embedding", "x_embedder", "context_embedder")


class QuantizeError(RuntimeError):
    """A method cannot be applied to this model (the message says which layer and why)."""


# Layers fp8 storage keeps in full precision on diffusers models.  ComfyUI's ``weight_dtype`` fp8 builds the
# whole diffusion model in fp8 — every Linear and Conv, the adaLN modulation Linears of FLUX's blocks
# (``norm1.linear`` …) and its embedders included — and keeps nothing back but what has no weights.  We
# follow it: norm layers are never cast (layerwise casting only hooks Linear/Conv/Embedding; their
# weights are a few KB), and the patch/position embedders of the models that have them (SD3-style
# ``pos_embed``/``patch_embed``: a conv and a learned table at the very input) stay as diffusers keeps them.
# ``lora_`` keeps PEFT adapter layers (if any were injected) in the compute dtype.
DIFFUSERS_FP8_SKIP = ("pos_embed", "patch_embed", "lora_")


def fp8_storage(module: torch.nn.Module, storage: torch.dtype, compute: torch.dtype) -> None:
    """Store weights in ``storage`` (fp8) and upcast each layer to ``compute`` while it runs.

    Why ``apply_layerwise_casting`` and not ``ModelMixin.enable_layerwise_casting``: the latter always
    adds the model class's own skip patterns, and FLUX's (``"norm"``) matches every adaLN modulation
    Linear (``norm1.linear``, ``norm1_context.linear``, ``norm.linear``, ``norm_out.linear``: a third of
    each block), which then stays in full precision — 0.455× fp32 weight bytes instead of ≈0.25×.
    """
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(module, storage_dtype=storage, compute_dtype=compute, skip_modules_pattern=fp8_skip(module))


def fp8_skip(module: torch.nn.Module) -> tuple[str, ...]:
    """The layer-name patterns (``re.search``) :func:`fp8_storage` keeps in full precision on ``module``."""
    from diffusers.models.modeling_utils import ModelMixin

    # a model's own fp32 islands (T5's ``wo``: it casts its input to the weight's dtype itself)
    keep = tuple(rf"(^|\.){name}$" for name in getattr(module, "_keep_in_fp32_modules", None) or ())
    if isinstance(module, ModelMixin):
        return DIFFUSERS_FP8_SKIP + keep
    # transformers text encoders: norms, token/position embeddings and output heads stay
    return ("norm", "embed", "position", "pos_", "lm_head") + keep


def fp8_tensor_names(module: torch.nn.Module) -> set[str]:
    """Names (as in ``state_dict``) of the tensors :func:`fp8_storage` stores in fp8 on ``module`` — the
    same walk as diffusers' layerwise casting: a skipped layer skips its children, a supported layer
    (Linear, Conv, Embedding) is cast whole.  Loaders use it to cast those tensors straight to fp8
    while loading, so the compute-dtype model never exists in memory at once."""
    import re

    from diffusers.hooks.layerwise_casting import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    skip = fp8_skip(module)
    names: set[str] = set()

    def walk(m: torch.nn.Module, prefix: str) -> None:
        if any(re.search(p, prefix) for p in skip):
            return
        if isinstance(m, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in m.named_parameters())
            return
        for name, child in m.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(module, "")
    return names


FP8_E4M3_MAX = 448.0  # the largest finite float8_e4m3fn


def fp8_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, compute: torch.dtype) -> torch.Tensor:
    """``x @ weight.T + bias`` with the product computed in fp8 (``torch._scaled_mm``).

    ``weight`` is stored in float8_e4m3fn as is (scale 1, as ComfyUI's fp8 ``weight_dtype`` stores
    it); the activations are scaled per tensor into e4m3fn's range (amax → 448), cast, and the
    scale is given back by ``_scaled_mm``; the result comes out in ``compute``.  Shapes the kernel
    cannot take (feature counts not multiples of 16) fall back to upcasting the weight.
    """
    rows = x.reshape(-1, x.shape[-1])
    out_features, in_features = weight.shape
    if in_features % 16 or out_features % 16 or rows.shape[0] == 0:
        return torch.nn.functional.linear(x.to(compute), weight.to(compute), None if bias is None else bias.to(compute))
    amax = rows.detach().abs().amax().float()
    scale = torch.clamp(amax / FP8_E4M3_MAX, min=1e-12)
    xq = (rows.float() / scale).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    one = torch.ones((), device=x.device, dtype=torch.float32)
    out = torch._scaled_mm(xq, weight.t(), scale_a=scale, scale_b=one, out_dtype=compute)
    if bias is not None:
        out = out + bias.to(compute)
    return out.reshape(*x.shape[:-1], out_features)


class FP8MatmulLinear(torch.nn.Linear):
    """A Linear whose float8_e4m3fn weight is multiplied in fp8 (``fp8_e4m3fn_fast``): see :func:`fp8_linear`."""

    compute_dtype: torch.dtype = torch.float32

    @classmethod
    def like(cls, lin: torch.nn.Linear, compute: torch.dtype) -> "FP8MatmulLinear":
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        new.weight = torch.nn.Parameter(lin.weight.data.to(torch.float8_e4m3fn), requires_grad=False)
        if lin.bias is not None:
            new.bias = torch.nn.Parameter(lin.bias.data, requires_grad=False)
        new.compute_dtype = compute
        return new.requires_grad_(False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return fp8_linear(inputs, self.weight, self.bias, self.compute_dtype)


def fp8_matmul(module: torch.nn.Module, compute: torch.dtype) -> int:
    """``fp8_e4m3fn_fast``: every Linear stored in e4m3fn *and multiplied in fp8* (:class:`FP8MatmulLinear`),
    every other layer fp8 storage as :func:`fp8_storage` (convs upcast as they run).  The caller checks
    that the device can (:func:`capabilities.fp8_matmul_refusal`); returns how many Linears multiply in fp8.
    """
    from diffusers.hooks import apply_layerwise_casting

    skip = DIFFUSERS_FP8_SKIP
    count = 0
    with torch.no_grad():
        for parent_name, parent in list(module.named_modules()):
            for name, child in list(parent.named_children()):
                full = f"{parent_name}.{name}" if parent_name else name
                if type(child) is torch.nn.Linear and not any(p in full for p in skip):
                    setattr(parent, name, FP8MatmulLinear.like(child, compute))
                    count += 1
    apply_layerwise_casting(module, storage_dtype=torch.float8_e4m3fn, compute_dtype=compute,
                            skip_modules_pattern=skip, skip_modules_classes=(FP8MatmulLinear,))
    return count


def _skipped(full: str, skip: tuple[str, ...]) -> bool:
    """Whether the layer named ``full`` is ``skip``'s module or inside it (names from the model's top)."""
    return any(full == s or full.startswith(s + ".") for s in skip)


def _linear_children(module: torch.nn.Module, skip: tuple[str, ...]) -> list[tuple[torch.nn.Module, str, str, torch.nn.Linear]]:
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())  # e.g. T5's "wo"
    found = []
    for parent_name, parent in module.named_modules():
        for name, child in parent.named_children():
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is torch.nn.Linear and not _skipped(full, skip) and name not in keep:
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
