"""Tensor operations behind the LATENT nodes: resizing (incl. bislerp), compositing, masks.

Semantics follow ComfyUI's nodes (sizes in pixels are divided by 8; ``feather`` fades the pasted
block's inner edges linearly), implemented independently.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use, so the node modules register without it
    import torch

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")


def _center_crop(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop (B, C, H, W) to the aspect ratio width:height around the centre."""
    h, w = x.shape[-2:]
    old, new = w / h, width / height
    if old > new:
        cw = round(w * new / old)
        x0 = (w - cw) // 2
        return x[..., :, x0:x0 + cw]
    if old < new:
        ch = round(h * old / new)
        y0 = (h - ch) // 2
        return x[..., y0:y0 + ch, :]
    return x


def _slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of channel vectors (dim 1), with linearly interpolated magnitude."""
    import torch
    na = a.norm(dim=1, keepdim=True)
    nb = b.norm(dim=1, keepdim=True)
    ua = a / na.clamp_min(1e-12)
    ub = b / nb.clamp_min(1e-12)
    dot = (ua * ub).sum(1, keepdim=True).clamp(-1.0, 1.0)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    safe = so.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / torch.where(safe, so, torch.ones_like(so)), 1 - t)
    wb = torch.where(safe, torch.sin(t * omega) / torch.where(safe, so, torch.ones_like(so)), t)
    direction = wa * ua + wb * ub
    return direction * (na * (1 - t) + nb * t)


def _slerp_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    import torch
    n = x.shape[dim]
    if n == size:
        return x
    pos = ((torch.arange(size, dtype=torch.float32) + 0.5) * n / size - 0.5).clamp(0, n - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp(max=n - 1)
    t = (pos - i0.float())
    a = x.index_select(dim, i0)
    b = x.index_select(dim, i1)
    shape = [1] * x.ndim
    shape[dim] = size
    return _slerp(a, b, t.view(shape).to(x.dtype))


def bislerp(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (B, C, H, W) with separable spherical interpolation between neighbouring latent vectors."""
    return _slerp_axis(_slerp_axis(x.float(), width, 3), height, 2).to(x.dtype)


def upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize latents to ``width``×``height`` latent pixels."""
    import torch.nn.functional as F
    if method not in UPSCALE_METHODS:
        raise ValueError(f"upscale_method '{method}' is not one of {', '.join(UPSCALE_METHODS)}")
    x = _center_crop(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        return bislerp(x, width, height)
    kwargs = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=(height, width), mode=method, **kwargs)


def latent_upscale_size(shape: torch.Size, width: int, height: int) -> tuple[int, int]:
    """LatentUpscale's pixel-size rule: 0 keeps the aspect ratio, and sides are at least 64 pixels."""
    h, w = shape[-2], shape[-1]
    if width == 0:
        height = max(64, height)
        width = max(64, round(w * height / h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(h * width / w))
    else:
        width, height = max(64, width), max(64, height)
    return width, height


def composite(to: torch.Tensor, src: torch.Tensor, x: int, y: int, feather: int) -> torch.Tensor:
    """Paste ``src`` into ``to`` at latent (x, y); ``feather`` latent pixels fade in at inner edges."""
    import torch
    out = to.clone()
    th, tw = to.shape[-2:]
    if x >= tw or y >= th:
        return out
    src = src[..., : th - y, : tw - x]
    sh, sw = src.shape[-2:]
    if src.shape[0] != out.shape[0]:
        src = src.repeat((out.shape[0] + src.shape[0] - 1) // src.shape[0], 1, 1, 1)[: out.shape[0]]
    if feather <= 0:
        out[..., y:y + sh, x:x + sw] = src
        return out
    mask = torch.ones(1, 1, sh, sw, dtype=to.dtype)
    for t in range(feather):
        f = (t + 1) / feather
        if y != 0:
            mask[..., t, :] *= f
        if y + sh < th:
            mask[..., sh - 1 - t, :] *= f
        if x != 0:
            mask[..., :, t] *= f
        if x + sw < tw:
            mask[..., :, sw - 1 - t] *= f
    region = out[..., y:y + sh, x:x + sw]
    out[..., y:y + sh, x:x + sw] = src * mask + region * (1 - mask)
    return out


def mask_to_noise_mask(mask: torch.Tensor) -> torch.Tensor:
    """MASK (B, H, W) or (H, W) → LATENT noise_mask (B, 1, H, W)."""
    return mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
