"""Turn model files into MODEL / CLIP / VAE values (the work behind the loader nodes).

Why a module of its own: the nodes stay thin (resolve the file name, call one function with
``ctx.models``), while the rules — what a file is, which parts it holds, which config and
tokenizer go with it — live here where tests can call them directly.  Every failure a user can
cause (wrong file, truncated file, missing tokenizer) surfaces as :class:`LoadError`, which the
nodes turn into a NodeError naming their input.

Every loaded part (a denoiser, a set of text encoders, a VAE) is a model handle owned by the
model manager (:mod:`graph_runtime.model_manager`): the MODEL/CLIP/VAE values hold handles, so
the output cache never pins weights, and an evicted part is read again from its file on use.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import torch

from graph_runtime.model_manager import ModelHandle, ModelManager, as_ref
from nodes import devices
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
    return devices.resolve_device(option)


def resolve_dtype(option: str | None, device: torch.device, family: ModelFamily | None = None) -> torch.dtype:
    """The denoiser's dtype (fp32 on CPU; bf16 where supported, else fp16) — same rule as the sampler."""
    return devices.precision("denoiser", device, option, flux=family is not None and family.is_flux)


def encoder_dtype(option: str | None, device: torch.device, kind: str = "clip_l") -> torch.dtype:
    """Text encoders: fp32 on CPU; bf16 where supported; T5 stays fp32 where only fp16 is (it overflows)."""
    return devices.precision("t5" if kind == "t5xxl" else "text_encoder", device, option)


def vae_dtype(option: str | None, device: torch.device) -> torch.dtype:
    """VAEs: fp32 on CPU; bf16 where supported, else fp32 (SD/SDXL VAEs overflow in fp16)."""
    return devices.precision("vae", device, option)


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype_option: str = "auto"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _estimate(shapes: dict, prefixes: Sequence[str] | None, dtype: torch.dtype) -> int:
    """Bytes the tensors under ``prefixes`` will take once cast to ``dtype`` (placement before loading)."""
    import math

    size = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(shape) * size for name, shape in shapes.items()
               if prefixes is None or name.startswith(tuple(prefixes)))


# --- inspection ------------------------------------------------------------------------------

def inspect_file(path: Path) -> tuple[Detected, dict[str, str]]:
    detected, _, meta = inspect_shapes(path)
    return detected, meta


def inspect_shapes(path: Path) -> tuple[Detected, dict[str, tuple], dict[str, str]]:
    """(what the file is, its tensor shapes, its metadata) from the header alone."""
    try:
        shapes, meta = model_files.inspect(path)
    except ModelFileError as exc:
        raise LoadError(str(exc)) from exc
    return families.detect(shapes), shapes, meta


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


# --- handles ---------------------------------------------------------------------------------

def _handle(models: ModelManager, key: tuple, loader, *, place: Placement, sources: Sequence[Path], label: str,
            estimate: int | None, dtype: torch.dtype, options: dict | None = None) -> ModelHandle:
    """Register (or find) the manager's handle for one loadable part, and load it now.

    Loading now keeps errors on the loader node that caused them; later uses reload through the
    same ``loader`` if the manager evicted the part meanwhile.
    """
    return models.load(key, loader, ops=devices.TORCH_OPS, device=devices.device_name(place.device),
                       sources=[str(p) for p in sources], label=label, estimate_bytes=estimate,
                       dtype=_dtype_name(dtype), options=options)


def _base_key(kind: str, path: Path, place: Placement) -> tuple:
    return (kind, *model_files.file_key(path), str(place.device), place.dtype_option)


# --- denoisers -------------------------------------------------------------------------------

def make_model(family: ModelFamily, denoiser, source: str, prediction_type: str | None = None, *,
               quantization: str = "none") -> DiffusionModel:
    """MODEL metadata for ``family`` around a denoiser ref (a handle) or module."""
    pred = prediction_type or ("flow" if family.is_flux else "epsilon")
    scale, shift = configs.VAE_LATENT_FORMAT[family]
    return DiffusionModel(family=family, weights=as_ref(denoiser), prediction_type=pred,
                          scheduler_config=configs.scheduler_config(family, pred if pred != "flow" else "epsilon"),
                          source=source, latent_scale=scale, latent_shift=shift, quantization=quantization)


