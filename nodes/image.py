"""Image nodes without ML: load, save, preview, create, invert, scale, pad.

Tensor conventions are ComfyUI's: IMAGE is ``[B, H, W, C]`` float32 in 0..1, MASK ``[B, H, W]``.
torch is imported inside the functions so that starting the server does not wait for it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
import time
from pathlib import Path
from typing import Any

from graph_runtime import provenance
from graph_runtime.context import NodeContext, NodeError
from graph_runtime.paths import PathEscapeError, safe_join
from graph_runtime.schema import (MAX_RESOLUTION, Combo, FileList, Float, Hidden, HiddenKind, Int, Node, NodeResult,
                                  Output, Socket, String)

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")


# -- file helpers -------------------------------------------------------------------------------

def resolve_input_image(ctx: NodeContext, name: str, input_name: str = "image") -> Path:
    """``input/<name>``, or ComfyUI's annotated ``name [output]`` / ``[temp]`` / ``[input]`` forms."""
    kind = "input"
    match = re.match(r"^(.*) \[(input|output|temp)\]$", name)
    if match:
        name, kind = match.group(1), match.group(2)
    try:
        path = safe_join(ctx.paths.directory_for(kind), name)
    except PathEscapeError as exc:
        raise NodeError(f"Invalid image file name {name!r}: {exc}", input_name=input_name) from exc
    if not path.is_file():
        raise NodeError(f"Invalid image file: {name} (not found in the {kind} folder {ctx.paths.directory_for(kind)}); "
                        "upload it or copy it there", input_name=input_name)
    return path


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pil_to_tensor(img: Any) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


def tensor_to_pil(image: Any) -> Any:
    """One ``[H, W, C]`` image tensor → PIL (clipped to 0..255 like ComfyUI)."""
    import numpy as np
    from PIL import Image

    arr = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


# (folder, prefix) -> the last counter written by this process: saves stay O(1) instead of
# listing a folder that grows with every image (checked against the disk before use).
_LAST_COUNTER: dict[tuple[str, str], int] = {}


def next_save_path(output_dir: Path, prefix: str, width: int, height: int, *,
                   unique_prefix: bool = False, extension: str = "png") -> tuple[Path, str, int]:
    """(folder, base filename, first counter) for ``prefix`` as ComfyUI's get_save_image_path does.

    ``unique_prefix`` (previews, whose prefix is random): take the first free counter by checking
    names one by one instead of listing a temp folder that grows with every preview.
    ``extension``: of the files written (SaveVideo writes ``.mp4``); call :func:`remember_counter`
    after writing so the next save does not list the folder.
    """
    t = time.localtime()
    for key, value in {"%width%": width, "%height%": height, "%year%": t.tm_year, "%month%": f"{t.tm_mon:02}",
                       "%day%": f"{t.tm_mday:02}", "%hour%": f"{t.tm_hour:02}", "%minute%": f"{t.tm_min:02}",
                       "%second%": f"{t.tm_sec:02}"}.items():
        prefix = prefix.replace(key, str(value))
    subfolder, _, base = prefix.replace("\\", "/").rpartition("/")
    try:
        folder = safe_join(output_dir, subfolder) if subfolder else output_dir.resolve()
    except PathEscapeError as exc:
        raise NodeError(f"filename_prefix {prefix!r} points outside the output folder", input_name="filename_prefix") from exc
    folder.mkdir(parents=True, exist_ok=True)
    if unique_prefix:
        counter = 0
        while (folder / f"{base}_{counter + 1:05}_.{extension}").exists():
            counter += 1
        return folder, base, counter + 1
    key = (str(folder), base)
    counter = _LAST_COUNTER.get(key)
    if counter is None or (folder / f"{base}_{counter + 1:05}_.{extension}").exists():
        # first save under this prefix (or another writer got ahead): scan the folder once
        pattern = re.compile(rf"^{re.escape(base)}_(\d+)_?")
        counter = 0
        for existing in os.listdir(folder):
            m = pattern.match(existing)
            if m:
                counter = max(counter, int(m.group(1)))
    return folder, base, counter + 1


def remember_counter(folder: Path, base: str, counter: int) -> None:
    """Record the last counter written under (folder, base) by :func:`next_save_path`'s callers."""
    _LAST_COUNTER[(str(folder), base)] = counter


