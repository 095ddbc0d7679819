"""Built-in node packs, one module per family; the registry imports each module listed in PACKS."""

PACKS = (
    "nodes.primitives",
    "nodes.image",
    "nodes.loaders",
    "nodes.conditioning",
    "nodes.latent",
    "nodes.sampling",
    "nodes.upscale",
    "nodes.controlnet",
    "nodes.preprocessors",
    "nodes.quantize.nodes",
    "nodes.quantize.loaders",
    "nodes.model_save",
    "nodes.text.strings",
    "nodes.text.display",
    "nodes.language.nodes",
    "nodes.language.text_generate",
    "nodes.vision_language.nodes",
    "nodes.vision_language.compat",
    "nodes.video.nodes",
    "nodes.video_api.nodes",
)
