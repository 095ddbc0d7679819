"""LATENT nodes: empty latents, resizing, compositing, noise masks, VAE encode/decode.

Names, inputs and defaults are ComfyUI's so shared workflows load unchanged.  LATENT holds raw
VAE latents (see nodes/diffusion/types.py); IMAGE is B×H×W×C float 0..1.  torch is imported inside
``execute`` so that registering the nodes stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import MAX_RESOLUTION, Combo, Float, Int, Node, Output, Resource, Socket
from nodes.diffusion import latent_ops

if TYPE_CHECKING:
    import torch

    from nodes.diffusion.types import VaeModel


class EmptyLatentImage(Node):
    """Create a new batch of empty latent images to be denoised via sampling (4 channels, 1/8 size)."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Empty Latent Image"
    INPUTS = (
        Int("width", 512, min=16, max=MAX_RESOLUTION, step=8, tooltip="The width of the latent images in pixels."),
        Int("height", 512, min=16, max=MAX_RESOLUTION, step=8, tooltip="The height of the latent images in pixels."),
        Int("batch_size", 1, min=1, max=4096, tooltip="The number of latent images in the batch."),
    )
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1):
        import torch

        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class EmptySD3LatentImage(Node):
    """An empty 16-channel latent batch (SD3 / FLUX latent space), 1/8 of the pixel size."""

    CATEGORY = "latent/sd3"
    INPUTS = (
        Int("width", 1024, min=16, max=MAX_RESOLUTION, step=16),
        Int("height", 1024, min=16, max=MAX_RESOLUTION, step=16),
        Int("batch_size", 1, min=1, max=4096),
    )
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1):
        import torch

        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)


