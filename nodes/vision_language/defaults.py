"""Caption defaults as plain data (no torch import: node declarations read these at start-up)."""

DEFAULT_PROMPT = "Describe this image in detail."
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
DEFAULT_MIN_PIXELS = 0
"""0: the processor's own minimum."""
