"""Memory is really released: /free and LRU eviction give the models' bytes back to the OS.

Real tensors, real HTTP: an SD1.5-architecture checkpoint whose UNet weighs ~300 MB (full structure,
narrower channels; ``models.tools.sized_models``) runs a txt2img prompt through a live server,
then ``POST /free`` must bring the process's resident memory back down by about the model's size,
and no reference to the UNet may survive (the output cache holds handles, not modules).
"""
from __future__ import annotations

import gc
import os
import shutil
import weakref
from pathlib import Path

import pytest

from graph_runtime.context import RuntimeOptions
from graph_runtime.device_memory import process_rss
from graph_runtime.paths import FolderPaths
from graph_runtime.service import Runtime
from server import default_registry
from tests.web_harness import LiveServer

MB = 1 << 20


@pytest.fixture(scope="module")
def sized_checkpoints(tmp_path_factory) -> tuple[Path, int]:
    from models.tools.sized_models import write_sd15_checkpoint

    folder = tmp_path_factory.mktemp("sized")
    size = write_sd15_checkpoint(folder / "mid-a.safetensors", seed=1)
    write_sd15_checkpoint(folder / "mid-b.safetensors", seed=2)
    gc.collect()
    return folder, size


def txt2img(ckpt: str, seed: int, text: str = "a red fox") -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "seed": seed, "steps": 1, "cfg": 2.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def _base(tmp_path: Path, sized: Path) -> FolderPaths:
    paths = FolderPaths(tmp_path / "base")
    paths.ensure_dirs()
    target = tmp_path / "base" / "models" / "checkpoints"
    target.mkdir(parents=True, exist_ok=True)
    for f in sized.iterdir():
        try:
            os.link(f, target / f.name)
        except OSError:
            shutil.copy2(f, target / f.name)
    return paths


def _settled_rss() -> int:
    gc.collect()
    from graph_runtime.device_memory import malloc_trim

    malloc_trim()
    return process_rss()


def _unet_of(runtime: Runtime, name: str):
    for handle in list(runtime.models._handles.values()):
        if handle.loaded and name in handle.label and "denoiser" in handle.label:
            return handle.peek()
    return None


def test_free_releases_the_models_memory(tmp_path, sized_checkpoints):
    sized, unet_bytes = sized_checkpoints
    paths = _base(tmp_path, sized)
    runtime = Runtime(paths, RuntimeOptions(device="cpu"), registry=default_registry(paths))
    server = LiveServer(runtime, probe_torch=False).start()
    try:
        before = _settled_rss()
        history = server.wait_history(server.queue(txt2img("mid-a.safetensors", 1)))
        assert history["status"]["status_str"] == "success", history["status"]
        unet = weakref.ref(_unet_of(runtime, "mid-a"))
        loaded = _settled_rss()
        assert loaded - before > 0.8 * unet_bytes, "the model should be resident after the prompt"
        assert runtime.models.held_bytes() >= unet_bytes
        reply = server.post("/free", {"unload_models": True})
        assert reply.status == 200
        gc.collect()
        assert unet() is None, "something still holds the UNet after /free"
        after = _settled_rss()
        assert loaded - after > 0.8 * unet_bytes, f"/free gave back {(loaded - after) / MB:.0f} MB of {unet_bytes / MB:.0f}"
        assert runtime.models.held_bytes() == 0 and runtime.models.loaded_models() == []
        stats = server.get("/api/system_stats").json()
        assert stats["models"]["held_bytes"] == 0
        assert stats["devices"][-1]["type"] == "cpu" and stats["devices"][-1]["process_rss"] > 0
        # Run again with a new seed: the cached loader and text outputs hold handles, which load back
        again = server.wait_history(server.queue(txt2img("mid-a.safetensors", 2)))
        assert again["status"]["status_str"] == "success", again["status"]
    finally:
        server.stop()
        runtime.stop()


def test_lru_eviction_under_a_budget_releases_the_older_model(tmp_path, sized_checkpoints):
    sized, unet_bytes = sized_checkpoints
    budget = int(unet_bytes * 1.5)  # room for one checkpoint, not two
    paths = _base(tmp_path, sized)
    runtime = Runtime(paths, RuntimeOptions(device="cpu", model_budget_bytes=budget), registry=default_registry(paths))
    server = LiveServer(runtime, probe_torch=False).start()
    try:
        first = server.wait_history(server.queue(txt2img("mid-a.safetensors", 1)))
        assert first["status"]["status_str"] == "success"
        unet_a = weakref.ref(_unet_of(runtime, "mid-a"))
        with_a = _settled_rss()
        second = server.wait_history(server.queue(txt2img("mid-b.safetensors", 1)))
        assert second["status"]["status_str"] == "success", second["status"]
        gc.collect()
        assert unet_a() is None, "the least recently used checkpoint must be evicted under the budget"
        with_b = _settled_rss()
        assert with_b - with_a < 0.3 * unet_bytes, "memory grew as if both models were resident"
        assert runtime.models.held_bytes() <= budget
        assert runtime.models.evictions >= 1
    finally:
        server.stop()
        runtime.stop()


