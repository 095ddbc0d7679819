"""Model loader nodes (ComfyUI names, inputs and defaults): checkpoints, diffusion models, CLIP, VAE, LoRA.

Each node resolves its file name against the runtime's model folders and loads through the model
manager (``ctx.models``): every loaded part is a model handle keyed by path, mtime, size, device
and dtype option, so a file is loaded once and shared, and the MODEL/CLIP/VAE values of
``nodes.diffusion.types`` hold handles, never the weights.  LoRA nodes only add a
:class:`WeightPatch`; the base model stays loaded once and is patched at use time.

Heavy libraries are imported inside ``execute`` so that building the node registry stays light.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Combo, FileList, Float, Int, Node, Output, Resource, Socket

log = logging.getLogger(__name__)

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2", "ovis",
              "longcat_image", "cogvideox", "lens", "pixeldit", "ideogram4", "boogu", "krea2", "joyimage", "mage",
              "minimax", "yue2")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
DEVICE_OPTION = Combo("device", ("default", "cpu"), "default", optional=True, advanced=True)


def resolve_file(ctx: NodeContext, folder: str, name: str, input_name: str) -> Path:
    """The path of a listed model, or a NodeError naming the input and where the file should be."""
    path = ctx.paths.model_path(folder, name) if isinstance(name, str) and name else None
    if path is None:
        dirs = ", ".join(str(d) for d in ctx.paths.model_dirs(folder))
        raise NodeError(f"{input_name}: model file {name!r} not found in {folder} ({dirs})", input_name=input_name)
    return path


def placement(ctx: NodeContext, device_option: str = "default"):
    from nodes.diffusion.loading import Placement, resolve_device

    device = resolve_device("cpu" if device_option == "cpu" else ctx.options.device)
    return Placement(device, ctx.options.dtype)


def load_cached(ctx: NodeContext, key: tuple, loader: Callable[[], Any], input_name: str, **handle_kw: Any):
    """``ctx.models.load(key, loader, …)`` (a model handle, loaded now) with loading problems turned
    into a NodeError on ``input_name``."""
    from nodes.devices import TORCH_OPS

    handle_kw.setdefault("ops", TORCH_OPS)
    return guarded(input_name, lambda: ctx.models.load(key, loader, **handle_kw))


def guarded(input_name: str, fn: Callable[[], Any]) -> Any:
    """Run a loading step, turning LoadError (a user-facing problem) into a NodeError on ``input_name``."""
    from nodes.diffusion.loading import LoadError

    try:
        return fn()
    except LoadError as exc:
        raise NodeError(f"{input_name}: {exc}", input_name=input_name) from exc


def _file_key(path: Path) -> tuple:
    from nodes.diffusion.model_files import file_key

    return file_key(path)


def _record(ctx: NodeContext, path: Path, value: Any, family: Any = None) -> None:
    """Record the file, device and dtype a loader produced (and the models' handles, for the history)."""
    from graph_runtime.model_manager import model_handles_in

    handles = model_handles_in(value)
    info: dict[str, Any] = {"model_file": path.name}
    if handles:
        info.update(device=handles[0].device or handles[0].wanted_device, dtype=handles[0].dtype,
                    models=[{"label": h.label, "files": [Path(f).name for f in h.sources], "dtype": h.dtype,
                             "device": h.device or h.wanted_device, "size_bytes": h.size_bytes} for h in handles])
    if family is not None:
        info["family"] = getattr(family, "value", str(family))
    ctx.record(**info)


def _t5_dirs(ctx: NodeContext) -> list[Path]:
    return list(ctx.paths.model_dirs("text_encoders"))


class CheckpointLoaderSimple(Node):
    """Loads a diffusion model checkpoint; diffusion models are used to denoise latents."""

    DISPLAY_NAME = "Load Checkpoint"
    CATEGORY = "loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("ckpt_name", FileList("checkpoints"), tooltip="The name of the checkpoint (model) to load."),)
    OUTPUTS = (Output("MODEL", tooltip="The model used for denoising latents."),
               Output("CLIP", tooltip="The CLIP model used for encoding text prompts."),
               Output("VAE", tooltip="The VAE model used for encoding and decoding images to and from latent space."))

    def execute(self, ctx: NodeContext, ckpt_name: str):
        from nodes.diffusion.loading import load_checkpoint

        path = resolve_file(ctx, "checkpoints", ckpt_name, "ckpt_name")
        place = placement(ctx)
        storage = "fp8_e4m3fn" if ctx.options.fp8_weights else "default"  # --fp8-weights
        bundle = guarded("ckpt_name", lambda: load_checkpoint(ctx.models, path, place, _t5_dirs(ctx),
                                                              weight_dtype=storage))
        _record(ctx, path, bundle.model, bundle.model.family)
        return (bundle.model, bundle.clip, bundle.vae)


class UNETLoader(Node):
    """Loads a diffusion model (UNet or FLUX transformer) on its own."""

    DISPLAY_NAME = "Load Diffusion Model"
    CATEGORY = "advanced/loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("unet_name", FileList("diffusion_models")),
              Combo("weight_dtype", WEIGHT_DTYPES, "default"))
    OUTPUTS = (Output("MODEL"),)

    @classmethod
    def validate_inputs(cls, weight_dtype: str = "default", options: Any = None) -> bool | str:
        """fp8_e4m3fn_fast multiplies in fp8: refused at queue time where the device has no fp8 matmul."""
        if weight_dtype != "fp8_e4m3fn_fast":
            return True
        from nodes.quantize.capabilities import fp8_matmul_refusal

        refused = fp8_matmul_refusal(getattr(options, "device", "auto") if options is not None else "auto")
        return True if refused is None else refused

    def execute(self, ctx: NodeContext, unet_name: str, weight_dtype: str = "default"):
        from nodes.diffusion.loading import load_diffusion_model

        if weight_dtype not in WEIGHT_DTYPES:
            raise NodeError(f"weight_dtype: {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}",
                            input_name="weight_dtype")
        path = resolve_file(ctx, "diffusion_models", unet_name, "unet_name")
        place = placement(ctx)
        if weight_dtype == "default" and ctx.options.fp8_weights:  # --fp8-weights
            weight_dtype = "fp8_e4m3fn"
        model = guarded("unet_name", lambda: load_diffusion_model(ctx.models, path, place, weight_dtype))
        _record(ctx, path, model, model.family)
        if weight_dtype != "default":
            ctx.record(weight_dtype=weight_dtype)
        return (model,)