class LatentUpscale(Node):
    """Resize latents to a pixel size (÷8); 0 for one side keeps the aspect ratio."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Upscale Latent"
    INPUTS = (
        Socket("samples", "LATENT"),
        Combo("upscale_method", latent_ops.UPSCALE_METHODS),
        Int("width", 512, min=0, max=MAX_RESOLUTION, step=8),
        Int("height", 512, min=0, max=MAX_RESOLUTION, step=8),
        Combo("crop", latent_ops.CROP_METHODS),
    )
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, samples: dict, upscale_method: str, width: int, height: int, crop: str):
        if width == 0 and height == 0:
            return (samples,)
        width, height = latent_ops.latent_upscale_size(samples["samples"].shape, width, height)
        out = dict(samples)
        out["samples"] = latent_ops.upscale(samples["samples"], width // 8, height // 8, upscale_method, crop)
        return (out,)


class LatentUpscaleBy(Node):
    """Resize latents by a factor."""

    CATEGORY = "latent"
    DISPLAY_NAME = "Upscale Latent By"
    INPUTS = (
        Socket("samples", "LATENT"),
        Combo("upscale_method", latent_ops.UPSCALE_METHODS),
        Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01),
    )
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, samples: dict, upscale_method: str, scale_by: float):
        x = samples["samples"]
        width = max(1, round(x.shape[-1] * scale_by))
        height = max(1, round(x.shape[-2] * scale_by))
        out = dict(samples)
        out["samples"] = latent_ops.upscale(x, width, height, upscale_method, "disabled")
        return (out,)


class LatentFromBatch(Node):
    """Take ``length`` latents out of a batch, from ``batch_index``.  The LATENT remembers which batch
    rows they were (``batch_index``), so sampling gives each the noise it had in the whole batch."""

    CATEGORY = "latent/batch"
    DISPLAY_NAME = "Latent From Batch"
    INPUTS = (
        Socket("samples", "LATENT"),
        Int("batch_index", 0, min=0, max=63),
        Int("length", 1, min=1, max=64),
    )
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, samples: dict, batch_index: int, length: int):
        x = samples["samples"]
        start = min(x.shape[0] - 1, batch_index)
        length = min(x.shape[0] - start, length)
        out = dict(samples)
        out["samples"] = x[start:start + length].clone()
        if samples.get("noise_mask") is not None:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                out["noise_mask"] = masks.clone()
            else:
                masks = _repeat_to_batch(masks, x.shape[0])
                out["noise_mask"] = masks[start:start + length].clone()
        rows = samples.get("batch_index")
        out["batch_index"] = list(range(start, start + length)) if rows is None else list(rows[start:start + length])
        return (out,)


class RepeatLatentBatch(Node):
    """Repeat a latent batch ``amount`` times; remembered batch rows continue after the originals."""

    CATEGORY = "latent/batch"
    DISPLAY_NAME = "Repeat Latent Batch"
    INPUTS = (Socket("samples", "LATENT"), Int("amount", 1, min=1, max=64))
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, samples: dict, amount: int):
        x = samples["samples"]
        out = dict(samples)
        out["samples"] = x.repeat((amount, 1, 1, 1))
        masks = samples.get("noise_mask")
        if masks is not None and masks.shape[0] > 1:
            out["noise_mask"] = masks.repeat((amount, 1, 1, 1))  # as ComfyUI: the masks as given, repeated
        rows = samples.get("batch_index")
        if rows is not None:
            offset = max(rows) - min(rows) + 1
            out["batch_index"] = list(rows) + [r + i * offset for i in range(1, amount) for r in rows]
        return (out,)


class LatentComposite(Node):
    """Paste one latent into another at (x, y) pixels (÷8), optionally feathering the edges."""

    CATEGORY = "latent"
    INPUTS = (
        Socket("samples_to", "LATENT"),
        Socket("samples_from", "LATENT"),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("feather", 0, min=0, max=MAX_RESOLUTION, step=8),
    )
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, samples_to: dict, samples_from: dict, x: int, y: int, feather: int):
        out = dict(samples_to)
        out["samples"] = latent_ops.composite(samples_to["samples"], samples_from["samples"], x // 8, y // 8,
                                              feather // 8)
        return (out,)


class SetLatentNoiseMask(Node):
    """Restrict sampling to the masked region (1 = repaint); the rest keeps the input latent."""

    CATEGORY = "latent/inpaint"
    DISPLAY_NAME = "Set Latent Noise Mask"
    INPUTS = (Socket("samples", "LATENT"), Socket("mask", "MASK"))
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, samples: dict, mask: torch.Tensor):
        out = dict(samples)
        out["noise_mask"] = latent_ops.mask_to_noise_mask(mask)
        return (out,)


class VAEEncode(Node):
    """Encode images into raw VAE latents (the posterior mode: deterministic)."""

    CATEGORY = "latent"
    DISPLAY_NAME = "VAE Encode"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("pixels", "IMAGE"), Socket("vae", "VAE"))
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, pixels: torch.Tensor, vae: VaeModel):
        from nodes.diffusion import vae_ops

        try:
            samples = vae_ops.encode(vae, pixels)
        except ValueError as exc:
            raise NodeError(str(exc), input_name="pixels") from exc
        _record_vae(ctx, vae)
        return ({"samples": samples},)


class VAEEncodeForInpaint(Node):
    """Encode an image for inpainting: masked pixels are greyed out and the (grown) mask becomes the
    latent's noise mask."""

    CATEGORY = "latent/inpaint"
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    RESOURCE = Resource.GPU
    INPUTS = (
        Socket("pixels", "IMAGE"),
        Socket("vae", "VAE"),
        Socket("mask", "MASK"),
        Int("grow_mask_by", 6, min=0, max=64, step=1),
    )
    OUTPUTS = (Output("LATENT"),)

    def execute(self, ctx: NodeContext, pixels: torch.Tensor, vae: VaeModel, mask: torch.Tensor,
                grow_mask_by: int = 6):
        from nodes.diffusion import vae_ops

        try:
            latent = vae_ops.encode_for_inpaint(vae, pixels, mask, grow_mask_by)
        except ValueError as exc:
            raise NodeError(str(exc), input_name="pixels") from exc
        _record_vae(ctx, vae)
        return (latent,)


class VAEDecode(Node):
    """Decodes latent images back into pixel space images."""

    CATEGORY = "latent"
    DISPLAY_NAME = "VAE Decode"
    RESOURCE = Resource.GPU
    INPUTS = (
        Socket("samples", "LATENT", tooltip="The latent to be decoded."),
        Socket("vae", "VAE", tooltip="The VAE model used for decoding the latent."),
    )
    OUTPUTS = (Output("IMAGE", tooltip="The decoded image."),)

    def execute(self, ctx: NodeContext, samples: dict, vae: VaeModel):
        latent = samples["samples"]
        if latent.shape[1] != vae.latent_channels:
            raise NodeError(f"the latent has {latent.shape[1]} channels but this VAE decodes {vae.latent_channels}; "
                            "use the VAE of the model that produced it", input_name="samples")
        from nodes.diffusion import vae_ops

        image = vae_ops.decode(vae, latent)
        _record_vae(ctx, vae)
        return (image,)


def _repeat_to_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """Rows repeated (or cut) to a batch of ``n``."""
    if x.shape[0] < n:
        x = x.repeat(-(-n // x.shape[0]), *([1] * (x.ndim - 1)))
    return x[:n]


def _record_vae(ctx: NodeContext, vae: VaeModel) -> None:
    p = next(vae.vae.parameters())
    ctx.record(device=str(p.device), dtype=str(p.dtype).replace("torch.", ""))
