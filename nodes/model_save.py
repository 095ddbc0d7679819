"""CheckpointSave, ModelSave, CLIPSave, VAESave, LoraSave (+ ModelMergeSubtract): models to .safetensors, atomically.

Files are written in the layouts our loaders (and ComfyUI) read — LDM/SGM for SD1.5/SDXL, ComfyUI's
all-in-one layout for FLUX — with LoRA patches and merges baked in.  An fp8-stored model is saved
as such (F8_E4M3 / F8_E5M2 tensors) and loads back through CheckpointLoaderSimple to the same
picture (the loader upcasts exactly as layerwise casting did).  bitsandbytes/torchao layouts have
no single-file format our loaders read, so saving them is refused with the fix.

Every file is written by :func:`nodes.diffusion.atomic_write.save_safetensors_atomic` (temporary
file, fsync, rename; ``NAME.sha256`` sidecar) and its safetensors metadata records the SHA-256 of
each source model file (``genesis.sources``), hashed through the runtime's FileHashes.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.paths import PathEscapeError, safe_join
from graph_runtime.schema import (Boolean, Combo, Float, Hidden, HiddenKind, Int, Node, NodeResult, Output, Resource,
                                  Socket, String)

SAVABLE_QUANTIZATION = ("none", "fp8_e4m3fn", "fp8_e5m2")
CATEGORY = "advanced/model_merging"


def save_path(ctx: NodeContext, prefix: str) -> Path:
    """``output/<subfolder>/<name>_NNNNN_.safetensors`` for ``prefix`` (ComfyUI's counter scheme)."""
    subfolder, _, base = str(prefix).replace("\\", "/").rpartition("/")
    try:
        folder = safe_join(ctx.paths.output_dir, subfolder) if subfolder else ctx.paths.output_dir.resolve()
    except PathEscapeError as exc:
        raise NodeError(f"filename_prefix {prefix!r} points outside the output folder",
                        input_name="filename_prefix") from exc
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(base)}_(\d+)_?\.safetensors$")
    counter = max((int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))), default=0)
    return folder / f"{base}_{counter + 1:05}_.safetensors"


def _check_savable(value: Any, input_name: str) -> None:
    quant = getattr(value, "quantization", "none")
    if quant not in SAVABLE_QUANTIZATION:
        raise NodeError(f"{input_name}: {quant}-quantized weights cannot be saved as a file our loaders read; save "
                        f"the full-precision model (or an fp8 one: QuantizeModel fp8_e4m3fn / fp8_e5m2)",
                        input_name=input_name)


def _hashes(ctx: NodeContext):
    from graph_runtime.file_hashes import FileHashes

    return getattr(ctx.models, "hashes", None) or FileHashes()


def _sources(ctx: NodeContext, values: list[Any]) -> dict[str, str]:
    """{file name: SHA-256} of every file the saved values were loaded from."""
    from graph_runtime.model_manager import model_handles_in

    hashes = _hashes(ctx)
    out: dict[str, str] = {}
    for handle in model_handles_in(values):
        for src in handle.sources:
            path = Path(src)
            if path.exists():
                out[path.name] = hashes.sha256(path)
    return out


def _metadata(ctx: NodeContext, values: list[Any], prompt: Any, extra_pnginfo: Any, **extra: str) -> dict[str, str]:
    meta = {"format": "pt", "genesis.sources": json.dumps(_sources(ctx, values), sort_keys=True), **extra}
    if prompt is not None:
        meta["prompt"] = json.dumps(prompt)
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            meta[key] = json.dumps(value)
    return meta


def _save_t5_tokenizer(path: Path, clip: Any) -> None:
    """T5 tokenizers cannot live inside a safetensors file: write ``NAME_tokenizer/tokenizer.json`` next
    to it, where the loaders look for a file's own tokenizer."""
    tok = (getattr(clip, "tokenizers", None) or {}).get("t5xxl")
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        folder = path.parent / f"{path.stem}_tokenizer"
        folder.mkdir(parents=True, exist_ok=True)
        backend.save(str(folder / "tokenizer.json"))


