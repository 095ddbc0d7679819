"""QuantizeModel and QuantizeCLIP: a MODEL/CLIP whose weights are stored quantized.

Each node returns a new value with a new model handle (keyed by the base's handle, the method and
the base's LoRA patches/merges), so the full-precision base stays usable — and evictable — on its
own.  LoRA patches and merges of the input are baked in before quantizing: patching quantized
weights at use time is impossible for bitsandbytes/torchao layouts, so a LoRA goes *before*
QuantizeModel in the graph.  A method the device cannot run is refused at validation.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Combo, Node, Output, Resource, Socket
from nodes.quantize import capabilities as caps

METHOD_TOOLTIP = "; ".join(f"{m}: {caps.DESCRIPTIONS[m]}" for m in caps.QUANTIZE_METHODS)


def runtime_device(options: Any) -> str:
    return getattr(options, "device", "auto") if options is not None else "auto"


def _validate(method: str, options: Any) -> bool | str:
    refused = caps.refusal(method, runtime_device(options))
    return True if refused is None else refused


def _key_of(ref: Any) -> Any:
    key = getattr(ref, "key", None)
    return key if key is not None else ("resident", id(ref))


def _quantized_handle(ctx: NodeContext, base_ref: Any, key: tuple, build, label: str, method: str):
    from nodes.devices import TORCH_OPS, device_name
    from nodes.diffusion.loading import resolve_device

    device = resolve_device(ctx.options.device)
    return ctx.models.load(key, build, ops=TORCH_OPS, device=device_name(device),
                           sources=getattr(base_ref, "sources", ()), label=f"{label} [{method}]",
                           options={"quantization": method})


class QuantizeModel(Node):
    """Stores a diffusion model's weights quantized (fp8, NF4, int8) to save memory; LoRAs go before it."""

    DISPLAY_NAME = "Quantize Model"
    CATEGORY = "advanced/quantization"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("model", "MODEL"),
              Combo("method", caps.QUANTIZE_METHODS, caps.FP8_E4M3FN, tooltip=METHOD_TOOLTIP))
    OUTPUTS = (Output("MODEL"),)

    @classmethod
    def validate_inputs(cls, method: str, options: Any = None) -> bool | str:
        return _validate(method, options)

    def execute(self, ctx: NodeContext, model, method: str = caps.FP8_E4M3FN):
        import torch

        from nodes.diffusion.loading import resolve_device, resolve_dtype
        from nodes.diffusion.model_patches import patched_weights
        from nodes.quantize.methods import QuantizeError, quantize_module

        if model is None:
            raise NodeError("model: no model", input_name="model")
        if model.quantization != "none":
            raise NodeError(f"model: this model is already quantized ({model.quantization}); quantize the "
                            "full-precision model instead", input_name="model")
        refused = caps.refusal(method, runtime_device(ctx.options))
        if refused:
            raise NodeError(f"method: {refused}", input_name="method")
        device = resolve_device(ctx.options.device)
        dtype = resolve_dtype(ctx.options.dtype, device, model.family)
        patches = tuple((p.name, p.strength) for p in model.patches)
        merges = tuple((_key_of(other.weights), ratio) for other, ratio in model.merges)
        key = ("quantized", _key_of(model.weights), method, patches, merges, str(device), str(dtype))

        def build() -> torch.nn.Module:
            with patched_weights(model) as module:  # LoRA patches and merges, baked into the copy
                baked = copy.deepcopy(module)
            baked.to(device=device, dtype=dtype)
            try:
                quantize_module(baked, method, dtype, device)
            except QuantizeError as exc:
                raise NodeError(f"method: {exc}", input_name="method") from exc
            return baked.eval().requires_grad_(False)

        label = getattr(model.weights, "label", type(model.denoiser).__name__)
        handle = _quantized_handle(ctx, model.weights, key, build, label, method)
        ctx.record(quantization=method, weight_bytes=handle.size_bytes)
        return (replace(model, weights=handle, patches=(), merges=(), quantization=method),)


class QuantizeCLIP(Node):
    """Stores the text encoders' weights quantized (fp8, NF4, int8) to save memory."""

    DISPLAY_NAME = "Quantize CLIP"
    CATEGORY = "advanced/quantization"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("clip", "CLIP"),
              Combo("method", caps.QUANTIZE_METHODS, caps.FP8_E4M3FN, tooltip=METHOD_TOOLTIP))
    OUTPUTS = (Output("CLIP"),)

    @classmethod
    def validate_inputs(cls, method: str, options: Any = None) -> bool | str:
        return _validate(method, options)

    def execute(self, ctx: NodeContext, clip, method: str = caps.FP8_E4M3FN):
        from nodes.diffusion.lora import apply_patches
        from nodes.diffusion.loading import encoder_dtype, resolve_device
        from nodes.quantize.methods import QuantizeError, quantize_module

        if clip is None:
            raise NodeError("clip: no CLIP model", input_name="clip")
        if clip.quantization != "none":
            raise NodeError(f"clip: these text encoders are already quantized ({clip.quantization})",
                            input_name="clip")
        refused = caps.refusal(method, runtime_device(ctx.options))
        if refused:
            raise NodeError(f"method: {refused}", input_name="method")
        device = resolve_device(ctx.options.device)
        patches = tuple((p.name, p.strength) for p in clip.patches)
        key = ("quantized-clip", _key_of(clip.weights), method, patches, str(device))

        def build() -> dict:
            out = {}
            for kind, encoder in clip.encoders.items():
                with apply_patches(encoder, clip.patches, prefix=kind + "."):
                    baked = copy.deepcopy(encoder)
                dtype = encoder_dtype(ctx.options.dtype, device, kind)
                baked.to(device=device, dtype=dtype)
                try:
                    quantize_module(baked, method, dtype, device)
                except QuantizeError as exc:
                    raise NodeError(f"method: {kind}: {exc}", input_name="method") from exc
                out[kind] = baked.eval().requires_grad_(False)
            return out

        label = getattr(clip.weights, "label", "text encoders")
        handle = _quantized_handle(ctx, clip.weights, key, build, label, method)
        ctx.record(quantization=method, weight_bytes=handle.size_bytes)
        return (replace(clip, weights=handle, patches=(), quantization=method),)
