"""What the node runtime costs on top of a raw diffusers pipeline: time and peak memory, on CPU.

    python bench/diffusers_overhead.py                        # tiny and full-size SD1.5, 256×256, 4 steps
    python bench/diffusers_overhead.py --sizes tiny --runs 5
    python bench/diffusers_overhead.py --sizes full --workdir /tmp/genesis-bench   # keep the 8.6 GB of files

Why this exists: the targets are *time ≤ 1.0× raw diffusers* and *peak memory ≤ 1.05× raw diffusers*
for a txt2img run through the server as ``./run.sh`` starts it (issue 11; an earlier issue asked 1.02×
and 1.1×), for the same model, size, steps and sampler (ComfyUI, for reference: 1.04× and 1.8×).
Three paths do the same work (same seeds, prompts, steps and model calls; the pictures agree to a
level or so: our KSampler follows ComfyUI, whose first noise is √(1 + σ_max²)·noise where this
Euler's is σ_max·noise — with that start the chains are bit-exact, per ``tests/test_parity.py``):

* **raw** — ``StableDiffusionPipeline.from_pretrained(<diffusers folder>)`` with EulerDiscreteScheduler
  (``timestep_spacing="linspace"``, the timesteps of ComfyUI's euler/normal), ``pipe(prompt, negative_prompt,
  256, 256, 4 steps, cfg 7.5, generator=cpu seed)``, default PIL output;
* **executor** — the API prompt ``CheckpointLoaderSimple → CLIPTextEncode ×2 → EmptyLatentImage →
  KSampler(euler, normal, cfg 7.5) → VAEDecode → PreviewImage``, validated by ``PromptValidator`` and
  run by ``graph_runtime.executor.Executor`` over ``build_registry(PACKS)`` (all built-in packs);
* **http** — the same prompt POSTed to ``/prompt`` of a live ``web.app.create_app(Runtime(...))`` on
  127.0.0.1, waiting on the WebSocket for ``executing`` with ``node: null`` (previews included); the
  runtime options are ``server.py``'s defaults (what ``./run.sh`` with no arguments runs: device auto,
  512 MB output cache, smart memory) and the environment is run.sh's (no ``MALLOC_*`` tuning: a
  ``MALLOC_*`` variable in the caller's environment is dropped for every worker).

The models are written once per setup into a work folder: the *same* seeded random-weight components
as a single-file LDM checkpoint (``models/checkpoints/``, converted with ``models.tools.tiny_models``'
converters, so our loader path runs) and as a diffusers folder (``save_pretrained``, for the raw side).
``tiny`` is ``tiny_models.build_sd15()`` (the test model); ``full`` has SD1.5's real shapes (UNet
320/640/1280/1280, CLIP-L 12×768, VAE 128/256/512/512; 1.07 B parameters, 4.3 GB in fp32).

Fairness rules:

* each path runs in its own subprocess with the same torch thread count (``--threads``, default 1,
  ``OMP_NUM_THREADS`` + ``torch.set_num_threads``, ``OMP_WAIT_POLICY=PASSIVE``);
* model loading is excluded: the raw side loads the pipeline, our sides load the checkpoint through
  ``CheckpointLoaderSimple`` into the model manager the executor uses (later prompts get it from
  there); then one warm-up generation, then ``--runs`` timed generations, median reported;
* the paths run in lock-step — all three processes are loaded, then generation ``i`` runs on one path
  at a time while the others wait on a pipe, the order rotating every round — so load changes on a
  shared machine hit every path alike;
* every generation changes the seed *and* both prompt texts, so our side re-encodes the text like the
  pipeline does (with an unchanged text the executor would serve CONDITIONING from its cache and be
  faster than raw by the text-encoder time shown in the breakdown);
* wall time and process CPU time are both reported (CPU time moves less when other jobs share the
  cores).  The breakdown times the text encoder's ``forward``, the UNet's ``forward`` and the VAE's
  ``decode`` on every side with wrappers (a few µs per call); the three are the same modules called
  on the same inputs (the images agree to 1/255, PNG rounding), so "rest" — a run's time outside them
  — is what the runtime itself costs, and its difference to raw is printed as the overhead;
* memory (``/proc/self/status``): *after load* is the RSS after loading + ``gc.collect()`` +
  ``malloc_trim(0)``.  Both sides map the safetensors weights lazily, so the weights become resident
  during the warm-up; *resident after warm-up* is the RSS after it (same clean-up); *peak RSS* is the
  kernel's high-water mark over warm-up and timed runs (reset via ``/proc/self/clear_refs`` after
  loading, so loading itself is not in it); *gen. Δ* is the timed runs' high-water mark minus the
  resident RSS after warm-up, i.e. the transient working memory of one generation; the
  high-water mark including loading is shown too.  The http side's client (urllib + websocket-client with a
  reader thread, as a browser has) lives in the server's process, so its few MB count against us.
* The full-size run takes about 5 minutes on 2 shared cores with N=2 (3 processes × ~5 GB RSS, but
  executor and http map the same checkpoint file, so the page cache is shared: ~11 GB in all).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import queue
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STEPS, CFG, SEED = 4, 7.5, 1234
CKPT = "bench-sd15.safetensors"
SIDES = ("raw", "executor", "http")
DEFAULT_RUNS = {"tiny": 5, "full": 2}
TARGET_TIME, TARGET_MEM = 1.0, 1.05


# --------------------------------------------------------------------------------------------
# models

def build_components(size: str, seed: int = SEED) -> dict:
    """SD1.5-architecture diffusers components: ``tiny`` (the test model) or ``full`` (real shapes, random weights)."""
    from models.tools import tiny_models

    if size == "tiny":
        return tiny_models.build_sd15(seed=seed)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from nodes.diffusion import configs
    from nodes.diffusion.tokenizers import clip_tokenizer
    from nodes.diffusion.types import ModelFamily

    with tiny_models._seeded(seed):
        unet = UNet2DConditionModel.from_config(configs.sd_unet_config(
            ModelFamily.SD15, block_out_channels=(320, 640, 1280, 1280), attention_levels=(True, True, True, False),
            layers_per_block=2, transformer_layers=(1, 1, 1, 1), cross_attention_dim=768)).eval()
    with tiny_models._seeded(seed + 102):
        vae = AutoencoderKL.from_config(configs.vae_config(
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            scaling_factor=configs.VAE_LATENT_FORMAT[ModelFamily.SD15][0])).eval()
    with tiny_models._seeded(seed + 100):
        te = CLIPTextModel(CLIPTextConfig(**configs.clip_config("clip_l", vocab_size=49408, hidden_size=768,
                                                                intermediate_size=3072, num_layers=12))).eval()
    return dict(unet=unet, vae=vae, text_encoder=te, tokenizer=clip_tokenizer("clip_l"),
                scheduler=tiny_models._sd_scheduler(ModelFamily.SD15))


def write_models(size: str, folder: Path) -> None:
    """The same components as an LDM single-file checkpoint (ours) and a diffusers folder (raw)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from models.tools.tiny_models import clip_to_hf, unet_to_ldm, vae_to_ldm

    c = build_components(size)
    ckpt = {**unet_to_ldm(c["unet"]), **vae_to_ldm(c["vae"], "first_stage_model."),
            **{"cond_stage_model.transformer." + k: v for k, v in clip_to_hf(c["text_encoder"]).items()}}
    path = folder / "base" / "models" / "checkpoints" / CKPT
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in ckpt.items()}, str(path), metadata={"format": "pt"})
    del ckpt
    pipe = StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder / "diffusers"))
    params = sum(p.numel() for k in ("unet", "vae", "text_encoder") for p in c[k].parameters())
    (folder / "ready.json").write_text(json.dumps({"size": size, "params": params}))


