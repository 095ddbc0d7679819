"""GGUF diffusion models and text encoders, as city96/ComfyUI-GGUF files hold them, via diffusers' GGUF support.

What the files look like (ComfyUI-GGUF's ``tools/convert.py`` + llama.cpp's quantizer; the ``gguf`` package):

* diffusion models keep their original tensor names (FLUX: BFL ``double_blocks…``; SD: LDM names
  ``input_blocks…``) with ``general.architecture`` = "flux" / "sd1" / "sdxl"; 2-D and 4-D weights
  are quantized (Q8_0, Q4_K …), 1-D tensors and tensors of ≤ 1024 values stay F32/F16.  SD/SDXL
  weights whose last dimension is not a multiple of 256 are stored **reshaped** to rows of 256
  (``comfy.gguf.orig_shape.NAME`` holds the real shape) so that K-quants fit them; FLUX never is;
* T5 encoders use llama.cpp's names (``enc.blk.0.attn_q.weight``, ``token_embd.weight`` …;
  architecture "t5encoder"/"t5"); CLIP encoders keep transformers names.

How they load — quantized in memory wherever a layer can compute from GGUF blocks (the point of GGUF):
every ``nn.Linear`` whose weight is quantized becomes a GGUF Linear (diffusers' ``GGUFLinear``:
``GGUFParameter`` weight, dequantized layer by layer at compute time, CUDA kernels where diffusers
has them), every quantized ``nn.Conv2d`` a :class:`GGUFConv2d` (the same, for convolutions —
diffusers has no GGUF conv; most of an SD UNet is convs).  Embeddings and anything a conversion
computes on (OpenCLIP's fused q/k/v) are dequantized into the compute dtype at load.  Names are
converted by the same blueprints as safetensors files (``nodes.diffusion.single_file``): they
only rename tensors, so the quantized tensors are passed through as they are.  ``UNETLoader`` /
``CLIPLoader`` on a ``.gguf`` use the GGUF path for text encoders; ``UNETLoader`` dequantizes a
GGUF diffusion model (``model_files.load``), ``UnetLoaderGGUF`` keeps it quantized.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import torch

log = logging.getLogger(__name__)

ORIG_SHAPE_KEY = "comfy.gguf.orig_shape."


class GGUFError(Exception):
    """A GGUF file this loader cannot use (the message names the file and why)."""


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # pragma: no cover - gguf is a dependency
        raise GGUFError("the gguf package is not installed (pip install 'gguf==0.19.0')") from exc
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise GGUFError(f"{path.name} is not a readable GGUF file ({exc})") from exc


def _architecture(reader) -> str:
    field = reader.fields.get("general.architecture")
    return bytes(field.parts[field.data[0]]).decode() if field is not None else ""


def _orig_shapes(reader) -> dict[str, tuple[int, ...]]:
    """ComfyUI-GGUF's ``comfy.gguf.orig_shape.NAME`` fields: the real shapes of reshaped tensors."""
    return {name[len(ORIG_SHAPE_KEY):]: tuple(int(d) for d in field.contents())
            for name, field in reader.fields.items() if name.startswith(ORIG_SHAPE_KEY)}