def test_free_memory_also_drops_cached_outputs_and_unload_models_keeps_them(tmp_path, sized_checkpoints):
    """ComfyUI's two /free flags: ``unload_models`` unloads the models (cached outputs stay: they hold
    handles, and the next run reuses them); ``free_memory`` drops the cached outputs too."""
    import torch

    sized, unet_bytes = sized_checkpoints
    paths = _base(tmp_path, sized)
    runtime = Runtime(paths, RuntimeOptions(device="cpu"), registry=default_registry(paths))
    server = LiveServer(runtime, probe_torch=False).start()
    try:
        cuda_before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        first = server.wait_history(server.queue(txt2img("mid-a.safetensors", 1)))
        assert first["status"]["status_str"] == "success", first["status"]
        cached = len(runtime.executor.cache)
        assert cached > 0
        assert server.post("/free", {"unload_models": True}).status == 200
        assert runtime.models.held_bytes() == 0 and len(runtime.executor.cache) == cached
        again = server.wait_history(server.queue(txt2img("mid-a.safetensors", 2)))
        assert again["status"]["status_str"] == "success", again["status"]
        loaded = _settled_rss()
        assert server.post("/free", {"free_memory": True}).status == 200
        assert len(runtime.executor.cache) == 0 and runtime.models.held_bytes() == 0
        after = _settled_rss()
        assert loaded - after > 0.8 * unet_bytes, f"/free gave back {(loaded - after) / MB:.0f} MB of {unet_bytes / MB:.0f}"
        if torch.cuda.is_available():  # torch's allocator falls back too (where there is one)
            assert torch.cuda.memory_allocated() <= cuda_before
        third = server.wait_history(server.queue(txt2img("mid-a.safetensors", 3)))
        assert third["status"]["status_str"] == "success", third["status"]
    finally:
        server.stop()
        runtime.stop()


LOAD_PEAK = """
import gc, json, sys
sys.path.insert(0, {repo!r})
import torch
from graph_runtime.context import NodeContext, RuntimeOptions
from graph_runtime.device_memory import malloc_trim
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from nodes import loaders as L

def status(field):
    import re
    return int(re.search(field + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) << 10

paths = FolderPaths(sys.argv[1])
ctx = NodeContext(node_id="1", class_type="UNETLoader", prompt_id="p", paths=paths, models=ModelManager(),
                  options=RuntimeOptions(device="cpu"))
import diffusers, nodes.diffusion.single_file, nodes.quantize.methods  # imported before the baseline
gc.collect(); malloc_trim()
open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
base = status("VmRSS")
model = L.UNETLoader().execute(ctx, "half.safetensors", sys.argv[2])[0]
print(json.dumps({{"peak": status("VmHWM") - base, "held": model.weights.size_bytes}}))
"""


def test_fp8_weights_are_cast_while_loading_so_the_full_precision_model_never_exists(tmp_path, sized_checkpoints):
    """UNETLoader weight_dtype fp8 on an fp16 file (as real checkpoints are): each weight goes from the file
    straight to fp8, so the load peaks near file + fp8 model, not file + fp32 model (CPU compute is fp32)."""
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file, save_file

    sized, unet_bytes = sized_checkpoints
    paths = FolderPaths(tmp_path / "base")
    paths.ensure_dirs()
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(sized / "mid-a.safetensors")).items()}
    save_file(half, str(paths.model_dirs("diffusion_models")[0] / "half.safetensors"))
    del half
    script = tmp_path / "load_peak.py"
    script.write_text(LOAD_PEAK.format(repo=str(Path(__file__).resolve().parent.parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    peaks = {}
    for weight_dtype in ("default", "fp8_e4m3fn"):
        out = subprocess.run([sys.executable, str(script), str(paths.base), weight_dtype], capture_output=True,
                             text=True, env=env, timeout=600, check=True)
        peaks[weight_dtype] = json.loads(out.stdout.strip().splitlines()[-1])
    default, fp8 = peaks["default"], peaks["fp8_e4m3fn"]
    assert fp8["held"] < 0.3 * default["held"]  # the model itself: fp8 against fp32
    # default: the fp16 file + the fp32 model (1.5x the fp32 UNet); fp8: the file + the fp8 model (0.75x)
    assert fp8["peak"] < default["peak"] - 0.4 * unet_bytes, (fp8["peak"] / MB, default["peak"] / MB, unet_bytes / MB)