def _build_denoiser(path: Path, detected: Detected, sd: dict[str, torch.Tensor], dtype: torch.dtype,
                    storage_of=None):
    from nodes.diffusion import single_file as sf

    if detected.family is None:
        raise _unsupported(path, detected)
    body = strip_prefix(sd, detected.prefix) if detected.prefix else sd
    if detected.family.is_flux:
        return _guard(path, sf.build_flux_transformer, body, path.name, dtype, layout=detected.layout,
                      storage_of=storage_of)
    return _guard(path, sf.build_sd_unet, body, detected.family, path.name, dtype, layout=detected.layout,
                  storage_of=storage_of)


def _fp8_storage_of(storage: torch.dtype):
    """For the builders: the tensors fp8 storage will hold, cast straight to ``storage`` while loading."""
    def storage_of(model: torch.nn.Module) -> dict[str, torch.dtype]:
        from nodes.quantize.methods import fp8_tensor_names

        # weights only: biases are small, and fp8 matmul keeps them in the compute dtype
        return dict.fromkeys((n for n in fp8_tensor_names(model) if n.endswith(".weight")), storage)

    return storage_of


def _prediction_type(sd_keys: Iterable[str]) -> str | None:
    """v-prediction checkpoints mark themselves with a ``v_pred`` key (e.g. NoobAI-XL v-pred)."""
    return "v_prediction" if "v_pred" in set(sd_keys) else None


FP8_STORAGE = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
               "fp8_e5m2": torch.float8_e5m2}


def _denoiser_loader(path: Path, detected: Detected, dtype: torch.dtype, device: torch.device,
                     weight_dtype: str = "default", quantization: str = "none"):
    prefixes = [detected.prefix] if detected.prefix else None

    def load() -> torch.nn.Module:
        sd = _load_tensors(path, prefixes)
        storage = FP8_STORAGE.get(weight_dtype)
        # built on the CPU; the model manager moves it to ``device`` (or streams it: --lowvram).  fp8:
        # the weights are cast to fp8 as they are assigned (the compute-dtype model never exists)
        denoiser = _build_denoiser(path, detected, sd, dtype, _fp8_storage_of(storage) if storage else None)
        del sd
        if weight_dtype == "fp8_e4m3fn_fast":  # Linear products in fp8 (torch._scaled_mm), where the device can
            from nodes.quantize.capabilities import fp8_matmul_refusal
            from nodes.quantize.methods import fp8_matmul

            refused = fp8_matmul_refusal(str(device))
            if refused:
                raise LoadError(f"{path.name}: {refused}")
            fp8_matmul(denoiser, dtype)
        elif storage is not None:
            # weights stored in fp8, upcast layer by layer at compute time (diffusers layerwise casting)
            from nodes.quantize.methods import fp8_storage

            fp8_storage(denoiser, storage, dtype)
        if quantization != "none":  # e.g. CheckpointLoaderNF4: Linear layers back to NF4
            from nodes.quantize.methods import QuantizeError, quantize_module

            try:
                quantize_module(denoiser, quantization, dtype, device)  # bitsandbytes quantizes on the move
            except QuantizeError as exc:
                raise LoadError(f"{path.name}: {exc}") from exc
        return denoiser

    return load


def denoiser_handle(models: ModelManager, path: Path, place: Placement, kind: str = "unet",
                    weight_dtype: str = "default", detected: Detected | None = None,
                    shapes: dict | None = None, quantization: str = "none") -> tuple[ModelHandle, Detected, dict]:
    """The handle of a file's denoiser (a diffusion model file, or a checkpoint's UNet/transformer)."""
    if detected is None or shapes is None:
        detected, shapes, _ = inspect_shapes(path)
    if detected.family is None:
        raise _unsupported(path, detected)
    dtype = resolve_dtype(place.dtype_option, place.device, detected.family)
    prefixes = [detected.prefix] if detected.prefix else None
    estimate = _estimate(shapes, prefixes, dtype)
    if weight_dtype in FP8_STORAGE:
        estimate //= max(torch.empty((), dtype=dtype).element_size(), 1)
    key = _base_key(kind, path, place) + (("model",) if kind == "checkpoint" else ()) + (weight_dtype,)
    if quantization != "none":
        key += (quantization,)
    name = families.FAMILY_NAMES.get(detected.family, str(detected.family))
    options = {"weight_dtype": weight_dtype} if weight_dtype != "default" else {}
    if quantization != "none":
        options["quantization"] = quantization
    loader = _denoiser_loader(path, detected, dtype, place.device, weight_dtype, quantization)
    handle = _handle(models, key, loader, place=place,
                     sources=[path], label=f"{path.name} ({name} denoiser)", estimate=estimate, dtype=dtype,
                     options=options or None)
    return handle, detected, shapes


