"""Turn model files into MODEL / CLIP / VAE values (the work behind the loader nodes).

Why a module of its own: the nodes stay thin (resolve the file name, call one function through
``ctx.models.get``), while the rules — what a file is, which parts it holds, which config and
tokenizer go with it — live here where tests can call them directly.  Every failure a user can
cause (wrong file, truncated file, missing tokenizer) surfaces as :class:`LoadError`, which the
nodes turn into a NodeError naming their input.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch

from nodes.diffusion import configs, families, model_files
from nodes.diffusion.families import Detected, LOADER_FOR_KIND
from nodes.diffusion.model_files import ModelFileError, strip_prefix
from nodes.diffusion.tokenizers import clip_tokenizer, find_t5_tokenizer_dir, load_t5_tokenizer, t5_tokenizer_help
from nodes.diffusion.types import DiffusionModel, ModelFamily, TextEncoders, VaeModel

log = logging.getLogger(__name__)


class LoadError(Exception):
    """A user-facing loading problem; the message names the file and the fix."""


# --- device / dtype --------------------------------------------------------------------------

def resolve_device(option: str | None) -> torch.device:
    """RuntimeOptions.device → torch.device ("auto": CUDA when available) — same rule as the sampler."""
    if option in ("", "auto", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(option)


def resolve_dtype(option: str | None, device: torch.device, family: ModelFamily | None = None) -> torch.dtype:
    """RuntimeOptions.dtype → dtype ("auto": fp32 on CPU, bf16 for FLUX, fp16 otherwise) — same rule as the sampler."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if option in table:
        return table[option]
    if device.type == "cpu":
        return torch.float32
    if family is not None and family.is_flux:
        return torch.bfloat16
    return torch.float16


def encoder_dtype(option: str | None, device: torch.device) -> torch.dtype:
    """Text encoders: fp32 on CPU, else the requested dtype or bf16 (T5 overflows in fp16)."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if option in table:
        return table[option]
    return torch.float32 if device.type == "cpu" else torch.bfloat16


def vae_dtype(option: str | None, device: torch.device) -> torch.dtype:
    """VAEs: fp32 on CPU; bf16 on GPUs under "auto" (SD/SDXL VAEs overflow in fp16)."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if option in table:
        return table[option]
    return torch.float32 if device.type == "cpu" else torch.bfloat16


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype_option: str = "auto"


# --- inspection ------------------------------------------------------------------------------

def inspect_file(path: Path) -> tuple[Detected, dict[str, str]]:
    try:
        shapes, meta = model_files.inspect(path)
    except ModelFileError as exc:
        raise LoadError(str(exc)) from exc
    return families.detect(shapes), meta


def wrong_kind(path: Path, detected: Detected, wanted: str) -> LoadError:
    if detected.kind == "unknown":
        return LoadError(f"{path.name} is not a model this loader recognises (expected {wanted}).")
    how = LOADER_FOR_KIND.get(detected.kind, "another loader")
    return LoadError(f"{path.name} is {detected.describe()}, not {wanted}; load it with {how}.")


def _unsupported(path: Path, detected: Detected) -> LoadError:
    return LoadError(f"{path.name} is {detected.describe()}; supported families are SD1.5, SDXL and FLUX.1.")


