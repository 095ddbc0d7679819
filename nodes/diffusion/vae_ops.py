"""VAE encode/decode between IMAGE (B×H×W×C, 0..1) and raw LATENT tensors.

Both run on whatever device/dtype the VAE module already lives on (the loader chose it), and
hand back CPU float32 so downstream nodes never see device tensors.  Encoding takes the
posterior's *mode*, so a VAEEncode node is deterministic and cacheable (it has no seed input).
Decoding uses the same arithmetic as the diffusers pipelines' postprocessing,
``(decode(z) / 2 + 0.5).clamp(0, 1)``, which keeps pipeline parity exact.
"""
from __future__ import annotations

import math

import torch

from nodes.diffusion.types import VaeModel


def _module_place(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


def crop_to_multiple(pixels: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Center-crop an IMAGE (B, H, W, C) so H and W are multiples of ``multiple``; returns the offsets."""
    h, w = pixels.shape[1], pixels.shape[2]
    nh, nw = (h // multiple) * multiple, (w // multiple) * multiple
    if nh == 0 or nw == 0:
        raise ValueError(f"image {w}×{h} is smaller than the VAE's {multiple}-pixel block")
    oy, ox = (h % multiple) // 2, (w % multiple) // 2
    return pixels[:, oy:oy + nh, ox:ox + nw, :], (oy, ox)


@torch.no_grad()
def encode(vae: VaeModel, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, 3) 0..1 → raw latent (B, C, H/f, W/f) on CPU, float32."""
    device, dtype = _module_place(vae.vae)
    pixels, _ = crop_to_multiple(pixels[..., :3], vae.downscale)
    x = pixels.permute(0, 3, 1, 2).to(device=device, dtype=dtype) * 2.0 - 1.0
    dist = vae.vae.encode(x).latent_dist
    # contiguous: the posterior mean is a strided (channels-last) view, and layouts propagate through
    # every later op into convolution kernel choices (1e-6 drift)
    return dist.mode().float().cpu().contiguous()


@torch.no_grad()
def decode(vae: VaeModel, latent: torch.Tensor) -> torch.Tensor:
    """Raw latent (B, C, h, w) → IMAGE (B, H, W, 3) float32 0..1 on CPU."""
    device, dtype = _module_place(vae.vae)
    image = vae.vae.decode(latent.to(device=device, dtype=dtype), return_dict=False)[0]
    image = (image / 2 + 0.5).clamp(0, 1)
    return image.permute(0, 2, 3, 1).float().cpu()


def grow_mask(mask: torch.Tensor, grow_by: int) -> torch.Tensor:
    """Dilate a (B, 1, H, W) mask by a ``grow_by``-pixel box (binary), as ComfyUI's inpaint encode does."""
    if grow_by <= 0:
        return mask
    kernel = torch.ones((1, 1, grow_by, grow_by), dtype=mask.dtype)
    pad = math.ceil((grow_by - 1) / 2)
    return torch.clamp(torch.nn.functional.conv2d(mask.round(), kernel, padding=pad), 0, 1)


@torch.no_grad()
def encode_for_inpaint(vae: VaeModel, pixels: torch.Tensor, mask: torch.Tensor, grow_by: int) -> dict:
    """VAEEncodeForInpaint: masked pixels are set to 0.5 grey before encoding; the grown mask
    becomes the LATENT's ``noise_mask`` (at pixel resolution, binary)."""
    h, w = pixels.shape[1], pixels.shape[2]
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = torch.nn.functional.interpolate(m, size=(h, w), mode="bilinear")
    pixels, (oy, ox) = crop_to_multiple(pixels[..., :3].clone(), vae.downscale)
    nh, nw = pixels.shape[1], pixels.shape[2]
    m = m[:, :, oy:oy + nh, ox:ox + nw]
    keep = (1.0 - m.round()).squeeze(1)[..., None]  # (B, H, W, 1): 1 where the image is kept
    pixels = (pixels - 0.5) * keep + 0.5
    samples = encode(vae, pixels)
    noise_mask = grow_mask(m, grow_by)[:, :, :nh, :nw].round()
    return {"samples": samples, "noise_mask": noise_mask}
