"""Tiny random-weight models of every supported family, in memory and as the files users have.

Why: tests and demos must run offline in seconds, yet exercise the *real* loading code.  So the
tiny models keep each family's real structure — 4 latent channels for SD1.5/SDXL, 16 for FLUX, an
8× VAE (64×64 images → 8×8 latents), the real CLIP tokenizer vocabulary, FLUX's guidance embedding
on dev — with tiny widths, and they are written in the original single-file layouts
(LDM/SGM/BFL/OpenCLIP/kohya/A1111) that ``nodes.diffusion`` must load from users' disks.

Two entry points:

* ``build_sd15()``, ``build_sdxl()``, ``build_flux(dev)``: seeded in-memory diffusers/transformers
  components (dict keys = diffusers pipeline constructor arguments).
* ``write_tiny_models(models_dir)``: writes the whole set in ComfyUI's folder layout (≈100 MB,
  a few seconds on one CPU thread); ``main(["--dir", DIR])`` is the CLI.

Other packs add their tiny files by appending a writer to :data:`WRITERS` (a tuple in this file).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from nodes.diffusion import configs, keymaps
from nodes.diffusion.tokenizers import clip_tokenizer
from nodes.diffusion.types import ModelFamily

log = logging.getLogger(__name__)

SEED = 1234

# tiny sizes (public so tests can assert shapes)
CLIP_L_HIDDEN = 32
CLIP_G_HIDDEN = 64
T5_D_MODEL = 32
FLUX_LATENT_CHANNELS = 16
SD_LATENT_CHANNELS = 4


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Deterministic init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --------------------------------------------------------------------------------------------
# tokenizers

_T5_CORPUS = """
a photo of a cat sitting on a wooden table next to a window with soft morning light
a painting of a mountain landscape at sunset with dramatic clouds and a calm lake
portrait of a woman with red hair, highly detailed, sharp focus, studio lighting
an astronaut riding a horse on the moon, digital art, trending on artstation
a bowl of fruit, still life, oil on canvas, masterpiece, best quality
a futuristic city skyline at night with neon lights and flying cars in the rain
close up of a dog running through a field of flowers in spring, bokeh background
a cozy cabin in a snowy forest, warm light in the windows, winter evening
an old man reading a book by the fireplace, cinematic, film grain, 35mm photograph
a red sports car parked on a street in tokyo, reflections, wet asphalt
a bird flying over the ocean waves under a blue sky with white clouds
text that says hello world written on a blackboard with chalk
a castle on a hill surrounded by green fields and rivers, fantasy illustration
low quality, blurry, watermark, ugly, deformed, bad anatomy, worst quality
""" * 4


def build_t5_tokenizer(max_length: int = 512):
    """A tiny T5-style (Unigram + ``</s>`` suffix) tokenizer trained on a fixed corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    raw = Tokenizer(models.Unigram())
    raw.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(r"\s+", " ")])
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=320, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    raw.train_from_iterator([line for line in _T5_CORPUS.splitlines() if line.strip()], trainer=trainer)
    eos = raw.token_to_id("</s>")
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return T5TokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=max_length)


# --------------------------------------------------------------------------------------------
# in-memory builders