def _load_tensors(path: Path, prefixes: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    try:
        if prefixes is None:
            return model_files.load(path)
        return model_files.load(path, lambda k: k.startswith(tuple(prefixes)))
    except ModelFileError as exc:
        raise LoadError(str(exc)) from exc


def _guard(path: Path, fn, *args, **kwargs):
    """Run a builder, turning ModelFileError into LoadError."""
    try:
        return fn(*args, **kwargs)
    except ModelFileError as exc:
        raise LoadError(str(exc)) from exc


# --- denoisers -------------------------------------------------------------------------------

def make_model(family: ModelFamily, denoiser: torch.nn.Module, source: str, prediction_type: str | None = None) -> DiffusionModel:
    pred = prediction_type or ("flow" if family.is_flux else "epsilon")
    scale, shift = configs.VAE_LATENT_FORMAT[family]
    return DiffusionModel(family=family, denoiser=denoiser, prediction_type=pred,
                          scheduler_config=configs.scheduler_config(family, pred if pred != "flow" else "epsilon"),
                          source=source, latent_scale=scale, latent_shift=shift)


def _build_denoiser(path: Path, detected: Detected, sd: dict[str, torch.Tensor], dtype: torch.dtype):
    from nodes.diffusion import single_file as sf

    if detected.family is None:
        raise _unsupported(path, detected)
    body = strip_prefix(sd, detected.prefix) if detected.prefix else sd
    if detected.family.is_flux:
        return _guard(path, sf.build_flux_transformer, body, path.name, dtype, layout=detected.layout)
    return _guard(path, sf.build_sd_unet, body, detected.family, path.name, dtype, layout=detected.layout)


def _prediction_type(sd_keys: Iterable[str]) -> str | None:
    """v-prediction checkpoints mark themselves with a ``v_pred`` key (e.g. NoobAI-XL v-pred)."""
    return "v_prediction" if "v_pred" in set(sd_keys) else None


def load_diffusion_model(path: Path, place: Placement, weight_dtype: str = "default") -> DiffusionModel:
    """UNETLoader: a denoiser file (LDM/SGM UNet, BFL or diffusers FLUX, diffusers UNet)."""
    detected, _ = inspect_file(path)
    if detected.kind == "checkpoint":
        pass  # a full checkpoint in diffusion_models/: take its denoiser, as ComfyUI does
    elif detected.kind != "diffusion_model":
        raise wrong_kind(path, detected, "a diffusion model (UNet / FLUX transformer)")
    if detected.family is None:
        raise _unsupported(path, detected)
    dtype = resolve_dtype(place.dtype_option, place.device, detected.family)
    sd = _load_tensors(path, [detected.prefix] if detected.prefix else None)
    denoiser = _build_denoiser(path, detected, sd, dtype).to(place.device)
    storage = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
               "fp8_e5m2": torch.float8_e5m2}.get(weight_dtype)
    if storage is not None:
        # weights stored in fp8, upcast layer by layer at compute time (diffusers layerwise casting)
        denoiser.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    model = make_model(detected.family, denoiser, str(path), _prediction_type(sd))
    if storage is not None:
        model = replace(model, sampling={**model.sampling, "weight_dtype": weight_dtype})
    return model


# --- VAE -------------------------------------------------------------------------------------

def make_vae(vae: torch.nn.Module, source: str) -> VaeModel:
    cfg = vae.config
    return VaeModel(vae=vae, scaling_factor=float(cfg.scaling_factor),
                    shift_factor=float(getattr(cfg, "shift_factor", None) or 0.0),
                    latent_channels=int(cfg.latent_channels), downscale=2 ** (len(cfg.block_out_channels) - 1),
                    source=source)


def _vae_format(latent_channels: int, family: ModelFamily | None) -> tuple[float, float | None]:
    if latent_channels == 16:
        return configs.VAE_LATENT_FORMAT[ModelFamily.FLUX_DEV]
    if family is not None:
        return configs.VAE_LATENT_FORMAT[family][0], None
    return configs.VAE_LATENT_FORMAT[ModelFamily.SD15][0], None


def _build_vae(path: Path, sd: dict[str, torch.Tensor], layout: str, family: ModelFamily | None,
               place: Placement) -> VaeModel:
    from nodes.diffusion import single_file as sf

    latent = sd["decoder.conv_in.weight"].shape[1] if "decoder.conv_in.weight" in sd else 4
    scale, shift = _vae_format(latent, family)
    dtype = vae_dtype(place.dtype_option, place.device)
    vae = _guard(path, sf.build_vae, sd, path.name, scale, shift, dtype, layout=layout)
    return make_vae(vae.to(place.device), str(path))


def load_vae(path: Path, place: Placement) -> VaeModel:
    """VAELoader: an LDM/BFL (``ae.safetensors``) or diffusers-layout VAE file."""
    detected, _ = inspect_file(path)
    if detected.kind == "checkpoint" and detected.vae_prefix:
        sd = strip_prefix(_load_tensors(path, [detected.vae_prefix]), detected.vae_prefix)
        return _build_vae(path, sd, "ldm", detected.family, place)
    if detected.kind != "vae":
        raise wrong_kind(path, detected, "a VAE")
    if detected.family is None:
        raise LoadError(f"{path.name} is a VAE with {detected.notes.get('latent_channels')} latent channels; "
                        f"supported are 4 (SD1.5/SDXL) and 16 (FLUX).")
    sd = _load_tensors(path)
    if detected.prefix:
        sd = strip_prefix(sd, detected.prefix)
    return _build_vae(path, sd, detected.layout, None, place)


# --- text encoders ---------------------------------------------------------------------------

ENCODER_NAMES = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}
FAMILY_NAMES_SHORT = families.FAMILY_NAMES
FAMILY_ENCODERS = {
    ModelFamily.SD15: ("clip_l",),
    ModelFamily.SDXL: ("clip_l", "clip_g"),
    ModelFamily.SDXL_REFINER: ("clip_g",),
    ModelFamily.FLUX_DEV: ("clip_l", "t5xxl"),
    ModelFamily.FLUX_SCHNELL: ("clip_l", "t5xxl"),
}