def load_diffusion_model(models: ModelManager, path: Path, place: Placement,
                         weight_dtype: str = "default") -> DiffusionModel:
    """UNETLoader: a denoiser file (LDM/SGM UNet, BFL or diffusers FLUX, diffusers UNet)."""
    detected, shapes, _ = inspect_shapes(path)
    if detected.kind == "checkpoint":
        pass  # a full checkpoint in diffusion_models/: take its denoiser, as ComfyUI does
    elif detected.kind != "diffusion_model":
        raise wrong_kind(path, detected, "a diffusion model (UNet / FLUX transformer)")
    handle, detected, shapes = denoiser_handle(models, path, place, "unet", weight_dtype, detected, shapes)
    quant = weight_dtype.replace("_fast", "") if weight_dtype in FP8_STORAGE else "none"
    model = make_model(detected.family, handle, str(path), _prediction_type(shapes), quantization=quant)
    if weight_dtype in FP8_STORAGE:
        model = replace(model, sampling={**model.sampling, "weight_dtype": weight_dtype})
    return model


# --- VAE -------------------------------------------------------------------------------------

def make_vae(vae, source: str) -> VaeModel:
    """VAE metadata read from the loaded AutoencoderKL's config, around its ref (a handle) or module."""
    ref = as_ref(vae)
    cfg = ref.get().config
    return VaeModel(weights=ref, scaling_factor=float(cfg.scaling_factor),
                    shift_factor=float(getattr(cfg, "shift_factor", None) or 0.0),
                    latent_channels=int(cfg.latent_channels), downscale=2 ** (len(cfg.block_out_channels) - 1),
                    source=source)


def _vae_format(latent_channels: int, family: ModelFamily | None) -> tuple[float, float | None]:
    if latent_channels == 16:
        return configs.VAE_LATENT_FORMAT[ModelFamily.FLUX_DEV]
    if family is not None:
        return configs.VAE_LATENT_FORMAT[family][0], None
    return configs.VAE_LATENT_FORMAT[ModelFamily.SD15][0], None


def _vae_loader(path: Path, prefix: str, layout: str, family: ModelFamily | None, place: Placement):
    from nodes.diffusion import single_file as sf

    def load() -> torch.nn.Module:
        sd = _load_tensors(path, [prefix] if prefix else None)
        if prefix:
            sd = strip_prefix(sd, prefix)
        latent = sd["decoder.conv_in.weight"].shape[1] if "decoder.conv_in.weight" in sd else 4
        scale, shift = _vae_format(latent, family)
        return _guard(path, sf.build_vae, sd, path.name, scale, shift, vae_dtype(place.dtype_option, place.device),
                      layout=layout)  # on the CPU: the model manager places it

    return load


def _vae_handle(models: ModelManager, path: Path, key: tuple, prefix: str, layout: str, family: ModelFamily | None,
                place: Placement, shapes: dict) -> ModelHandle:
    dtype = vae_dtype(place.dtype_option, place.device)
    return _handle(models, key, _vae_loader(path, prefix, layout, family, place), place=place, sources=[path],
                   label=f"{path.name} (VAE)", estimate=_estimate(shapes, [prefix] if prefix else None, dtype),
                   dtype=dtype)


def load_vae(models: ModelManager, path: Path, place: Placement) -> VaeModel:
    """VAELoader: an LDM/BFL (``ae.safetensors``) or diffusers-layout VAE file."""
    detected, shapes, _ = inspect_shapes(path)
    key = _base_key("vae", path, place)
    if detected.kind == "checkpoint" and detected.vae_prefix:
        handle = _vae_handle(models, path, key, detected.vae_prefix, "ldm", detected.family, place, shapes)
        return make_vae(handle, str(path))
    if detected.kind != "vae":
        raise wrong_kind(path, detected, "a VAE")
    if detected.family is None:
        raise LoadError(f"{path.name} is a VAE with {detected.notes.get('latent_channels')} latent channels; "
                        f"supported are 4 (SD1.5/SDXL) and 16 (FLUX).")
    handle = _vae_handle(models, path, key, detected.prefix, detected.layout, None, place, shapes)
    return make_vae(handle, str(path))


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


@dataclass(frozen=True)
class _EncoderPart:
    """One text encoder to build: from which file, under which prefix, in which role."""

    path: Path
    kind: str          # the role: clip_l / clip_g / t5xxl
    prefix: str
    layout: str


def _load_gguf_encoder(part: _EncoderPart, dtype: torch.dtype) -> torch.nn.Module:
    from nodes.quantize import gguf

    try:
        return gguf.load_encoder(part.path, part.kind, part.prefix, part.layout, dtype)
    except gguf.GGUFError as exc:
        raise LoadError(str(exc)) from exc


