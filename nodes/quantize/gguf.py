"""GGUF diffusion models and text encoders, as city96/ComfyUI-GGUF files hold them, via diffusers' GGUF support.

What the files look like (ComfyUI-GGUF's converter; llama.cpp's ``gguf`` package):

* diffusion models keep their original tensor names (FLUX: BFL ``double_blocks…``; SD: LDM names)
  with ``general.architecture`` = "flux" / "sd1" / "sdxl"; 2-D weights are quantized (Q8_0, Q4_K …),
  norms and biases stay F32/F16;
* T5 encoders use llama.cpp's names (``enc.blk.0.attn_q.weight``, ``token_embd.weight`` …;
  architecture "t5encoder"/"t5"); CLIP encoders keep transformers names.

How they load: FLUX transformers keep their Linear weights quantized in memory (diffusers'
``GGUFParameter`` + ``GGUFLinear``, dequantized layer by layer at compute time — the point of GGUF);
the fused BFL q/k/v rows are split on the quantized rows (GGUF blocks run along a row).  SD/SDXL
UNets and text encoders are dequantized at load into the compute dtype (their conversions reshape
tensors, which quantized rows do not allow); the file is still smaller on disk.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)


class GGUFError(Exception):
    """A GGUF file this loader cannot use (the message names the file and why)."""


def read(path: Path) -> tuple[dict[str, Any], str]:
    """(tensors — GGUFParameter for quantized ones —, ``general.architecture``) of a GGUF file."""
    try:
        from gguf import GGUFReader

        from diffusers.models.model_loading_utils import load_gguf_checkpoint
    except ImportError as exc:  # pragma: no cover - gguf is a dependency
        raise GGUFError("the gguf package is not installed (pip install 'gguf==0.19.0')") from exc
    try:
        reader = GGUFReader(str(path))
        field = reader.fields.get("general.architecture")
        arch = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
        return load_gguf_checkpoint(str(path)), arch
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise GGUFError(f"{path.name} is not a readable GGUF file ({exc})") from exc


def is_quantized(t: Any) -> bool:
    return hasattr(t, "quant_type") and hasattr(t, "quant_shape")


def logical_shapes(sd: dict[str, Any]) -> dict[str, tuple]:
    return {k: tuple(v.quant_shape) if is_quantized(v) else tuple(v.shape) for k, v in sd.items()}


def dequantized(sd: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    return {k: (dequantize_gguf_tensor(v) if is_quantized(v) else v).to(dtype) for k, v in sd.items()}


def t5_from_llama_names(sd: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp T5-encoder names → transformers ``T5EncoderModel`` names (gguf's own name table, inverted)."""
    import gguf

    blocks = 1 + max([int(k.split(".")[2]) for k in sd if k.startswith("enc.blk.")], default=-1)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, blocks)
    hf_modules = ["shared", "encoder.final_layer_norm"]
    for i in range(blocks):
        attn, ff = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        hf_modules += [attn + f"SelfAttention.{p}" for p in ("q", "k", "v", "o", "relative_attention_bias")]
        hf_modules += [attn + "layer_norm", ff + "layer_norm"]
        hf_modules += [ff + f"DenseReluDense.{p}" for p in ("wi_0", "wi_1", "wi", "wo")]
    inverse = {}
    for hf in hf_modules:
        g = names.get_name(hf)
        if g is not None:
            inverse.setdefault(g, hf)
    out = {}
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        hf = inverse.get(module)
        if hf is None:
            raise GGUFError(f"unexpected tensor {key} in a T5 GGUF file")
        out[f"{hf}.{kind}"] = value
    return out


def _normalized(names_or_sd: dict[str, Any], arch: str) -> dict[str, Any]:
    if arch in ("t5", "t5encoder") or any(k.startswith("enc.blk.") for k in names_or_sd):
        return t5_from_llama_names(names_or_sd)
    return names_or_sd


