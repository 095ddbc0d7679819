"""The torch side of memory management: devices, precision per model, and the model manager's ops.

``graph_runtime.model_manager`` decides *what* lives where without importing torch; this module
tells it what a torch value weighs, where it is and how to move it (:class:`TorchModuleOps`), and
decides the dtype each kind of model runs in on each device (:func:`precision`).  Every node pack
that loads torch models (diffusion, ControlNet, upscalers, VLM/LLM) uses these, so one rule holds
everywhere.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- devices -----------------------------------------------------------------------------------

def resolve_device(option: str | None) -> torch.device:
    """RuntimeOptions.device → torch.device ("auto": CUDA, then MPS, else CPU)."""
    if option in ("", "auto", None):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    return torch.device(option)


def device_name(device: torch.device | str) -> str:
    """The manager's name of a device: "cpu", "cuda:0", "mps"."""
    d = torch.device(device)
    if d.type == "cuda":
        return f"cuda:{d.index if d.index is not None else torch.cuda.current_device() if torch.cuda.is_available() else 0}"
    return d.type


def supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return True  # macOS 14+; older systems fail at the first bf16 op with a clear torch error
    return True  # CPUs compute bf16 (slowly); we only pick it there when asked


# --- precision ---------------------------------------------------------------------------------

ROLES = ("denoiser", "text_encoder", "t5", "vae", "controlnet", "upscaler", "vlm")


def precision(role: str, device: torch.device, option: str | None = "auto", *, flux: bool = False) -> torch.dtype:
    """The dtype a model of ``role`` runs in on ``device``.

    An explicit ``--dtype`` (fp32/fp16/bf16) wins.  Under "auto": fp32 on the CPU (fast kernels,
    exact); bf16 on accelerators that support it; where bf16 is missing, fp16 — except the VAE
    and T5, which overflow in fp16 and stay in fp32.
    """
    if option in DTYPES:
        return DTYPES[option]
    if device.type == "cpu":
        return torch.float32
    if supports_bf16(device):
        return torch.bfloat16
    if role in ("vae", "t5"):
        return torch.float32
    return torch.float16


# --- sizes and moves ---------------------------------------------------------------------------

def tensor_bytes(t: Any) -> int:
    """Bytes a tensor really holds, quantized tensor subclasses (torchao, bitsandbytes) included."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if callable(flatten) and type(t) is not torch.Tensor and type(t) is not torch.nn.Parameter:
        try:
            names, _ = flatten()
            return sum(tensor_bytes(getattr(t, n)) for n in names)
        except Exception:  # pragma: no cover - exotic subclasses
            pass
    total = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)  # bitsandbytes Params4bit
    if state is not None:
        for name in ("absmax", "code"):
            inner = getattr(state, name, None)
            if isinstance(inner, torch.Tensor):
                total += inner.numel() * inner.element_size()
        nested = getattr(state, "state2", None)
        if nested is not None and isinstance(getattr(nested, "absmax", None), torch.Tensor):
            total += nested.absmax.numel() * nested.absmax.element_size()
    scb = getattr(t, "SCB", None)  # bitsandbytes Int8Params
    if isinstance(scb, torch.Tensor):
        total += scb.numel() * scb.element_size()
    return total


def torch_modules(value: Any) -> list[torch.nn.Module]:
    """The modules inside a loaded value: a module, a dict of them, a spandrel descriptor, a bundle."""
    if isinstance(value, torch.nn.Module):
        return [value]
    if isinstance(value, dict):
        return [m for v in value.values() for m in torch_modules(v)]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in torch_modules(v)]
    fn = getattr(value, "torch_modules", None)
    if callable(fn):
        return list(fn())
    inner = getattr(value, "model", None)  # spandrel ImageModelDescriptor
    if isinstance(inner, torch.nn.Module):
        return [inner]
    return []


def module_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """Bytes of the parameters and buffers of ``modules``, each tensor counted once (tied weights once;
    views into one storage — e.g. q/k/v split from a fused qkv — each with their own bytes)."""
    seen: set[int] = set()
    total = 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if t.device.type == "meta":
                continue
            try:
                ident = t.data_ptr() if type(t) in (torch.Tensor, torch.nn.Parameter) else id(t)
            except Exception:  # tensor subclasses without a plain storage
                ident = id(t)
            if ident in seen and ident != 0:
                continue
            seen.add(ident)
            total += tensor_bytes(t)
    return total


def _first_tensor(modules: Iterable[torch.nn.Module]) -> torch.Tensor | None:
    for m in modules:
        for p in m.parameters():
            return p
    return None


def is_block_offloaded(module: torch.nn.Module) -> bool:
    """True when diffusers group offloading or accelerate hooks stream this module's weights."""
    if getattr(module, "_diffusers_hook", None) is not None:
        registry = module._diffusers_hook
        hooks = getattr(registry, "hooks", {}) or {}
        if any("group_offloading" in str(name) for name in hooks):
            return True
    return getattr(module, "_hf_hook", None) is not None


