"""The ControlHook the Apply ControlNet nodes put into CONDITIONING: ControlNet residuals per step.

The sampler calls :meth:`ControlNetHook.residuals` once per denoiser call with the denoiser's own
inputs (see :class:`nodes.diffusion.types.ControlHook`).  The hook

* runs only inside its ``start_percent``..``end_percent`` window (ComfyUI's timestep range) and
  not at all at strength 0;
* prepares the hint once per latent size — the control image center-cropped to the latent's
  aspect ratio and resized (nearest-exact, as ComfyUI) to latent × 8 pixels, repeated over the
  batch — as the ControlNet wants it: 0..1 pixels (SD), -1..1 pixels (XLabs FLUX) or the packed,
  normalised VAE latent (InstantX/diffusers FLUX, which is why those need a VAE);
* calls the diffusers ControlNet with ``conditioning_scale=strength`` — the same arithmetic as the
  diffusers ControlNet pipelines, so one ControlNet reproduces them exactly;
* adds the residuals of the hook it was stacked on (``previous``), previous first, the order
  diffusers' Multi-ControlNet sums in.

A ControlNet made for another model family is refused here with a clear message, because only
the sampler knows which model the conditioning meets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from nodes.diffusion.controlnet import ControlNet, mismatch_message
from nodes.diffusion.types import ControlHook, ModelFamily, VaeModel

PIXELS_PER_LATENT = 8  # latent × 8 = hint size (every supported VAE downsamples by 8)
DEFAULT_FLUX_GUIDANCE = 3.5  # a guidance-embedding ControlNet on a model that has none (schnell)


class ControlNetApplyError(ValueError):
    """A ControlNet that cannot act on this model/conditioning (the sampler reports it on the node)."""


def image_to_hint(image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) 0..1 → hint (B, 3, H, W) float32 on the CPU."""
    if image.ndim == 3:
        image = image[None]
    x = image[..., :3].float().cpu()
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    return x.movedim(-1, 1).contiguous()


