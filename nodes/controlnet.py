"""ControlNet nodes with ComfyUI's names, inputs and semantics.

* ``ControlNetLoader`` / ``DiffControlNetLoader``: a ControlNet file or diffusers folder from
  ``models/controlnet`` → CONTROL_NET (:mod:`nodes.diffusion.controlnet` knows the layouts).
* ``ControlNetApply`` (deprecated, positive only), ``ControlNetApplyAdvanced`` (positive and
  negative, start/end percent, optional VAE) and ``ControlNetApplySD3`` (the same with a required
  VAE; FLUX ControlNet workflows use it): put a :class:`~nodes.diffusion.controlnet_hook.ControlNetHook`
  into each conditioning entry's ``control`` option.  Applying a second ControlNet to conditioning
  that already has one chains them (the new hook's ``previous``); strength 0 returns the
  conditioning unchanged, exactly as ComfyUI does.
* ``InstructPixToPixConditioning``: VAE-encodes the pixels into the conditioning's
  ``concat_latent_image`` (the extra input channels of FLUX Canny/Depth and InstructPix2Pix models)
  and returns an empty latent of the same size.

Heavy libraries are imported inside ``execute`` so that building the node registry stays light.
"""
from __future__ import annotations

from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Combo, FileList, Float, Node, Output, Resource, Socket

_STRENGTH = dict(min=0.0, max=10.0, step=0.01)
_PERCENT = dict(min=0.0, max=1.0, step=0.001)


def _load(ctx: NodeContext, control_net_name: str, model: Any = None):
    from dataclasses import replace

    from nodes.devices import device_name
    from nodes.diffusion.controlnet import load_controlnet
    from nodes.diffusion.model_files import file_key
    from nodes.loaders import load_cached, placement, resolve_file

    path = resolve_file(ctx, "controlnet", control_net_name, "control_net_name")
    place = placement(ctx)
    key_path = path if path.is_file() else path / "config.json"
    key: tuple = ("controlnet", *file_key(key_path), str(place.device), place.dtype_option)
    if model is not None:
        # a "diff" ControlNet depends on the model's weights; a plain one is shared as ControlNetLoader's
        from nodes.diffusion.controlnet import detect
        from nodes.diffusion.model_files import inspect

        if path.is_file() and detect(inspect(path)[0]).difference:
            key += ("diff", model.source, model.patches)
    handle = load_cached(ctx, key, lambda: load_controlnet(path, place, model), "control_net_name", sources=[path],
                         label=f"{path.name} (ControlNet)", device=device_name(place.device))
    loaded = handle.get()
    # the output holds the handle, not the module: cached conditioning never pins the weights
    cn = replace(loaded, weights=handle)
    if model is not None and not cn.fits(model.family):
        from nodes.diffusion.controlnet import mismatch_message

        raise NodeError(mismatch_message(cn, model.family), input_name="control_net_name")
    p = next(loaded.module.parameters(), None)
    ctx.record(model_file=path.name, controlnet=cn.describe(), layout=cn.layout,
               **({"device": str(p.device), "dtype": str(p.dtype).replace("torch.", "")} if p is not None else {}))
    return cn


class ControlNetLoader(Node):
    """Loads a ControlNet (SD1.5/SDXL original or diffusers layout, FLUX InstantX/XLabs, diffusers folders)."""

    DISPLAY_NAME = "Load ControlNet Model"
    CATEGORY = "loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("control_net_name", FileList("controlnet")),)
    OUTPUTS = (Output("CONTROL_NET"),)

    def execute(self, ctx: NodeContext, control_net_name: str):
        return (_load(ctx, control_net_name),)


class DiffControlNetLoader(Node):
    """Loads a ControlNet for a model; "diff" ControlNets (weights relative to the base UNet) need it."""

    DISPLAY_NAME = "Load ControlNet Model (diff)"
    CATEGORY = "loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("model", "MODEL"), Combo("control_net_name", FileList("controlnet")))
    OUTPUTS = (Output("CONTROL_NET"),)

    def execute(self, ctx: NodeContext, model, control_net_name: str):
        return (_load(ctx, control_net_name, model),)


def _hint(image) -> Any:
    from nodes.diffusion.controlnet_hook import image_to_hint

    return image_to_hint(image)


def _check_vae(control_net, vae) -> None:
    if control_net.needs_vae and vae is None:
        raise NodeError(f"{control_net.name} (an InstantX/diffusers-style FLUX ControlNet) works on the VAE latent "
                        "of the control image: connect the model's VAE to the vae input", input_name="vae")


