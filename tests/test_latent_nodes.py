"""LATENT nodes: shapes, resizing, compositing, masks, VAE encode/decode, previews."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from graph_runtime.context import NodeError
from nodes.diffusion import latent_ops
from nodes.diffusion.previews import LATENT_RGB, latent_to_rgb, preview_image
from nodes.diffusion.types import ModelFamily
from nodes.latent import (EmptyLatentImage, EmptySD3LatentImage, LatentComposite, LatentUpscale, LatentUpscaleBy,
                          SetLatentNoiseMask, VAEDecode, VAEEncode, VAEEncodeForInpaint)
from tests import sampling_fixtures as fx


@pytest.fixture
def ctx(tmp_path):
    return fx.make_ctx(tmp_path, class_type="latent")


def _ramp(c=4, h=8, w=8):
    return torch.arange(c * h * w, dtype=torch.float32).reshape(1, c, h, w) / (c * h * w)


def test_empty_latents(ctx):
    lat = EmptyLatentImage().execute(ctx, width=64, height=64, batch_size=1)[0]
    assert lat["samples"].shape == (1, 4, 8, 8) and not lat["samples"].any()
    assert EmptyLatentImage().execute(ctx, width=512, height=768, batch_size=3)[0]["samples"].shape == (3, 4, 96, 64)
    sd3 = EmptySD3LatentImage().execute(ctx, width=64, height=128, batch_size=2)[0]["samples"]
    assert sd3.shape == (2, 16, 16, 8) and not sd3.any()
    spec = {s.name: s for s in EmptyLatentImage.INPUTS}
    assert (spec["width"].default, spec["width"].min, spec["width"].step) == (512, 16, 8)
    assert {s.name: s for s in EmptySD3LatentImage.INPUTS}["width"].step == 16


@pytest.mark.parametrize("method", latent_ops.UPSCALE_METHODS)
def test_latent_upscale_sizes_and_constant_fields(ctx, method):
    src = {"samples": _ramp(), "noise_mask": torch.ones(1, 1, 64, 64)}
    out = LatentUpscale().execute(ctx, samples=src, upscale_method=method, width=128, height=96, crop="disabled")[0]
    assert out["samples"].shape == (1, 4, 12, 16)
    assert out["noise_mask"] is src["noise_mask"] and src["samples"].shape == (1, 4, 8, 8)
    const = {"samples": torch.ones(1, 4, 8, 8) * torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1)}
    up = LatentUpscaleBy().execute(ctx, samples=const, upscale_method=method, scale_by=1.5)[0]["samples"]
    assert up.shape == (1, 4, 12, 12)
    assert torch.allclose(up, const["samples"][..., :1, :1].expand_as(up), atol=1e-5)


def test_latent_upscale_aspect_rules_and_crop(ctx):
    src = {"samples": _ramp(h=8, w=16)}
    keep = LatentUpscale().execute(ctx, samples=src, upscale_method="bilinear", width=0, height=128, crop="disabled")[0]
    assert keep["samples"].shape == (1, 4, 16, 32)
    small = LatentUpscale().execute(ctx, samples=src, upscale_method="bilinear", width=16, height=16, crop="disabled")[0]
    assert small["samples"].shape == (1, 4, 8, 8)  # sides are at least 64 pixels
    assert LatentUpscale().execute(ctx, samples=src, upscale_method="area", width=0, height=0, crop="disabled")[0] is src
    cropped = LatentUpscale().execute(ctx, samples=src, upscale_method="nearest-exact", width=64, height=64,
                                      crop="center")[0]["samples"]
    assert torch.equal(cropped, src["samples"][..., :, 4:12])  # the centre 8×8 of a 8×16 latent


def test_bislerp_differs_from_bilinear_between_opposite_vectors():
    a = torch.tensor([1.0, 0.0, 0.0, 0.0])
    b = torch.tensor([0.0, 1.0, 0.0, 0.0])
    x = torch.stack([a, b], -1).view(1, 4, 1, 2)
    mid = latent_ops.bislerp(x, 4, 1)
    lin = torch.nn.functional.interpolate(x, size=(1, 4), mode="bilinear", align_corners=False)
    # slerp keeps unit length between unit vectors; linear interpolation shrinks it
    assert torch.allclose(mid.norm(dim=1), torch.ones(1, 1, 4), atol=1e-5)
    assert lin.norm(dim=1)[0, 0, 1:3].max() < 0.9


def test_latent_composite(ctx):
    to = {"samples": torch.zeros(1, 4, 8, 8), "batch_index": [0]}
    frm = {"samples": torch.ones(1, 4, 4, 4)}
    out = LatentComposite().execute(ctx, samples_to=to, samples_from=frm, x=16, y=8, feather=0)[0]
    s = out["samples"]
    assert torch.equal(s[..., 1:5, 2:6], torch.ones(1, 4, 4, 4))
    assert s.sum() == 64 and out["batch_index"] == [0] and not to["samples"].any()
    edge = LatentComposite().execute(ctx, samples_to=to, samples_from={"samples": torch.ones(1, 4, 8, 8)}, x=48, y=48,
                                     feather=0)[0]["samples"]
    assert edge[..., 6:, 6:].eq(1).all() and edge.sum() == 16  # clipped at the border
    feathered = LatentComposite().execute(ctx, samples_to=to, samples_from=frm, x=16, y=16, feather=16)[0]["samples"]
    block = feathered[0, 0, 2:6, 2:6]
    assert block[0, 0] == pytest.approx(0.25) and block[1, 1] == pytest.approx(1.0) and block[0, 1] == pytest.approx(0.5)


def test_set_latent_noise_mask(ctx):
    src = {"samples": torch.zeros(2, 4, 8, 8)}
    out = SetLatentNoiseMask().execute(ctx, samples=src, mask=torch.ones(64, 64))[0]
    assert out["noise_mask"].shape == (1, 1, 64, 64) and "noise_mask" not in src
    out = SetLatentNoiseMask().execute(ctx, samples=src, mask=torch.ones(2, 64, 64))[0]
    assert out["noise_mask"].shape == (2, 1, 64, 64)


def _image(seed=0, h=64, w=64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, h, w, 3, generator=g)


def test_vae_encode_decode(ctx):
    tiny = fx.sd15()
    img = _image()
    lat = VAEEncode().execute(ctx, pixels=img, vae=tiny.vae)[0]
    assert lat["samples"].shape == (1, 4, 8, 8) and lat["samples"].is_contiguous()
    with torch.no_grad():
        ref = tiny.vae.vae.encode(img.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert torch.equal(lat["samples"], ref)  # the posterior mode: deterministic
    assert torch.equal(VAEEncode().execute(ctx, pixels=img, vae=tiny.vae)[0]["samples"], lat["samples"])
    out = VAEDecode().execute(ctx, samples=lat, vae=tiny.vae)[0]
    assert out.shape == (1, 64, 64, 3) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert ctx.info["device"] == "cpu"
    odd = VAEEncode().execute(ctx, pixels=_image(h=70, w=75), vae=tiny.vae)[0]["samples"]
    assert odd.shape == (1, 4, 8, 9)  # centre-cropped to multiples of 8
    with pytest.raises(NodeError, match="16 channels"):
        VAEDecode().execute(ctx, samples={"samples": torch.zeros(1, 16, 8, 8)}, vae=tiny.vae)


def test_vae_encode_for_inpaint(ctx):
    tiny = fx.sd15()
    img = _image(1)
    mask = torch.zeros(1, 64, 64)
    mask[:, 20:30, 40:44] = 1.0
    out = VAEEncodeForInpaint().execute(ctx, pixels=img, vae=tiny.vae, mask=mask, grow_mask_by=6)[0]
    grey = img.clone()
    grey[:, 20:30, 40:44, :] = 0.5
    ref = VAEEncode().execute(ctx, pixels=grey, vae=tiny.vae)[0]["samples"]
    assert torch.equal(out["samples"], ref)
    nm = out["noise_mask"]
    assert nm.shape == (1, 1, 64, 64) and set(nm.unique().tolist()) <= {0.0, 1.0}
    rows = nm[0, 0].any(1).nonzero().flatten()
    cols = nm[0, 0].any(0).nonzero().flatten()
    # a 6×6 box with padding 3 (cropped back to 64): 2 pixels before and 3 after each side
    assert (rows.min().item(), rows.max().item()) == (18, 32)
    assert (cols.min().item(), cols.max().item()) == (38, 46)
    plain = VAEEncodeForInpaint().execute(ctx, pixels=img, vae=tiny.vae, mask=mask, grow_mask_by=0)[0]["noise_mask"]
    assert torch.equal(plain[0, 0], mask[0])


def test_latent_previews():
    lat = torch.zeros(4, 2, 3)
    lat[0] = 1.0
    rgb = latent_to_rgb(lat, ModelFamily.SD15)
    expected = np.round((1 + np.array(LATENT_RGB[ModelFamily.SD15][0][0])) / 2 * 255)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8 and (rgb == expected).all()
    flux = latent_to_rgb(torch.randn(1, 16, 4, 4), ModelFamily.FLUX_DEV)
    assert flux.shape == (4, 4, 3)
    img = preview_image(torch.randn(1, 4, 8, 8), ModelFamily.SDXL)
    assert img.size == (64, 64) and img.mode == "RGB"
    odd = latent_to_rgb(torch.randn(3, 4, 4), ModelFamily.SD15)  # channel count without a table: grey view
    assert (odd[..., 0] == odd[..., 1]).all()
