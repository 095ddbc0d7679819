"""Upscale-model nodes: UpscaleModelLoader and ImageUpscaleWithModel (spandrel architectures).

spandrel recognises ESRGAN/Real-ESRGAN, SwinIR, HAT, DAT, … from a state dict alone, so any
``upscale_models`` file ComfyUI can use loads here.  Large images are processed in overlapping
tiles (512 px, 32 px overlap, blended) so memory stays bounded.
"""
from __future__ import annotations

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Combo, FileList, Node, Output, Resource, Socket

TILE = 512
OVERLAP = 32


class UpscaleModelLoader(Node):
    """Loads a super-resolution model (ESRGAN, SwinIR, …) from models/upscale_models."""

    DISPLAY_NAME = "Load Upscale Model"
    CATEGORY = "loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("model_name", FileList("upscale_models")),)
    OUTPUTS = (Output("UPSCALE_MODEL"),)

    def execute(self, ctx: NodeContext, model_name: str):
        from nodes.loaders import _file_key, load_cached, placement, resolve_file

        path = resolve_file(ctx, "upscale_models", model_name, "model_name")
        place = placement(ctx)
        from nodes.devices import device_name

        handle = load_cached(ctx, ("upscale", *_file_key(path), str(place.device)),
                             lambda: load_upscale_model(path, place.device), "model_name", sources=[path],
                             label=f"{path.name} (upscaler)", device=device_name(place.device))
        desc = handle.get()
        ctx.record(model_file=path.name, device=str(place.device), architecture=desc.architecture.id,
                   scale=desc.scale)
        return (handle,)  # UPSCALE_MODEL is the handle: the cache never pins the weights


def load_upscale_model(path, device):
    """A spandrel ImageModelDescriptor on ``device`` (LoadError for unknown or broken files)."""
    import spandrel

    from nodes.diffusion import model_files
    from nodes.diffusion.loading import LoadError

    try:
        sd = model_files.load(path)
    except model_files.ModelFileError as exc:
        raise LoadError(str(exc)) from exc
    if any(k.startswith("module.") for k in sd):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(sd)
    except Exception as exc:  # noqa: BLE001 - spandrel raises UnsupportedModelError and shape errors
        raise LoadError(f"{path.name} is not an upscale model spandrel recognises ({exc})") from exc
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise LoadError(f"{path.name} is a {desc.architecture.name} model, not an image upscaler")
    return desc.to(device).eval()


def _weight_window(h: int, w: int, overlap: int, device, dtype):
    import torch

    def ramp(n: int):
        r = torch.ones(n, device=device, dtype=dtype)
        k = min(overlap, n // 2)
        if k > 0:
            edge = torch.linspace(1.0 / (k + 1), 1.0, k, device=device, dtype=dtype)
            r[:k] = edge
            r[n - k:] = edge.flip(0)
        return r

    return ramp(h)[:, None] * ramp(w)[None, :]


def upscale_tensor(desc, x, tile: int = TILE, overlap: int = OVERLAP, check=None):
    """Run ``desc`` on ``x`` (B, C, H, W) in blended tiles when H or W exceeds ``tile``."""
    import torch

    b, c, h, w = x.shape
    s = desc.scale
    if h <= tile and w <= tile:
        return desc(x)
    out = torch.zeros(b, c, h * s, w * s, device=x.device, dtype=x.dtype)
    weight = torch.zeros(1, 1, h * s, w * s, device=x.device, dtype=x.dtype)
    step = tile - overlap
    ys = list(range(0, max(h - tile, 0) + 1, step)) + ([h - tile] if h > tile and (h - tile) % step else [])
    xs = list(range(0, max(w - tile, 0) + 1, step)) + ([w - tile] if w > tile and (w - tile) % step else [])
    for y0 in ys:
        for x0 in xs:
            if check is not None:
                check()
            patch = x[:, :, y0:y0 + tile, x0:x0 + tile]
            up = desc(patch)
            win = _weight_window(up.shape[2], up.shape[3], overlap * s, x.device, x.dtype)
            out[:, :, y0 * s:y0 * s + up.shape[2], x0 * s:x0 * s + up.shape[3]] += up * win
            weight[:, :, y0 * s:y0 * s + up.shape[2], x0 * s:x0 * s + up.shape[3]] += win
    return out / weight.clamp_min(1e-8)


class ImageUpscaleWithModel(Node):
    """Upscales an image with a super-resolution model (output size = input × the model's scale)."""

    DISPLAY_NAME = "Upscale Image (using Model)"
    CATEGORY = "image/upscaling"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("upscale_model", "UPSCALE_MODEL"), Socket("image", "IMAGE"))
    OUTPUTS = (Output("IMAGE"),)

    def execute(self, ctx: NodeContext, upscale_model, image):
        import torch

        if upscale_model is None:
            raise NodeError("upscale_model: no model", input_name="upscale_model")
        from graph_runtime.model_manager import ModelHandle

        if isinstance(upscale_model, ModelHandle):  # reloaded if the manager evicted it
            upscale_model = upscale_model.get()
        p = next(upscale_model.model.parameters())
        x = image.movedim(-1, 1).to(device=p.device, dtype=p.dtype)
        if x.shape[1] != upscale_model.input_channels:
            if x.shape[1] == 4 and upscale_model.input_channels == 3:
                x = x[:, :3]
            else:
                raise NodeError(f"image: {x.shape[1]} channels, the model expects {upscale_model.input_channels}",
                                input_name="image")
        with torch.inference_mode():
            y = upscale_tensor(upscale_model, x, check=ctx.check_interrupted)
        ctx.record(device=str(p.device), dtype=str(p.dtype).replace("torch.", ""))
        return (y.clamp(0, 1).float().cpu().movedim(1, -1),)