def save_images(ctx: NodeContext, images: Any, prefix: str, kind: str, prompt: dict | None,
                extra_pnginfo: dict | None, compress_level: int) -> list[dict[str, str]]:
    root = ctx.paths.directory_for(kind)
    height, width = int(images.shape[1]), int(images.shape[2])
    unique = kind == "temp"
    folder, base, counter = next_save_path(root, prefix, width, height, unique_prefix=unique)
    subfolder = folder.relative_to(root.resolve()).as_posix() if folder != root.resolve() else ""
    from graph_runtime.workflow_files.png_chunks import png_text_chunks

    metadata = png_text_chunks(prompt, None, extra_pnginfo)
    # beside ComfyUI's prompt/workflow: what made the picture (versions, device, models + SHA-256)
    metadata.add_text("genesis", json.dumps(provenance.record(ctx.models, ctx.options, ctx.paths)))
    results = []
    for batch_number, image in enumerate(images):
        name = f"{base.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        tensor_to_pil(image).save(folder / name, pnginfo=metadata, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        if not unique:
            remember_counter(folder, base, counter)
        counter += 1
    return results


# -- nodes --------------------------------------------------------------------------------------

class LoadImage(Node):
    """Loads an image from the input folder; the mask output is 1 − alpha (zeros without alpha)."""

    DISPLAY_NAME = "Load Image"
    CATEGORY = "image"
    INPUTS = (Combo("image", FileList("input"), image_upload=True),)
    OUTPUTS = (Output("IMAGE"), Output("MASK"))

    @classmethod
    def fingerprint(cls, image: str, paths: Any = None) -> str:
        """The file's sha256, so replacing the file re-runs the node."""
        return input_file_fingerprint(paths, image)

    @classmethod
    def validate_inputs(cls, image: str, paths: Any = None) -> bool | str:
        return validate_input_file(paths, image)

    def execute(self, ctx: NodeContext, image: str) -> tuple:
        import numpy as np
        import torch
        from PIL import Image, ImageOps, ImageSequence

        path = resolve_input_image(ctx, image)
        try:
            img = Image.open(path)
        except Exception as exc:
            raise NodeError(f"Cannot read image {image}: {exc}", input_name="image") from exc
        frames, masks = [], []
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame)
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if size is None:
                size = rgb.size
            if rgb.size != size:
                continue
            frames.append(pil_to_tensor(rgb))
            if "A" in frame.getbands():
                alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha)[None])
            else:
                masks.append(torch.zeros((1, 64, 64), dtype=torch.float32))
        if not frames:
            raise NodeError(f"Image {image} has no frames", input_name="image")
        mask_shapes = {m.shape for m in masks}
        mask = torch.cat(masks) if len(mask_shapes) == 1 else masks[0]
        return (torch.cat(frames), mask)


def _annotated(paths: Any, name: str) -> Path | None:
    match = re.match(r"^(.*) \[(input|output|temp)\]$", name)
    kind = match.group(2) if match else "input"
    name = match.group(1) if match else name
    try:
        return safe_join(paths.directory_for(kind), name)
    except PathEscapeError:
        return None


def input_file_fingerprint(paths: Any, name: str) -> str:
    path = _annotated(paths, name) if paths is not None else None
    if path is None or not path.is_file():
        return f"missing:{name}"
    return _file_sha256(path)


def validate_input_file(paths: Any, name: str) -> bool | str:
    if paths is None:
        return True
    path = _annotated(paths, name)
    if path is None:
        return f"Invalid image file: {name} (the name leaves the input folder)"
    if not path.is_file():
        return f"Invalid image file: {name} (not found in {path.parent}); upload it or copy it there"
    return True


