"""A ComfyUI-style (V1) custom node pack for the durability test: a node that blocks until a
file appears, so a test can hold a prompt "running" while it kills the server."""
import os
import time


class WaitForFile:
    CATEGORY = "testing"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "wait"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""}), "tag": ("INT", {"default": 0})}}

    def wait(self, path, tag):
        while not os.path.exists(path):
            time.sleep(0.02)
        with open(path) as fh:
            return {"ui": {"text": [fh.read()], "tag": [tag]}}


NODE_CLASS_MAPPINGS = {"WaitForFile": WaitForFile}
NODE_DISPLAY_NAME_MAPPINGS = {"WaitForFile": "Wait for a file"}