def _tokenizer_for(kind: str, path: Path, t5_dirs: Sequence[Path]):
    if kind in ("clip_l", "clip_g"):
        return clip_tokenizer(kind)
    folder = find_t5_tokenizer_dir(path, t5_dirs)
    if folder is None:
        raise LoadError(t5_tokenizer_help(path, t5_dirs))
    try:
        return load_t5_tokenizer(folder)
    except Exception as exc:  # noqa: BLE001 - tokenizers raise many types for bad files
        raise LoadError(f"the T5 tokenizer in {folder} could not be loaded ({exc}); "
                        f"it must hold tokenizer.json or spiece.model") from exc


def _check_t5_vocab(tokenizer, encoder, path: Path) -> None:
    rows = encoder.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise LoadError(f"the T5 tokenizer found for {path.name} has {len(tokenizer)} tokens but the encoder only "
                        f"{rows}; it belongs to another model")


def _encoder_entries(path: Path, detected: Detected, sd: dict[str, torch.Tensor], kinds: Sequence[str],
                     place: Placement, t5_dirs: Sequence[Path]) -> tuple[dict, dict]:
    from nodes.diffusion import single_file as sf

    encoders, tokenizers = {}, {}
    dtype = encoder_dtype(place.dtype_option, place.device)
    by_kind = {e.kind: e for e in detected.encoders}
    for kind in kinds:
        enc = by_kind.get(kind)
        if enc is None:
            continue
        tokenizers[kind] = _tokenizer_for(kind, path, t5_dirs)  # before the (slow) weights: fail fast
        module = _guard(path, sf.build_encoder, sd, kind, enc.prefix, enc.layout, path.name, dtype)
        if kind == "t5xxl":
            _check_t5_vocab(tokenizers[kind], module, path)
        encoders[kind] = module.to(place.device)
    return encoders, tokenizers


def load_text_encoder_files(paths: Sequence[Path], family: ModelFamily, place: Placement,
                            t5_dirs: Sequence[Path]) -> TextEncoders:
    """CLIPLoader / DualCLIPLoader: encoders from separate files, assigned to the family's roles.

    Each file's kind comes from its tensors; files whose kind is ambiguous (tiny CLIPs) take the
    role left open, in input order.
    """
    wanted = list(FAMILY_ENCODERS[family])
    encoders, tokenizers = {}, {}
    found: list[tuple[Path, Detected]] = []
    for path in paths:
        detected, _ = inspect_file(path)
        if detected.kind != "text_encoder":
            raise wrong_kind(path, detected, "a text encoder")
        if detected.unsupported:
            raise LoadError(f"{path.name} is {detected.describe()}, which is not supported")
        found.append((path, detected))
    open_roles = list(wanted)
    assigned: list[tuple[Path, Detected, str]] = []
    for path, det in found:
        kind = det.encoders[0].kind
        if kind in open_roles:
            open_roles.remove(kind)
            assigned.append((path, det, kind))
        else:
            assigned.append((path, det, ""))
    for i, (path, det, kind) in enumerate(assigned):
        if kind:
            continue
        clip_roles = [r for r in open_roles if r.startswith("clip") == det.encoders[0].kind.startswith("clip")]
        if not clip_roles:
            need = " + ".join(ENCODER_NAMES[k] for k in wanted)
            raise LoadError(f"{path.name} is {det.describe()}, but {FAMILY_NAMES_SHORT[family]} needs {need} "
                            f"(one file each).")
        role = clip_roles[0]
        open_roles.remove(role)
        enc = det.encoders[0]
        assigned[i] = (path, Detected(det.kind, det.family, det.layout, det.prefix,
                                      encoders=(families.Encoder(role, enc.prefix, enc.layout),)), role)
    for path, det, kind in assigned:
        sd = _load_tensors(path)
        e, t = _encoder_entries(path, det, sd, [kind], place, t5_dirs)
        encoders.update(e)
        tokenizers.update(t)
    missing = [k for k in wanted if k not in encoders]
    if missing:
        raise LoadError(f"{FAMILY_NAMES_SHORT[family]} needs {' + '.join(ENCODER_NAMES[k] for k in wanted)}; "
                        f"missing {', '.join(ENCODER_NAMES[k] for k in missing)}.")
    return TextEncoders(family=family, encoders=encoders, tokenizers=tokenizers,
                        source=" + ".join(str(p) for p in paths))



# --- checkpoints -----------------------------------------------------------------------------

@dataclass
class Bundle:
    """What CheckpointLoaderSimple caches: the three values of one file."""

    model: DiffusionModel
    clip: TextEncoders | None
    vae: VaeModel | None

    def size_bytes(self) -> int:
        total = 0
        modules = [self.model.denoiser]
        modules += list(self.clip.encoders.values()) if self.clip else []
        modules += [self.vae.vae] if self.vae else []
        for m in modules:
            total += sum(p.numel() * p.element_size() for p in m.parameters())
        return total