def _encoders_loader(parts: Sequence[_EncoderPart], tokenizers: dict, place: Placement):
    from nodes.diffusion import single_file as sf

    def load() -> dict:
        encoders = {}
        for part in parts:
            dtype = encoder_dtype(place.dtype_option, place.device, part.kind)
            if part.path.suffix.lower() == ".gguf":  # Linear weights stay GGUF-quantized
                module = _load_gguf_encoder(part, dtype)
            else:
                sd = _load_tensors(part.path, [part.prefix] if part.prefix else None)
                module = _guard(part.path, sf.build_encoder, sd, part.kind, part.prefix, part.layout, part.path.name,
                                dtype)
                del sd
            if part.kind == "t5xxl":
                _check_t5_vocab(tokenizers[part.kind], module, part.path)
            encoders[part.kind] = module  # on the CPU: the model manager places it
        return encoders

    return load


def _encoders_handle(models: ModelManager, key: tuple, parts: Sequence[_EncoderPart], tokenizers: dict,
                     place: Placement, shapes: dict[Path, dict], label: str) -> ModelHandle:
    estimate = sum(_estimate(shapes[p.path], [p.prefix] if p.prefix else None,
                             encoder_dtype(place.dtype_option, place.device, p.kind)) for p in parts)
    dtype = encoder_dtype(place.dtype_option, place.device)
    return _handle(models, key, _encoders_loader(parts, tokenizers, place), place=place,
                   sources=list(dict.fromkeys(p.path for p in parts)), label=label, estimate=estimate, dtype=dtype)


def load_text_encoder_files(models: ModelManager, paths: Sequence[Path], family: ModelFamily, place: Placement,
                            t5_dirs: Sequence[Path], key_kind: str = "clip") -> TextEncoders:
    """CLIPLoader / DualCLIPLoader: encoders from separate files, assigned to the family's roles.

    Each file's kind comes from its tensors; files whose kind is ambiguous (tiny CLIPs) take the
    role left open, in input order.
    """
    wanted = list(FAMILY_ENCODERS[family])
    found: list[tuple[Path, Detected]] = []
    shapes: dict[Path, dict] = {}
    for path in paths:
        detected, shapes[path], _ = inspect_shapes(path)
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
        assigned[i] = (path, det, role)
    missing = [k for k in wanted if k not in {kind for _, _, kind in assigned}]
    if missing:
        raise LoadError(f"{FAMILY_NAMES_SHORT[family]} needs {' + '.join(ENCODER_NAMES[k] for k in wanted)}; "
                        f"missing {', '.join(ENCODER_NAMES[k] for k in missing)}.")
    parts = [_EncoderPart(path, kind, det.encoders[0].prefix, det.encoders[0].layout) for path, det, kind in assigned]
    tokenizers = {part.kind: _tokenizer_for(part.kind, part.path, t5_dirs) for part in parts}  # fail fast
    key = (key_kind, family.value, *[k for p in paths for k in model_files.file_key(p)], str(place.device),
           place.dtype_option)
    label = " + ".join(p.name for p in paths) + " (text encoders)"
    handle = _encoders_handle(models, key, parts, tokenizers, place, shapes, label)
    return TextEncoders(family=family, weights=handle, tokenizers=tokenizers,
                        source=" + ".join(str(p) for p in paths))


# --- checkpoints -----------------------------------------------------------------------------

@dataclass
class Bundle:
    """What CheckpointLoaderSimple returns: the three values of one file (each holding a handle)."""

    model: DiffusionModel
    clip: TextEncoders | None
    vae: VaeModel | None

    def model_handles(self) -> tuple:
        return tuple(h for v in (self.model, self.clip, self.vae) if v is not None for h in v.model_handles())


