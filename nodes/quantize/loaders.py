"""Pre-quantized checkpoint loaders with the community packs' names: UnetLoaderGGUF, CLIPLoaderGGUF,
DualCLIPLoaderGGUF (city96/ComfyUI-GGUF) and CheckpointLoaderNF4 (comfyanonymous/ComfyUI_bitsandbytes_NF4).

Workflows made with ComfyUI-GGUF run unchanged.  The diffusion model is a model handle whose
quantized weights stay GGUF-quantized (see :mod:`nodes.quantize.gguf`); text encoders read through
the same code as CLIPLoader, which keeps a GGUF file's Linear weights quantized too.
"""
from __future__ import annotations

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Combo, FileList, Node, Output, Resource
from nodes.loaders import CLIPLoader, DualCLIPLoader

GGUF_CATEGORY = "bootleg"


class UnetLoaderGGUF(Node):
    """Loads a GGUF diffusion model; its quantized Linear (and SD's Conv2d) weights stay quantized in memory."""

    DISPLAY_NAME = "Unet Loader (GGUF)"
    CATEGORY = GGUF_CATEGORY
    RESOURCE = Resource.GPU
    INPUTS = (Combo("unet_name", FileList("diffusion_models")),)
    OUTPUTS = (Output("MODEL"),)

    def execute(self, ctx: NodeContext, unet_name: str):
        from nodes.devices import TORCH_OPS, device_name
        from nodes.diffusion.loading import make_model, resolve_dtype
        from nodes.diffusion.model_files import file_key
        from nodes.loaders import _record, placement, resolve_file
        from nodes.quantize import gguf

        path = resolve_file(ctx, "diffusion_models", unet_name, "unet_name")
        if path.suffix.lower() != ".gguf":
            raise NodeError(f"unet_name: {path.name} is not a GGUF file; load it with UNETLoader (Load Diffusion Model)",
                            input_name="unet_name")
        place = placement(ctx)
        try:
            from nodes.diffusion import families

            shapes, _meta = gguf.inspect(path)
            detected = families.detect(shapes)
        except gguf.GGUFError as exc:
            raise NodeError(f"unet_name: {exc}", input_name="unet_name") from exc
        if detected.family is None:
            raise NodeError(f"unet_name: {path.name} is {detected.describe()}, not an SD1.5/SDXL/FLUX diffusion model",
                            input_name="unet_name")
        dtype = resolve_dtype(place.dtype_option, place.device, detected.family)

        def load():
            return gguf.load_denoiser(path, dtype, place.device)[1]

        try:
            handle = ctx.models.load(("unet-gguf", *file_key(path), str(place.device), place.dtype_option), load,
                                     ops=TORCH_OPS, device=device_name(place.device), sources=[path],
                                     label=f"{path.name} (GGUF denoiser)", dtype=str(dtype).replace("torch.", ""),
                                     options={"quantization": "gguf"})
        except gguf.GGUFError as exc:
            raise NodeError(f"unet_name: {exc}", input_name="unet_name") from exc
        # quantized in memory, except diffusers-layout FLUX files (ComfyUI-GGUF's converter refuses those)
        quantized = not (detected.family.is_flux and detected.layout != "bfl")
        model = make_model(detected.family, handle, str(path), quantization="gguf" if quantized else "none")
        _record(ctx, path, model, model.family)
        ctx.record(gguf_quantized=quantized)
        return (model,)


class CLIPLoaderGGUF(CLIPLoader):
    """Loads one text encoder from a GGUF (or safetensors) file — ComfyUI-GGUF's node name."""

    DISPLAY_NAME = "CLIPLoader (GGUF)"
    CATEGORY = GGUF_CATEGORY


class DualCLIPLoaderGGUF(DualCLIPLoader):
    """Loads two text encoders (e.g. CLIP-L + a T5-XXL GGUF for FLUX) — ComfyUI-GGUF's node name."""

    DISPLAY_NAME = "DualCLIPLoader (GGUF)"
    CATEGORY = GGUF_CATEGORY


class CheckpointLoaderNF4(Node):
    """Loads a bitsandbytes-NF4 checkpoint (Forge's flux1-dev-bnb-nf4 layout); the denoiser stays NF4 in memory.

    comfyanonymous/ComfyUI_bitsandbytes_NF4's node name and inputs.  Unlike that pack it also runs on
    the CPU (bitsandbytes 0.50.2 has CPU kernels); LoRAs go before a QuantizeModel instead.
    """

    DISPLAY_NAME = "CheckpointLoaderNF4"
    CATEGORY = "loaders"
    RESOURCE = Resource.GPU
    INPUTS = (Combo("ckpt_name", FileList("checkpoints")),)
    OUTPUTS = (Output("MODEL"), Output("CLIP"), Output("VAE"))

    @classmethod
    def validate_inputs(cls, ckpt_name: str, options=None) -> bool | str:
        from nodes.quantize import capabilities as caps

        refused = caps.refusal(caps.BNB_NF4, getattr(options, "device", "auto") if options is not None else "auto")
        return True if refused is None else refused

    def execute(self, ctx: NodeContext, ckpt_name: str):
        from nodes.diffusion.loading import load_checkpoint
        from nodes.loaders import _record, _t5_dirs, guarded, placement, resolve_file

        path = resolve_file(ctx, "checkpoints", ckpt_name, "ckpt_name")
        place = placement(ctx)
        bundle = guarded("ckpt_name", lambda: load_checkpoint(ctx.models, path, place, _t5_dirs(ctx),
                                                              quantization="bnb_nf4"))
        _record(ctx, path, bundle.model, bundle.model.family)
        return (bundle.model, bundle.clip, bundle.vae)
