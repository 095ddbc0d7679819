"""Reading bitsandbytes-quantized safetensors checkpoints (Forge's ``flux1-dev-bnb-nf4``, ComfyUI_bitsandbytes_NF4).

Layout: a quantized weight ``W`` is stored as its packed 4-bit data (uint8, shape ``(n/2, 1)``) plus
bitsandbytes' serialized quant state under ``W.absmax``, ``W.quant_map``, ``W.nested_absmax``,
``W.nested_quant_map`` and ``W.quant_state.bitsandbytes__nf4`` (or ``__fp4``: a JSON blob with the
logical shape, dtype and block size) — exactly what ``Params4bit`` writes.  Everything else (text
encoders, VAE, norms, biases) is plain.

:func:`logical_shapes` turns such a header into the shapes the model would have unquantized, so
detection works unchanged; :func:`dequantize` rebuilds ``QuantState`` objects and returns plain
tensors, so the usual builders and key conversions work; CheckpointLoaderNF4 then quantizes the
denoiser's Linear layers to NF4 again (identical codes: each block's absmax element maps to ±1).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch

STATE_SUFFIXES = (".quant_state.bitsandbytes__nf4", ".quant_state.bitsandbytes__fp4")
AUX_SUFFIXES = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map") + STATE_SUFFIXES


def quantized_weights(keys: Iterable[str]) -> dict[str, str]:
    """{weight name: its quant-state key} for every bitsandbytes-4bit weight in a key list."""
    out = {}
    for k in keys:
        for suffix in STATE_SUFFIXES:
            if k.endswith(suffix):
                out[k[: -len(suffix)]] = k
    return out


def _state_json(tensor: torch.Tensor) -> dict:
    return json.loads(bytes(tensor.to(torch.uint8).tolist()).decode("utf-8"))


def logical_shapes(path: Path, shapes: dict[str, tuple]) -> dict[str, tuple]:
    """Header shapes with each 4-bit weight's logical shape and without its quant-state entries."""
    from safetensors import safe_open

    weights = quantized_weights(shapes)
    if not weights:
        return shapes
    out = {k: v for k, v in shapes.items() if not any(k.startswith(w + ".") for w in weights)}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        for weight, state_key in weights.items():
            out[weight] = tuple(_state_json(f.get_tensor(state_key))["shape"])
    return out


def dequantize(sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Plain tensors for a state dict holding bitsandbytes-4bit weights (others pass through)."""
    weights = quantized_weights(sd)
    if not weights:
        return sd
    import bitsandbytes.functional as F

    out = {k: v for k, v in sd.items() if not any(k.startswith(w + ".") for w in weights) and k not in weights}
    for weight in weights:
        stats = {k[len(weight) + 1:]: v for k, v in sd.items() if k.startswith(weight + ".")}
        state = F.QuantState.from_dict(stats, device=torch.device("cpu"))
        out[weight] = F.dequantize_4bit(sd[weight], state).to(dtype)
    return out


def is_bnb_4bit(keys: Iterable[str]) -> bool:
    return bool(quantized_weights(keys))
