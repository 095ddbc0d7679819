"""Offline loading of causal LMs and vision-language models with transformers.

Why it looks like this:

* Never a network access: every ``from_pretrained`` gets ``local_files_only=True``, and the
  tokenizer / processor files are checked *before* transformers runs, so a missing file is an
  error naming that file and the folder instead of a hub lookup or a stack trace.
* GGUF files load through transformers' ``gguf_file`` (dequantized to torch tensors).
* ``bnb_nf4`` / ``bnb_int8`` keep the vision tower, the projector and ``lm_head`` unquantized.
  transformers 5 matches ``llm_int8_skip_modules`` from the start of the dotted module name, and
  passing any list drops its default skips, so the list holds the *full* prefixes
  (``model.visual``, ``model.vision_tower`` …) found on a meta-device copy of the model, plus
  ``lm_head``.  (Short names such as ``vision_tower`` silently skip nothing.)
* ``fp8_e4m3fn`` / ``fp8_e5m2`` store Linear weights in float8 and upcast them per call;
  ``int8_weight_only`` is torchao's weight-only int8 through transformers' ``TorchAoConfig``.
  Which methods exist and run on which device is :mod:`nodes.quantize.capabilities`' one list.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nodes.language.transformers_lm.catalog import ModelSource
from nodes.language.transformers_lm.options import ATTENTIONS, DEVICES, DTYPES, LoadOptions  # noqa: F401

log = logging.getLogger(__name__)


_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "mm_projector", "vision_embed",
                 "image_projection", "image_proj", "vision")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class LoadError(Exception):
    """A model cannot be loaded; the message says which file is missing or which option is wrong."""


@dataclass
class LanguageModel:
    """A loaded model with its tokenizer (and processor for VLMs): what LLM / VLM sockets carry."""

    model: Any
    tokenizer: Any
    processor: Any = None
    source: ModelSource | None = None
    options: LoadOptions = field(default_factory=LoadOptions)
    key: tuple = ()
    skipped_modules: tuple[str, ...] = ()
    rendered_heads: dict[str, list[int]] = field(default_factory=dict, repr=False, compare=False)
    """Token ids of system prompts rendered alone by the chat template (the reusable prefix), per prompt."""

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", ""))

    @property
    def is_encoder_decoder(self) -> bool:
        return bool(getattr(self.model.config, "is_encoder_decoder", False)) or self.model_type == "florence2"

    @property
    def is_florence(self) -> bool:
        return self.model_type == "florence2"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def size_bytes(self) -> int:
        """Bytes held by parameters and buffers (quantized storage counted as stored)."""
        return sum(storage_bytes(t) for t in list(self.model.parameters()) + list(self.model.buffers()))

    def linear_weight_bytes(self, skips: tuple[str, ...] | None = None) -> dict[str, int]:
        """Stored bytes of the Linear weights, split into those outside ``skips`` (default: the modules this
        model kept unquantized) and those inside."""
        skips = self.skipped_modules if skips is None else skips
        out = {"quantized": 0, "kept": 0}
        for name, module in self.model.named_modules():
            weight = getattr(module, "weight", None)
            if weight is None or not _is_linear(module):
                continue
            kept = any(name == s or name.startswith(s + ".") for s in skips)
            out["kept" if kept else "quantized"] += storage_bytes(weight)
        return out

    def __repr__(self) -> str:
        name = self.source.name if self.source else "?"
        return f"LanguageModel({name}, {self.model_type}, {self.options.quantization})"


def storage_bytes(t: Any) -> int:
    """Bytes a tensor really stores: tensor subclasses (torchao) are summed over their inner tensors,
    bitsandbytes 4-bit weights add their quantization state (absmax)."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if callable(flatten) and type(t) not in (torch.Tensor, torch.nn.Parameter):
        try:
            names, _ = flatten()
            return sum(storage_bytes(getattr(t, n)) for n in names)
        except Exception:  # pragma: no cover - exotic subclass
            pass
    total = t.numel() * t.element_size()
    state = getattr(t, "quant_state", None)
    absmax = getattr(state, "absmax", None)
    if isinstance(absmax, torch.Tensor):
        total += absmax.numel() * absmax.element_size()
    return total


def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("FP8Linear", "Linear4bit", "Linear8bitLt")