def load_checkpoint(models: ModelManager, path: Path, place: Placement, t5_dirs: Sequence[Path],
                    quantization: str = "none", weight_dtype: str = "default") -> Bundle:
    """CheckpointLoaderSimple: an all-in-one file (SD1.5 / SDXL LDM layout, ComfyUI's FLUX layout).

    The denoiser, the text encoders and the VAE are three handles, each reading only its own
    tensors, so the manager can evict the text encoders while the sampler runs.
    """
    detected, shapes, _ = inspect_shapes(path)
    if detected.kind != "checkpoint":
        raise wrong_kind(path, detected, "a checkpoint")
    if detected.family is None:
        raise _unsupported(path, detected)
    family = detected.family
    handle, _, _ = denoiser_handle(models, path, place, "checkpoint", weight_dtype, detected=detected, shapes=shapes,
                                   quantization=quantization)
    if weight_dtype in FP8_STORAGE:
        quantization = weight_dtype.replace("_fast", "")
    model = make_model(family, handle, str(path), _prediction_type(shapes), quantization=quantization)
    clip = None
    if detected.encoders:
        by_kind = {e.kind: e for e in detected.encoders}
        parts = [_EncoderPart(path, kind, by_kind[kind].prefix, by_kind[kind].layout)
                 for kind in FAMILY_ENCODERS[family] if kind in by_kind]
        tokenizers = {part.kind: _tokenizer_for(part.kind, path, t5_dirs) for part in parts}
        enc_handle = _encoders_handle(models, _base_key("checkpoint", path, place) + ("clip",), parts, tokenizers,
                                      place, {path: shapes}, f"{path.name} (text encoders)")
        clip = TextEncoders(family=family, weights=enc_handle, tokenizers=tokenizers, source=str(path))
    vae = None
    if detected.vae_prefix:
        vae_h = _vae_handle(models, path, _base_key("checkpoint", path, place) + ("vae",), detected.vae_prefix,
                            "ldm", family, place, shapes)
        vae = make_vae(vae_h, str(path))
    return Bundle(model, clip, vae)


# --- diffusers folders -----------------------------------------------------------------------

def load_diffusers_folder(models: ModelManager, folder: Path, place: Placement) -> Bundle:
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
    base = ("diffusers", str(folder.resolve()), index.stat().st_mtime_ns, str(place.device), place.dtype_option)

    def part(sub: str, lib, cls: str, dt):
        try:
            module = getattr(lib, cls).from_pretrained(str(folder / sub), local_files_only=True, torch_dtype=dt)
        except (OSError, ValueError) as exc:
            raise LoadError(f"{folder.name}/{sub} could not be loaded ({exc})") from exc
        return module.eval()  # on the CPU: the model manager places it

    def part_handle(sub: str, lib, cls: str, dt) -> ModelHandle:
        return _handle(models, base + (sub,), lambda: part(sub, lib, cls, dt), place=place, sources=[folder / sub],
                       label=f"{folder.name}/{sub}", estimate=None, dtype=dt)

    if family.is_flux:
        den_h = part_handle("transformer", diffusers, "FluxTransformer2DModel", dtype)
        family = ModelFamily.FLUX_DEV if den_h.get().config.guidance_embeds else ModelFamily.FLUX_SCHNELL
    else:
        den_h = part_handle("unet", diffusers, "UNet2DConditionModel", dtype)
    model = make_model(family, den_h, str(folder))
    sched_cfg = folder / "scheduler" / "scheduler_config.json"
    if sched_cfg.is_file():
        cfg = json.loads(sched_cfg.read_text())
        pred = cfg.get("prediction_type")
        model = replace(model, scheduler_config={**model.scheduler_config, **cfg},
                        prediction_type=model.prediction_type if family.is_flux else (pred or "epsilon"))
    tokenizers: dict = {}
    te_parts = {"text_encoder": "clip_l", "text_encoder_2": "t5xxl" if family.is_flux else "clip_g"}
    te_parts = {sub: kind for sub, kind in te_parts.items() if (folder / sub).is_dir()}
    for sub, kind in te_parts.items():
        tok_dir = folder / ("tokenizer" if sub == "text_encoder" else "tokenizer_2")
        try:
            tokenizers[kind] = (clip_tokenizer(kind) if kind != "t5xxl" else load_t5_tokenizer(tok_dir))
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{folder.name}: tokenizer for {sub} could not be loaded ({exc})") from exc
    classes = {"clip_l": "CLIPTextModel", "clip_g": "CLIPTextModelWithProjection", "t5xxl": "T5EncoderModel"}
    edtype = encoder_dtype(place.dtype_option, place.device)

    def encoders() -> dict:
        return {kind: part(sub, transformers, classes[kind], encoder_dtype(place.dtype_option, place.device, kind))
                for sub, kind in te_parts.items()}

    enc_h = _handle(models, base + ("text_encoders",), encoders, place=place,
                    sources=[folder / sub for sub in te_parts], label=f"{folder.name} (text encoders)", estimate=None,
                    dtype=edtype)
    vae_h = part_handle("vae", diffusers, "AutoencoderKL", vae_dtype(place.dtype_option, place.device))
    clip = TextEncoders(family=family, weights=enc_h, tokenizers=tokenizers, source=str(folder))
    return Bundle(model, clip, make_vae(vae_h, str(folder)))
