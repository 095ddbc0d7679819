"""Loader options as plain data (no torch import: node declarations read these at start-up)."""
from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("auto", "bf16", "fp16", "fp32")
ATTENTIONS = ("auto", "sdpa", "eager")
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class LoadOptions:
    quantization: str = "none"
    dtype: str = "auto"
    attention: str = "auto"
    device: str = "auto"