def inspect(path: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """(name → logical shape, metadata) of a GGUF file from its header (tensor data is memory-mapped, not read).

    Names are normalized to what our detection and builders read (llama.cpp T5 names → transformers).
    """
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
    except (ImportError, ValueError, OSError) as exc:
        raise GGUFError(f"{path.name} is not a readable GGUF file ({exc})") from exc
    field = reader.fields.get("general.architecture")
    arch = bytes(field.parts[field.data[0]]).decode() if field is not None else ""
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    return _normalized(shapes, arch), {"gguf.architecture": arch}


def load_dequantized(path: Path, select=None) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file dequantized to fp32, under normalized names (``select`` filters names)."""
    sd, arch = read(path)
    sd = _normalized(sd, arch)
    return dequantized({k: v for k, v in sd.items() if select is None or select(k)})


def text_encoder_state(path: Path) -> dict[str, torch.Tensor]:
    """A text encoder GGUF as a dequantized state dict in the names our encoder builders read."""
    sd, arch = read(path)
    if arch in ("t5", "t5encoder") or any(k.startswith("enc.blk.") for k in sd):
        return dequantized(t5_from_llama_names(sd))
    if any(k.startswith(("text_model.", "transformer.resblocks.")) for k in sd):
        return dequantized(sd)
    raise GGUFError(f"{path.name} is a GGUF {arch or 'model'}, not a CLIP or T5 text encoder")


def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        module._parameters[leaf] = value if isinstance(value, torch.nn.Parameter) else \
            torch.nn.Parameter(value, requires_grad=False)
    elif leaf in module._buffers:
        module._buffers[leaf] = value
    else:
        raise GGUFError(f"the model has no tensor {name}")


def build_flux_quantized(bfl: dict[str, Any], file_name: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    """A FluxTransformer2DModel whose Linear weights stay GGUF-quantized (GGUFLinear)."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from diffusers.quantizers.gguf.utils import GGUFLinear, _replace_with_gguf_linear, dequantize_gguf_tensor

    from nodes.diffusion import configs, keymaps

    meta = {k: torch.empty(s, device="meta") for k, s in logical_shapes(bfl).items()}
    try:
        cfg = configs.infer_flux_config(meta)
        state = keymaps.flux_from_bfl_state_dict(bfl)
    except (KeyError, ValueError, IndexError) as exc:
        raise GGUFError(f"{file_name}: cannot read the FLUX transformer ({exc!s})") from exc
    with init_empty_weights():
        model = FluxTransformer2DModel.from_config(cfg)
    _replace_with_gguf_linear(model, compute_dtype, state)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    if missing:
        raise GGUFError(f"{file_name}: the FLUX transformer is incomplete — {len(missing)} tensors missing "
                        f"(e.g. {', '.join(missing[:3])})")
    for name, value in state.items():
        module = model.get_submodule(name.rpartition(".")[0])
        if is_quantized(value) and isinstance(module, GGUFLinear) and name.endswith(".weight"):
            if tuple(value.quant_shape) != expected[name]:
                raise GGUFError(f"{file_name}: {name} decodes to {tuple(value.quant_shape)}, expected {expected[name]}")
            _set_tensor(model, name, value)
            continue
        plain = dequantize_gguf_tensor(value) if is_quantized(value) else value
        if tuple(plain.shape) != expected.get(name):
            raise GGUFError(f"{file_name}: {name} has shape {tuple(plain.shape)}, expected {expected.get(name)}")
        _set_tensor(model, name, plain.to(compute_dtype))
    return model.eval().requires_grad_(False)


def load_denoiser(path: Path, compute_dtype: torch.dtype, device: torch.device):
    """(family, prediction type hint, module) of a GGUF diffusion model file."""
    from nodes.diffusion import families
    from nodes.diffusion import single_file as sf
    from nodes.diffusion.model_files import ModelFileError, strip_prefix

    sd, arch = read(path)
    detected = families.detect(logical_shapes(sd))
    if detected.family is None or detected.kind not in ("diffusion_model", "checkpoint"):
        raise GGUFError(f"{path.name} is a GGUF {arch or detected.describe()}; UnetLoaderGGUF loads SD1.5, SDXL and "
                        "FLUX diffusion models")
    if detected.prefix:
        sd = strip_prefix(sd, detected.prefix)
    try:
        if detected.family.is_flux:
            if detected.layout == "bfl":
                module = build_flux_quantized(sd, path.name, compute_dtype)
            else:
                module = sf.build_flux_transformer(dequantized(sd, compute_dtype), path.name, compute_dtype,
                                                   layout=detected.layout)
        else:
            module = sf.build_sd_unet(dequantized(sd, compute_dtype), detected.family, path.name, compute_dtype,
                                      layout=detected.layout)
    except ModelFileError as exc:
        raise GGUFError(str(exc)) from exc
    return detected, module.to(device)