def resolve_device(option: str, runtime_device: str = "auto") -> torch.device:
    """``auto`` follows the runtime (``--cpu``) and takes CUDA when there is one."""
    choice = option if option != "auto" else runtime_device
    if choice in ("auto", "default", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(choice).startswith("cuda") and not torch.cuda.is_available():
        raise LoadError("device: 'cuda' was chosen but no CUDA GPU is available; use 'auto' or 'cpu'")
    return torch.device(choice)


def resolve_dtype(option: str, device: torch.device) -> torch.dtype:
    """An explicit dtype wins; else the runtime's one policy (``nodes.devices.precision``): fp32 on the
    CPU, bf16 where the accelerator has it, fp16 where it does not."""
    if option in _TORCH_DTYPES:
        return _TORCH_DTYPES[option]
    from nodes.devices import precision

    return precision("vlm", device)


def check_method(quantization: str, device: torch.device) -> str | None:
    """Why ``quantization`` cannot run on ``device`` (None when it can)."""
    from nodes.quantize import capabilities

    return capabilities.refusal(quantization, str(device))


def _require_files(folder: Path, kind: str, needs_processor: bool) -> None:
    if not folder.is_dir():
        raise LoadError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise LoadError(f"{folder.name} has no config.json in {folder}: it is not a transformers model folder")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES[:3]):
        raise LoadError(f"{folder.name} has no tokenizer in {folder}: expected tokenizer.json (or tokenizer.model, "
                        f"or vocab.json + merges.txt); copy the tokenizer files of the {kind} into that folder")
    if (folder / "vocab.json").is_file() and not (folder / "tokenizer.json").is_file() \
            and not (folder / "merges.txt").is_file():
        raise LoadError(f"{folder.name}: vocab.json without merges.txt in {folder}; copy merges.txt too")
    if needs_processor and not any((folder / f).is_file() for f in PROCESSOR_FILES):
        raise LoadError(f"{folder.name} has no image processor in {folder}: expected preprocessor_config.json "
                        f"(or processor_config.json); copy it from the model's repository")


def vision_prefixes(config: Any, auto_class: Any) -> list[str]:
    """Full dotted prefixes of the vision tower and projector, found on a meta-device copy of the model."""
    with torch.device("meta"):
        model = auto_class.from_config(config)
    found: list[str] = []
    for name, module in model.named_modules():
        if not name:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _VISION_PARTS and not any(name.startswith(p + ".") for p in found):
            found.append(name)
    return found


def skip_modules(config: Any, auto_class: Any, is_vlm: bool) -> list[str]:
    """Modules kept unquantized: ``lm_head`` (and the vision parts of a VLM), as full prefixes."""
    skips = vision_prefixes(config, auto_class) if is_vlm else []
    return skips + ["lm_head"]


def _quantization_config(method: str, dtype: torch.dtype, skips: list[str]) -> Any:
    if method == "bnb_nf4":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=skips)
    if method == "bnb_int8":
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skips)
    if method == "int8_weight_only":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        return TorchAoConfig(Int8WeightOnlyConfig(), modules_to_not_convert=skips)
    return None


class FP8Linear(torch.nn.Module):
    """A Linear whose weight is stored in float8 and upcast to the input's dtype per call."""

    def __init__(self, linear: torch.nn.Linear, storage: torch.dtype = torch.float8_e4m3fn) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = torch.nn.Parameter(linear.weight.detach().to(storage), requires_grad=False)
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)


def to_fp8(model: torch.nn.Module, skips: list[str], storage: torch.dtype = torch.float8_e4m3fn) -> int:
    """Replace every Linear outside ``skips`` (full prefixes) by :class:`FP8Linear`; returns how many."""
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
               and not any(name == s or name.startswith(s + ".") for s in skips)]
    for name, linear in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, FP8Linear(linear, storage))
    return len(targets)


def load_language_model(source: ModelSource, options: LoadOptions, *, vision: bool,
                        runtime_device: str = "auto") -> LanguageModel:
    """Load a causal LM (``vision=False``) or an image-text-to-text model with its tokenizer/processor."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, \
        AutoTokenizer

    device = resolve_device(options.device, runtime_device)
    reason = check_method(options.quantization, device)
    if reason:
        raise LoadError(f"quantization: {reason}")
    dtype = resolve_dtype(options.dtype, device)
    auto_class = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    gguf = source.gguf_file
    common: dict[str, Any] = {"local_files_only": True}
    if gguf:
        if vision:
            raise LoadError(f"{source.name}: GGUF vision-language models are not supported by transformers; "
                            "use the model's transformers folder")
        if not (source.folder / gguf).is_file():
            raise LoadError(f"GGUF file {source.folder / gguf} does not exist")
        common["gguf_file"] = gguf
    else:
        _require_files(source.folder, "VLM" if vision else "LLM", needs_processor=vision)
    try:
        config = AutoConfig.from_pretrained(source.folder, **common)
        processor = AutoProcessor.from_pretrained(source.folder, **common) if vision else None
        tokenizer = processor.tokenizer if processor is not None else \
            AutoTokenizer.from_pretrained(source.folder, **common)
    except (OSError, ValueError) as exc:
        raise LoadError(f"{source.name}: could not read its config/tokenizer offline from {source.folder}: {exc}") \
            from exc
    skips = skip_modules(config, auto_class, vision) if options.quantization != "none" else []
    kwargs: dict[str, Any] = dict(common, dtype=dtype)
    if options.attention != "auto":
        kwargs["attn_implementation"] = options.attention
    qconfig = _quantization_config(options.quantization, dtype, skips)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": str(device)}
    try:
        model = auto_class.from_pretrained(source.folder, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise LoadError(f"{source.name}: {exc}") from exc
    if qconfig is None:
        model.to(device)
    if options.quantization in ("fp8_e4m3fn", "fp8_e5m2"):
        count = to_fp8(model, skips, getattr(torch, {"fp8_e4m3fn": "float8_e4m3fn",
                                                     "fp8_e5m2": "float8_e5m2"}[options.quantization]))
        log.info("%s: %d Linear layers stored in %s", source.name, count, options.quantization)
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return LanguageModel(model=model, tokenizer=tokenizer, processor=processor, source=source, options=options,
                         skipped_modules=tuple(skips))
