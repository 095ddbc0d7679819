"""The loaders' ``quantization`` combo and its queue-time check, from the one list of methods
(:mod:`nodes.quantize.capabilities`)."""
from __future__ import annotations

from graph_runtime.schema import Combo
from nodes.quantize import capabilities

QUANTIZATION_OPTION = Combo(
    "quantization", capabilities.METHODS, capabilities.NONE,
    tooltip="none; bnb_nf4 / bnb_int8 (bitsandbytes; the vision tower, projector and lm_head stay unquantized); "
            "fp8_e4m3fn / fp8_e5m2 (fp8 storage, upcast per layer); int8_weight_only (torchao).")


def validate_placement(quantization: str = "none", device: str = "auto") -> bool | str:
    """True, or why this quantization cannot run on this device (shown at queue time)."""
    from nodes.language.transformers_lm.loading import LoadError, resolve_device

    try:
        target = resolve_device(device)
    except LoadError as exc:
        return str(exc)
    reason = capabilities.refusal(quantization, str(target))
    return f"quantization: {reason}" if reason else True