class TorchModuleOps:
    """:class:`graph_runtime.model_manager.ModelOps` for torch modules (and values holding them)."""

    def size_bytes(self, value: Any) -> int:
        return module_bytes(torch_modules(value))

    def device_of(self, value: Any) -> str:
        t = _first_tensor(torch_modules(value))
        return "cpu" if t is None else device_name(t.device)

    def move(self, value: Any, device: str) -> None:
        target = torch.device(device)
        for m in torch_modules(value):
            if is_block_offloaded(m):
                continue  # its hooks place the weights layer by layer
            try:
                m.to(target, non_blocking=target.type == "cuda")
            except (TypeError, ValueError, RuntimeError) as exc:  # some quantized layouts cannot move
                log.warning("could not move %s to %s: %s", type(m).__name__, device, exc)
                continue
            if target.type == "cpu" and torch.cuda.is_available():
                pin(m)  # offloaded to RAM: page-locked, so the way back is a non-blocking copy
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    def stream(self, value: Any, device: str) -> bool:
        """Block offloading onto ``device`` for every module of ``value`` (False where unsupported)."""
        target = torch.device(device)
        modules = torch_modules(value)
        return bool(modules) and all(enable_block_offload(m, target) for m in modules)


TORCH_OPS = TorchModuleOps()


def pin(module: torch.nn.Module) -> None:
    """Page-lock a CPU module's weights (CUDA only; a failure just leaves them pageable)."""
    try:
        for p in module.parameters():
            if p.device.type == "cpu" and type(p.data) is torch.Tensor and not p.data.is_pinned():
                p.data = p.data.pin_memory()
    except RuntimeError:  # pragma: no cover - no CUDA driver, or no page-locked memory left
        log.debug("could not pin %s", type(module).__name__, exc_info=True)


def enable_block_offload(module: torch.nn.Module, device: torch.device) -> bool:
    """Stream ``module``'s weights from (pinned) CPU memory to ``device`` block by block (``--lowvram``).

    Uses diffusers' group offloading (CUDA streams, non-blocking copies) when the module supports
    it; returns False where it does not apply (CPU, or a model without the hook).
    """
    if device.type != "cuda":
        return False
    enable = getattr(module, "enable_group_offload", None)
    if callable(enable):
        enable(onload_device=device, offload_device=torch.device("cpu"), offload_type="block_level",
               num_blocks_per_group=1, use_stream=True)
        return True
    try:
        from accelerate import cpu_offload

        cpu_offload(module, execution_device=device)
        return True
    except Exception:  # pragma: no cover - depends on the model class
        log.warning("block offloading is not available for %s", type(module).__name__, exc_info=True)
        return False


# --- working memory -------------------------------------------------------------------------------

# Activation bytes per latent pixel per batch row, in fp32, while a denoiser runs (feature maps kept for
# skip connections, attention with PyTorch's memory-efficient SDPA, MLP expansions).  A heuristic in the
# spirit of ComfyUI's per-model memory factors, on the safe side: the manager reserves it before the
# sampler runs, so evicting a model beforehand is cheaper than an out-of-memory retry.
WORKING_BYTES_PER_LATENT_PIXEL = {"sd15": 48 << 10, "sdxl": 64 << 10, "sdxl_refiner": 64 << 10,
                                  "flux_dev": 96 << 10, "flux_schnell": 96 << 10}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def sampler_working_memory(model: Any, inputs: dict) -> tuple[str, int] | None:
    """(device, bytes) a sampler node needs besides the weights, from the latent among its inputs."""
    latent = next((v for v in inputs.values() if isinstance(v, dict) and isinstance(v.get("samples"), torch.Tensor)),
                  None)
    handle = getattr(model, "weights", None)
    device = getattr(handle, "wanted_device", None)
    if latent is None or device is None:
        return None
    b, _c, h, w = (list(latent["samples"].shape) + [1, 1, 1, 1])[:4]
    per_pixel = WORKING_BYTES_PER_LATENT_PIXEL.get(getattr(model.family, "value", ""), 64 << 10)
    scale = _DTYPE_BYTES.get(getattr(handle, "dtype", None) or "float32", 4) / 4
    return device, int(2 * b * h * w * per_pixel * scale)  # ×2: the CFG batch
