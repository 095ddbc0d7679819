"""Which quantization methods exist, and which ones a device can run (and why not).

One list of method names serves every loader and node that quantizes — ``QuantizeModel``,
``QuantizeCLIP``, the VLM/LLM loaders' ``quantization`` combo — so a workflow means the same
thing everywhere, and validation refuses a method the device cannot run *before* the prompt is
queued, naming the reason and the methods that can run.

Facts behind the rules (bitsandbytes 0.50.2, diffusers 0.42.1, torch 2.14, measured on CPU; see
``shared/reference/offline-models.md`` §6 and ``vlm-llm-quantize.md`` §5):

* bitsandbytes ships CPU, CUDA, ROCm and XPU kernels (no MPS): NF4 and int8 ``Linear`` layers
  run on the CPU too.  diffusers' own ``BitsAndBytesConfig`` refuses CPUs, so diffusion models
  are quantized by replacing their ``nn.Linear`` layers (``nodes.quantize.methods``).
* fp8 *storage* (weights in float8, each layer upcast to the compute dtype when it runs: diffusers'
  layerwise casting) works on CPU and CUDA; MPS has no float8 dtype.
* int8 weight-only needs torchao (``Int8WeightOnlyConfig``), which runs on CPU and CUDA.

This module imports torch and the libraries lazily: listing the names costs nothing.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

NONE = "none"
BNB_NF4 = "bnb_nf4"
BNB_INT8 = "bnb_int8"
FP8_E4M3FN = "fp8_e4m3fn"
FP8_E5M2 = "fp8_e5m2"
INT8_WEIGHT_ONLY = "int8_weight_only"

METHODS: tuple[str, ...] = (NONE, BNB_NF4, BNB_INT8, FP8_E4M3FN, FP8_E5M2, INT8_WEIGHT_ONLY)
"""Every method name, ``none`` first (the default of a ``quantization`` combo)."""

QUANTIZE_METHODS: tuple[str, ...] = METHODS[1:]
"""The methods of ``QuantizeModel``/``QuantizeCLIP`` (``none`` would be a no-op node)."""

DESCRIPTIONS = {
    NONE: "full precision (the model's compute dtype)",
    BNB_NF4: "bitsandbytes 4-bit NormalFloat Linear layers (≈0.56 bytes per weight)",
    BNB_INT8: "bitsandbytes LLM.int8() Linear layers (1 byte per weight)",
    FP8_E4M3FN: "fp8 e4m3fn storage, computed in bf16/fp32 (1 byte per weight, all layers)",
    FP8_E5M2: "fp8 e5m2 storage, computed in bf16/fp32 (1 byte per weight, all layers)",
    INT8_WEIGHT_ONLY: "torchao int8 weight-only Linear layers (1 byte per weight)",
}

_LIBRARY = {BNB_NF4: "bitsandbytes", BNB_INT8: "bitsandbytes", INT8_WEIGHT_ONLY: "torchao"}
_PIP = {"bitsandbytes": "bitsandbytes==0.50.2", "torchao": "torchao==0.18.0"}


@dataclass(frozen=True)
class Capability:
    """Whether ``method`` runs on ``device``; ``reason`` says why not (empty when it does)."""

    method: str
    device: str
    ok: bool
    reason: str = ""


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def device_type(device: str | None) -> str:
    """"cuda:1" → "cuda"; "auto"/None → the default device of this machine (CUDA, MPS, CPU)."""
    if device in (None, "", "auto"):
        import torch

        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    return str(device).split(":", 1)[0]


def check(method: str, device: str | None = "auto", *, installed=_installed) -> Capability:
    """Can ``method`` run on ``device`` ("cpu", "cuda", "cuda:0", "mps", "auto") here?"""
    kind = device_type(device)
    if method not in METHODS:
        return Capability(method, kind, False, f"unknown quantization method {method!r}; known: {', '.join(METHODS)}")
    if method == NONE:
        return Capability(method, kind, True)
    library = _LIBRARY.get(method)
    if library is not None and not installed(library):
        return Capability(method, kind, False, f"{library} is not installed (pip install '{_PIP[library]}')")
    if kind not in ("cpu", "cuda", "mps", "xpu"):
        return Capability(method, kind, False, f"no quantized kernels for device type {kind!r}")
    if method in (BNB_NF4, BNB_INT8) and kind == "mps":
        return Capability(method, kind, False, "bitsandbytes has no kernels for Apple MPS")
    if method in (FP8_E4M3FN, FP8_E5M2) and kind == "mps":
        return Capability(method, kind, False, "MPS has no float8 dtype")
    if method == INT8_WEIGHT_ONLY and kind not in ("cpu", "cuda"):
        return Capability(method, kind, False, f"torchao int8 weight-only runs on CPU and CUDA, not {kind}")
    return Capability(method, kind, True)


def supported(device: str | None = "auto", *, installed=_installed) -> list[str]:
    """The methods that can run on ``device``, in :data:`METHODS` order."""
    return [m for m in METHODS if check(m, device, installed=installed).ok]


def refusal(method: str, device: str | None = "auto", *, installed=_installed) -> str | None:
    """None if ``method`` can run on ``device``; else a message with the reason and what can run.

    Meant for ``validate_inputs`` hooks: the message is shown to the user as is.
    """
    cap = check(method, device, installed=installed)
    if cap.ok:
        return None
    usable = [m for m in supported(device, installed=installed) if m != NONE]
    return (f"{method} cannot run on {cap.device}: {cap.reason}. Methods that can run here: "
            f"{', '.join(usable) if usable else 'none'}")


def report(device: str | None = "auto") -> dict[str, dict[str, object]]:
    """{method: {"ok": bool, "reason": str, "description": str}} for a device (docs, system stats)."""
    return {m: {"ok": (c := check(m, device)).ok, "reason": c.reason, "description": DESCRIPTIONS[m]} for m in METHODS}