def load_checkpoint(path: Path, place: Placement, t5_dirs: Sequence[Path]) -> Bundle:
    """CheckpointLoaderSimple: an all-in-one file (SD1.5 / SDXL LDM layout, ComfyUI's FLUX layout)."""
    detected, _ = inspect_file(path)
    if detected.kind != "checkpoint":
        raise wrong_kind(path, detected, "a checkpoint")
    if detected.family is None:
        raise _unsupported(path, detected)
    family = detected.family
    sd = _load_tensors(path)
    dtype = resolve_dtype(place.dtype_option, place.device, family)
    denoiser = _build_denoiser(path, detected, sd, dtype).to(place.device)
    model = make_model(family, denoiser, str(path), _prediction_type(sd))
    clip = None
    if detected.encoders:
        encoders, tokenizers = _encoder_entries(path, detected, sd, FAMILY_ENCODERS[family], place, t5_dirs)
        clip = TextEncoders(family=family, encoders=encoders, tokenizers=tokenizers, source=str(path))
    vae = None
    if detected.vae_prefix:
        vae = _build_vae(path, strip_prefix(sd, detected.vae_prefix), "ldm", family, place)
    return Bundle(model, clip, vae)


# --- diffusers folders -----------------------------------------------------------------------

def load_diffusers_folder(folder: Path, place: Placement) -> Bundle:
    """DiffusersLoader: a ``save_pretrained`` pipeline folder (SD1.5, SDXL or FLUX), read offline."""
    import json

    index = folder / "model_index.json"
    if not index.is_file():
        raise LoadError(f"{folder.name} is not a diffusers pipeline folder (no model_index.json)")
    try:
        cls_name = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError) as exc:
        raise LoadError(f"{folder.name}/model_index.json is unreadable ({exc})") from exc
    family = {"StableDiffusionPipeline": ModelFamily.SD15, "StableDiffusionXLPipeline": ModelFamily.SDXL,
              "FluxPipeline": ModelFamily.FLUX_DEV}.get(cls_name)
    if family is None:
        raise LoadError(f"{folder.name}: pipeline {cls_name} is not supported (SD1.5, SDXL and FLUX are)")
    import diffusers
    import transformers

    dtype = resolve_dtype(place.dtype_option, place.device, family)
    edtype = encoder_dtype(place.dtype_option, place.device)

    def part(sub: str, lib, cls: str, dt):
        try:
            return getattr(lib, cls).from_pretrained(str(folder / sub), local_files_only=True, torch_dtype=dt).eval()
        except (OSError, ValueError) as exc:
            raise LoadError(f"{folder.name}/{sub} could not be loaded ({exc})") from exc

    if family.is_flux:
        denoiser = part("transformer", diffusers, "FluxTransformer2DModel", dtype)
        family = ModelFamily.FLUX_DEV if denoiser.config.guidance_embeds else ModelFamily.FLUX_SCHNELL
    else:
        denoiser = part("unet", diffusers, "UNet2DConditionModel", dtype)
    model = make_model(family, denoiser.to(place.device), str(folder))
    sched_cfg = folder / "scheduler" / "scheduler_config.json"
    if sched_cfg.is_file():
        cfg = json.loads(sched_cfg.read_text())
        pred = cfg.get("prediction_type")
        model = replace(model, scheduler_config={**model.scheduler_config, **cfg},
                        prediction_type=model.prediction_type if family.is_flux else (pred or "epsilon"))
    encoders, tokenizers = {}, {}
    te_parts = {"text_encoder": "clip_l", "text_encoder_2": "t5xxl" if family.is_flux else "clip_g"}
    for sub, kind in te_parts.items():
        if not (folder / sub).is_dir():
            continue
        cls = {"clip_l": "CLIPTextModel", "clip_g": "CLIPTextModelWithProjection", "t5xxl": "T5EncoderModel"}[kind]
        encoders[kind] = part(sub, transformers, cls, edtype).to(place.device)
        tok_dir = folder / ("tokenizer" if sub == "text_encoder" else "tokenizer_2")
        try:
            tokenizers[kind] = (clip_tokenizer(kind) if kind != "t5xxl" else load_t5_tokenizer(tok_dir))
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{folder.name}: tokenizer for {sub} could not be loaded ({exc})") from exc
    vae = make_vae(part("vae", diffusers, "AutoencoderKL", vae_dtype(place.dtype_option, place.device)).to(place.device),
                   str(folder))
    clip = TextEncoders(family=family, encoders=encoders, tokenizers=tokenizers, source=str(folder))
    return Bundle(model, clip, vae)