def _write(ctx: NodeContext, prefix: str, tensors: dict, meta: dict[str, str], clip: Any = None) -> NodeResult:
    from nodes.diffusion.atomic_write import save_safetensors_atomic

    if not tensors:
        raise NodeError("nothing to save: connect at least one model", input_name="filename_prefix")
    path = save_path(ctx, prefix)
    if clip is not None:
        _save_t5_tokenizer(path, clip)
    digest = save_safetensors_atomic(path, tensors, meta, hashes=_hashes(ctx))
    ctx.record(saved_file=path.name, sha256=digest, tensors=len(tensors))
    return NodeResult((), ui={"models": [{"filename": path.name, "subfolder": str(path.parent.relative_to(
        ctx.paths.output_dir.resolve())) if path.parent != ctx.paths.output_dir.resolve() else "",
        "type": "output", "sha256": digest}]})


HIDDEN = (Hidden("prompt", HiddenKind.PROMPT), Hidden("extra_pnginfo", HiddenKind.EXTRA_PNGINFO))


class CheckpointSave(Node):
    """Saves MODEL + CLIP + VAE as one checkpoint that CheckpointLoaderSimple loads (LoRAs and merges baked in)."""

    DISPLAY_NAME = "Save Checkpoint"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    RESOURCE = Resource.CPU
    INPUTS = (Socket("model", "MODEL"), Socket("clip", "CLIP"), Socket("vae", "VAE"),
              String("filename_prefix", "checkpoints/ComfyUI"))
    HIDDEN = HIDDEN
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, model, clip, vae, filename_prefix: str = "checkpoints/ComfyUI",
                prompt=None, extra_pnginfo=None):
        from nodes.diffusion import save_layouts as S

        for value, name in ((model, "model"), (clip, "clip")):
            _check_savable(value, name)
        tensors = {**S.model_tensors(model), **S.clip_tensors(clip, in_checkpoint=True), **S.vae_tensors(vae, model.family)}
        meta = _metadata(ctx, [model, clip, vae], prompt, extra_pnginfo,
                         **{"modelspec.architecture": model.family.value,
                            "genesis.quantization": model.quantization})
        return _write(ctx, filename_prefix, tensors, meta, clip=clip)


class ModelSave(Node):
    """Saves the diffusion model alone (diffusion_models layout: UNETLoader loads it)."""

    DISPLAY_NAME = "Save Model"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    INPUTS = (Socket("model", "MODEL"), String("filename_prefix", "diffusion_models/ComfyUI"))
    HIDDEN = HIDDEN
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, model, filename_prefix: str = "diffusion_models/ComfyUI", prompt=None,
                extra_pnginfo=None):
        from nodes.diffusion import save_layouts as S

        _check_savable(model, "model")
        meta = _metadata(ctx, [model], prompt, extra_pnginfo, **{"genesis.quantization": model.quantization})
        return _write(ctx, filename_prefix, S.model_tensors(model, prefix=""), meta)


class CLIPSave(Node):
    """Saves each text encoder to its own file (text_encoders layout: CLIPLoader / DualCLIPLoader load them)."""

    DISPLAY_NAME = "Save CLIP"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    INPUTS = (Socket("clip", "CLIP"), String("filename_prefix", "clip/ComfyUI"))
    HIDDEN = HIDDEN
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, clip, filename_prefix: str = "clip/ComfyUI", prompt=None,
                extra_pnginfo=None):
        from nodes.diffusion import save_layouts as S

        _check_savable(clip, "clip")
        files = []
        for kind, tensors in S.clip_files(clip).items():
            meta = _metadata(ctx, [clip], prompt, extra_pnginfo, **{"genesis.encoder": kind})
            files += _write(ctx, f"{filename_prefix}_{kind}", tensors, meta,
                            clip=clip if kind == "t5xxl" else None).ui["models"]
        return NodeResult((), ui={"models": files})


class VAESave(Node):
    """Saves the VAE (LDM layout: VAELoader loads it)."""

    DISPLAY_NAME = "Save VAE"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    INPUTS = (Socket("vae", "VAE"), String("filename_prefix", "vae/ComfyUI_vae"))
    HIDDEN = HIDDEN
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, vae, filename_prefix: str = "vae/ComfyUI_vae", prompt=None,
                extra_pnginfo=None):
        from nodes.diffusion import save_layouts as S

        meta = _metadata(ctx, [vae], prompt, extra_pnginfo)
        return _write(ctx, filename_prefix, S.vae_tensors(vae, None, prefix=""), meta)


