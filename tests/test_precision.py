"""Mixed precision decided per model and device (issue 11): fp32 on the CPU unless asked; bf16 where the
accelerator supports it; where bf16 is missing, fp16 for denoisers and CLIP but an fp32 VAE (and T5),
which overflow in fp16.  Every loader asks the same policy (``nodes.devices.precision``)."""
from __future__ import annotations

import pytest
import torch

from nodes import devices
from nodes.diffusion import loading
from nodes.diffusion.types import ModelFamily
from nodes.language.transformers_lm import loading as lm_loading

CUDA = torch.device("cuda", 0)  # a device object needs no GPU; supports_bf16 is what we vary


def roles(device: torch.device, option: str = "auto") -> dict[str, torch.dtype]:
    return {"unet": loading.resolve_dtype(option, device, ModelFamily.SDXL),
            "flux": loading.resolve_dtype(option, device, ModelFamily.FLUX_DEV),
            "clip": loading.encoder_dtype(option, device, "clip_l"),
            "t5": loading.encoder_dtype(option, device, "t5xxl"),
            "vae": loading.vae_dtype(option, device),
            "vlm": lm_loading.resolve_dtype(option, device)}


def test_cpu_runs_everything_in_fp32_unless_asked():
    assert set(roles(torch.device("cpu")).values()) == {torch.float32}
    assert set(roles(torch.device("cpu"), "bf16").values()) == {torch.bfloat16}


def test_bf16_where_the_accelerator_supports_it(monkeypatch):
    monkeypatch.setattr(devices, "supports_bf16", lambda d: True)
    assert set(roles(CUDA).values()) == {torch.bfloat16}


def test_fp16_with_an_fp32_vae_where_bf16_is_missing(monkeypatch):
    monkeypatch.setattr(devices, "supports_bf16", lambda d: False)
    got = roles(CUDA)
    assert got == {"unet": torch.float16, "flux": torch.float16, "clip": torch.float16, "t5": torch.float32,
                   "vae": torch.float32, "vlm": torch.float16}


@pytest.mark.parametrize("option,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_an_explicit_dtype_wins_everywhere(monkeypatch, option, dtype):
    monkeypatch.setattr(devices, "supports_bf16", lambda d: False)
    assert set(roles(CUDA, option).values()) == {dtype}