def read(path: Path) -> tuple[dict[str, Any], str]:
    """(tensors — GGUFParameter for quantized ones —, ``general.architecture``) of a GGUF file.

    Tensors stored reshaped come back in their real shape: plain ones reshaped, quantized ones with
    rows re-cut to the real rows where the quantization blocks allow it (the block stream is the
    same), else carrying the real shape in ``logical_shape`` (see :func:`logical_shape`).
    """
    reader = _reader(path)
    arch, orig = _architecture(reader), _orig_shapes(reader)
    try:
        from diffusers.models.model_loading_utils import load_gguf_checkpoint

        sd = load_gguf_checkpoint(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise GGUFError(f"{path.name} is not a readable GGUF file ({exc})") from exc
    for name, shape in orig.items():
        if name in sd:
            sd[name] = _with_shape(sd[name], shape)
    return sd, arch


def _with_shape(t: Any, shape: tuple[int, ...]) -> Any:
    if not is_quantized(t):
        return t.reshape(shape)
    from diffusers.quantizers.gguf.utils import GGML_QUANT_SIZES, GGUFParameter

    block, type_size = GGML_QUANT_SIZES[t.quant_type]
    if len(shape) == 2 and shape[-1] % block == 0:  # whole blocks per real row: cut the rows again
        rows = t.as_tensor().reshape(shape[0], shape[-1] // block * type_size)
        return GGUFParameter(rows, quant_type=t.quant_type)
    t.logical_shape = tuple(shape)
    return t


def is_quantized(t: Any) -> bool:
    return hasattr(t, "quant_type") and hasattr(t, "quant_shape")


def logical_shape(t: Any) -> tuple[int, ...]:
    """The shape a tensor of :func:`read` has once dequantized (its real shape)."""
    if not is_quantized(t):
        return tuple(t.shape)
    return tuple(getattr(t, "logical_shape", None) or t.quant_shape)


def logical_shapes(sd: dict[str, Any]) -> dict[str, tuple]:
    return {k: logical_shape(v) for k, v in sd.items()}


def dequantize(t: Any) -> torch.Tensor:
    """A tensor of :func:`read` as a plain tensor of its real shape (quantized ones decoded to fp32)."""
    if not is_quantized(t):
        return t
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    return dequantize_gguf_tensor(t).reshape(logical_shape(t))


def dequantized(sd: dict[str, Any], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: dequantize(v).to(dtype) for k, v in sd.items()}


def t5_from_llama_names(sd: dict[str, Any]) -> dict[str, Any]:
    """llama.cpp T5-encoder names → transformers ``T5EncoderModel`` names (gguf's own name table, inverted)."""
    import gguf

    blocks = 1 + max([int(k.split(".")[2]) for k in sd if k.startswith("enc.blk.")], default=-1)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, blocks)
    hf_modules = ["shared", "encoder.final_layer_norm"]
    for i in range(blocks):
        attn, ff = f"encoder.block.{i}.layer.0.", f"encoder.block.{i}.layer.1."
        hf_modules += [attn + f"SelfAttention.{p}" for p in ("q", "k", "v", "o", "relative_attention_bias")]
        hf_modules += [attn + "layer_norm", ff + "layer_norm"]
        hf_modules += [ff + f"DenseReluDense.{p}" for p in ("wi_0", "wi_1", "wi", "wo")]
    inverse = {}
    for hf in hf_modules:
        g = names.get_name(hf)
        if g is not None:
            inverse.setdefault(g, hf)
    out = {}
    for key, value in sd.items():
        module, _, kind = key.rpartition(".")
        hf = inverse.get(module)
        if hf is None:
            raise GGUFError(f"unexpected tensor {key} in a T5 GGUF file")
        out[f"{hf}.{kind}"] = value
    return out


def _normalized(names_or_sd: dict[str, Any], arch: str) -> dict[str, Any]:
    if arch in ("t5", "t5encoder") or any(k.startswith("enc.blk.") for k in names_or_sd):
        return t5_from_llama_names(names_or_sd)
    return names_or_sd


def inspect(path: Path) -> tuple[dict[str, tuple], dict[str, str]]:
    """(name → logical shape, metadata) of a GGUF file from its header (tensor data is memory-mapped, not read).

    Names are normalized to what our detection and builders read (llama.cpp T5 names → transformers).
    """
    reader = _reader(path)
    arch, orig = _architecture(reader), _orig_shapes(reader)
    shapes = {t.name: orig.get(t.name) or tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}
    return _normalized(shapes, arch), {"gguf.architecture": arch}


def load_dequantized(path: Path, select=None) -> dict[str, torch.Tensor]:
    """Every tensor of a GGUF file dequantized to fp32, under normalized names (``select`` filters names)."""
    sd, arch = read(path)
    sd = _normalized(sd, arch)
    return dequantized({k: v for k, v in sd.items() if select is None or select(k)})


# --- modules that compute from GGUF blocks ------------------------------------------------------

def _gguf_linear_class():
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    class GGUFRowsLinear(GGUFLinear):
        """diffusers' GGUFLinear, also for weights whose stored rows are not the layer's rows.

        ComfyUI-GGUF stores some SD weights as rows of 256 values; those are decoded and reshaped
        here (diffusers' own forward derives the shape from the rows).  The weight may be stored as
        an ``int8`` view of the blocks: T5 casts its input to ``wo.weight.dtype`` unless that is
        int8 (its fp32 island), and a uint8 block store would turn activations into bytes.
        """

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            w = self.weight
            if w.dtype == torch.uint8 and tuple(w.quant_shape) == (self.out_features, self.in_features):
                return super().forward(inputs)  # diffusers' path (CUDA kernels when present)
            weight = dequantize_gguf_tensor(w).reshape(self.out_features, self.in_features).to(self.compute_dtype)
            bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
            return torch.nn.functional.linear(inputs.to(self.compute_dtype), weight, bias)

    return GGUFRowsLinear


class GGUFConv2d(torch.nn.Conv2d):
    """A Conv2d whose weight stays GGUF-quantized, decoded to ``compute_dtype`` when it runs."""

    compute_dtype: torch.dtype

    @classmethod
    def like(cls, conv: torch.nn.Conv2d, compute_dtype: torch.dtype) -> "GGUFConv2d":
        from accelerate import init_empty_weights

        with init_empty_weights():
            new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                      dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                      padding_mode=conv.padding_mode)
        new.compute_dtype = compute_dtype
        return new.requires_grad_(False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        weight = dequantize_gguf_tensor(self.weight).reshape(shape).to(self.compute_dtype)
        bias = self.bias.to(self.compute_dtype) if self.bias is not None else None
        return self._conv_forward(inputs.to(self.compute_dtype), weight, bias)


def gguf_layers(module: torch.nn.Module) -> list[str]:
    """Names of the layers of ``module`` that compute from GGUF blocks."""
    from diffusers.quantizers.gguf.utils import GGUFLinear

    return [n for n, m in module.named_modules() if isinstance(m, (GGUFLinear, GGUFConv2d))]


# --- from a converted state to a module -------------------------------------------------------

def _set_tensor(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if leaf in module._parameters:
        module._parameters[leaf] = value if isinstance(value, torch.nn.Parameter) else \
            torch.nn.Parameter(value, requires_grad=False)
    elif leaf in module._buffers:
        module._buffers[leaf] = value.data if isinstance(value, torch.nn.Parameter) else value
    else:
        raise GGUFError(f"the model has no tensor {name}")


def _swap_quantized_layers(model: torch.nn.Module, state: Mapping[str, Any], compute_dtype: torch.dtype) -> set[str]:
    """Replace each Linear/Conv2d whose weight is quantized (of the layer's real shape) by its GGUF twin."""
    from accelerate import init_empty_weights

    linear_cls = _gguf_linear_class()
    swapped = set()
    for name, module in list(model.named_modules()):
        weight = state.get(f"{name}.weight")
        if not name or not is_quantized(weight) or logical_shape(weight) != tuple(module.weight.shape):
            continue
        if type(module) is torch.nn.Linear:
            with init_empty_weights():
                new = linear_cls(module.in_features, module.out_features, module.bias is not None,
                                 compute_dtype=compute_dtype)
            new.requires_grad_(False)
        elif type(module) is torch.nn.Conv2d:
            new = GGUFConv2d.like(module, compute_dtype)
        else:  # embeddings and the like: dequantized at assignment
            continue
        new.source_cls = type(module)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
        swapped.add(name)
    return swapped


def materialize(blueprint, compute_dtype: torch.dtype, file_name: str) -> torch.nn.Module:
    """Build ``blueprint`` (a :class:`nodes.diffusion.single_file.Blueprint` whose state may hold GGUF
    tensors): quantized Linear/Conv2d weights stay quantized, everything else is decoded and cast to
    ``compute_dtype`` (non-float tensors keep their dtype), strictly — missing or misshapen tensors
    are an error naming the file."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    model = blueprint.make()
    expected = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
    state = blueprint.state
    missing = [k for k in expected if k not in state]
    if missing:
        raise GGUFError(f"{file_name}: the {blueprint.what} is incomplete — {len(missing)} of {len(expected)} "
                        f"tensors are missing (e.g. {', '.join(missing[:3])})")
    bad = [k for k in expected if logical_shape(state[k]) != expected[k][0]]
    if bad:
        k = bad[0]
        raise GGUFError(f"{file_name}: the {blueprint.what} has unexpected tensor shapes (e.g. {k}: "
                        f"{logical_shape(state[k])} instead of {expected[k][0]})")
    swapped = _swap_quantized_layers(model, state, compute_dtype)
    fp32_islands = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    made: dict[int, torch.nn.Parameter] = {}  # one parameter per source tensor: tied weights stay tied
    for key in expected:
        value = state[key]
        module_name, _, leaf = key.rpartition(".")
        if module_name in swapped and leaf == "weight":
            if module_name.rpartition(".")[2] in fp32_islands:
                value = GGUFParameter(value.as_tensor().view(torch.int8), quant_type=value.quant_type)
            _set_tensor(model, key, value)
            continue
        if id(value) not in made:
            target = compute_dtype if expected[key][1].is_floating_point else expected[key][1]
            plain = dequantize(value)
            made[id(value)] = torch.nn.Parameter(plain.to(target) if plain.dtype != target else plain,
                                                 requires_grad=False)
        _set_tensor(model, key, made[id(value)])
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise GGUFError(f"{file_name}: the {blueprint.what} has no weights for {name}")
    return model.eval().requires_grad_(False)


def keeping_quantized(sd: Mapping[str, Any], make_blueprint):
    """``make_blueprint(sd)`` for a state dict holding GGUF tensors, with the quantized ones passed through.

    The blueprint functions read shapes and rename; they are run on meta stand-ins of the quantized
    tensors (real shapes) and each stand-in found under a new name is swapped back for its quantized
    tensor.  A tensor a conversion *computed* from quantized ones (OpenCLIP's fused q/k/v split) is
    recomputed from the decoded inputs instead.
    """
    from dataclasses import replace

    quantized = {k: v for k, v in sd.items() if is_quantized(v)}

    def run(decoded: set[str]):
        stand_ins = {k: torch.empty(logical_shape(v), device="meta") for k, v in quantized.items() if k not in decoded}
        source = {k: dequantize(v) if k in decoded else stand_ins.get(k, v) for k, v in sd.items()}
        blueprint = make_blueprint(source)
        origin = {id(t): k for k, t in stand_ins.items()}
        state = {k: quantized[origin[id(t)]] if id(t) in origin else t for k, t in blueprint.state.items()}
        return replace(blueprint, state=state), {origin[id(t)] for t in blueprint.state.values() if id(t) in origin}

    blueprint, passed = run(set())
    if any(getattr(t, "device", None) is not None and t.device.type == "meta" for t in blueprint.state.values()):
        blueprint, _ = run(set(quantized) - passed)
    return blueprint


# --- loaders -----------------------------------------------------------------------------------

def build_flux_quantized(bfl: dict[str, Any], file_name: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    """A FluxTransformer2DModel whose Linear weights stay GGUF-quantized.

    The fused BFL q/k/v (and linear1) rows are split on the quantized rows directly (GGUF blocks
    run along a row), so no weight is decoded.
    """
    from diffusers import FluxTransformer2DModel

    from nodes.diffusion import configs, keymaps
    from nodes.diffusion.single_file import Blueprint, _empty

    meta = {k: torch.empty(s, device="meta") for k, s in logical_shapes(bfl).items()}
    try:
        cfg = configs.infer_flux_config(meta)
        state = keymaps.flux_from_bfl_state_dict(bfl)
    except (KeyError, ValueError, IndexError) as exc:
        raise GGUFError(f"{file_name}: cannot read the FLUX transformer ({exc!s})") from exc
    blueprint = Blueprint(_empty(lambda: FluxTransformer2DModel.from_config(cfg)), state, "FLUX transformer")
    return materialize(blueprint, compute_dtype, file_name)


def load_denoiser(path: Path, compute_dtype: torch.dtype, device: torch.device):
    """(detected family, module) of a GGUF diffusion model file, its quantized weights kept quantized."""
    from nodes.diffusion import families
    from nodes.diffusion import single_file as sf
    from nodes.diffusion.model_files import ModelFileError, strip_prefix

    sd, arch = read(path)
    detected = families.detect(logical_shapes(sd))
    if detected.family is None or detected.kind not in ("diffusion_model", "checkpoint"):
        raise GGUFError(f"{path.name} is a GGUF {arch or detected.describe()}; UnetLoaderGGUF loads SD1.5, SDXL and "
                        "FLUX diffusion models")
    if detected.prefix:
        sd = strip_prefix(sd, detected.prefix)
    try:
        if detected.family.is_flux:
            if detected.layout == "bfl":
                module = build_flux_quantized(sd, path.name, compute_dtype)
            else:  # diffusers-layout FLUX (ComfyUI-GGUF's converter refuses it): decoded
                module = sf.build_flux_transformer(dequantized(sd, compute_dtype), path.name, compute_dtype,
                                                   layout=detected.layout)
        else:
            blueprint = keeping_quantized(sd, lambda s: sf.sd_unet_blueprint(s, detected.family, path.name,
                                                                            layout=detected.layout))
            module = materialize(blueprint, compute_dtype, path.name)
    except ModelFileError as exc:
        raise GGUFError(str(exc)) from exc
    return detected, module.to(device)


def load_encoder(path: Path, kind: str, prefix: str, layout: str, compute_dtype: torch.dtype) -> torch.nn.Module:
    """A CLIP or T5 text encoder from a GGUF file, its quantized Linear weights kept quantized."""
    from nodes.diffusion import single_file as sf
    from nodes.diffusion.model_files import ModelFileError

    sd, arch = read(path)
    sd = _normalized(sd, arch)
    if prefix:
        sd = {k: v for k, v in sd.items() if k.startswith(prefix)}
    try:
        blueprint = keeping_quantized(sd, lambda s: sf.encoder_blueprint(s, kind, prefix, layout, path.name))
        return materialize(blueprint, compute_dtype, path.name)
    except ModelFileError as exc:
        raise GGUFError(str(exc)) from exc