def _clip_family(kind: str, clip_type: str):
    from nodes.diffusion.types import ModelFamily

    if clip_type == "stable_diffusion":
        return ModelFamily.SDXL_REFINER if kind == "clip_g" else ModelFamily.SD15
    if clip_type == "sdxl":
        return ModelFamily.SDXL
    if clip_type == "flux":
        return ModelFamily.FLUX_DEV
    return None


def _load_text_encoders(ctx: NodeContext, names: list[tuple[str, str]], clip_type: str, device: str,
                        supported: tuple[str, ...]):
    from nodes.diffusion.loading import LoadError, inspect_file, load_text_encoder_files

    paths = [resolve_file(ctx, "text_encoders", n, input_name) for input_name, n in names]
    if clip_type not in supported:
        raise NodeError(f"type: {clip_type!r} text encoders are not supported here; supported: "
                        f"{', '.join(supported)}", input_name="type")
    try:
        detected, _ = inspect_file(paths[0])
    except LoadError as exc:
        raise NodeError(f"{names[0][0]}: {exc}", input_name=names[0][0]) from exc
    kind = detected.encoders[0].kind if detected.encoders else ""
    family = _clip_family(kind, clip_type)
    place = placement(ctx, device)
    # errors name the first input unless a message mentions another file
    input_name = names[0][0]
    try:
        return load_text_encoder_files(ctx.models, paths, family, place, _t5_dirs(ctx)), paths
    except LoadError as exc:
        for (inp, n), p in zip(names, paths):
            if p.name in str(exc):
                input_name = inp
                break
        raise NodeError(f"{input_name}: {exc}", input_name=input_name) from exc


