"""Tiny random-weight ControlNets matching the tiny SD1.5 / SDXL / FLUX models, in users' file layouts.

Why: the ControlNet loader, hooks and nodes must be tested offline on the real code paths, so the
tiny ControlNets are the real diffusers architectures built from the tiny models
(``ControlNetModel.from_unet``, ``FluxControlNetModel.from_transformer``) and written the way
ControlNets are shipped:

* ``controlnet/tiny-sd15-controlnet.safetensors`` — lllyasviel's original layout (``control_model.*``)
* ``controlnet/tiny-sd15-controlnet-diff.safetensors`` — the same as a "diff" ControlNet
  (weights minus the base UNet's, with a ``difference`` marker; DiffControlNetLoader)
* ``controlnet/tiny-sd15-controlnet-diffusers/`` — a diffusers folder (config.json + weights)
* ``controlnet/tiny-sdxl-controlnet.safetensors`` — original SGM layout
* ``controlnet/tiny-flux-controlnet.safetensors`` — InstantX/diffusers ``FluxControlNetModel`` layout
* ``controlnet/tiny-flux-controlnet-xlabs.safetensors`` — XLabs layout (pixel-space hint encoder)
* ``diffusion_models/tiny-flux-canny-dev.safetensors`` — a FLUX.1-Canny-dev-shaped transformer
  (twice the input channels: the control image's latent is concatenated; InstructPixToPixConditioning)

A freshly made ControlNet has zero-initialised output layers (it changes nothing until trained);
those are re-initialised here with seeded random weights so tests can see a ControlNet act.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from models.tools import tiny_models as tm
from nodes.diffusion import configs, controlnet_keys, keymaps

SEED = tm.SEED + 40
HINT_CHANNELS = (8, 8, 16, 16)  # three stride-2 steps: 64-pixel hint → 8×8, the tiny VAEs' factor 8


def _reinit(modules, seed: int) -> None:
    """Seeded default init of zero-initialised layers (nn.Linear / nn.Conv2d ``reset_parameters``)."""
    with tm._seeded(seed):
        for m in modules:
            m.reset_parameters()


def build_sd_controlnet(unet, seed: int = SEED):
    """A ControlNetModel copying ``unet``'s encoder, with live (non-zero) output convolutions."""
    from diffusers import ControlNetModel

    with tm._seeded(seed):
        cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=HINT_CHANNELS)
    _reinit([*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out], seed + 1)
    return cn.eval()


def build_sd15_controlnet(seed: int = SEED):
    return build_sd_controlnet(tm.build_sd15()["unet"], seed)


def build_sdxl_controlnet(seed: int = SEED):
    return build_sd_controlnet(tm.build_sdxl()["unet"], seed + 2)


def build_flux_controlnet(seed: int = SEED, transformer=None):
    """InstantX-style FluxControlNetModel (hint = packed VAE latent) from the tiny FLUX-dev transformer."""
    from diffusers import FluxControlNetModel

    transformer = transformer if transformer is not None else tm.build_flux(dev=True)["transformer"]
    # FluxControlNetModel.from_transformer, without handing over config keys the ControlNet lacks
    params = set(inspect.signature(FluxControlNetModel.__init__).parameters)
    config = {k: v for k, v in dict(transformer.config).items() if k in params}
    config.update(num_layers=1, num_single_layers=1)
    with tm._seeded(seed + 4):
        cn = FluxControlNetModel.from_config(config)
    for name in ("pos_embed", "time_text_embed", "context_embedder", "x_embedder"):
        getattr(cn, name).load_state_dict(getattr(transformer, name).state_dict())
    cn.transformer_blocks.load_state_dict(transformer.transformer_blocks.state_dict(), strict=False)
    cn.single_transformer_blocks.load_state_dict(transformer.single_transformer_blocks.state_dict(), strict=False)
    _reinit([*cn.controlnet_blocks, *cn.controlnet_single_blocks, cn.controlnet_x_embedder], seed + 5)
    return cn.eval()