def _clip(kind: str, hidden: int, with_projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(**configs.clip_config(kind, vocab_size=49408, hidden_size=hidden,
                                               intermediate_size=2 * hidden, num_layers=2))
    model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(cfg)
    return model.eval()


def _vae(latent_channels: int, scaling: float, shift: float | None, quant_conv: bool):
    from diffusers import AutoencoderKL

    cfg = configs.vae_config(block_out_channels=(32, 32, 32, 32), layers_per_block=1,
                             latent_channels=latent_channels, scaling_factor=scaling, shift_factor=shift,
                             use_quant_conv=quant_conv)
    return AutoencoderKL.from_config(cfg).eval()


def _sd_scheduler(family: ModelFamily):
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(configs.scheduler_config(family))


def _clip_l(seed: int):
    """The one tiny CLIP-L shared by every family, as the real ViT-L/14 text model is (SD1.5, SDXL, FLUX)."""
    with _seeded(seed + 100):
        return _clip("clip_l", CLIP_L_HIDDEN, with_projection=False)


def build_sd15(seed: int = SEED) -> dict:
    """SD1.5-shaped components: unet, vae, text_encoder, tokenizer, scheduler."""
    from diffusers import UNet2DConditionModel

    with _seeded(seed):
        unet = UNet2DConditionModel.from_config(configs.sd_unet_config(
            ModelFamily.SD15, block_out_channels=(32, 64), attention_levels=(True, False), layers_per_block=1,
            transformer_layers=(1, 1), cross_attention_dim=CLIP_L_HIDDEN)).eval()
    with _seeded(seed + 102):
        vae = _vae(SD_LATENT_CHANNELS, configs.VAE_LATENT_FORMAT[ModelFamily.SD15][0], None, True)
    return dict(unet=unet, vae=vae, text_encoder=_clip_l(seed), tokenizer=clip_tokenizer("clip_l"),
                scheduler=_sd_scheduler(ModelFamily.SD15))


def build_sdxl(seed: int = SEED) -> dict:
    """SDXL-base-shaped components: unet, vae, text_encoder (CLIP-L), text_encoder_2 (CLIP-G), tokenizers, scheduler."""
    from diffusers import UNet2DConditionModel

    pooled = CLIP_G_HIDDEN
    with _seeded(seed + 1):
        unet = UNet2DConditionModel.from_config(configs.sd_unet_config(
            ModelFamily.SDXL, block_out_channels=(32, 64), attention_levels=(False, True), layers_per_block=2,
            transformer_layers=(1, 2), cross_attention_dim=CLIP_L_HIDDEN + CLIP_G_HIDDEN,
            projection_class_embeddings_input_dim=pooled + 6 * configs.SDXL_TIME_EMBED_DIM)).eval()
    with _seeded(seed + 103):
        vae = _vae(SD_LATENT_CHANNELS, configs.VAE_LATENT_FORMAT[ModelFamily.SDXL][0], None, True)
    with _seeded(seed + 101):
        te2 = _clip("clip_g", CLIP_G_HIDDEN, with_projection=True)
    return dict(unet=unet, vae=vae, text_encoder=_clip_l(seed), text_encoder_2=te2, tokenizer=clip_tokenizer("clip_l"),
                tokenizer_2=clip_tokenizer("clip_g"), scheduler=_sd_scheduler(ModelFamily.SDXL))


def build_t5(tokenizer, seed: int = SEED):
    from transformers import T5Config, T5EncoderModel

    with _seeded(seed + 3):
        return T5EncoderModel(T5Config(**configs.t5_config(vocab_size=len(tokenizer), d_model=T5_D_MODEL, d_ff=64,
                                                           num_layers=2, num_heads=4, d_kv=8))).eval()


def build_flux(dev: bool = True, seed: int = SEED) -> dict:
    """FLUX.1-dev-shaped (``dev=True``: guidance embedding) or schnell-shaped components.

    Keys: transformer, vae, text_encoder (CLIP-L), text_encoder_2 (T5), tokenizer, tokenizer_2, scheduler.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    family = ModelFamily.FLUX_DEV if dev else ModelFamily.FLUX_SCHNELL
    t5_tok = build_t5_tokenizer()
    with _seeded(seed + (2 if dev else 4)):
        transformer = FluxTransformer2DModel.from_config(configs.flux_transformer_config(
            in_channels=FLUX_LATENT_CHANNELS * 4, num_layers=1, num_single_layers=1, head_dim=16, num_heads=2,
            joint_attention_dim=T5_D_MODEL, pooled_projection_dim=CLIP_L_HIDDEN, guidance_embeds=dev)).eval()
    with _seeded(seed + 104):  # dev and schnell share one autoencoder, as the real ones do
        scale, shift = configs.VAE_LATENT_FORMAT[family]
        vae = _vae(FLUX_LATENT_CHANNELS, scale, shift, False)
    te = _clip_l(seed)
    t5 = build_t5(t5_tok, seed)
    return dict(transformer=transformer, vae=vae, text_encoder=te, text_encoder_2=t5, tokenizer=clip_tokenizer("clip_l"),
                tokenizer_2=t5_tok, scheduler=FlowMatchEulerDiscreteScheduler.from_config(configs.scheduler_config(family)))


def build_esrgan(scale: int = 4, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A tiny ESRGAN (RRDBNet, 8 filters, 1 block) state dict in the original ``model.N`` key layout."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with _seeded(seed + 5):
        net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


# --------------------------------------------------------------------------------------------
# diffusers -> original layouts

def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel weights in LDM/SGM layout (``model.diffusion_model.*``)."""
    sd = unet.state_dict()
    names = keymaps.unet_diffusers_to_ldm(sd.keys(), unet.config)
    missing = [k for k in sd if k not in names]
    if missing:
        raise KeyError(f"no LDM name for UNet parameters {missing[:5]}")
    return {"model.diffusion_model." + names[k]: v for k, v in sd.items()}


def vae_to_ldm(vae, prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in keymaps.vae_to_ldm_state_dict(vae.state_dict(), vae.config).items()}


def clip_to_hf(te) -> dict[str, torch.Tensor]:
    """Canonical transformers keys (``text_model.*`` + ``text_projection.weight``), as clip_l/clip_g files ship."""
    return keymaps.hf_clip_canonical(te.state_dict())


def t5_to_file(t5) -> dict[str, torch.Tensor]:
    """T5 encoder weights as ``t5xxl_fp16.safetensors`` holds them (``shared.weight`` + ``encoder.*``)."""
    return {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}


def _contig(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def _save(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_contig(sd), str(path), metadata=metadata)
    return path


def _save_tokenizer(folder: Path, tokenizer) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


# --------------------------------------------------------------------------------------------
# LoRA / embedding fakes

def _lora_pair(out_f: int, in_f: int, rank: int, gen: torch.Generator, kernel: tuple[int, int] | None = None):
    if kernel is None:
        down = torch.randn(rank, in_f, generator=gen) * 0.2
        up = torch.randn(out_f, rank, generator=gen) * 0.2
    else:
        down = torch.randn(rank, in_f, *kernel, generator=gen) * 0.2
        up = torch.randn(out_f, rank, 1, 1, generator=gen) * 0.2
    return up, down


def _kohya_entries(prefix: str, module_name: str, weight: torch.Tensor, rank: int, alpha: float,
                   gen: torch.Generator) -> dict[str, torch.Tensor]:
    kernel = tuple(weight.shape[2:]) if weight.ndim == 4 else None
    up, down = _lora_pair(weight.shape[0], weight.shape[1], rank, gen, kernel)
    base = f"{prefix}_{module_name.replace('.', '_')}"
    return {f"{base}.lora_up.weight": up, f"{base}.lora_down.weight": down, f"{base}.alpha": torch.tensor(float(alpha))}


_UNET_LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                      "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
_TE_LORA_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def _modules_with_weights(sd: dict[str, torch.Tensor], suffixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k[:-len(".weight")]: v for k, v in sd.items()
            if k.endswith(".weight") and any(k[:-len(".weight")].endswith(s) for s in suffixes)}


def sd15_lora(components: dict, rank: int = 4, alpha: float = 2.0, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A kohya-format SD1.5 LoRA: UNet modules named as diffusers (what sd-scripts writes for SD1.x), plus the text encoder."""
    gen = torch.Generator().manual_seed(seed + 10)
    out: dict[str, torch.Tensor] = {}
    for name, w in _modules_with_weights(components["unet"].state_dict(), _UNET_LORA_TARGETS).items():
        out.update(_kohya_entries("lora_unet", name, w, rank, alpha, gen))
    te = keymaps.hf_clip_canonical(components["text_encoder"].state_dict())
    for name, w in _modules_with_weights(te, _TE_LORA_TARGETS).items():
        out.update(_kohya_entries("lora_te", name, w, rank, alpha, gen))
    return out


def sdxl_lora(components: dict, rank: int = 4, alpha: float = 4.0, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A kohya-format SDXL LoRA: UNet modules in SGM naming (``input_blocks_…``), one LoCon conv, te1/te2."""
    gen = torch.Generator().manual_seed(seed + 11)
    unet = components["unet"]
    sd = unet.state_dict()
    names = keymaps.unet_diffusers_to_ldm(sd.keys(), unet.config)
    out: dict[str, torch.Tensor] = {}
    targets = _modules_with_weights(sd, _UNET_LORA_TARGETS + ("resnets.0.conv1",))
    for name, w in targets.items():
        ldm = names[name + ".weight"][:-len(".weight")]
        out.update(_kohya_entries("lora_unet", ldm, w, rank, alpha, gen))
    for prefix, key in (("lora_te1", "text_encoder"), ("lora_te2", "text_encoder_2")):
        te = keymaps.hf_clip_canonical(components[key].state_dict())
        for name, w in _modules_with_weights(te, _TE_LORA_TARGETS).items():
            out.update(_kohya_entries(prefix, name, w, rank, alpha, gen))
    return out


def sd15_embedding(vectors: int = 2, seed: int = SEED) -> dict[str, torch.Tensor]:
    """An A1111 textual-inversion file for the tiny SD1.5 text encoder (``emb_params`` [n, hidden])."""
    gen = torch.Generator().manual_seed(seed + 12)
    return {"emb_params": torch.randn(vectors, CLIP_L_HIDDEN, generator=gen) * 0.02}


# --------------------------------------------------------------------------------------------
# writers (one per family/folder); each returns the paths it wrote

def _write_sd15(models: Path, sd15: dict) -> list[Path]:
    ckpt = {**unet_to_ldm(sd15["unet"]), **vae_to_ldm(sd15["vae"], "first_stage_model."),
            **{"cond_stage_model.transformer." + k: v for k, v in clip_to_hf(sd15["text_encoder"]).items()}}
    written = [_save(models / "checkpoints" / "tiny-sd15.safetensors", ckpt, {"format": "pt"})]
    written.append(_save(models / "vae" / "tiny-sd-vae.safetensors", vae_to_ldm(sd15["vae"], "")))
    written.append(_save(models / "text_encoders" / "tiny-clip-l.safetensors", clip_to_hf(sd15["text_encoder"])))
    written.append(_save(models / "loras" / "tiny-sd15-lora.safetensors", sd15_lora(sd15),
                         {"ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1"}))
    written.append(_save(models / "embeddings" / "tiny-sd15-embedding.safetensors", sd15_embedding()))
    written.append(_write_diffusers_sd15(models / "diffusers" / "tiny-sd15", sd15))
    return written


def _write_diffusers_sd15(folder: Path, sd15: dict) -> Path:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**sd15, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder))
    return folder


def _write_sdxl(models: Path, sdxl: dict) -> list[Path]:
    te2 = keymaps.openclip_from_hf(sdxl["text_encoder_2"].state_dict())
    ckpt = {**unet_to_ldm(sdxl["unet"]), **vae_to_ldm(sdxl["vae"], "first_stage_model."),
            **{"conditioner.embedders.0.transformer." + k: v for k, v in clip_to_hf(sdxl["text_encoder"]).items()},
            **{"conditioner.embedders.1.model." + k: v for k, v in te2.items()}}
    written = [_save(models / "checkpoints" / "tiny-sdxl.safetensors", ckpt, {"format": "pt"})]
    written.append(_save(models / "text_encoders" / "tiny-clip-g.safetensors", clip_to_hf(sdxl["text_encoder_2"])))
    written.append(_save(models / "loras" / "tiny-sdxl-lora.safetensors", sdxl_lora(sdxl),
                         {"ss_network_module": "networks.lora", "ss_base_model_version": "sdxl_base_v1-0"}))
    return written


def _flux_checkpoint(flux: dict) -> dict[str, torch.Tensor]:
    """ComfyUI's all-in-one FLUX layout: BFL transformer, ``vae.*``, ``text_encoders.{clip_l,t5xxl}.transformer.*``."""
    return {**{"model.diffusion_model." + k: v for k, v in keymaps.flux_to_bfl_state_dict(flux["transformer"].state_dict()).items()},
            **vae_to_ldm(flux["vae"], "vae."),
            **{"text_encoders.clip_l.transformer." + k: v for k, v in clip_to_hf(flux["text_encoder"]).items()},
            **{"text_encoders.t5xxl.transformer." + k: v for k, v in t5_to_file(flux["text_encoder_2"]).items()}}


def _write_flux(models: Path, dev: dict, schnell: dict) -> list[Path]:
    written = []
    for name, comps in (("tiny-flux-dev", dev), ("tiny-flux-schnell", schnell)):
        path = _save(models / "checkpoints" / f"{name}.safetensors", _flux_checkpoint(comps))
        written += [path, _save_tokenizer(path.parent / f"{name}_tokenizer", comps["tokenizer_2"])]
    written.append(_save(models / "diffusion_models" / "tiny-flux-dev.safetensors",
                         keymaps.flux_to_bfl_state_dict(dev["transformer"].state_dict())))
    written.append(_save(models / "vae" / "tiny-flux-ae.safetensors", vae_to_ldm(dev["vae"], "")))
    t5_path = _save(models / "text_encoders" / "tiny-t5xxl.safetensors", t5_to_file(dev["text_encoder_2"]))
    written += [t5_path, _save_tokenizer(t5_path.parent / "tiny-t5xxl_tokenizer", dev["tokenizer_2"])]
    return written


def _write_upscaler(models: Path) -> list[Path]:
    return [_save(models / "upscale_models" / "tiny-esrgan-x4.safetensors", build_esrgan(4))]


def _write_core(models: Path) -> list[Path]:
    sd15, sdxl = build_sd15(), build_sdxl()
    dev, schnell = build_flux(True), build_flux(False)
    return _write_sd15(models, sd15) + _write_sdxl(models, sdxl) + _write_flux(models, dev, schnell) + _write_upscaler(models)


def _write_controlnets(models: Path) -> list[Path]:
    from models.tools.tiny_controlnets import write_tiny_controlnets  # imports this module: load lazily

    return write_tiny_controlnets(models)


def _write_vlms_llms(models: Path) -> list[Path]:
    from models.tools.tiny_vlm_llm import write_tiny_vlms_llms

    return write_tiny_vlms_llms(models)


# Writers run in order by write_tiny_models; other packs (ControlNet …) append theirs here.
WRITERS: tuple[Callable[[Path], list[Path]], ...] = (_write_core, _write_controlnets, _write_vlms_llms)


def write_tiny_models(models_dir: Path) -> list[Path]:
    """Write the whole tiny set under ``models_dir`` (ComfyUI folder layout); returns the paths written."""
    models_dir = Path(models_dir)
    written: list[Path] = []
    for writer in WRITERS:
        written += writer(models_dir)
    (models_dir / "tiny-models.json").write_text(json.dumps(
        {"seed": SEED, "files": sorted(str(p.relative_to(models_dir)) for p in written)}, indent=1))
    return written


def main(argv: list[str] | None = None) -> int:
    """CLI: ``tiny-models [--dir DIR]`` (default ``./models``)."""
    parser = argparse.ArgumentParser(prog="tiny-models", description="Write tiny random-weight test models.")
    parser.add_argument("--dir", default="models", help="models directory to write into (default: ./models)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    written = write_tiny_models(Path(args.dir))
    size = sum(p.stat().st_size for p in written if p.is_file())
    print(f"wrote {len(written)} tiny models ({size / 2**20:.1f} MB in files) to {args.dir} "
          f"in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
