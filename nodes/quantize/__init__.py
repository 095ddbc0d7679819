"""Quantization: method names and device capabilities, in-place quantizers, Quantize*/GGUF/NF4 nodes."""
