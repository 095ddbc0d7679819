"""Memory and speed of quantized denoisers, and a two-checkpoint prompt under a small model budget.

    flock /tmp/genesis-heavy.lock timeout 3000 .venv/bin/python bench/memory.py            # everything
    .venv/bin/python bench/memory.py --archs sd15 --methods none fp8_e4m3fn                 # a part
    .venv/bin/python bench/memory.py --two-checkpoints-only

Table 1 — per architecture (random weights, real shapes) and quantization method, each in its own
subprocess: *weight bytes* (what the model manager accounts, :func:`nodes.devices.module_bytes`),
*RSS* after building + quantizing (settled: gc + malloc_trim), *peak RSS* (kernel high-water mark over
build, quantization and the timed steps), *s/step* (median of the denoiser forward with CFG batch 2 at
the given latent size, after one warm-up), and the ratios to the unquantized row.

* SD1.5 (UNet 320/640/1280/1280, 860 M parameters) and SDXL (UNet 320/640/1280, 2.6 B) are full size in
  fp32 — the CPU compute dtype.
* FLUX.1 (12 B parameters: 47 GB in fp32, 24 GB in bf16) cannot exist on this 24 GB machine, so it is
  measured **reduced**: full width (3072 hidden, 24 heads × 128) with 2 double and 4 single blocks
  (instead of 19 and 38), and the bytes are also extrapolated to the full depth (per-block bytes ×
  block count + the shared embedders) in a separate column.  Its step time is for the reduced model.

Table 2 — a prompt that samples with checkpoint A, then decodes and re-samples with checkpoint B
(img2img), under ``--model-budget-mb`` smaller than A + B: it must complete by evicting A; we print the
peak RSS, the budget and the target *peak ≤ budget + larger model × 1.1* (+ the process baseline
before loading, which the target does not count: Python, torch and the libraries).

Targets from the issue: fp8 storage ≤ 0.27× fp32 weight bytes; NF4 ≤ 0.16× fp32 on CUDA (on the CPU
only Linear layers are replaced, so conv-heavy UNets shrink less — reported as measured).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

METHODS = ("none", "fp8_e4m3fn", "fp8_e5m2", "bnb_nf4", "bnb_int8", "int8_weight_only")
ARCHS = ("sd15", "sdxl", "flux")
FLUX_FULL = (19, 38)
FLUX_REDUCED = (2, 4)
GB = 1 << 30


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def settle() -> int:
    from graph_runtime.device_memory import malloc_trim

    gc.collect()
    malloc_trim()
    return _status("VmRSS")


# --------------------------------------------------------------------------------------------
# child: one architecture × one method

def build(arch: str):
    """(module, forward(batch) -> None, description) with random weights of the real shapes."""
    import torch
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from nodes.diffusion import configs
    from nodes.diffusion.types import ModelFamily

    if arch == "flux":
        cfg = configs.flux_transformer_config(in_channels=64, num_layers=FLUX_REDUCED[0],
                                              num_single_layers=FLUX_REDUCED[1], head_dim=128, num_heads=24,
                                              joint_attention_dim=4096, pooled_projection_dim=768,
                                              guidance_embeds=True, out_channels=64)
        with init_empty_weights():
            model = FluxTransformer2DModel.from_config(cfg)
    else:
        fam = ModelFamily.SD15 if arch == "sd15" else ModelFamily.SDXL
        kw = dict(block_out_channels=(320, 640, 1280, 1280), attention_levels=(True, True, True, False),
                  layers_per_block=2, transformer_layers=(1, 1, 1, 1), cross_attention_dim=768) if arch == "sd15" else \
            dict(block_out_channels=(320, 640, 1280), attention_levels=(False, True, True), layers_per_block=2,
                 transformer_layers=(1, 2, 10), cross_attention_dim=2048, projection_class_embeddings_input_dim=2816)
        with init_empty_weights():
            model = UNet2DConditionModel.from_config(configs.sd_unet_config(fam, **kw))
    gen = torch.Generator().manual_seed(0)
    for name, p in list(model.named_parameters()):  # materialize parameter by parameter (no 2× peak)
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name)
        t = torch.empty(p.shape, dtype=torch.float32)
        t.normal_(0, 0.02, generator=gen) if p.ndim > 1 else t.fill_(1.0 if "norm" in name else 0.0)
        module._parameters[leaf] = torch.nn.Parameter(t, requires_grad=False)
    for name, b in list(model.named_buffers()):
        module_name, _, leaf = name.rpartition(".")
        model.get_submodule(module_name)._buffers[leaf] = torch.zeros(b.shape, dtype=b.dtype)
    model.eval().requires_grad_(False)
    return model


def step_fn(arch: str, model, latent: int):
    import torch

    if arch == "flux":
        tokens = (latent // 2) ** 2
        x = torch.randn(2, tokens, 64)
        ids = torch.zeros(tokens, 3)
        kw = dict(encoder_hidden_states=torch.randn(2, 256, 4096), pooled_projections=torch.randn(2, 768),
                  timestep=torch.tensor([0.5, 0.5]), img_ids=ids, txt_ids=torch.zeros(256, 3),
                  guidance=torch.tensor([3.5, 3.5]), return_dict=False)
        return lambda: model(hidden_states=x, **kw)
    x = torch.randn(2, 4, latent, latent)
    ehs = torch.randn(2, 77, 768 if arch == "sd15" else 2048)
    extra = {} if arch == "sd15" else {"added_cond_kwargs": {"text_embeds": torch.randn(2, 1280),
                                                             "time_ids": torch.randn(2, 6)}}
    return lambda: model(x, torch.tensor([500, 500]), encoder_hidden_states=ehs, return_dict=False, **extra)


def child(arch: str, method: str, latent: int, steps: int) -> dict:
    import torch

    from nodes.devices import module_bytes
    from nodes.quantize.methods import quantize_module

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    base_rss = settle()
    model = build(arch)
    full_bytes = module_bytes([model])
    if method != "none":
        quantize_module(model, method, torch.float32, torch.device("cpu"))
    weight_bytes = module_bytes([model])
    rss = settle() - base_rss
    run = step_fn(arch, model, latent)
    times = []
    with torch.inference_mode():
        run()
        for _ in range(steps):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
    out = {"arch": arch, "method": method, "full_bytes": full_bytes, "weight_bytes": weight_bytes,
           "rss": rss, "peak": _status("VmHWM") - base_rss, "step_s": statistics.median(times)}
    if arch == "flux":  # extrapolate to 19 + 38 blocks from the per-block bytes of the reduced model
        blocks = {"double": model.transformer_blocks[0], "single": model.single_transformer_blocks[0]}
        per = {k: module_bytes([m]) for k, m in blocks.items()}
        shared = weight_bytes - per["double"] * FLUX_REDUCED[0] - per["single"] * FLUX_REDUCED[1]
        out["full_depth_bytes"] = shared + per["double"] * FLUX_FULL[0] + per["single"] * FLUX_FULL[1]
    return out


# --------------------------------------------------------------------------------------------
# child: the two-checkpoint prompt

def two_checkpoints(workdir: Path, channels: tuple[int, ...], budget_mb: int | None) -> dict:
    from graph_runtime.context import RuntimeOptions
    from graph_runtime.executor import Executor
    from graph_runtime.paths import FolderPaths
    from graph_runtime.registry import build_registry
    from nodes import PACKS
    from graph_runtime.validation import PromptValidator
    from models.tools.sized_models import write_sd15_checkpoint

    paths = FolderPaths(workdir)
    paths.ensure_dirs()
    ckpts = paths.model_dirs("checkpoints")[0]
    sizes = {}
    for name, seed in (("a.safetensors", 1), ("b.safetensors", 2)):
        if not (ckpts / name).exists():
            sizes[name] = write_sd15_checkpoint(ckpts / name, channels, seed)
    gc.collect()
    options = RuntimeOptions(device="cpu", model_budget_bytes=None if budget_mb is None else budget_mb << 20)
    registry = build_registry(PACKS)
    executor = Executor(registry, paths, options=options)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["3", 0], "seed": 1, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "5": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["5", 1]}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["5", 0], "positive": ["6", 0], "negative": ["6", 0],
                                                   "latent_image": ["4", 0], "seed": 2, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 0.5}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["5", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    result = PromptValidator(registry, paths, options).validate(prompt)
    assert result.ok, result.node_errors
    import torch  # noqa: F401 - loaded before the baseline, as in a server after its first prompt

    base = settle()
    report = executor.execute("bench", result.prompt, result.outputs)
    model_bytes = max(s for s in [h.size_bytes for h in executor.models._handles.values()
                                  if "denoiser" in h.label] or [0])
    return {"status": report.status, "error": (report.error or {}).get("exception_message"),
            "peak": _status("VmHWM") - base, "held_after": executor.models.held_bytes(),
            "evictions": executor.models.evictions, "largest_denoiser": model_bytes,
            "budget": None if budget_mb is None else budget_mb << 20}


# --------------------------------------------------------------------------------------------
# driver

def run_child(args: list[str], timeout: int) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True,
                         env=env, timeout=timeout, check=False)
    line = next((ln for ln in reversed(out.stdout.splitlines()) if ln.startswith("{")), None)
    if out.returncode != 0 or line is None:
        return {"error": (out.stderr or out.stdout)[-600:].strip().splitlines()[-1:] or [f"exit {out.returncode}"]}
    return json.loads(line)


def fmt_gb(n: float | None) -> str:
    return "–" if n is None else f"{n / GB:.2f}"


def table1(rows: list[dict]) -> str:
    lines = ["| arch | method | weight GB | × fp32 | RSS GB | peak GB | s/step | × time | FLUX full depth GB |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = {r["arch"]: r for r in rows if r.get("method") == "none" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['method']} | failed: {r['error']} |||||||")
            continue
        b = base.get(r["arch"])
        ratio = f"{r['weight_bytes'] / b['weight_bytes']:.3f}" if b else "–"
        tratio = f"{r['step_s'] / b['step_s']:.2f}" if b else "–"
        lines.append(f"| {r['arch']}{' (reduced)' if r['arch'] == 'flux' else ''} | {r['method']} | "
                     f"{fmt_gb(r['weight_bytes'])} | {ratio} | {fmt_gb(r['rss'])} | {fmt_gb(r['peak'])} | "
                     f"{r['step_s']:.2f} | {tratio} | {fmt_gb(r.get('full_depth_bytes'))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--steps", type=int, default=2, help="timed denoiser calls after one warm-up")
    parser.add_argument("--two-checkpoints-only", action="store_true")
    parser.add_argument("--skip-two-checkpoints", action="store_true")
    parser.add_argument("--ckpt-channels", type=int, nargs="+", default=[320, 640, 1280, 1280],
                        help="UNet widths of the two checkpoints (default: SD1.5's, 3.4 GB each in fp32)")
    parser.add_argument("--budget-mb", type=int, default=None, help="default: 1.3 × one checkpoint's UNet")
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--child", nargs=2, metavar=("ARCH", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--two-child", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.latent, args.steps)))
        return 0
    if args.two_child:
        print(json.dumps(two_checkpoints(Path(args.two_child), tuple(args.ckpt_channels), args.budget_mb)))
        return 0
    if not args.two_checkpoints_only:
        rows = []
        for arch in args.archs:
            for method in args.methods:
                r = run_child(["--child", arch, method, "--latent", str(args.latent), "--steps", str(args.steps)],
                              args.timeout)
                rows.append({"arch": arch, "method": method, **r})
                print(f"  {arch} {method}: {r}", file=sys.stderr, flush=True)
        print(f"\nDenoisers on CPU, fp32 compute, CFG batch 2, {args.latent * 8}² px, {os.environ.get('OMP_NUM_THREADS', '1')} thread(s)")
        print(table1(rows))
    if not args.skip_two_checkpoints:
        with tempfile.TemporaryDirectory(prefix="genesis-bench-mem-") as tmp:
            channels = [str(c) for c in args.ckpt_channels]
            # size of one UNet, for the default budget: measured by a dry child without a budget would cost a
            # full run, so estimate from SD1.5's known 3.44 GB scaled by width²
            one = int(3.44 * GB * (args.ckpt_channels[-1] / 1280) ** 2)
            budget_mb = args.budget_mb or int(one * 1.3) >> 20
            r = run_child(["--two-child", tmp, "--ckpt-channels", *channels, "--budget-mb", str(budget_mb)],
                          args.timeout)
        print("\nTwo checkpoints in one prompt (A samples, B re-samples A's latent) under a model budget")
        print("| status | budget GB | largest UNet GB | peak GB (over baseline) | target: budget + 1.1 × largest | "
              "evictions | held after GB |")
        print("|---|---|---|---|---|---|---|")
        if "error" in r and "status" not in r:
            print(f"| failed: {r['error']} ||||||")
        else:
            target = r["budget"] + 1.1 * r["largest_denoiser"]
            print(f"| {r['status']} | {fmt_gb(r['budget'])} | {fmt_gb(r['largest_denoiser'])} | {fmt_gb(r['peak'])} | "
                  f"{fmt_gb(target)} ({'met' if r['peak'] <= target else 'NOT met'}) | {r['evictions']} | "
                  f"{fmt_gb(r['held_after'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
