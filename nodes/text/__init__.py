"""Text nodes: ComfyUI core's string operations, SaveText and PreviewAny."""
