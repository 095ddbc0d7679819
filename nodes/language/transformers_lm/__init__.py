"""Language-model plumbing on transformers, shared by the LLM and VLM packs.

* :mod:`.catalog`: which models a user has (folders, ``.gguf`` files, the packaged SmolLM2);
* :mod:`.loading`: offline loading with dtype / attention / device / quantization options;
* :mod:`.generation`: streamed, interruptible generation with draft models, prompt lookup and
  prefix KV reuse.
"""