class CLIPLoader(Node):
    """Loads one text encoder file (stable_diffusion: CLIP-L for SD1.5, or CLIP-G for the SDXL refiner), or a
    Qwen2.5-VL / Qwen3 / Gemma-3 language model in ComfyUI's single-file layout for TextGenerate."""

    DISPLAY_NAME = "Load CLIP"
    CATEGORY = "advanced/loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("clip_name", FileList("text_encoders")),
              Combo("type", CLIP_TYPES, "stable_diffusion"),
              DEVICE_OPTION)
    OUTPUTS = (Output("CLIP"),)

    def execute(self, ctx: NodeContext, clip_name: str, type: str = "stable_diffusion", device: str = "default"):
        from nodes.language.text_encoders.clip_loader import load_language_clip

        language = load_language_clip(ctx, resolve_file(ctx, "text_encoders", clip_name, "clip_name"), device)
        if language is not None:  # Qwen2.5-VL / Qwen3 / Gemma-3 single file: a CLIP for TextGenerate
            return (language,)
        clip, paths = _load_text_encoders(ctx, [("clip_name", clip_name)], type, device, ("stable_diffusion",))
        _record(ctx, paths[0], clip, clip.family)
        return (clip,)


class DualCLIPLoader(Node):
    """Loads two text encoder files: sdxl = CLIP-L + CLIP-G, flux = CLIP-L + T5-XXL (in either order)."""

    CATEGORY = "advanced/loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("clip_name1", FileList("text_encoders")),
              Combo("clip_name2", FileList("text_encoders")),
              Combo("type", DUAL_CLIP_TYPES, "sdxl"),
              DEVICE_OPTION)
    OUTPUTS = (Output("CLIP"),)

    def execute(self, ctx: NodeContext, clip_name1: str, clip_name2: str, type: str = "sdxl",
                device: str = "default"):
        clip, paths = _load_text_encoders(ctx, [("clip_name1", clip_name1), ("clip_name2", clip_name2)], type,
                                          device, ("sdxl", "flux"))
        _record(ctx, paths[0], clip, clip.family)
        return (clip,)


class VAELoader(Node):
    """Loads a VAE (SD/SDXL 4-channel or FLUX 16-channel ``ae.safetensors``)."""

    DISPLAY_NAME = "Load VAE"
    CATEGORY = "loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("vae_name", FileList("vae")),)
    OUTPUTS = (Output("VAE"),)

    def execute(self, ctx: NodeContext, vae_name: str):
        from nodes.diffusion.loading import load_vae

        path = resolve_file(ctx, "vae", vae_name, "vae_name")
        place = placement(ctx)
        vae = guarded("vae_name", lambda: load_vae(ctx.models, path, place))
        _record(ctx, path, vae)
        return (vae,)


class DiffusersLoader(Node):
    """Loads a diffusers pipeline folder (save_pretrained layout) from models/diffusers, offline."""

    CATEGORY = "advanced/loaders/deprecated"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("model_path", FileList("diffusers")),)
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    def execute(self, ctx: NodeContext, model_path: str):
        from nodes.diffusion.loading import load_diffusers_folder

        folder = resolve_file(ctx, "diffusers", model_path, "model_path")
        place = placement(ctx)
        bundle = guarded("model_path", lambda: load_diffusers_folder(ctx.models, folder, place))
        _record(ctx, folder, bundle.model, bundle.model.family)
        return (bundle.model, bundle.clip, bundle.vae)


# --- LoRA ------------------------------------------------------------------------------------

class _LoraFile:
    """A LoRA file's tensors in the model manager (size reported for the memory budget)."""

    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def _lora_tensors(ctx: NodeContext, path: Path) -> dict:
    from nodes.diffusion.loading import LoadError, inspect_file, wrong_kind
    from nodes.diffusion import model_files

    def load() -> _LoraFile:
        detected, _ = inspect_file(path)
        if detected.kind != "lora":
            raise wrong_kind(path, detected, "a LoRA")
        try:
            return _LoraFile(model_files.load(path))
        except model_files.ModelFileError as exc:
            raise LoadError(str(exc)) from exc

    from graph_runtime.model_manager import PLAIN_OPS

    return load_cached(ctx, ("lora", *_file_key(path)), load, "lora_name", ops=PLAIN_OPS,
                       sources=[path], label=f"{path.name} (LoRA)").get().tensors