def ensure_models(size: str, folder: Path) -> dict:
    """Write the models unless ``folder`` already holds them (``--workdir`` reuse); returns the manifest."""
    marker = folder / "ready.json"
    if marker.is_file() and json.loads(marker.read_text()).get("size") == size:
        return json.loads(marker.read_text())
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # a subprocess: the driver stays free of torch, and the full-size build (~5 GB) is gone afterwards
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--prepare", size, "--folder", str(folder)],
                         env=_child_env(os.cpu_count() or 1), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"writing the {size} models failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(marker.read_text())


# --------------------------------------------------------------------------------------------
# measuring inside a worker

def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def settle() -> int:
    """Free what the last phase left behind, reset the kernel's peak-RSS mark, return the RSS now."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
    return _status("VmRSS")


class Stopwatch:
    """Accumulates the time spent inside wrapped methods (the text encoder, UNet, VAE decode)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj: Any, method: str, label: str) -> None:
        inner = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
                self.seconds[label + "_cpu"] = self.seconds.get(label + "_cpu", 0.0) + time.thread_time() - c0
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(obj, method, timed)

    def take(self) -> dict[str, Any]:
        out = {"seconds": dict(self.seconds), "calls": dict(self.calls)}
        self.seconds.clear()
        self.calls.clear()
        return out


