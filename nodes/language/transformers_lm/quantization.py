"""The loaders' ``quantization`` combo and its queue-time check (method runnable on the chosen device)."""
from __future__ import annotations

from graph_runtime.schema import Combo
from nodes.language.transformers_lm.loading import QUANTIZATIONS, LoadError, check_method, resolve_device

QUANTIZATION_OPTION = Combo(
    "quantization", QUANTIZATIONS, "none",
    tooltip="none; bnb_nf4 / bnb_int8 (bitsandbytes; vision tower and lm_head stay unquantized); fp8_e4m3fn "
            "(fp8 storage, upcast per layer); int8_weight_only (torchao).")


def validate_placement(quantization: str = "none", device: str = "auto") -> bool | str:
    """True, or why this quantization cannot run on this device (shown at queue time)."""
    try:
        target = resolve_device(device)
    except LoadError as exc:
        return str(exc)
    reason = check_method(quantization, target)
    return f"quantization: {reason}" if reason else True
