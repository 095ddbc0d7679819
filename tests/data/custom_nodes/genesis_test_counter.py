"""A ComfyUI-style (V1) custom node pack for the video durability test: an IMAGE source that
appends a line to a file every time it runs, so a test can tell whether it ran again."""
import torch


class CountingImage:
    CATEGORY = "testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"log": ("STRING", {"default": ""}), "size": ("INT", {"default": 64})}}

    def run(self, log, size):
        with open(log, "a") as fh:
            fh.write("ran\n")
        return (torch.full((1, size, size, 3), 0.5),)


NODE_CLASS_MAPPINGS = {"CountingImage": CountingImage}