def fit_hint(hint: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Center-crop ``hint`` (B, C, H, W) to the target aspect ratio, then resize nearest-exact."""
    h, w = hint.shape[-2:]
    if (h, w) == (height, width):
        return hint
    target = width / height
    if w / h > target:  # too wide: crop the sides
        nw = max(1, round(h * target))
        x0 = (w - nw) // 2
        hint = hint[..., :, x0:x0 + nw]
    elif w / h < target:  # too tall: crop top and bottom
        nh = max(1, round(w / target))
        y0 = (h - nh) // 2
        hint = hint[..., y0:y0 + nh, :]
    return F.interpolate(hint, size=(height, width), mode="nearest-exact")


def batch_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a batch to ``n`` rows ([a, b] → [a, b, a, b] for the uncond/cond halves)."""
    b = x.shape[0]
    if b == n:
        return x
    reps = math.ceil(n / b)
    return x.repeat(reps, *([1] * (x.ndim - 1)))[:n]


def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    p = next(module.parameters(), None)
    if p is not None and (p.device != device or p.dtype != dtype):
        module.to(device=device, dtype=dtype)


def _add(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, torch.Tensor):
        return a + b
    if len(a) != len(b):
        raise ControlNetApplyError("these stacked ControlNets feed different numbers of blocks and cannot be "
                                   "combined (stack ControlNets of the same kind)")
    return type(a)(_add(x, y) for x, y in zip(a, b))


def combine(prev: dict | None, own: dict | None) -> dict | None:
    """Sum two residual dicts (previous hook first)."""
    if not prev:
        return own
    if not own:
        return prev
    if prev.get("controlnet_blocks_repeat", False) != own.get("controlnet_blocks_repeat", False):
        raise ControlNetApplyError("an XLabs FLUX ControlNet cannot be stacked with an InstantX/diffusers one "
                                   "(their residuals address the transformer blocks differently)")
    out = dict(prev)
    for key, value in own.items():
        out[key] = value if key == "controlnet_blocks_repeat" else _add(prev.get(key), value)
    return out


@dataclass(eq=False)
class ControlNetHook(ControlHook):
    """One ControlNet application (see the module docstring); shared by positive and negative."""

    control: ControlNet
    hint: torch.Tensor                      # (B, 3, H, W) float32 0..1 on the CPU
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    vae: VaeModel | None = None
    previous: ControlHook | None = None
    _hints: dict = field(default_factory=dict, repr=False)

    def model_handles(self) -> tuple:
        """The ControlNet's, the VAE's and the previous hooks' model handles (needed while sampling)."""
        from graph_runtime.model_manager import model_handles_in

        return tuple(model_handles_in([self.control, self.vae, self.previous]))

    def active(self, percent: float) -> bool:
        return self.strength != 0 and self.start_percent - 1e-9 <= percent <= self.end_percent + 1e-9

    # -- hints ----------------------------------------------------------------------------
    def _pixel_hint(self, height: int, width: int, n: int, device: torch.device, dtype: torch.dtype,
                    signed: bool) -> torch.Tensor:
        key = ("pixels", height, width, n, str(device), dtype, signed)
        if key not in self._hints:
            x = batch_to(fit_hint(self.hint, height, width), n).to(device=device, dtype=dtype)
            self._hints[key] = x * 2.0 - 1.0 if signed else x
        return self._hints[key]

    def _latent_hint(self, lat_h: int, lat_w: int, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = ("latent", lat_h, lat_w, n, str(device), dtype)
        if key not in self._hints:
            if self.vae is None:
                raise ControlNetApplyError(
                    f"{self.control.name} (an InstantX/diffusers-style FLUX ControlNet) works on the VAE latent of "
                    "the control image: connect a VAE to the vae input of Apply ControlNet")
            from nodes.diffusion import vae_ops
            from nodes.diffusion.guidance import pack_latents

            f = self.vae.downscale
            pixels = fit_hint(self.hint, lat_h * f, lat_w * f).movedim(1, -1)
            raw = vae_ops.encode(self.vae, pixels)
            if raw.shape[-2:] != (lat_h, lat_w):
                raise ControlNetApplyError(f"the VAE gives {raw.shape[-1]}×{raw.shape[-2]} latents for the control "
                                           f"image, but the sampled latent is {lat_w}×{lat_h}; use the model's VAE")
            lat = (raw - self.vae.shift_factor) * self.vae.scaling_factor
            self._hints[key] = batch_to(pack_latents(lat), n).to(device=device, dtype=dtype)
        return self._hints[key]

    # -- residuals ------------------------------------------------------------------------
    def residuals(self, *, family: ModelFamily, sample: torch.Tensor, timestep: torch.Tensor,
                  encoder_hidden_states: torch.Tensor, percent: float, added_cond_kwargs: dict | None = None,
                  flux_kwargs: dict | None = None) -> dict | None:
        prev = None
        if self.previous is not None:
            prev = self.previous.residuals(family=family, sample=sample, timestep=timestep,
                                           encoder_hidden_states=encoder_hidden_states, percent=percent,
                                           added_cond_kwargs=added_cond_kwargs, flux_kwargs=flux_kwargs)
        own = None
        if self.active(percent):
            if not self.control.fits(family):
                raise ControlNetApplyError(mismatch_message(self.control, family))
            if self.control.kind == "flux":
                own = self._flux(sample, timestep, encoder_hidden_states, flux_kwargs or {})
            else:
                own = self._unet(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        return combine(prev, own)

    def _unet(self, sample: torch.Tensor, timestep: torch.Tensor, ehs: torch.Tensor,
              added_cond_kwargs: dict | None) -> dict:
        cn = self.control.module
        want = int(cn.config.cross_attention_dim)
        if ehs.shape[-1] != want:
            raise ControlNetApplyError(f"{self.control.name} expects text embeddings {want} wide, but the "
                                       f"conditioning is {ehs.shape[-1]} wide: it was made for another model size")
        _place(cn, sample.device, sample.dtype)
        n, _, h, w = sample.shape
        hint = self._pixel_hint(h * PIXELS_PER_LATENT, w * PIXELS_PER_LATENT, n, sample.device, sample.dtype, False)
        down, mid = cn(sample, timestep, encoder_hidden_states=ehs, controlnet_cond=hint,
                       conditioning_scale=float(self.strength), added_cond_kwargs=added_cond_kwargs,
                       return_dict=False)
        return {"down_block_additional_residuals": tuple(down), "mid_block_additional_residual": mid}

    def _flux(self, sample: torch.Tensor, timestep: torch.Tensor, ehs: torch.Tensor, kw: dict) -> dict:
        cn = self.control.module
        cfg = cn.config
        if sample.shape[-1] != cfg.in_channels:
            raise ControlNetApplyError(f"{self.control.name} expects {cfg.in_channels}-wide latent tokens, but the "
                                       f"model's are {sample.shape[-1]} wide: it was made for another model")
        _place(cn, sample.device, sample.dtype)
        n = sample.shape[0]
        img_ids = kw["img_ids"]
        lat_h = 2 * (int(img_ids[:, 1].max().item()) + 1)
        lat_w = 2 * (int(img_ids[:, 2].max().item()) + 1)
        if self.control.hint_space == "latent":
            cond = self._latent_hint(lat_h, lat_w, n, sample.device, sample.dtype)
        else:
            cond = self._pixel_hint(lat_h * PIXELS_PER_LATENT, lat_w * PIXELS_PER_LATENT, n, sample.device,
                                    sample.dtype, True)
        guidance = None
        if cfg.guidance_embeds:
            guidance = kw.get("guidance")
            if guidance is None:
                guidance = torch.full((n,), DEFAULT_FLUX_GUIDANCE, device=sample.device, dtype=torch.float32)
        mode = None
        if self.control.union_mode is not None:
            mode = torch.full((n, 1), int(self.control.union_mode), device=sample.device, dtype=torch.long)
        blocks, singles = cn(hidden_states=sample, controlnet_cond=cond, controlnet_mode=mode,
                             conditioning_scale=float(self.strength), encoder_hidden_states=ehs,
                             pooled_projections=kw.get("pooled_projections"), timestep=timestep,
                             img_ids=img_ids, txt_ids=kw.get("txt_ids"), guidance=guidance, return_dict=False)
        out: dict[str, Any] = {"controlnet_block_samples": blocks, "controlnet_single_block_samples": singles}
        if self.control.blocks_repeat:
            out["controlnet_blocks_repeat"] = True
        return out
