"""nodes.quantize.capabilities: one list of method names, and honest per-device answers."""
from __future__ import annotations

from nodes.quantize import capabilities as caps


def test_method_names_are_the_shared_list():
    assert caps.METHODS == ("none", "bnb_nf4", "bnb_int8", "fp8_e4m3fn", "fp8_e5m2", "int8_weight_only")
    assert caps.QUANTIZE_METHODS == caps.METHODS[1:]


def test_cpu_runs_every_method_whose_library_is_installed():
    assert caps.supported("cpu") == list(caps.METHODS)  # bitsandbytes 0.50.2 and torchao have CPU kernels
    assert caps.refusal("fp8_e4m3fn", "cpu") is None


def test_refusals_name_the_reason_and_what_can_run():
    msg = caps.refusal("fp8_e5m2", "mps")
    assert "no float8 dtype" in msg and msg.endswith("can run here: none")
    assert msg.startswith("fp8_e5m2 cannot run on mps")
    assert "bnb_nf4" not in caps.supported("mps") and "fp8_e4m3fn" not in caps.supported("mps")
    missing = caps.refusal("int8_weight_only", "cuda:0", installed=lambda lib: lib != "torchao")
    assert "torchao is not installed" in missing and "bnb_nf4" in missing
    assert "unknown quantization method" in caps.refusal("gptq", "cpu")