def instrument(watch: Stopwatch, text_encoder: Any, unet: Any, vae: Any) -> None:
    watch.wrap(text_encoder, "forward", "text_encoder")
    watch.wrap(unet, "forward", "unet")
    watch.wrap(vae, "decode", "vae_decode")


def texts(i: int) -> tuple[str, str]:
    """Run ``i``'s prompts: they change every run so that nothing but the loader is cached."""
    return f"a photo of a cat on a wooden table, run {i}", f"blurry, low quality, run {i}"


class Side:
    """One path, loaded and ready: ``once(i)`` generates run ``i``'s image."""

    watch: Stopwatch

    def once(self, i: int) -> None:
        raise NotImplementedError

    def check_image(self) -> Path | None:
        """The last generated image as a file (compared across paths by the driver)."""
        return None

    def extra(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def serve_driver(side: Side) -> dict[str, Any]:
    """The worker's side of the lock-step protocol: ``RUN i`` lines on stdin, ``DONE`` replies.

    Run 0 is the warm-up.  Memory: the RSS after loading; after the warm-up the RSS with the models
    resident (the baseline for the generation delta) — the peak mark is read, then reset, at both.
    """
    import torch

    load_peak = _status("VmHWM")  # before the first reset: loading included (ru_maxrss is reset along with it)
    load_rss = settle()
    result: dict[str, Any] = {"wall": [], "cpu": [], "parts": [], "load_rss": load_rss, "load_peak": load_peak,
                              "threads": torch.get_num_threads()}
    print("READY", flush=True)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "END":
            break
        i = int(arg)
        w0, c0 = time.perf_counter(), time.process_time()
        side.once(i)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        parts = side.watch.take()
        if i == 0:
            result["warmup_peak"] = _status("VmHWM")
            result["warm_rss"] = settle()
        else:
            result["wall"].append(wall)
            result["cpu"].append(cpu)
            result["parts"].append(parts)
        print("DONE", flush=True)
    result["runs_peak"] = _status("VmHWM")
    result["peak_rss"] = max(result["warmup_peak"], result["runs_peak"])
    result["max_rss"] = max(load_peak, result["peak_rss"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    check = side.check_image()
    result["check_image"] = str(check) if check else None
    result.update(side.extra())
    side.close()
    return result


# --------------------------------------------------------------------------------------------
# the three paths

class RawSide(Side):
    """The diffusers pipeline, called the way its documentation shows."""

    def __init__(self, folder: Path, size: int) -> None:
        import torch
        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        self.torch, self.folder, self.size = torch, folder, size
        self.pipe = StableDiffusionPipeline.from_pretrained(str(folder / "diffusers"), local_files_only=True,
                                                            safety_checker=None, requires_safety_checker=False)
        self.pipe.scheduler = EulerDiscreteScheduler.from_config(self.pipe.scheduler.config,
                                                                 timestep_spacing="linspace")
        self.pipe.set_progress_bar_config(disable=True)
        self.watch = Stopwatch()
        instrument(self.watch, self.pipe.text_encoder, self.pipe.unet, self.pipe.vae)
        self.images: list[Any] = []

    def once(self, i: int) -> None:
        positive, negative = texts(i)
        self.images = self.pipe(prompt=positive, negative_prompt=negative, height=self.size, width=self.size,
                                num_inference_steps=STEPS, guidance_scale=CFG,
                                generator=self.torch.Generator("cpu").manual_seed(SEED + i)).images

    def check_image(self) -> Path:
        path = self.folder / "check-raw.png"
        self.images[0].save(path)
        return path


def api_prompt(i: int, size: int) -> dict[str, Any]:
    positive, negative = texts(i)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": SEED + i, "steps": STEPS, "cfg": CFG, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def preload(paths: Any, models: Any, options: Any, watch: Stopwatch) -> None:
    """Load the checkpoint through CheckpointLoaderSimple into ``models`` (what the first prompt would do)."""
    from graph_runtime.context import NodeContext
    from nodes.loaders import CheckpointLoaderSimple

    ctx = NodeContext(node_id="1", class_type="CheckpointLoaderSimple", prompt_id="preload", paths=paths,
                      models=models, options=options)
    model, clip, vae = CheckpointLoaderSimple().execute(ctx, ckpt_name=CKPT)
    instrument(watch, clip.encoders["clip_l"], model.denoiser, vae.vae)


def _output_file(paths: Any, ui: dict[str, list] | None) -> Path | None:
    if not ui:
        return None
    image = ui["images"][0]
    return paths.temp_dir / image.get("subfolder", "") / image["filename"]


class ExecutorSide(Side):
    """Validation + ``Executor.execute`` over the full built-in registry, in the calling thread."""

    def __init__(self, folder: Path, size: int) -> None:
        from graph_runtime.context import RuntimeOptions
        from graph_runtime.executor import Executor
        from graph_runtime.paths import FolderPaths
        from graph_runtime.registry import build_registry
        from nodes import PACKS
        from graph_runtime.validation import PromptValidator

        self.size = size
        self.paths = FolderPaths(folder / "base")
        self.paths.ensure_dirs()
        options = RuntimeOptions(device="cpu")
        registry = build_registry(PACKS)
        self.validator = PromptValidator(registry, self.paths)
        self.executor = Executor(registry, self.paths, options=options)
        self.watch = Stopwatch()
        preload(self.paths, self.executor.models, options, self.watch)
        self.node_times: list[dict[str, float]] = []
        self.ui: dict[str, list] | None = None

    def once(self, i: int) -> None:
        checked = self.validator.validate(api_prompt(i, self.size))
        assert checked.ok, checked.error
        report = self.executor.execute(f"bench-{i}", checked.prompt, checked.outputs)
        assert report.ok, report.error
        assert {"2", "3", "5", "6", "7"} <= set(report.executed), report.executed
        if i:
            self.node_times.append({r.class_type + "#" + nid: r.seconds for nid, r in report.node_runs.items()})
        self.ui = report.outputs.get("7")

    def check_image(self) -> Path | None:
        return _output_file(self.paths, self.ui)

    def extra(self) -> dict[str, Any]:
        return {"nodes": self.node_times, "cache_entries": len(self.executor.cache),
                "cache_bytes": self.executor.cache.total_bytes}

    def close(self) -> None:
        self.executor.close()


class _Server:
    """``create_app(runtime)`` served on 127.0.0.1:<ephemeral> from a background thread."""

    def __init__(self, runtime: Any) -> None:
        import asyncio

        from aiohttp import web

        from web.app import create_app

        self.app = create_app(runtime, probe_torch=False, frontend=False)
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()

        async def start() -> None:
            self.runner = web.AppRunner(self.app, access_log=None)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()
            self.loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=serve, name="bench-server", daemon=True)
        self.thread.start()
        if not ready.wait(60):
            raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(60)


def server_options() -> Any:
    """The RuntimeOptions ``./run.sh`` (``server.py`` with no arguments) runs the server with."""
    import server

    return server.build_options(server.build_parser().parse_args(["serve"]))


class HttpSide(Side):
    """A live server (``Runtime`` + ``create_app``); the client POSTs /prompt and waits on the WebSocket."""

    def __init__(self, folder: Path, size: int) -> None:
        import websocket

        from graph_runtime.paths import FolderPaths
        from graph_runtime.service import Runtime
        from server import default_registry

        self.size = size
        self.paths = FolderPaths(folder / "base")
        options = server_options()
        self.runtime = Runtime(self.paths, options, registry=default_registry(self.paths))
        self.watch = Stopwatch()
        preload(self.paths, self.runtime.models, options, self.watch)
        self.server = _Server(self.runtime)
        self.client_id = uuid.uuid4().hex
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{self.server.port}/ws?clientId={self.client_id}",
                                              timeout=None)
        self.binary_frames = 0
        self.ui: dict[str, list] | None = None
        # A reader thread, as a browser has: it answers the server's heartbeat pings while this worker
        # waits for its turn (an unread socket is closed after 30 s of silence).
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, name="bench-ws-reader", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        import websocket

        try:
            while True:
                opcode, data = self.ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.messages.put(json.loads(data))
                else:
                    self.binary_frames += 1
        except Exception:  # closed
            self.messages.put(None)

    def once(self, i: int) -> None:
        import urllib.request

        body = json.dumps({"prompt": api_prompt(i, self.size), "client_id": self.client_id}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.server.port}/prompt", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            prompt_id = json.loads(reply.read())["prompt_id"]
        while True:
            message = self.messages.get()
            if message is None:
                raise RuntimeError("the server closed the WebSocket")
            kind, payload = message["type"], message["data"]
            if kind == "execution_error":
                raise RuntimeError(payload.get("exception_message"))
            if kind == "executed" and payload["node"] == "7":
                self.ui = payload["output"]
            if kind == "executing" and payload["node"] is None and payload["prompt_id"] == prompt_id:
                return

    def check_image(self) -> Path | None:
        return _output_file(self.paths, self.ui)

    def extra(self) -> dict[str, Any]:
        return {"preview_frames": self.binary_frames}

    def close(self) -> None:
        self.ws.close()
        self.server.stop()


WORKERS: dict[str, Callable[[Path, int], Side]] = {"raw": RawSide, "executor": ExecutorSide, "http": HttpSide}


# --------------------------------------------------------------------------------------------
# driver

def _child_env(threads: int) -> dict[str, str]:
    # run.sh sets no allocator variables: glibc's defaults on every side
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


class Worker:
    """One path's subprocess, driven in lock-step (``RUN i`` → ``DONE``) so only one path computes at a time."""

    def __init__(self, side: str, folder: Path, size: int, threads: int) -> None:
        self.side = side
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--folder", str(folder),
               "--resolution", str(size), "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, env=_child_env(threads), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)

    def _expect(self, prefix: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        self.log.seek(0)
        raise RuntimeError(f"{self.side} worker ended (exit {self.proc.wait()}) while waiting for {prefix.strip()}:\n"
                           f"{self.log.read()[-4000:]}")

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def load(self) -> None:
        """Wait until the worker has imported its libraries, then let it load the models."""
        self._expect("IMPORTED")
        self._send("LOAD")

    def ready(self) -> None:
        self._expect("READY")

    def run(self, i: int) -> None:
        self._send(f"RUN {i}")
        self._expect("DONE")

    def end(self) -> dict[str, Any]:
        self._send("END")
        result = json.loads(self._expect("RESULT "))
        self.proc.wait(60)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def image_difference(a: str | None, b: str | None) -> int | None:
    """Largest per-channel difference (0..255) between two result images; None if one is missing."""
    if not a or not b or not Path(a).is_file() or not Path(b).is_file():
        return None
    import numpy as np
    from PIL import Image

    x = np.asarray(Image.open(a).convert("RGB"), dtype=np.int16)
    y = np.asarray(Image.open(b).convert("RGB"), dtype=np.int16)
    return int(np.abs(x - y).max()) if x.shape == y.shape else 255


PARTS = ("text_encoder", "unet", "vae_decode")


def _median_parts(result: dict[str, Any], clock: str) -> dict[str, float]:
    """Median per-part seconds and the median of each run's remainder (``clock``: "wall" or "cpu")."""
    suffix = "" if clock == "wall" else "_cpu"
    out = {k: statistics.median(p["seconds"].get(k + suffix, 0.0) for p in result["parts"]) for k in PARTS}
    out["rest"] = statistics.median(total - sum(p["seconds"].get(k + suffix, 0.0) for k in PARTS)
                                    for total, p in zip(result[clock], result["parts"]))
    return out


def _median_nodes(node_runs: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for run in node_runs for k in run}, key=lambda k: k.split("#")[1])
    return {k: statistics.median(run.get(k, 0.0) for run in node_runs) for k in keys}


def measure(setup: str, folder: Path, size: int, runs: int, threads: int, sides: tuple[str, ...]) -> dict[str, Any]:
    """Start every path in its own process, then round-robin: warm-up round, ``runs`` timed rounds.

    The order rotates each round, so load changes on a shared machine hit all paths alike; the idle
    workers wait on a pipe (no CPU).
    """
    workers = [Worker(side, folder, size, threads) for side in sides]  # they import while the models are written
    try:
        manifest = ensure_models(setup, folder)
        for w in workers:
            w.load()
        for w in workers:
            w.ready()
        for i in range(runs + 1):
            k = i % len(workers)
            for w in workers[k:] + workers[:k]:
                w.run(i)
        results = {w.side: w.end() for w in workers}
    finally:
        for w in workers:
            w.kill()
    raw = results.get("raw")
    diffs = {side: image_difference(raw["check_image"], r["check_image"]) if raw else None
             for side, r in results.items() if side != "raw"}
    return {"setup": setup, "params": manifest["params"], "runs": runs, "results": results, "image_diff": diffs}


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.3f}" if base else "–"


