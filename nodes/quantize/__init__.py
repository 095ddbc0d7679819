"""Quantization: method names and device capabilities (``capabilities``), in-place quantizers
(``methods``), and the nodes QuantizeModel / QuantizeCLIP (``nodes``, the registered pack)."""