class LoadImageMask(Node):
    """Loads one channel of an image from the input folder as a mask."""

    DISPLAY_NAME = "Load Image (as Mask)"
    CATEGORY = "mask"
    INPUTS = (Combo("image", FileList("input"), image_upload=True),
              Combo("channel", ("alpha", "red", "green", "blue"), "alpha"))
    OUTPUTS = (Output("MASK"),)

    @classmethod
    def fingerprint(cls, image: str, paths: Any = None) -> str:
        return input_file_fingerprint(paths, image)

    @classmethod
    def validate_inputs(cls, image: str, paths: Any = None) -> bool | str:
        return validate_input_file(paths, image)

    def execute(self, ctx: NodeContext, image: str, channel: str) -> tuple:
        import numpy as np
        import torch
        from PIL import Image, ImageOps

        path = resolve_input_image(ctx, image)
        img = ImageOps.exif_transpose(Image.open(path))
        if img.getbands() != ("R", "G", "B", "A"):
            img = img.convert("RGBA")
        band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
        mask = torch.from_numpy(np.asarray(img.getchannel(band), dtype=np.float32) / 255.0)
        if band == "A":
            mask = 1.0 - mask
        return (mask[None],)


class SaveImage(Node):
    """Saves the input images to your output directory, with the workflow embedded in each PNG."""

    DISPLAY_NAME = "Save Image"
    CATEGORY = "image"
    OUTPUT_NODE = True
    INPUTS = (Socket("images", "IMAGE", tooltip="The images to save."),
              String("filename_prefix", "ComfyUI", tooltip="The prefix for the file to save. This may include "
                     "formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include "
                     "values from nodes."))
    HIDDEN = (Hidden("prompt", HiddenKind.PROMPT), Hidden("extra_pnginfo", HiddenKind.EXTRA_PNGINFO))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, images: Any, filename_prefix: str = "ComfyUI", prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        results = save_images(ctx, images, filename_prefix, "output", prompt, extra_pnginfo, 4)
        return NodeResult((), {"images": results})


class PreviewImage(Node):
    """Shows the images on the canvas (saved to the temp folder, wiped at start-up)."""

    DISPLAY_NAME = "Preview Image"
    CATEGORY = "image"
    OUTPUT_NODE = True
    INPUTS = (Socket("images", "IMAGE"),)
    HIDDEN = (Hidden("prompt", HiddenKind.PROMPT), Hidden("extra_pnginfo", HiddenKind.EXTRA_PNGINFO))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, images: Any, prompt: dict | None = None,
                extra_pnginfo: dict | None = None) -> NodeResult:
        suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        results = save_images(ctx, images, f"ComfyUI_temp_{suffix}", "temp", prompt, extra_pnginfo, 1)
        return NodeResult((), {"images": results})


class EmptyImage(Node):
    """Creates a batch of images filled with one colour (0xRRGGBB)."""

    DISPLAY_NAME = "EmptyImage"
    CATEGORY = "image"
    INPUTS = (Int("width", 512, min=1, max=MAX_RESOLUTION), Int("height", 512, min=1, max=MAX_RESOLUTION),
              Int("batch_size", 1, min=1, max=4096), Int("color", 0, min=0, max=0xFFFFFF, display="color"))
    OUTPUTS = (Output("IMAGE"),)

    def execute(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0) -> tuple:
        import torch

        rgb = torch.tensor([((color >> 16) & 0xFF) / 255.0, ((color >> 8) & 0xFF) / 255.0, (color & 0xFF) / 255.0])
        return (rgb.expand(batch_size, height, width, 3).clone(),)


class ImageInvert(Node):
    """Inverts the colours of an image."""

    DISPLAY_NAME = "Invert Image"
    CATEGORY = "image"
    INPUTS = (Socket("image", "IMAGE"),)
    OUTPUTS = (Output("IMAGE"),)

    def execute(self, ctx: NodeContext, image: Any) -> tuple:
        return (1.0 - image,)


