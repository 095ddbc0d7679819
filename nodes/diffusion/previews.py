"""Fast latent → RGB previews for progress events (no VAE decode).

A linear map from latent channels to RGB approximates the VAE well enough for a live preview and
costs one small matmul per step.  The coefficients are the widely published per-family
approximations (the same ones ComfyUI's "latent2rgb" preview uses); they apply to *model-space*
latents (after scaling/shift), i.e. the sampler's current x0 estimate.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from nodes.diffusion.types import ModelFamily

_SD15 = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))
_SDXL = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
_SDXL_BIAS = (0.1084, -0.0175, -0.0011)
_FLUX = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
)
_FLUX_BIAS = (-0.0329, -0.0718, -0.0851)

LATENT_RGB: dict[ModelFamily, tuple[tuple, tuple | None]] = {
    ModelFamily.SD15: (_SD15, None),
    ModelFamily.SDXL: (_SDXL, _SDXL_BIAS),
    ModelFamily.SDXL_REFINER: (_SDXL, _SDXL_BIAS),
    ModelFamily.FLUX_DEV: (_FLUX, _FLUX_BIAS),
    ModelFamily.FLUX_SCHNELL: (_FLUX, _FLUX_BIAS),
}

MAX_PREVIEW = 512  # longest side, pixels


def latent_to_rgb(latent: torch.Tensor, family: ModelFamily) -> np.ndarray:
    """(C, h, w) or (B, C, h, w) model-space latent → (h, w, 3) uint8 of the first image.

    Falls back to a grey-scale view of the channel mean when the channel count does not match the
    family's table (e.g. tiny test models).
    """
    x = latent[0] if latent.ndim == 4 else latent
    x = x.detach().float().cpu()
    factors, bias = LATENT_RGB.get(family, (None, None))
    if factors is not None and x.shape[0] == len(factors):
        rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(factors, dtype=torch.float32))
        if bias is not None:
            rgb = rgb + torch.tensor(bias, dtype=torch.float32)
        img = ((rgb + 1.0) / 2.0).clamp(0, 1)
    else:
        m = x.mean(0)
        m = (m - m.min()) / (m.max() - m.min() + 1e-8)
        img = m[..., None].expand(*m.shape, 3)
    return (img.numpy() * 255.0).round().astype(np.uint8)


def preview_image(latent: torch.Tensor, family: ModelFamily, upscale: int = 8) -> Image.Image:
    """A PIL preview, nearest-upscaled toward pixel size (bounded by MAX_PREVIEW)."""
    arr = latent_to_rgb(latent, family)
    img = Image.fromarray(arr)
    h, w = arr.shape[:2]
    f = max(1, min(upscale, MAX_PREVIEW // max(h, w, 1)))
    if f > 1:
        img = img.resize((w * f, h * f), Image.NEAREST)
    return img