def apply_lora(ctx: NodeContext, model, clip, lora_name: str, strength_model: float, strength_clip: float):
    """(model, clip) with the LoRA's patches added (inputs returned unchanged for zero strengths)."""
    from nodes.diffusion.lora import lora_patches

    use_model = model is not None and strength_model != 0
    use_clip = clip is not None and strength_clip != 0
    if not use_model and not use_clip:
        return model, clip
    path = resolve_file(ctx, "loras", lora_name, "lora_name")
    for value, name in ((model if use_model else None, "model"), (clip if use_clip else None, "clip")):
        quant = getattr(value, "quantization", "none")
        if quant not in ("none", "fp8_e4m3fn", "fp8_e5m2"):
            raise NodeError(f"{name}: LoRAs cannot patch {quant}-quantized weights; put the LoRA loader before "
                            f"QuantizeModel/QuantizeCLIP (the LoRA is then baked into the quantized weights)",
                            input_name=name)
    tensors = _lora_tensors(ctx, path)
    family = model.family if model is not None else clip.family
    mp, cp, matched, total = lora_patches(tensors, path.name, denoiser=model.denoiser if use_model else None,
                                          family=family, encoders=clip.encoders if use_clip else None,
                                          strength_model=strength_model, strength_clip=strength_clip)
    if matched == 0:
        raise NodeError(f"lora_name: {path.name} matches none of the layers of this "
                        f"{getattr(family, 'value', family)} model — is it a LoRA for another model family?",
                        input_name="lora_name")
    if matched < total:
        log.warning("LoRA %s: %d of %d modules matched this model; the rest were ignored", path.name, matched, total)
    ctx.record(lora=path.name, lora_modules=matched)
    new_model = model.with_patch(mp) if use_model and mp is not None and mp.deltas else model
    new_clip = replace(clip, patches=clip.patches + (cp,)) if use_clip and cp is not None and cp.deltas else clip
    return new_model, new_clip


class LoraLoader(Node):
    """Applies a LoRA to the diffusion model and the text encoder (as patches; the base stays loaded)."""

    DISPLAY_NAME = "Load LoRA"
    CATEGORY = "loaders"
    INPUTS = (Socket("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
              Socket("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
              Combo("lora_name", FileList("loras"), tooltip="The name of the LoRA."),
              Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly to modify the diffusion model. This value can be negative."),
              Float("strength_clip", 1.0, min=-100.0, max=100.0, step=0.01,
                    tooltip="How strongly to modify the CLIP model. This value can be negative."))
    OUTPUTS = (Output("MODEL", tooltip="The modified diffusion model."),
               Output("CLIP", tooltip="The modified CLIP model."))

    def execute(self, ctx: NodeContext, model, clip, lora_name: str, strength_model: float = 1.0,
                strength_clip: float = 1.0):
        return apply_lora(ctx, model, clip, lora_name, strength_model, strength_clip)


class LoraLoaderModelOnly(Node):
    """Applies a LoRA to the diffusion model only."""

    CATEGORY = "loaders"
    INPUTS = (Socket("model", "MODEL"),
              Combo("lora_name", FileList("loras")),
              Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01))
    OUTPUTS = (Output("MODEL"),)

    def execute(self, ctx: NodeContext, model, lora_name: str, strength_model: float = 1.0):
        return (apply_lora(ctx, model, None, lora_name, strength_model, 0.0)[0],)


class CLIPSetLastLayer(Node):
    """Stops the text encoder at an earlier layer (-1 = last, -2 = penultimate — "clip skip")."""

    DISPLAY_NAME = "CLIP Set Last Layer"
    CATEGORY = "conditioning"
    INPUTS = (Socket("clip", "CLIP"),
              Int("stop_at_clip_layer", -1, min=-24, max=-1, step=1))
    OUTPUTS = (Output("CLIP"),)

    def execute(self, ctx: NodeContext, clip, stop_at_clip_layer: int = -1):
        if clip is None:
            raise NodeError("clip: no CLIP model (the checkpoint has no text encoder?)", input_name="clip")
        return (replace(clip, clip_skip=int(stop_at_clip_layer)),)
