"""Weight patches applied around a sampling run: ModelMergeSimple merges and LoRA patches.

MODEL values are immutable handles that share one loaded denoiser (see types.py), so a patch
never changes the resident weights for good: :func:`patched_denoiser` applies the handle's merges
and LoRA patches in place for the duration of a run and restores the exact original tensors
afterwards — also when the run is interrupted or fails.

LoRA patches are applied by the loader pack's :func:`nodes.diffusion.lora.apply_patches` (it owns
the LoRA delta formats); merges are applied here, before the LoRA patches.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from nodes.diffusion.lora import apply_patches
from nodes.diffusion.types import DiffusionModel


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
    with _merged(module, model.merges), apply_patches(module, model.patches):
        yield module


@contextlib.contextmanager
def patched_denoiser(model: DiffusionModel, device: torch.device, dtype: torch.dtype) -> Iterator[torch.nn.Module]:
    """Move the denoiser to ``device``/``dtype`` and apply its merges and patches for one run.

    A quantized denoiser keeps its storage dtype (its layers compute in the right dtype
    themselves; bitsandbytes layers cannot be cast at all), and a block-offloaded one is placed
    layer by layer by its own hooks.
    """
    from nodes.devices import is_block_offloaded

    module = model.denoiser
    first = next(module.parameters(), None)
    if first is not None and not is_block_offloaded(module):
        if getattr(model, "quantization", "none") != "none":
            if first.device != device:
                module.to(device=device)
        elif first.device != device or first.dtype != dtype:
            module.to(device=device, dtype=dtype)
    with patched_weights(model) as m:
        yield m
