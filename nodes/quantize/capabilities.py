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
* fp8 *matmul* (``UNETLoader`` weight_dtype ``fp8_e4m3fn_fast``: the matrix products themselves in
  fp8, ``torch._scaled_mm``) needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper,
  Blackwell); torch 2.14 also has a CPU kernel.  Elsewhere it is refused (:func:`fp8_matmul_refusal`).

This module imports torch and the libraries lazily: listing the names costs nothing.
"""
from __future__ import annotations

import functools
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
    FP8_E4M3FN: "fp8 e4m3fn storage, computed in bf16/fp32 (1 byte per weight, every Linear and Conv layer)",
    FP8_E5M2: "fp8 e5m2 storage, computed in bf16/fp32 (1 byte per weight, every Linear and Conv layer)",
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


FP8_MATMUL_CUDA_CAPABILITY = (8, 9)


def _probe_scaled_mm(kind: str) -> str:
    """"" if ``torch._scaled_mm`` runs on a device of type ``kind`` (a 16×16 product), else why not."""
    import torch

    if not hasattr(torch, "_scaled_mm"):
        return f"torch {torch.__version__} has no fp8 matmul (torch._scaled_mm)"
    try:
        a = torch.ones(16, 16, device=kind).to(torch.float8_e4m3fn)
        one = torch.ones((), device=kind)
        torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        return f"torch._scaled_mm fails on {kind} ({str(exc).splitlines()[0][:160]})"
    return ""


@functools.lru_cache(maxsize=None)
def _probed(kind: str) -> str:
    return _probe_scaled_mm(kind)


def fp8_matmul_check(device: str | None = "auto", *, cuda_capability=None, probe=None) -> Capability:
    """Can ``device`` multiply in fp8 (``torch._scaled_mm``)?  ``cuda_capability``/``probe`` are for tests."""
    kind = device_type(device)
    method = "fp8_e4m3fn_fast"
    if kind == "cuda":
        import torch

        if cuda_capability is None:
            if not torch.cuda.is_available():
                return Capability(method, kind, False, "no CUDA device is available")
            index = int(str(device).split(":", 1)[1]) if ":" in str(device) else torch.cuda.current_device()
            cuda_capability = torch.cuda.get_device_capability(index)
        if tuple(cuda_capability) < FP8_MATMUL_CUDA_CAPABILITY:
            major, minor = FP8_MATMUL_CUDA_CAPABILITY
            return Capability(method, kind, False,
                              f"fp8 matmul needs a CUDA GPU of compute capability {major}.{minor} or newer (Ada, "
                              f"Hopper, Blackwell); this GPU is {cuda_capability[0]}.{cuda_capability[1]}")
    elif kind != "cpu":
        return Capability(method, kind, False, f"torch has no fp8 matmul kernels for device type {kind!r}")
    reason = (probe or _probed)(kind)  # the kernel itself is tried once per device type
    return Capability(method, kind, not reason, reason)


def fp8_matmul_refusal(device: str | None = "auto", **kw) -> str | None:
    """None if ``fp8_e4m3fn_fast`` can run on ``device``; else the reason and what to use instead."""
    cap = fp8_matmul_check(device, **kw)
    if cap.ok:
        return None
    return (f"fp8_e4m3fn_fast cannot run on {cap.device}: {cap.reason}. Use fp8_e4m3fn: the same fp8 weights, "
            "multiplied in the compute dtype")


def report(device: str | None = "auto") -> dict[str, dict[str, object]]:
    """{method: {"ok": bool, "reason": str, "description": str}} for a device (docs, system stats)."""
    return {m: {"ok": (c := check(m, device)).ok, "reason": c.reason, "description": DESCRIPTIONS[m]} for m in METHODS}
