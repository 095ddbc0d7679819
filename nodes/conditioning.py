"""Text encoding and CONDITIONING editing nodes (ComfyUI names, inputs and defaults).

CLIPTextEncode follows ComfyUI's prompt syntax (``(word:1.2)``, ``((word))``, ``embedding:name``,
prompts of any length) and, for plain prompts, gives exactly the embeddings the diffusers
pipelines compute (see nodes/diffusion/text_encode.py).  The editing nodes never mutate their
input: they return new CondEntry lists sharing the tensors.
"""
from __future__ import annotations

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import MAX_RESOLUTION, Float, Int, Node, Output, Resource, Socket, String


def _embedding_lookup(ctx: NodeContext):
    """``embedding:name`` → vectors from models/embeddings (cached in the model manager)."""
    from nodes.diffusion.embeddings import find_embedding, read_embedding
    from nodes.diffusion.model_files import ModelFileError, file_key

    def lookup(name: str):
        path = find_embedding(name, lambda rel: ctx.paths.model_path("embeddings", rel))
        if path is None:
            return None
        try:
            return ctx.models.get(("embedding", *file_key(path)), lambda: read_embedding(path))
        except ModelFileError as exc:
            raise NodeError(f"text: embedding {name!r}: {exc}", input_name="text") from exc

    return lookup


def encode_text(ctx: NodeContext, clip, text: str, t5_text: str | None = None):
    from nodes.diffusion.text_encode import encode_prompt
    from nodes.diffusion.types import CondEntry

    if clip is None:
        raise NodeError("clip: no CLIP model — the checkpoint has no text encoder; load one with CLIPLoader "
                        "or DualCLIPLoader", input_name="clip")
    try:
        embeds, options = encode_prompt(clip, text if isinstance(text, str) else str(text),
                                        lookup=_embedding_lookup(ctx), t5_text=t5_text)
    except ValueError as exc:
        raise NodeError(f"clip: {exc}", input_name="clip") from exc
    enc = next(iter(clip.encoders.values()), None)
    p = next(enc.parameters(), None) if enc is not None else None
    if p is not None:
        ctx.record(device=str(p.device), dtype=str(p.dtype).replace("torch.", ""))
    return [CondEntry(embeds, options)]


class CLIPTextEncode(Node):
    """Encodes a text prompt using a CLIP model into an embedding that can be used to guide the diffusion model towards generating specific images."""

    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    CATEGORY = "conditioning"
    RESOURCE = Resource.GPU
    INPUTS = (String("text", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded."),
              Socket("clip", "CLIP", tooltip="The CLIP model used for encoding the text."))
    OUTPUTS = (Output("CONDITIONING", tooltip="A conditioning containing the embedded text used to guide the diffusion model."),)

    def execute(self, ctx: NodeContext, text: str, clip):
        return (encode_text(ctx, clip, text),)


class CLIPTextEncodeFlux(Node):
    """FLUX text encoding with separate CLIP-L and T5-XXL prompts and the guidance value."""

    CATEGORY = "advanced/conditioning/flux"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("clip", "CLIP"),
              String("clip_l", multiline=True, dynamic_prompts=True),
              String("t5xxl", multiline=True, dynamic_prompts=True),
              Float("guidance", 3.5, min=0.0, max=100.0, step=0.1))
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: NodeContext, clip, clip_l: str, t5xxl: str, guidance: float = 3.5):
        if clip is not None and not clip.family.is_flux:
            raise NodeError("clip: CLIPTextEncodeFlux needs FLUX text encoders (CLIP-L + T5-XXL)", input_name="clip")
        entries = encode_text(ctx, clip, clip_l, t5_text=t5xxl)
        return ([e.with_options(guidance=float(guidance)) for e in entries],)


class FluxGuidance(Node):
    """Sets the guidance value FLUX dev is conditioned on (its distilled CFG)."""

    CATEGORY = "advanced/conditioning/flux"
    INPUTS = (Socket("conditioning", "CONDITIONING"),
              Float("guidance", 3.5, min=0.0, max=100.0, step=0.1))
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: NodeContext, conditioning, guidance: float = 3.5):
        return ([e.with_options(guidance=float(guidance)) for e in conditioning],)


class ConditioningZeroOut(Node):
    """Replaces the embeddings (and pooled output) with zeros — the usual FLUX/SDXL empty negative."""

    CATEGORY = "advanced/conditioning"
    INPUTS = (Socket("conditioning", "CONDITIONING"),)
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: NodeContext, conditioning):
        import torch

        from nodes.diffusion.types import CondEntry

        out = []
        for e in conditioning:
            opts = dict(e.options)
            if opts.get("pooled_output") is not None:
                opts["pooled_output"] = torch.zeros_like(opts["pooled_output"])
            out.append(CondEntry(torch.zeros_like(e.embeds), opts))
        return (out,)


class ConditioningCombine(Node):
    """Combines two conditionings: both guide the sampler (their predictions are averaged)."""

    DISPLAY_NAME = "Conditioning (Combine)"
    CATEGORY = "conditioning"
    INPUTS = (Socket("conditioning_1", "CONDITIONING"), Socket("conditioning_2", "CONDITIONING"))
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: NodeContext, conditioning_1, conditioning_2):
        return (list(conditioning_1) + list(conditioning_2),)


class ConditioningSetArea(Node):
    """Restricts a conditioning to a rectangle of the image (in pixels, multiples of 8)."""

    DISPLAY_NAME = "Conditioning (Set Area)"
    CATEGORY = "conditioning"
    INPUTS = (Socket("conditioning", "CONDITIONING"),
              Int("width", 64, min=64, max=MAX_RESOLUTION, step=8),
              Int("height", 64, min=64, max=MAX_RESOLUTION, step=8),
              Int("x", 0, min=0, max=MAX_RESOLUTION, step=8),
              Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.01))
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: NodeContext, conditioning, width: int = 64, height: int = 64, x: int = 0, y: int = 0,
                strength: float = 1.0):
        area = (int(height) // 8, int(width) // 8, int(y) // 8, int(x) // 8)
        return ([e.with_options(area=area, strength=float(strength), set_area_to_bounds=False)
                 for e in conditioning],)


class ConditioningSetTimestepRange(Node):
    """Limits a conditioning to part of the sampling (0 = first step, 1 = last)."""

    CATEGORY = "advanced/conditioning"
    INPUTS = (Socket("conditioning", "CONDITIONING"),
              Float("start", 0.0, min=0.0, max=1.0, step=0.001),
              Float("end", 1.0, min=0.0, max=1.0, step=0.001))
    OUTPUTS = (Output("CONDITIONING"),)

    def execute(self, ctx: NodeContext, conditioning, start: float = 0.0, end: float = 1.0):
        return ([e.with_options(start_percent=float(start), end_percent=float(end)) for e in conditioning],)