def resize_image(image: Any, width: int, height: int, method: str, crop: str = "disabled") -> Any:
    """Resize an IMAGE batch with ComfyUI's method names; ``crop="center"`` keeps the aspect ratio."""
    import torch
    import torch.nn.functional as F

    samples = image.movedim(-1, 1)
    if crop == "center":
        old_w, old_h = samples.shape[3], samples.shape[2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples[:, :, y:old_h - y, x:old_w - x]
    if method == "lanczos":
        from PIL import Image

        out = []
        for img in samples.movedim(1, -1):
            pil = tensor_to_pil(img).resize((width, height), Image.Resampling.LANCZOS)
            out.append(pil_to_tensor(pil)[0])
        return torch.stack(out)
    mode = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic"}[method]
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(samples, size=(height, width), mode=mode, **kwargs)
    return resized.movedim(1, -1).clamp(0, 1) if mode == "bicubic" else resized.movedim(1, -1)


class ImageScale(Node):
    """Resizes images to a width and height (0 keeps the aspect ratio)."""

    DISPLAY_NAME = "Upscale Image"
    CATEGORY = "image/upscaling"
    INPUTS = (Socket("image", "IMAGE"), Combo("upscale_method", UPSCALE_METHODS, "nearest-exact"),
              Int("width", 512, min=0, max=MAX_RESOLUTION), Int("height", 512, min=0, max=MAX_RESOLUTION),
              Combo("crop", ("disabled", "center"), "disabled"))
    OUTPUTS = (Output("IMAGE"),)

    def execute(self, ctx: NodeContext, image: Any, upscale_method: str, width: int, height: int,
                crop: str = "disabled") -> tuple:
        if width == 0 and height == 0:
            return (image,)
        h, w = image.shape[1], image.shape[2]
        if width == 0:
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        return (resize_image(image, width, height, upscale_method, crop),)


def _scaled_size(image: Any, scale: float) -> tuple[int, int]:
    """(width, height) of an IMAGE batch scaled by ``scale``, at least one pixel each."""
    return max(1, round(image.shape[2] * scale)), max(1, round(image.shape[1] * scale))


class ImageScaleBy(Node):
    """Resizes images by a factor."""

    DISPLAY_NAME = "Upscale Image By"
    CATEGORY = "image/upscaling"
    INPUTS = (Socket("image", "IMAGE"), Combo("upscale_method", UPSCALE_METHODS, "nearest-exact"),
              Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01))
    OUTPUTS = (Output("IMAGE"),)

    def execute(self, ctx: NodeContext, image: Any, upscale_method: str, scale_by: float) -> tuple:
        return (resize_image(image, *_scaled_size(image, scale_by), upscale_method),)


class ImageScaleToTotalPixels(Node):
    """Resizes images to about a number of megapixels, keeping the aspect ratio."""

    DISPLAY_NAME = "Scale Image to Total Pixels"
    CATEGORY = "image/upscaling"
    INPUTS = (Socket("image", "IMAGE"), Combo("upscale_method", UPSCALE_METHODS, "nearest-exact"),
              Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01))
    OUTPUTS = (Output("IMAGE"),)

    def execute(self, ctx: NodeContext, image: Any, upscale_method: str, megapixels: float) -> tuple:
        total = megapixels * 1024 * 1024
        scale = (total / (image.shape[2] * image.shape[1])) ** 0.5
        return (resize_image(image, *_scaled_size(image, scale), upscale_method),)


class ImagePadForOutpaint(Node):
    """Pads images for outpainting; the mask marks the new area (feathered toward the original)."""

    DISPLAY_NAME = "Pad Image for Outpainting"
    CATEGORY = "image"
    INPUTS = (Socket("image", "IMAGE"),
              Int("left", 0, min=0, max=MAX_RESOLUTION, step=8), Int("top", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("right", 0, min=0, max=MAX_RESOLUTION, step=8), Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("feathering", 40, min=0, max=MAX_RESOLUTION))
    OUTPUTS = (Output("IMAGE"), Output("MASK"))

    def execute(self, ctx: NodeContext, image: Any, left: int, top: int, right: int, bottom: int,
                feathering: int) -> tuple:
        import torch

        b, h, w, c = image.shape
        new = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
        new[:, top:top + h, left:left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        inner = torch.zeros((h, w), dtype=torch.float32)
        if feathering > 0 and feathering * 2 < h and feathering * 2 < w:
            ys = torch.arange(h, dtype=torch.float32)[:, None]
            xs = torch.arange(w, dtype=torch.float32)[None, :]
            d_top = ys if top != 0 else torch.full_like(ys, h)
            d_bottom = (h - ys - 1) if bottom != 0 else torch.full_like(ys, h)
            d_left = xs if left != 0 else torch.full_like(xs, w)
            d_right = (w - xs - 1) if right != 0 else torch.full_like(xs, w)
            d = torch.minimum(torch.minimum(d_top, d_bottom), torch.minimum(d_left, d_right))
            v = (feathering - d) / feathering
            inner = torch.where(d < feathering, v * v, torch.zeros_like(v))
        mask[top:top + h, left:left + w] = inner
        return (new, mask[None])
