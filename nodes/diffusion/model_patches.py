"""Weight patches applied around a sampling run: ModelMergeSimple merges and LoRA patches.

MODEL values are immutable handles that share one loaded denoiser (see types.py), so a patch
never changes the resident weights for good: :func:`patched_denoiser` applies the handle's merges
and LoRA patches in place for the duration of a run and restores the exact original tensors
afterwards — also when the run is interrupted or fails.

LoRA patches are applied by the loader pack's ``nodes.diffusion.lora.apply_patches`` when that
module is present (it owns the LoRA key formats); otherwise by :func:`apply_weight_patches`, which
understands the two delta forms types.WeightPatch documents: ``(up, down, alpha)`` low-rank
factors and full tensors.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, Sequence

import torch

from nodes.diffusion.types import DiffusionModel, WeightPatch

log = logging.getLogger(__name__)


def _lora_delta(spec: Any, shape: torch.Size) -> torch.Tensor:
    if isinstance(spec, torch.Tensor):
        return spec.reshape(shape)
    up, down, alpha = spec
    rank = down.shape[0]
    scale = (float(alpha) / rank) if alpha is not None else 1.0
    delta = up.reshape(up.shape[0], -1).float() @ down.reshape(rank, -1).float()
    return (delta * scale).reshape(shape)


@contextlib.contextmanager
def apply_weight_patches(module: torch.nn.Module, patches: Sequence[WeightPatch]) -> Iterator[torch.nn.Module]:
    """Add each patch's deltas × strength to ``module``'s parameters; restore the originals on exit."""
    if not patches:
        yield module
        return
    params = dict(module.named_parameters())
    saved: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for patch in patches:
                for name, spec in patch.deltas.items():
                    p = params.get(name)
                    if p is None:
                        log.warning("patch %s: no parameter %s in %s", patch.name, name, type(module).__name__)
                        continue
                    if name not in saved:
                        saved[name] = p.detach().clone()
                    delta = _lora_delta(spec, p.shape).to(device=p.device, dtype=torch.float32)
                    p.copy_((p.float() + patch.strength * delta).to(p.dtype))
        yield module
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)


def _lora_context(module: torch.nn.Module, patches: Sequence[WeightPatch]):
    try:
        from nodes.diffusion.lora import apply_patches  # the loader pack's implementation
    except ImportError:
        return apply_weight_patches(module, patches)
    return apply_patches(module, patches)


@contextlib.contextmanager
def _merged(module: torch.nn.Module, merges: Sequence[tuple[DiffusionModel, float]]) -> Iterator[None]:
    """ModelMergeSimple at use time: w = ratio·w + (1 - ratio)·w_other, restored on exit."""
    if not merges:
        yield
        return
    params = dict(module.named_parameters())
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        for other, ratio in merges:
            # Snapshot the other model's effective weights first: it may share this very module
            # (same checkpoint, different LoRA), whose patches are undone when its context exits.
            with patched_weights(other) as other_module:
                snapshot = {n: q.detach().to(dtype=torch.float32, copy=True)
                            for n, q in other_module.named_parameters() if n in params}
            with torch.no_grad():
                for name, p in params.items():
                    q = snapshot.get(name)
                    if q is None or q.shape != p.shape:
                        continue
                    p.copy_((p.float() * ratio + q.to(p.device) * (1.0 - ratio)).to(p.dtype))
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)


@contextlib.contextmanager
def patched_weights(model: DiffusionModel) -> Iterator[torch.nn.Module]:
    """The model's denoiser with its merges, then its LoRA patches, applied (restored on exit)."""
    module = model.denoiser
    with _merged(module, model.merges), _lora_context(module, model.patches):
        yield module


@contextlib.contextmanager
def patched_denoiser(model: DiffusionModel, device: torch.device, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """Move the denoiser to ``device``/``dtype`` and apply its merges and patches for one run."""
    module = model.denoiser
    first = next(module.parameters(), None)
    if first is not None and (first.device != device or first.dtype != dtype):
        module.to(device=device, dtype=dtype)
    with patched_weights(model) as m:
        yield m