def render(measured: list[dict[str, Any]], size: int, threads: int) -> str:
    mb = 2 ** 20
    lines = [f"SD1.5 architecture, {size}×{size}, {STEPS} steps, euler/normal, cfg {CFG}, CPU fp32, "
             f"{threads} torch thread(s); paths interleaved run by run; median of N timed runs after one warm-up; "
             "ratio = ours / raw",
             f"targets: time ≤ {TARGET_TIME}× raw, peak memory ≤ {TARGET_MEM}× raw", "",
             "| setup | path | N | wall s | ratio | CPU s | ratio | peak RSS MB | ratio | after load MB | "
             "resident after warm-up MB | gen. Δ MB | ratio | max RSS incl. load MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in measured:
        raw = m["results"].get("raw")
        rw = statistics.median(raw["wall"]) if raw else None
        rc = statistics.median(raw["cpu"]) if raw else None
        rp = raw["peak_rss"] if raw else None
        rd = raw["runs_peak"] - raw["warm_rss"] if raw else None
        label = f"{m['setup']} ({m['params'] / 1e6:.0f} M params)"
        for side, r in m["results"].items():
            w, c = statistics.median(r["wall"]), statistics.median(r["cpu"])
            delta = r["runs_peak"] - r["warm_rss"]
            lines.append(f"| {label} | {side} | {m['runs']} | {w:.3f} | {_ratio(w, rw)} | {c:.3f} | {_ratio(c, rc)} | "
                         f"{r['peak_rss'] / mb:.0f} | {_ratio(r['peak_rss'], rp)} | {r['load_rss'] / mb:.0f} | "
                         f"{r['warm_rss'] / mb:.0f} | {delta / mb:.0f} | {_ratio(delta, rd)} | {r['max_rss'] / mb:.0f} |")
    lines += ["", "Where the time goes (median s per generation; wall clock, and in brackets CPU time of the "
              "calling thread; 'rest' = run total − the three, per run):", "",
              "| setup | path | text encoder | UNet (calls) | VAE decode | rest |", "|---|---|---|---|---|---|"]
    for m in measured:
        for side, r in m["results"].items():
            w, c = _median_parts(r, "wall"), _median_parts(r, "cpu")
            calls = r["parts"][-1]["calls"].get("unet", 0)
            lines.append(f"| {m['setup']} | {side} | {w['text_encoder']:.3f} [{c['text_encoder']:.3f}] | "
                         f"{w['unet']:.3f} [{c['unet']:.3f}] ({calls}) | {w['vae_decode']:.3f} [{c['vae_decode']:.3f}] | "
                         f"{w['rest']:.3f} [{c['rest']:.3f}] |")
    for m in measured:
        raw = m["results"].get("raw")
        if raw:
            base_rest, base_wall = _median_parts(raw, "wall")["rest"], statistics.median(raw["wall"])
            extra = ", ".join(f"{side} {1e3 * (_median_parts(r, 'wall')['rest'] - base_rest):+.0f} ms "
                              f"({100 * (_median_parts(r, 'wall')['rest'] - base_rest) / base_wall:+.1f} % of raw)"
                              for side, r in m["results"].items() if side != "raw")
            if extra:
                lines.append(f"\n{m['setup']} time outside the three models vs raw (model work is the same modules on "
                             f"the same inputs, so this is the runtime's own cost): {extra}")
    for m in measured:
        ex = m["results"].get("executor")
        if ex:
            nodes = ", ".join(f"{k.split('#')[0]} {v:.3f}" for k, v in _median_nodes(ex["nodes"]).items())
            lines.append(f"\n{m['setup']} executor per node (median s): {nodes}; output cache after the runs: "
                         f"{ex['cache_entries']} entries, {ex['cache_bytes'] / mb:.1f} MB")
        http = m["results"].get("http")
        if http:
            lines.append(f"{m['setup']} http: {http['preview_frames']} binary preview frames received in total")
        diffs = ", ".join(f"{s}: {d}" for s, d in m["image_diff"].items())
        if diffs:
            lines.append(f"{m['setup']} last image vs raw, max |Δ| of 0..255 pixels: {diffs}")
        threads_seen = {s: r["threads"] for s, r in m["results"].items()}
        lines.append(f"{m['setup']} torch threads per worker: {threads_seen}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "full"], choices=["tiny", "full"])
    parser.add_argument("--paths", nargs="+", default=list(SIDES), choices=SIDES, help="which paths to run")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"timed runs per path after one warm-up (default: {DEFAULT_RUNS})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every worker (default 1)")
    parser.add_argument("--resolution", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the written models here and reuse them next time (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", choices=["tiny", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.prepare:
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        write_models(args.prepare, args.folder)
        return 0
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        import diffusers.pipelines.stable_diffusion  # noqa: F401  the slow imports, while the models are written
        import graph_runtime.registry  # noqa: F401

        print("IMPORTED", flush=True)
        if sys.stdin.readline().strip() != "LOAD":
            return 1
        result = serve_driver(WORKERS[args.worker](args.folder, args.resolution))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    sides = tuple(s for s in SIDES if s in args.paths)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genesis-overhead-"))
    measured = []
    try:
        for setup in args.sizes:
            runs = args.runs or DEFAULT_RUNS[setup]
            started = time.perf_counter()
            measured.append(measure(setup, workdir / setup, args.resolution, runs, args.threads, sides))
            print(f"[{setup}: {time.perf_counter() - started:.0f} s]", file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(render(measured, args.resolution, args.threads))
    if args.json:
        args.json.write_text(json.dumps(measured, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