def build_flux_xlabs_controlnet(seed: int = SEED, transformer=None):
    """XLabs-style FluxControlNetModel: two double blocks, a 16-channel pixel hint encoder, 2×2 hint patches."""
    from diffusers import FluxControlNetModel

    transformer = transformer if transformer is not None else tm.build_flux(dev=True)["transformer"]
    cfg = dict(transformer.config)
    hint_channels = 16
    config = {k: cfg[k] for k in ("in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                                  "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")}
    config.update(num_layers=2, num_single_layers=0, conditioning_embedding_channels=hint_channels,
                  patch_size=int(round((cfg["in_channels"] // hint_channels) ** 0.5)))
    with tm._seeded(seed + 6):
        cn = FluxControlNetModel.from_config(config)
    _reinit([*cn.controlnet_blocks, cn.input_hint_block.conv_out], seed + 7)
    return cn.eval()


def build_flux_canny_transformer(seed: int = SEED):
    """A FLUX.1-Canny-dev-shaped transformer: latent + control latent in (2 × 64), 64 out."""
    from diffusers import FluxTransformer2DModel

    with tm._seeded(seed + 8):
        return FluxTransformer2DModel.from_config(configs.flux_transformer_config(
            in_channels=2 * tm.FLUX_LATENT_CHANNELS * 4, out_channels=tm.FLUX_LATENT_CHANNELS * 4, num_layers=1,
            num_single_layers=1, head_dim=16, num_heads=2, joint_attention_dim=tm.T5_D_MODEL,
            pooled_projection_dim=tm.CLIP_L_HIDDEN, guidance_embeds=True)).eval()


def diff_controlnet(cn, unet) -> dict[str, torch.Tensor]:
    """Original-layout "diff" ControlNet: encoder tensors minus the UNet's, plus the ``difference`` marker."""
    base = unet.state_dict()
    sd = {}
    for k, v in cn.state_dict().items():
        ref = base.get(k)
        sd[k] = v - ref if ref is not None and ref.shape == v.shape else v
    names = controlnet_keys.controlnet_diffusers_to_original(sd.keys(), cn.config)
    out = {controlnet_keys.LDM_PREFIX + names[k]: v for k, v in sd.items()}
    out["difference"] = torch.zeros(1)
    return out


def write_tiny_controlnets(models: Path) -> list[Path]:
    """Write every tiny ControlNet (and the FLUX Canny transformer) under ``models``; returns the paths."""
    models = Path(models)
    cn_dir = models / "controlnet"
    written: list[Path] = []
    sd15 = tm.build_sd15()
    cn15 = build_sd_controlnet(sd15["unet"])
    written.append(tm._save(cn_dir / "tiny-sd15-controlnet.safetensors", controlnet_keys.sd_controlnet_to_original(cn15)))
    written.append(tm._save(cn_dir / "tiny-sd15-controlnet-diff.safetensors", diff_controlnet(cn15, sd15["unet"])))
    folder = cn_dir / "tiny-sd15-controlnet-diffusers"
    cn15.save_pretrained(str(folder))
    written.append(folder)
    cnxl = build_sdxl_controlnet()
    written.append(tm._save(cn_dir / "tiny-sdxl-controlnet.safetensors", controlnet_keys.sd_controlnet_to_original(cnxl)))
    transformer = tm.build_flux(dev=True)["transformer"]
    written.append(tm._save(cn_dir / "tiny-flux-controlnet.safetensors",
                            build_flux_controlnet(transformer=transformer).state_dict()))
    written.append(tm._save(cn_dir / "tiny-flux-controlnet-xlabs.safetensors",
                            controlnet_keys.xlabs_from_diffusers(
                                build_flux_xlabs_controlnet(transformer=transformer).state_dict())))
    written.append(tm._save(models / "diffusion_models" / "tiny-flux-canny-dev.safetensors",
                            keymaps.flux_to_bfl_state_dict(build_flux_canny_transformer().state_dict())))
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m models.tools.tiny_controlnets [--dir DIR]`` (default ``./models``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="tiny-controlnets", description="Write tiny random-weight ControlNets.")
    parser.add_argument("--dir", default="models")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for path in write_tiny_controlnets(Path(args.dir)):
        print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