def apply_controlnet(positive: list, negative: list, control_net, image, strength: float, start_percent: float,
                     end_percent: float, vae=None) -> tuple[list, list]:
    """ComfyUI's Apply ControlNet: one hook per previous hook, shared by positive and negative.

    Entries that carried the same previous ControlNet get the same new hook, so uncond and cond
    rows still share one ControlNet call per step (what the diffusers pipelines do).
    """
    from nodes.diffusion.controlnet_hook import ControlNetHook

    if strength == 0:
        return positive, negative
    hint = _hint(image)
    hooks: dict[int, ControlNetHook] = {}
    out = []
    for conditioning in (positive, negative):
        entries = []
        for entry in conditioning:
            prev = entry.options.get("control")
            hook = hooks.get(id(prev))
            if hook is None:
                hook = ControlNetHook(control_net, hint, float(strength), float(start_percent), float(end_percent),
                                      vae=vae, previous=prev)
                hooks[id(prev)] = hook
            entries.append(entry.with_options(control=hook))
        out.append(entries)
    return out[0], out[1]


class ControlNetApply(Node):
    """Applies a ControlNet to one conditioning (the positive prompt); kept for old workflows."""

    DISPLAY_NAME = "Apply ControlNet (OLD)"
    CATEGORY = "conditioning/controlnet"
    DEPRECATED = True
    INPUTS = (Socket("conditioning", "CONDITIONING"), Socket("control_net", "CONTROL_NET"), Socket("image", "IMAGE"),
              Float("strength", 1.0, **_STRENGTH))
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: NodeContext, conditioning, control_net, image, strength: float = 1.0):
        from nodes.diffusion.controlnet_hook import ControlNetHook

        if strength == 0:
            return (conditioning,)
        _check_vae(control_net, None)
        hint = _hint(image)
        out = [entry.with_options(control=ControlNetHook(control_net, hint, float(strength),
                                                         previous=entry.options.get("control")))
               for entry in conditioning]
        return (out,)


class ControlNetApplyAdvanced(Node):
    """Applies a ControlNet to the positive and negative conditioning for part of the sampling."""

    DISPLAY_NAME = "Apply ControlNet"
    CATEGORY = "conditioning/controlnet"
    INPUTS = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("control_net", "CONTROL_NET"), Socket("image", "IMAGE"),
              Float("strength", 1.0, **_STRENGTH), Float("start_percent", 0.0, **_PERCENT),
              Float("end_percent", 1.0, **_PERCENT), Socket("vae", "VAE", optional=True))
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def execute(self, ctx: NodeContext, positive, negative, control_net, image, strength: float = 1.0,
                start_percent: float = 0.0, end_percent: float = 1.0, vae=None):
        if strength != 0:
            _check_vae(control_net, vae)
        return apply_controlnet(positive, negative, control_net, image, strength, start_percent, end_percent, vae)


class ControlNetApplySD3(Node):
    """Apply ControlNet with a VAE (used by FLUX ControlNet workflows); same as Apply ControlNet."""

    DISPLAY_NAME = "Apply Controlnet with VAE"
    CATEGORY = "conditioning/controlnet"
    DEPRECATED = True
    INPUTS = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("control_net", "CONTROL_NET"), Socket("vae", "VAE"), Socket("image", "IMAGE"),
              Float("strength", 1.0, **_STRENGTH), Float("start_percent", 0.0, **_PERCENT),
              Float("end_percent", 1.0, **_PERCENT))
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"))

    def execute(self, ctx: NodeContext, positive, negative, control_net, vae, image, strength: float = 1.0,
                start_percent: float = 0.0, end_percent: float = 1.0):
        return apply_controlnet(positive, negative, control_net, image, strength, start_percent, end_percent, vae)


class InstructPixToPixConditioning(Node):
    """Encodes an image into the conditioning as extra model input channels (FLUX Canny/Depth, InstructPix2Pix).

    Returns the conditioning with ``concat_latent_image`` set and an empty latent of the image's size.
    """

    CATEGORY = "conditioning/instructpix2pix"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
              Socket("pixels", "IMAGE"))
    OUTPUTS = (Output("CONDITIONING", "positive"), Output("CONDITIONING", "negative"), Output("LATENT", "latent"))

    def execute(self, ctx: NodeContext, positive, negative, vae, pixels):
        import torch

        from nodes.diffusion import vae_ops

        # encode from a channels-first contiguous batch, as diffusers' control pipelines do (the input
        # layout selects the convolution kernels: another layout drifts by ~1e-6)
        pixels = pixels[..., :3].movedim(-1, 1).contiguous().movedim(1, -1)
        try:
            concat = vae_ops.encode(vae, pixels)
        except ValueError as exc:
            raise NodeError(str(exc), input_name="pixels") from exc
        out = [[e.with_options(concat_latent_image=concat) for e in cond] for cond in (positive, negative)]
        return (out[0], out[1], {"samples": torch.zeros_like(concat)})
