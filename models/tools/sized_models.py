"""SD1.5-architecture checkpoints of a chosen size, with random weights, for memory tests and benchmarks.

Why: a memory test needs a model whose weights are big enough to see in the process's resident
memory (hundreds of MB of real tensors, not meta tensors), while the tiny test models weigh a few
MB.  ``write_sd15_checkpoint`` keeps SD1.5's full UNet *structure* (4 levels, 2 layers per block,
cross-attention on the first three) and scales its channel widths; the text encoder and VAE are
the tiny ones (``models.tools.tiny_models``), so almost all the bytes are the UNet's.
"""
from __future__ import annotations

from pathlib import Path

SD15_CHANNELS = (320, 640, 1280, 1280)


def build_sd15_unet(channels: tuple[int, ...], seed: int, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    from models.tools import tiny_models
    from nodes.diffusion import configs
    from nodes.diffusion.types import ModelFamily

    with tiny_models._seeded(seed):
        return UNet2DConditionModel.from_config(configs.sd_unet_config(
            ModelFamily.SD15, block_out_channels=tuple(channels), attention_levels=(True, True, True, False)[:len(channels)],
            layers_per_block=2, transformer_layers=(1,) * len(channels), cross_attention_dim=cross_attention_dim)).eval()


def write_sd15_checkpoint(path: Path, channels: tuple[int, ...] = (96, 192, 384, 384), seed: int = 7) -> int:
    """Write an LDM single-file SD1.5-architecture checkpoint at ``path``; returns the UNet's bytes (fp32)."""
    from safetensors.torch import save_file

    from models.tools import tiny_models as tm

    small = tm.build_sd15(seed=seed)
    unet = build_sd15_unet(channels, seed, cross_attention_dim=tm.CLIP_L_HIDDEN)
    unet_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    ckpt = {**tm.unet_to_ldm(unet), **tm.vae_to_ldm(small["vae"], "first_stage_model."),
            **{"cond_stage_model.transformer." + k: v for k, v in tm.clip_to_hf(small["text_encoder"]).items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in ckpt.items()}, str(path), metadata={"format": "pt"})
    del ckpt, unet
    return unet_bytes
