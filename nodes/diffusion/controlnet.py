"""CONTROL_NET values: what a ControlNet file is, and loading it into a diffusers module.

Supported files, as users have them:

* **SD1.5 / SDXL, original layout** (lllyasviel's ``cldm``: ``control_model.input_blocks…``,
  ``zero_convs``, ``input_hint_block``, ``middle_block_out``; with or without the
  ``control_model.`` prefix, ``.safetensors`` or ``.pth``) → ``ControlNetModel``.
* **SD1.5 / SDXL, diffusers layout** in one file (``controlnet_cond_embedding…``,
  ``controlnet_down_blocks…``), or a diffusers folder (``models/controlnet/<dir>/config.json`` +
  weights; pick any weight file inside it, or the folder) → ``ControlNetModel``.
* **FLUX, diffusers layout** (InstantX, Shakker-Labs union: ``controlnet_x_embedder``,
  ``transformer_blocks``, ``controlnet_blocks``…) → ``FluxControlNetModel``; its hint is the VAE
  latent of the control image, so applying it needs a VAE.
* **FLUX, XLabs layout** (``double_blocks``, ``controlnet_blocks``, ``input_hint_block``,
  ``pos_embed_input``) → ``FluxControlNetModel`` with a pixel-space hint encoder
  (``controlnet_blocks_repeat`` semantics, as diffusers' FluxControlNetPipeline uses for XLabs).
* **"diff" ControlNets** (a ``difference`` marker; the weights are deltas from the base UNet):
  DiffControlNetLoader adds the model's UNet weights.

The config is always inferred from tensor shapes (:mod:`nodes.diffusion.controlnet_keys`), so the
same code loads a tiny test ControlNet and a full-size one.  Every user-caused failure is a
:class:`~nodes.diffusion.loading.LoadError` naming the file and the fix.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from nodes.diffusion import controlnet_keys as K
from nodes.diffusion import model_files
from nodes.diffusion.loading import LoadError, Placement, resolve_dtype
from nodes.diffusion.model_files import ModelFileError
from nodes.diffusion.types import DiffusionModel, ModelFamily

log = logging.getLogger(__name__)

FAMILY_LABEL = {ModelFamily.SD15: "SD1.5", ModelFamily.SDXL: "SDXL", ModelFamily.SDXL_REFINER: "SDXL refiner",
                ModelFamily.FLUX_DEV: "FLUX.1", ModelFamily.FLUX_SCHNELL: "FLUX.1"}


@dataclass(frozen=True, init=False)
class ControlNet:
    """CONTROL_NET: a ControlNet (through a model handle) and how to feed it.

    ``kind`` is "unet" (ControlNetModel, residuals for UNet skip connections) or "flux"
    (FluxControlNetModel, residuals for transformer blocks).  ``family`` is the model family it
    was trained for (FLUX ControlNets serve dev and schnell alike).  ``hint_space`` says what the
    hint is: "pixels" (0..1 image, SD ControlNets), "pixels_signed" (-1..1 image, XLabs) or
    "latent" (VAE latent of the image, InstantX/diffusers FLUX).  ``weights`` is the model
    manager's handle (or a :class:`Resident` module); ``module`` loads it back after an eviction.
    """

    weights: Any = field(hash=False, compare=False)
    kind: str = "unet"
    family: ModelFamily = ModelFamily.SD15
    layout: str = ""
    source: str = ""
    hint_space: str = "pixels"
    blocks_repeat: bool = False       # XLabs: residual i feeds transformer block j with j % n == i
    union_mode: int | None = None     # union ControlNets: the control type id (None: not a union model)

    def __init__(self, module: Any = None, kind: str = "unet", family: ModelFamily = ModelFamily.SD15,
                 layout: str = "", source: str = "", hint_space: str = "pixels", blocks_repeat: bool = False,
                 union_mode: int | None = None, *, weights: Any = None) -> None:
        from nodes.diffusion.types import _init, _ref

        _init(self, weights=_ref(weights, module, "module"), kind=kind, family=family, layout=layout, source=source,
              hint_space=hint_space, blocks_repeat=blocks_repeat, union_mode=union_mode)

    @property
    def module(self) -> torch.nn.Module:
        value = self.weights.get()
        return value.module if isinstance(value, ControlNet) else value

    def torch_modules(self) -> list:
        return [self.module]

    def model_handles(self) -> tuple:
        from nodes.diffusion.types import _handles

        return _handles(self.weights)

    @property
    def name(self) -> str:
        return Path(self.source).name or "ControlNet"

    @property
    def needs_vae(self) -> bool:
        return self.hint_space == "latent"

    def size_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.module.parameters())

    def describe(self) -> str:
        return f"{FAMILY_LABEL.get(self.family, self.family.value)} ControlNet"

    def fits(self, family: ModelFamily) -> bool:
        if self.family.is_flux:
            return family.is_flux
        if self.family.is_sdxl:
            return family.is_sdxl
        return family == self.family


# --------------------------------------------------------------------------------------------
# detection

@dataclass(frozen=True)
class ControlNetFile:
    """What :func:`detect` found: the layout, the family and the key prefix to strip."""

    layout: str                 # "ldm" | "diffusers_unet" | "flux_diffusers" | "flux_xlabs"
    family: ModelFamily | None
    prefix: str = ""
    difference: bool = False
    unsupported: str = ""


def _has_prefix(shapes: Mapping[str, tuple], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


def detect(shapes: Mapping[str, tuple], file_name: str = "") -> ControlNetFile:
    """Classify a ControlNet state dict by its tensor names (and shapes, for the family)."""
    difference = "difference" in shapes
    if _has_prefix(shapes, "lora_controlnet") or "lora_controlnet" in shapes:
        return ControlNetFile("control_lora", None, unsupported="Control-LoRA files are not supported")
    if _has_prefix(shapes, "adapter.") or "body.0.block1.weight" in shapes or "conv_in.weight" in shapes and \
            _has_prefix(shapes, "body."):
        return ControlNetFile("t2i_adapter", None, unsupported="T2I-Adapters are not supported")
    if "task_embedding" in shapes or _has_prefix(shapes, "control_add_embedding."):
        return ControlNetFile("union_sdxl", None, unsupported="ControlNet-Union (ProMax) models are not supported")
    if _has_prefix(shapes, "pos_embed.proj.") and _has_prefix(shapes, "transformer_blocks."):
        return ControlNetFile("sd3", None, unsupported="SD3 ControlNets are not supported (no SD3 models here)")
    if "double_blocks.0.img_attn.qkv.weight" in shapes and _has_prefix(shapes, "controlnet_blocks."):
        return ControlNetFile("flux_xlabs", ModelFamily.FLUX_DEV)
    if "controlnet_x_embedder.weight" in shapes or (
            _has_prefix(shapes, "transformer_blocks.") and _has_prefix(shapes, "controlnet_blocks.")):
        return ControlNetFile("flux_diffusers", ModelFamily.FLUX_DEV)
    prefix = K.LDM_PREFIX if _has_prefix(shapes, K.LDM_PREFIX + "input_blocks.") else ""
    if (prefix + "input_blocks.0.0.weight") in shapes and (prefix + "input_hint_block.0.weight") in shapes:
        body = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
        fam, unsupported = K.sd_controlnet_family(body)
        return ControlNetFile("ldm", fam, prefix, difference, unsupported)
    if "controlnet_cond_embedding.conv_in.weight" in shapes and _has_prefix(shapes, "down_blocks."):
        fam = ModelFamily.SDXL if "add_embedding.linear_1.weight" in shapes else ModelFamily.SD15
        ctx = next((s[1] for k, s in shapes.items() if k.endswith("attn2.to_k.weight")), None)
        if fam == ModelFamily.SD15 and ctx == 1024:
            return ControlNetFile("diffusers_unet", None, unsupported="Stable Diffusion 2.x")
        return ControlNetFile("diffusers_unet", fam, "", difference)
    return ControlNetFile("unknown", None, unsupported="not a ControlNet this loader recognises")


# --------------------------------------------------------------------------------------------
# building modules

def _load_strict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], file_name: str, dtype: torch.dtype,
                 what: str = "ControlNet") -> torch.nn.Module:
    from nodes.diffusion.single_file import _load_strict as load_strict

    unexpected = sorted(set(sd) - set(model.state_dict()))
    if unexpected:  # e.g. a union ControlNet's extra embeddings: loading without them would be silently wrong
        raise LoadError(f"{file_name}: it has {len(unexpected)} tensors a {what} of this structure does not have "
                        f"(e.g. {', '.join(unexpected[:3])}); it is a {what} variant that is not supported")
    try:
        return load_strict(model, sd, what, file_name, dtype)
    except ModelFileError as exc:
        raise LoadError(str(exc)) from exc


def _empty(cls, config: Mapping):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls.from_config(dict(config))


def build_sd_controlnet(sd: Mapping[str, torch.Tensor], family: ModelFamily, file_name: str,
                        dtype: torch.dtype, layout: str = "ldm", global_pool: bool = False):
    """ControlNetModel from an original-layout (no prefix) or diffusers-layout state dict."""
    from diffusers import ControlNetModel

    try:
        if layout == "ldm":
            cfg = K.infer_sd_controlnet_config(sd, family)
            state = K.sd_controlnet_from_original(sd, cfg)
        else:
            fam, unsupported, cfg = K.infer_diffusers_sd_controlnet_config(sd)
            if fam is None:
                raise LoadError(f"{file_name} is a {unsupported} ControlNet; supported are SD1.5, SDXL and FLUX.1")
            state = dict(sd)
    except K.ControlNetFormatError as exc:
        raise LoadError(f"{file_name}: {exc}") from exc
    cfg["global_pool_conditions"] = bool(global_pool)
    return _load_strict(_empty(ControlNetModel, cfg), state, file_name, dtype)


def build_flux_controlnet(sd: Mapping[str, torch.Tensor], file_name: str, dtype: torch.dtype, layout: str):
    """FluxControlNetModel from a diffusers-layout (InstantX) or XLabs state dict."""
    from diffusers import FluxControlNetModel

    try:
        state = K.xlabs_to_diffusers(sd) if layout == "flux_xlabs" else dict(sd)
        cfg = K.infer_flux_controlnet_config(state)
    except K.ControlNetFormatError as exc:
        raise LoadError(f"{file_name}: {exc}") from exc
    return _load_strict(_empty(FluxControlNetModel, cfg), state, file_name, dtype, "FLUX ControlNet")


def _is_shuffle(path: Path) -> bool:
    # ControlNet 1.1 "shuffle" pools its residuals globally; the file does not say so, only its
    # name does (the same rule ComfyUI applies).
    stem = path.stem.lower()
    return stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")


def _apply_difference(sd: dict[str, torch.Tensor], model: DiffusionModel, file_name: str) -> dict[str, torch.Tensor]:
    """A "diff" ControlNet stores ``weight - unet_weight`` for the encoder it shares with the UNet."""
    base = model.denoiser.state_dict()
    added = 0
    for k, v in sd.items():
        ref = base.get(k)
        if ref is not None and tuple(ref.shape) == tuple(v.shape):
            sd[k] = v.float() + ref.detach().to(device="cpu", dtype=torch.float32)
            added += 1
    if added == 0:
        raise LoadError(f"{file_name} is a difference ControlNet, but none of its tensors match the model's UNet; "
                        "use the model it was made for")
    return sd


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return model_files.load(path)
    except ModelFileError as exc:
        raise LoadError(str(exc)) from exc


def _shapes(path: Path) -> dict[str, tuple]:
    try:
        shapes, _ = model_files.inspect(path)
    except ModelFileError as exc:
        raise LoadError(str(exc)) from exc
    return shapes


def diffusers_folder(path: Path) -> Path | None:
    """The diffusers ControlNet folder ``path`` is (or a weight file inside of), if any."""
    folder = path if path.is_dir() else path.parent
    cfg = folder / "config.json"
    return folder if cfg.is_file() else None


def _folder_controlnet(folder: Path, place: Placement) -> "ControlNet":
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise LoadError(f"{folder.name}/config.json is unreadable ({exc})") from exc
    cls_name = cfg.get("_class_name", "")
    import diffusers

    if cls_name == "ControlNetModel":
        kind, family = "unet", (ModelFamily.SDXL if cfg.get("addition_embed_type") == "text_time" else ModelFamily.SD15)
        if family == ModelFamily.SD15 and cfg.get("cross_attention_dim") == 1024:
            raise LoadError(f"{folder.name} is a Stable Diffusion 2.x ControlNet; supported are SD1.5, SDXL and FLUX.1")
    elif cls_name == "FluxControlNetModel":
        kind, family = "flux", ModelFamily.FLUX_DEV
    else:
        raise LoadError(f"{folder.name}: {cls_name or 'this model'} is not a supported ControlNet "
                        "(ControlNetModel and FluxControlNetModel are)")
    dtype = resolve_dtype(place.dtype_option, place.device, family)
    try:
        module = getattr(diffusers, cls_name).from_pretrained(str(folder), local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise LoadError(f"{folder.name} could not be loaded ({exc})") from exc
    module = module.eval().requires_grad_(False).to(place.device)
    return _wrap(module, kind, family, "diffusers_folder", str(folder))


def _wrap(module: torch.nn.Module, kind: str, family: ModelFamily, layout: str, source: str) -> ControlNet:
    if kind == "unet":
        return ControlNet(module, "unet", family, layout, source, "pixels")
    has_hint_encoder = getattr(module, "input_hint_block", None) is not None
    union = 0 if getattr(module, "union", False) else None
    return ControlNet(module, "flux", family, layout, source, "pixels_signed" if has_hint_encoder else "latent",
                      blocks_repeat=has_hint_encoder, union_mode=union)


def load_controlnet(path: Path, place: Placement, model: DiffusionModel | None = None) -> ControlNet:
    """ControlNetLoader / DiffControlNetLoader: a ControlNet file or diffusers folder → :class:`ControlNet`.

    ``model`` (DiffControlNetLoader) is used for "diff" ControlNets and to refuse a ControlNet made
    for another model family right away.
    """
    path = Path(path)
    folder = diffusers_folder(path)
    if folder is not None:
        cn = _folder_controlnet(folder, place)
    else:
        if path.is_dir():
            raise LoadError(f"{path.name} is a folder without config.json; a diffusers ControlNet folder needs "
                            "config.json next to its weights")
        shapes = _shapes(path)
        found = detect(shapes, path.name)
        if found.family is None:
            raise LoadError(f"{path.name}: {found.unsupported}; supported are SD1.5, SDXL and FLUX.1 ControlNets "
                            "(original, diffusers, InstantX and XLabs layouts)")
        sd = _tensors(path)
        sd.pop("difference", None)
        if found.prefix:
            sd = model_files.strip_prefix(sd, found.prefix)
        sd = model_files.dequantize_scaled_fp8(sd)
        if found.difference:
            if model is None:
                raise LoadError(f"{path.name} is a difference ControlNet (weights relative to a base model); "
                                "load it with DiffControlNetLoader and connect the model")
            if found.layout == "ldm":
                cfg = K.infer_sd_controlnet_config(sd, found.family)
                sd = K.sd_controlnet_from_original(sd, cfg)
                found = ControlNetFile("diffusers_unet", found.family)
            sd = _apply_difference(sd, model, path.name)
        dtype = resolve_dtype(place.dtype_option, place.device, found.family)
        if found.layout in ("flux_xlabs", "flux_diffusers"):
            module = build_flux_controlnet(sd, path.name, dtype, found.layout)
            cn = _wrap(module.to(place.device), "flux", found.family, found.layout, str(path))
        else:
            module = build_sd_controlnet(sd, found.family, path.name, dtype, found.layout, _is_shuffle(path))
            cn = _wrap(module.to(place.device), "unet", found.family, found.layout, str(path))
    if model is not None:
        check_fits(cn, model.family)
    log.info("loaded %s from %s (%s layout)", cn.describe(), cn.name, cn.layout)
    return cn


def mismatch_message(cn: ControlNet, family: ModelFamily) -> str:
    return (f"{cn.name} is a {cn.describe()} but the model is {FAMILY_LABEL.get(family, family.value)}; "
            f"use a ControlNet made for {FAMILY_LABEL.get(family, family.value)} models")


def check_fits(cn: ControlNet, family: ModelFamily) -> None:
    if not cn.fits(family):
        raise LoadError(mismatch_message(cn, family))
