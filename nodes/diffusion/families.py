"""What a model file is — checkpoint, diffusion model, VAE, text encoder, LoRA, ControlNet … — and its family.

Why from keys and shapes: file names lie and users put files in the wrong folders.  Detection runs
on the safetensors header only (no tensor data), so a loader can say "this is a VAE, load it with
VAELoader" in milliseconds instead of failing deep inside a conversion with a KeyError.

Rules follow the layouts the training code writes (see keymaps.py); the family rules that need
more than key names use shapes that every checkpoint of the family has in common:

* SDXL vs refiner vs SD1: the UNet's ``label_emb`` (SDXL's pooled+time-ids input) and the width of
  that input relative to the cross-attention width (refiner: 5 time ids, context = CLIP-G only);
  SD2.x (1024-wide context, OpenCLIP-H) is recognised and refused.
* FLUX dev vs schnell: only dev has the ``guidance_in`` embedder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from nodes.diffusion.lora import is_lora
from nodes.diffusion.types import ModelFamily

Shapes = Mapping[str, tuple[int, ...]]

FAMILY_NAMES = {
    ModelFamily.SD15: "Stable Diffusion 1.x",
    ModelFamily.SDXL: "SDXL",
    ModelFamily.SDXL_REFINER: "SDXL refiner",
    ModelFamily.FLUX_DEV: "FLUX.1 dev",
    ModelFamily.FLUX_SCHNELL: "FLUX.1 schnell",
}

# kind -> the node that loads it (for "wrong loader" messages)
LOADER_FOR_KIND = {
    "checkpoint": "CheckpointLoaderSimple (models/checkpoints)",
    "diffusion_model": "UNETLoader / Load Diffusion Model (models/diffusion_models)",
    "vae": "VAELoader (models/vae)",
    "text_encoder": "CLIPLoader or DualCLIPLoader (models/text_encoders)",
    "lora": "LoraLoader (models/loras)",
    "controlnet": "ControlNetLoader (models/controlnet)",
    "embedding": "an 'embedding:NAME' in the prompt (models/embeddings)",
    "upscale_model": "UpscaleModelLoader (models/upscale_models)",
    "clip_vision": "CLIPVisionLoader (models/clip_vision)",
}


@dataclass(frozen=True)
class Encoder:
    """A text encoder inside a file: kind ("clip_l"/"clip_g"/"t5xxl"), key prefix and layout ("hf"/"openclip"/"t5")."""

    kind: str
    prefix: str
    layout: str


@dataclass(frozen=True)
class Detected:
    kind: str                              # see LOADER_FOR_KIND, or "unknown"
    family: ModelFamily | None = None      # None when unknown or unsupported
    layout: str = ""                       # denoiser/VAE layout: "ldm", "bfl", "diffusers"
    prefix: str = ""                       # key prefix of the denoiser (or of the VAE for VAE files)
    vae_prefix: str | None = None          # checkpoints: prefix of the bundled VAE, if any
    encoders: tuple[Encoder, ...] = ()     # checkpoints and text-encoder files
    unsupported: str = ""                  # a recognised but unsupported model (e.g. "Stable Diffusion 2.x")
    notes: dict = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        """A phrase for messages: "an SDXL checkpoint", "a VAE (16 latent channels)" …"""
        kind = {"controlnet": "ControlNet", "lora": "LoRA"}.get(self.kind, self.kind.replace("_", " "))
        if self.unsupported:
            return _article(f"{self.unsupported} {kind}")
        fam = f"{FAMILY_NAMES[self.family]} " if self.family is not None else ""
        if self.kind == "text_encoder" and self.encoders:
            return _article(" + ".join(e.kind.upper().replace("_", "-") for e in self.encoders) + " text encoder")
        if self.kind == "vae":
            return f"a VAE ({self.notes.get('latent_channels', '?')} latent channels)"
        if self.kind == "unknown":
            return "an unrecognised file"
        return _article(f"{fam}{kind}")


def _article(phrase: str) -> str:
    vowel = phrase[:1].lower() in "aeiou" or phrase.startswith("SD")  # "an SDXL …" (read "es-dee")
    return ("an " if vowel else "a ") + phrase


def _has(shapes: Shapes, *keys: str) -> bool:
    return all(k in shapes for k in keys)


def _any_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def _find_suffix_prefix(shapes: Shapes, suffix: str) -> str | None:
    """The prefix before the first key ending with ``suffix`` (shortest prefix wins)."""
    hits = [k[:-len(suffix)] for k in shapes if k.endswith(suffix)]
    return min(hits, key=len) if hits else None


def unet_family(shapes: Shapes, prefix: str = "") -> tuple[ModelFamily | None, str]:
    """(family, unsupported-name) of an LDM/SGM UNet under ``prefix``."""
    ctx_key = next((k for k in shapes if k.startswith(prefix) and k.endswith("attn2.to_k.weight")), None)
    ctx = shapes[ctx_key][1] if ctx_key else None
    adm = shapes.get(prefix + "label_emb.0.0.weight")
    if adm is not None:
        if ctx is not None and adm[1] - 5 * 256 == ctx:
            return ModelFamily.SDXL_REFINER, ""
        return ModelFamily.SDXL, ""
    if ctx == 1024:
        return None, "Stable Diffusion 2.x"
    return ModelFamily.SD15, ""


def flux_family(shapes: Shapes, prefix: str = "") -> ModelFamily:
    return ModelFamily.FLUX_DEV if (prefix + "guidance_in.in_layer.weight") in shapes else ModelFamily.FLUX_SCHNELL


def clip_kind(shapes: Shapes, prefix: str, layout: str) -> str:
    """clip_l / clip_g / clip_h for a CLIP text encoder under ``prefix``."""
    if layout == "openclip":
        width = shapes[prefix + "token_embedding.weight"][1]
        layers = len({k[len(prefix):].split(".")[2] for k in shapes if k.startswith(prefix + "transformer.resblocks.")})
        return "clip_h" if (width == 1024 or layers == 24) else "clip_g"
    emb = next(k for k in shapes if k.startswith(prefix) and k.endswith("embeddings.token_embedding.weight"))
    width = shapes[emb][1]
    layers = len({k.split("encoder.layers.")[1].split(".")[0] for k in shapes
                  if k.startswith(prefix) and "encoder.layers." in k})
    if layers >= 30 or width >= 1280:
        return "clip_g"
    if width == 1024 or layers == 23:
        return "clip_h"
    if width == 768:
        return "clip_l"
    # tiny/unknown widths: CLIP-G files carry the pooled projection, CLIP-L text models do not
    return "clip_g" if any(k.startswith(prefix) and k.startswith(prefix + "text_projection") for k in shapes) else "clip_l"


def _text_encoders(shapes: Shapes) -> tuple[Encoder, ...]:
    """Text encoders in a standalone text-encoder file (any single prefix)."""
    found: list[Encoder] = []
    t5 = _find_suffix_prefix(shapes, "encoder.block.0.layer.0.SelfAttention.q.weight")
    if t5 is not None:
        found.append(Encoder("t5xxl", t5, "t5"))
    oc = _find_suffix_prefix(shapes, "transformer.resblocks.0.attn.in_proj_weight")
    if oc is not None and (oc + "token_embedding.weight") in shapes:
        found.append(Encoder(clip_kind(shapes, oc, "openclip"), oc, "openclip"))
    hf = _find_suffix_prefix(shapes, "encoder.layers.0.self_attn.q_proj.weight")
    if hf is not None and "vision_model" not in hf:
        base = hf[:-len("text_model.")] if hf.endswith("text_model.") else hf
        found.append(Encoder(clip_kind(shapes, base, "hf"), base, "hf"))
    return tuple(found)


CONTROLNET_MARKERS = ("control_model.", "input_hint_block.", "controlnet_cond_embedding.", "controlnet_down_blocks.",
                      "controlnet_blocks.", "controlnet_single_blocks.", "controlnet_x_embedder.", "zero_convs.")
EMBEDDING_KEYS = {"emb_params", "clip_l", "clip_g", "string_to_token", "string_to_param", "name", "step",
                  "sd_checkpoint", "sd_checkpoint_name"}


def detect(shapes: Shapes) -> Detected:
    """Classify a model file from its tensor names and shapes."""
    keys = list(shapes)
    if not keys:
        return Detected("unknown")
    if any(k.startswith(m) or f".{m}" in k for k in keys for m in CONTROLNET_MARKERS):
        return Detected("controlnet")
    if is_lora(keys):
        return Detected("lora")
    if {k.split(".")[0] for k in keys} <= EMBEDDING_KEYS:
        return Detected("embedding")
    if _has(shapes, "model.0.weight") and (_any_prefix(shapes, "model.1.sub.") or len(keys) < 200 and "model.2.weight" in shapes):
        return Detected("upscale_model")
    if _has(shapes, "conv_first.weight") and (_any_prefix(shapes, "body.") or _any_prefix(shapes, "RRDB_trunk.")):
        return Detected("upscale_model")
    if _any_prefix(shapes, "vision_model.") and not _any_prefix(shapes, "text_model."):
        return Detected("clip_vision")

    # --- full checkpoints (denoiser under model.diffusion_model.) ---
    p = "model.diffusion_model."
    if (p + "input_blocks.0.0.weight") in shapes:
        fam, unsupported = unet_family(shapes, p)
        encoders: list[Encoder] = []
        if _any_prefix(shapes, "cond_stage_model.transformer."):
            encoders.append(Encoder("clip_l", "cond_stage_model.transformer.", "hf"))
        elif _any_prefix(shapes, "cond_stage_model.model."):
            fam, unsupported = None, "Stable Diffusion 2.x"
        if _any_prefix(shapes, "conditioner.embedders.0.transformer."):
            encoders.append(Encoder("clip_l", "conditioner.embedders.0.transformer.", "hf"))
        if _any_prefix(shapes, "conditioner.embedders.1.model."):
            encoders.append(Encoder("clip_g", "conditioner.embedders.1.model.", "openclip"))
        elif _any_prefix(shapes, "conditioner.embedders.0.model."):
            encoders.append(Encoder("clip_g", "conditioner.embedders.0.model.", "openclip"))
        vae = "first_stage_model." if _any_prefix(shapes, "first_stage_model.") else None
        return Detected("checkpoint", fam, "ldm", p, vae, tuple(encoders), unsupported)
    if (p + "img_in.weight") in shapes and (p + "double_blocks.0.img_attn.qkv.weight") in shapes:
        encoders = []
        if _any_prefix(shapes, "text_encoders.clip_l.transformer."):
            encoders.append(Encoder("clip_l", "text_encoders.clip_l.transformer.", "hf"))
        if _any_prefix(shapes, "text_encoders.t5xxl.transformer."):
            encoders.append(Encoder("t5xxl", "text_encoders.t5xxl.transformer.", "t5"))
        vae = "vae." if _any_prefix(shapes, "vae.") else None
        return Detected("checkpoint", flux_family(shapes, p), "bfl", p, vae, tuple(encoders))
    if _any_prefix(shapes, p):
        return Detected("checkpoint", None, "", p, unsupported="unrecognised architecture")

    # --- diffusion models alone ---
    if "input_blocks.0.0.weight" in shapes and "out.2.weight" in shapes:
        fam, unsupported = unet_family(shapes, "")
        return Detected("diffusion_model", fam, "ldm", "", unsupported=unsupported)
    if _has(shapes, "img_in.weight", "double_blocks.0.img_attn.qkv.weight"):
        return Detected("diffusion_model", flux_family(shapes, ""), "bfl", "")
    if _has(shapes, "x_embedder.weight", "transformer_blocks.0.attn.to_q.weight", "context_embedder.weight"):
        fam = (ModelFamily.FLUX_DEV if "time_text_embed.guidance_embedder.linear_1.weight" in shapes
               else ModelFamily.FLUX_SCHNELL)
        return Detected("diffusion_model", fam, "diffusers", "")
    if _has(shapes, "conv_in.weight", "time_embedding.linear_1.weight") and _any_prefix(shapes, "down_blocks."):
        ctx_key = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
        ctx = shapes[ctx_key][1] if ctx_key else None
        if "add_embedding.linear_1.weight" in shapes:
            adm = shapes["add_embedding.linear_1.weight"][1]
            fam = ModelFamily.SDXL_REFINER if ctx is not None and adm - 5 * 256 == ctx else ModelFamily.SDXL
            return Detected("diffusion_model", fam, "diffusers", "")
        if ctx == 1024:
            return Detected("diffusion_model", None, "diffusers", "", unsupported="Stable Diffusion 2.x")
        return Detected("diffusion_model", ModelFamily.SD15, "diffusers", "")

    # --- VAEs ---
    vae_prefix = _find_suffix_prefix(shapes, "decoder.conv_in.weight")
    if vae_prefix is not None and (vae_prefix + "encoder.conv_in.weight") in shapes:
        latent = shapes[vae_prefix + "decoder.conv_in.weight"][1]
        layout = "ldm" if _any_prefix(shapes, vae_prefix + "encoder.down.") else "diffusers"
        fam = ModelFamily.FLUX_DEV if latent == 16 else ModelFamily.SD15 if latent == 4 else None
        return Detected("vae", fam, layout, vae_prefix, unsupported="" if fam else f"{latent}-channel",
                        notes={"latent_channels": latent})

    # --- text encoders ---
    encoders_found = _text_encoders(shapes)
    if encoders_found:
        unsupported = ", ".join(e.kind for e in encoders_found if e.kind == "clip_h")
        return Detected("text_encoder", None, "", "", encoders=encoders_found,
                        unsupported="OpenCLIP-H (Stable Diffusion 2.x)" if unsupported else "")
    return Detected("unknown")
