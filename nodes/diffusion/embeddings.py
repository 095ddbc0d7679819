"""Textual-inversion embeddings (``embedding:name`` in prompts), found in ``models/embeddings``.

Formats: A1111/kohya safetensors (``emb_params`` for SD1.x; ``clip_l`` + ``clip_g`` for SDXL) and
A1111 ``.pt`` files (``string_to_param: {"*": tensor}``).  The result maps an encoder kind — or
``"*"`` for "whichever encoder has this width" — to an ``(n_vectors, width)`` tensor.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Mapping

import torch

from nodes.diffusion import model_files

log = logging.getLogger(__name__)

EXTENSIONS = ("", ".safetensors", ".pt", ".bin", ".pth")


def find_embedding(name: str, find: Callable[[str], Path | None]) -> Path | None:
    """The file for ``name`` (with or without extension) using ``find(relative_name)``."""
    for ext in EXTENSIONS:
        path = find(name + ext)
        if path is not None and path.is_file():
            return path
    return None


def read_embedding(path: Path) -> dict[str, torch.Tensor]:
    """``{kind or "*": (n, width) tensor}`` of one embedding file."""
    if path.suffix.lower() in (".pt", ".bin", ".pth"):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and "string_to_param" in obj:
            params = obj["string_to_param"]
            return {"*": next(iter(params.values())).detach().float()}
        if isinstance(obj, Mapping):
            sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        elif isinstance(obj, torch.Tensor):
            sd = {"*": obj}
        else:
            raise model_files.ModelFileError(f"{path.name} is not a textual-inversion embedding")
    else:
        sd = model_files.load(path)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        key = k if k in ("clip_l", "clip_g", "t5xxl") else "*"
        out[key] = v.detach().float().reshape(-1, v.shape[-1])
    return out
