"""LLM nodes on transformers: loading (folders, GGUF, quantized), narration with streamed tokens.

Model code (loading, generation, prefix KV reuse) lives in :mod:`nodes.language.transformers_lm`,
shared with :mod:`nodes.vision_language`.
"""
