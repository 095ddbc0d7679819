"""Vision-language nodes on transformers: image captions (one image, a batch, a whole folder), and the
nodes of the ComfyUI packs users already have (AILab_QwenVL, Florence-2)."""
