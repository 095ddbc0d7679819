"""Reading model files safely: header-only inspection, lazy tensor loading, and clear errors.

Why: detection needs only key names and shapes, which a safetensors header gives without reading
gigabytes; and a truncated download or a renamed HTML error page must become one sentence naming
the file, not a Rust panic or a pickle traceback.  Pickled ``.ckpt``/``.pt`` files are opened with
``torch.load(weights_only=True)`` (no code execution).
"""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Callable, Mapping

import torch

log = logging.getLogger(__name__)

_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


class ModelFileError(Exception):
    """A model file that cannot be read as what it claims to be (message names the file)."""


Shapes = dict[str, tuple[int, ...]]


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in (".safetensors", ".sft")


def safetensors_header(path: Path) -> tuple[Shapes, dict[str, str]]:
    """(name → shape, metadata) from a safetensors header; checks the data section is complete."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ModelFileError(f"{path.name} is empty or truncated ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 2**20 or 8 + n > size:
                raise ModelFileError(f"{path.name} is truncated or not a safetensors file (header of {n} bytes, "
                                     f"file of {size} bytes)")
            header = json.loads(f.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, ModelFileError):
            raise
        raise ModelFileError(f"{path.name} is not a readable safetensors file ({exc})") from exc
    meta = header.pop("__metadata__", None) or {}
    shapes: Shapes = {}
    end = 0
    for name, info in header.items():
        try:
            shapes[name] = tuple(int(s) for s in info["shape"])
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelFileError(f"{path.name} has a corrupt safetensors header (entry {name!r})") from exc
    if 8 + n + end > size:
        raise ModelFileError(f"{path.name} is truncated: it should hold {8 + n + end} bytes but has {size} "
                             f"(an interrupted download?). Download it again.")
    return shapes, {str(k): str(v) for k, v in meta.items()}


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors come in many types
        raise ModelFileError(f"{path.name} could not be read as a PyTorch checkpoint ({type(exc).__name__}: {exc}); "
                             f"it may be truncated or not a model file") from exc
    for key in ("state_dict", "params_ema", "params", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path.name} does not contain a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def inspect(path: Path) -> tuple[Shapes, dict[str, str]]:
    """(name → shape, metadata) of any supported model file, reading as little as possible."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path.name} does not exist")
    if _is_safetensors(path):
        shapes, meta = safetensors_header(path)
        from nodes.quantize import nf4

        if nf4.is_bnb_4bit(shapes):  # bitsandbytes NF4/FP4 checkpoint: the shapes the weights decode to
            return nf4.logical_shapes(path, shapes), {**meta, "genesis.bnb_4bit": "1"}
        return shapes, meta
    if path.suffix.lower() == ".gguf":
        from nodes.quantize import gguf

        try:
            return gguf.inspect(path)  # logical shapes, llama.cpp T5 names normalized
        except gguf.GGUFError as exc:
            raise ModelFileError(str(exc)) from exc
    sd = _torch_load(path)
    return {k: tuple(v.shape) for k, v in sd.items()}, {}


def load(path: Path, select: Callable[[str], bool] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a model file on CPU (only the names ``select`` accepts, when given)."""
    path = Path(path)
    if _is_safetensors(path):
        safetensors_header(path)  # raises a clear error for truncated files first
        from safetensors import safe_open

        try:
            out = {}
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if select is None or select(name):
                        out[name] = f.get_tensor(name)
        except Exception as exc:  # noqa: BLE001 - safetensors raises SafetensorError/OSError/… for bad data
            raise ModelFileError(f"{path.name} could not be read ({exc}); it may be corrupt") from exc
        from nodes.quantize import nf4

        if nf4.is_bnb_4bit(out):  # decoded here; CheckpointLoaderNF4 quantizes the denoiser again
            try:
                return nf4.dequantize(out)
            except Exception as exc:  # noqa: BLE001 - bitsandbytes raises several kinds for bad states
                raise ModelFileError(f"{path.name}: a bitsandbytes 4-bit tensor could not be decoded ({exc})") from exc
        return out
    if path.suffix.lower() == ".gguf":  # dequantized: loaders that keep GGUF quantized use nodes.quantize.gguf
        from nodes.quantize import gguf

        try:
            return gguf.load_dequantized(path, select)
        except gguf.GGUFError as exc:
            raise ModelFileError(str(exc)) from exc
    sd = _torch_load(path)
    return {k: v for k, v in sd.items() if select is None or select(k)}


def dequantize_scaled_fp8(sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Undo ComfyUI's "fp8 scaled" storage (``X.weight`` in fp8 × ``X.scale_weight``) in place.

    Files such as ``t5xxl_fp8_e4m3fn_scaled.safetensors`` and ``*_fp8_scaled`` diffusion models
    store each linear weight in fp8 with a per-tensor (or per-row) scale; loaded as plain weights
    they would be silently wrong.  Marker and input-scale tensors are dropped.
    """
    scales = [k for k in sd if k.endswith(".scale_weight")]
    for key in scales:
        base = key[: -len(".scale_weight")]
        scale = sd.pop(key).to(torch.float32)
        w = sd.get(base + ".weight")
        if w is None:
            continue
        if scale.numel() > 1 and scale.ndim == 1 and w.ndim >= 2 and scale.shape[0] == w.shape[0]:
            scale = scale.reshape(-1, *([1] * (w.ndim - 1)))
        sd[base + ".weight"] = (w.to(torch.float32) * scale).to(dtype)
    for k in [k for k in sd if k == "scaled_fp8" or k.endswith(".scaled_fp8") or k.endswith(".scale_input")]:
        sd.pop(k)
    return sd


def strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def file_key(path: Path) -> tuple[str, int, int]:
    """Identity of a file's contents for caches: (resolved path, mtime_ns, size)."""
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
