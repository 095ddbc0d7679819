"""Pre-quantized test files in the layouts users download: GGUF (city96/ComfyUI-GGUF) and bitsandbytes NF4
checkpoints (Forge / comfyanonymous/ComfyUI_bitsandbytes_NF4), written from the tiny random-weight models.

* GGUF diffusion model: BFL tensor names, ``general.architecture`` = "flux", 2-D weights in Q8_0
  (or another llama.cpp type), the rest F32 — what ComfyUI-GGUF's convert tool writes.
* GGUF SD1.5/SDXL UNet: LDM names without prefix, architecture "sd1"/"sdxl", ComfyUI-GGUF's
  convert rules — 1-D tensors and tensors of ≤ 1024 values F32; a tensor whose last dimension is not
  a multiple of 256 (and whose size is) stored as rows of 256 with ``comfy.gguf.orig_shape.NAME``
  holding its shape; the rest quantized, F16 where the rows do not fit the blocks (3×3 kernels).
* GGUF CLIP text encoder: transformers names, 2-D weights quantized.
* GGUF T5 encoder: llama.cpp names (``enc.blk.N.attn_q.weight`` …, ``token_embd.weight``), architecture
  "t5encoder", from gguf's own name table.
* NF4 checkpoint: ComfyUI's all-in-one FLUX layout where each transformer Linear weight is a packed
  uint8 NF4 tensor followed by bitsandbytes' serialized quant state (``.absmax``, ``.quant_map``,
  ``.nested_absmax``, ``.nested_quant_map``, ``.quant_state.bitsandbytes__nf4``), as
  ``Params4bit`` saves itself; text encoders and VAE stay in full precision.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def _writer(path: Path, arch: str):
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    return gguf.GGUFWriter(str(path), arch=arch)


def _add(writer, name: str, t: torch.Tensor, qtype) -> None:
    import gguf

    arr = t.detach().float().cpu().numpy()
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if arr.ndim == 2 and arr.shape[-1] % block == 0 and qtype not in (gguf.GGMLQuantizationType.F32,):
        writer.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, arr.astype(np.float32))


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_flux_gguf(path: Path, transformer, qtype_name: str = "Q8_0") -> Path:
    import gguf

    from nodes.diffusion import keymaps

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    writer = _writer(path, "flux")
    for name, t in keymaps.flux_to_bfl_state_dict(transformer.state_dict()).items():
        _add(writer, name, t, qtype)
    _finish(writer)
    return path


def _add_comfy_sd(writer, name: str, t: torch.Tensor, qtype) -> None:
    """One tensor as ComfyUI-GGUF's convert tool (+ llama.cpp's quantizer) stores SD UNet tensors."""
    import gguf

    from nodes.quantize.gguf import ORIG_SHAPE_KEY

    arr = t.detach().float().cpu().numpy()
    n = arr.size
    if arr.ndim == 1 or n <= 1024:
        writer.add_tensor(name, arr.astype(np.float32))
        return
    if n >= 512 and n % 256 == 0 and arr.shape[-1] % 256:
        writer.add_array(ORIG_SHAPE_KEY + name, [int(d) for d in arr.shape])
        arr = arr.reshape(n // 256, 256)
    if arr.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
        writer.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, arr.astype(np.float16))


def write_sd_gguf(path: Path, unet, arch: str, qtype_name: str = "Q8_0") -> Path:
    """A UNet2DConditionModel as a ComfyUI-GGUF SD1.5 ("sd1") or SDXL ("sdxl") diffusion model file."""
    import gguf

    from models.tools.tiny_models import unet_to_ldm

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    writer = _writer(path, arch)
    for name, t in unet_to_ldm(unet).items():
        _add_comfy_sd(writer, name.removeprefix("model.diffusion_model."), t, qtype)
    _finish(writer)
    return path


def write_clip_gguf(path: Path, text_encoder, qtype_name: str = "Q8_0") -> Path:
    """A transformers CLIP text model as a GGUF text encoder (transformers names, 2-D weights quantized)."""
    import gguf

    from models.tools.tiny_models import clip_to_hf

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    writer = _writer(path, "clip")
    for name, t in clip_to_hf(text_encoder).items():
        _add(writer, name, t, qtype)
    _finish(writer)
    return path


def write_t5_gguf(path: Path, t5, qtype_name: str = "Q8_0") -> Path:
    import gguf

    qtype = getattr(gguf.GGMLQuantizationType, qtype_name)
    sd = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    blocks = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.block."))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, blocks)
    writer = _writer(path, "t5encoder")
    for key, t in sd.items():
        module, _, kind = key.rpartition(".")
        name = names.get_name(module)
        if name is None:
            raise KeyError(f"no GGUF name for {key}")
        _add(writer, f"{name}.{kind}", t, qtype)
    _finish(writer)
    return path


def nf4_tensors(name: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    """A Linear weight as bitsandbytes serializes a quantized ``Params4bit`` (NF4, double-quantized absmax)."""
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(weight.detach().float().contiguous(), blocksize=64, compress_statistics=True,
                                    quant_type="nf4")
    out = {name: packed}
    for k, v in state.as_dict(packed=True).items():
        out[f"{name}.{k}"] = v
    return out


def write_flux_nf4_checkpoint(path: Path, flux: dict) -> Path:
    """ComfyUI's all-in-one FLUX checkpoint with the transformer's 2-D Linear weights in bitsandbytes NF4."""
    from safetensors.torch import save_file

    from models.tools.tiny_models import _flux_checkpoint

    out: dict[str, torch.Tensor] = {}
    for key, t in _flux_checkpoint(flux).items():
        if key.startswith("model.diffusion_model.") and key.endswith(".weight") and t.ndim == 2:
            out.update(nf4_tensors(key, t))
        else:
            out[key] = t.detach().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path), metadata={"format": "pt"})
    return path