# --- LoRA extraction -------------------------------------------------------------------------------

class ModelMergeSubtract(Node):
    """model1 − multiplier × model2, weight by weight (feed LoraSave to extract a LoRA from two models)."""

    CATEGORY = CATEGORY
    RESOURCE = Resource.CPU
    INPUTS = (Socket("model1", "MODEL"), Socket("model2", "MODEL"),
              Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01))
    OUTPUTS = (Output("MODEL"),)

    def execute(self, ctx: NodeContext, model1, model2, multiplier: float = 1.0):
        from dataclasses import replace

        from nodes.devices import TORCH_OPS
        from nodes.diffusion.lora_extract import subtracted

        for value, name in ((model1, "model1"), (model2, "model2")):
            _check_savable(value, name)
            if value.quantization != "none":
                raise NodeError(f"{name}: subtract full-precision models", input_name=name)
        if model1.family != model2.family:
            raise NodeError(f"model2: a {model2.family.value} model cannot be subtracted from a "
                            f"{model1.family.value} model", input_name="model2")
        key = ("subtract", _ref_key(model1), _ref_key(model2), float(multiplier))
        handle = ctx.models.load(key, lambda: subtracted(model1, model2, float(multiplier)), ops=TORCH_OPS,
                                 device=getattr(model1.weights, "wanted_device", "cpu"),
                                 sources=list(getattr(model1.weights, "sources", ())) +
                                 list(getattr(model2.weights, "sources", ())),
                                 label=f"difference of {Path(model1.source).name} and {Path(model2.source).name}")
        return (replace(model1, weights=handle, patches=(), merges=()),)


def _ref_key(model: Any) -> tuple:
    key = getattr(model.weights, "key", None) or ("resident", id(model.weights))
    return (key, tuple((p.name, p.strength) for p in model.patches),
            tuple((getattr(o.weights, "key", id(o.weights)), r) for o, r in model.merges))


class LoraSave(Node):
    """Extracts a LoRA from a model difference (ModelMergeSubtract) by truncated SVD and saves it (LoraLoader loads it)."""

    DISPLAY_NAME = "Extract and Save Lora"
    CATEGORY = "_for_testing"
    OUTPUT_NODE = True
    INPUTS = (String("filename_prefix", "loras/ComfyUI_extracted_lora"),
              Int("rank", 8, min=1, max=4096, step=1),
              Combo("lora_type", ("standard", "full_diff"), "standard"),
              Boolean("bias_diff", True),
              Socket("model_diff", "MODEL", optional=True,
                     tooltip="The ModelMergeSubtract output: the weight difference to turn into a LoRA."),
              Socket("text_encoder_diff", "CLIP", optional=True,
                     tooltip="A text-encoder weight difference to turn into a LoRA."))
    HIDDEN = HIDDEN
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, filename_prefix: str = "loras/ComfyUI_extracted_lora", rank: int = 8,
                lora_type: str = "standard", bias_diff: bool = True, model_diff=None, text_encoder_diff=None,
                prompt=None, extra_pnginfo=None):
        from nodes.diffusion.lora_extract import extract

        if model_diff is None and text_encoder_diff is None:
            raise NodeError("model_diff: connect a model difference (ModelMergeSubtract) or a text encoder difference",
                            input_name="model_diff")
        tensors: dict = {}
        if model_diff is not None:
            with __import__("nodes.diffusion.model_patches", fromlist=["patched_weights"]).patched_weights(
                    model_diff) as module:
                tensors.update(extract(module, "diffusion_model.", rank, lora_type == "full_diff",
                                       check=ctx.check_interrupted))
        if text_encoder_diff is not None:
            for i, (kind, encoder) in enumerate(text_encoder_diff.encoders.items()):
                prefix = "text_encoder." if i == 0 else "text_encoder_2."
                tensors.update(extract(encoder, prefix, rank, lora_type == "full_diff", check=ctx.check_interrupted))
        if bias_diff:
            ctx.record(note="bias differences are not stored: LoRA files here carry weight deltas only")
        meta = _metadata(ctx, [v for v in (model_diff, text_encoder_diff) if v is not None], prompt, extra_pnginfo,
                         **{"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
                            "genesis.lora_type": lora_type})
        return _write(ctx, filename_prefix, tensors, meta)
