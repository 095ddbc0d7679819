"""Diffusion model support on diffusers components: loading, encoding, sampling, decoding.

The node modules (``nodes/loaders.py``, ``nodes/sampling.py`` …) are thin declarations over
the functions here; nothing in this package knows about the graph runtime.
"""
