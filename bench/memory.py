"""Memory and speed of quantized denoisers, and a two-checkpoint prompt under a small model budget.

    flock /tmp/genesis-heavy.lock timeout 3000 .venv/bin/python bench/memory.py            # everything
    .venv/bin/python bench/memory.py --archs sd15 --methods none fp8_e4m3fn                 # a part
    .venv/bin/python bench/memory.py --two-checkpoints-only

Table 1 — per architecture (random weights, real shapes) and quantization method, each in its own
subprocess, on the CPU in fp32 and, when a CUDA GPU is present, again on it in its compute dtype
(``--device``; there *peak* is torch's allocator high-water mark): *weight bytes* (what the model manager accounts, :func:`nodes.devices.module_bytes`),
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

Table 3 — on a CUDA GPU (``--vlm-llm auto``, the default, runs it when one is present): the seed's
pipeline, a 7B vision-language model (Qwen2.5-VL-7B's shapes) captioning an image and a 12B LLM
(Mistral-Nemo-12B's shapes) writing from a long prompt, both resident, both in NF4 — built block by
block on the device from random weights with the quantizer ``QuantizeModel`` and the LLM loaders use;
the target is *peak ≤ 16 GB* (torch's reserved peak and the driver's view, context included).
``--vlm-llm-only --vlm-llm-device cpu --vlm-llm-tiny`` runs the same code on few-feature models (the
smoke test does).

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


def step_fn(arch: str, model, latent: int, device=None, dtype=None):
    import torch

    def put(t):
        return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

    if arch == "flux":
        tokens = (latent // 2) ** 2
        x = put(torch.randn(2, tokens, 64))
        ids = put(torch.zeros(tokens, 3))
        kw = dict(encoder_hidden_states=put(torch.randn(2, 256, 4096)), pooled_projections=put(torch.randn(2, 768)),
                  timestep=put(torch.tensor([0.5, 0.5])), img_ids=ids, txt_ids=put(torch.zeros(256, 3)),
                  guidance=put(torch.tensor([3.5, 3.5])), return_dict=False)
        return lambda: model(hidden_states=x, **kw)
    x = put(torch.randn(2, 4, latent, latent))
    ehs = put(torch.randn(2, 77, 768 if arch == "sd15" else 2048))
    extra = {} if arch == "sd15" else {"added_cond_kwargs": {"text_embeds": put(torch.randn(2, 1280)),
                                                             "time_ids": put(torch.randn(2, 6))}}
    t = put(torch.tensor([500.0, 500.0]))
    return lambda: model(x, t, encoder_hidden_states=ehs, return_dict=False, **extra)


def child(arch: str, method: str, latent: int, steps: int, device_name: str = "cpu") -> dict:
    """One architecture × one method on ``device_name``: on the CPU in fp32; on a CUDA GPU in the runtime's
    compute dtype (bf16 where supported), quantized there as ``QuantizeModel`` does (the base is cast to the
    compute dtype first), peak = torch's allocator high-water mark on the device."""
    import torch

    from nodes.devices import module_bytes, precision
    from nodes.quantize.methods import quantize_module

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    compute = precision("denoiser", device)
    base_rss = settle()
    model = build(arch)
    full_bytes = module_bytes([model])  # fp32
    fp32_blocks = ({"double": module_bytes([model.transformer_blocks[0]]),
                    "single": module_bytes([model.single_transformer_blocks[0]])} if arch == "flux" else {})
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        model.to(dtype=compute)
    if method != "none":
        quantize_module(model, method, compute, device)
    else:
        model.to(device=device)
    weight_bytes = module_bytes([model])
    rss = settle() - base_rss
    run = step_fn(arch, model, latent, device, compute)
    times = []
    with torch.inference_mode():
        run()
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            run()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
    out = {"arch": arch, "method": method, "device": device.type, "dtype": str(compute).replace("torch.", ""),
           "full_bytes": full_bytes, "weight_bytes": weight_bytes, "rss": rss,
           "peak": torch.cuda.max_memory_allocated(device) if cuda else _status("VmHWM") - base_rss,
           "step_s": statistics.median(times)}
    if arch == "flux":  # extrapolate to 19 + 38 blocks from the per-block bytes of the reduced model
        blocks = {"double": model.transformer_blocks[0], "single": model.single_transformer_blocks[0]}
        per = {k: module_bytes([m]) for k, m in blocks.items()}
        shared = weight_bytes - per["double"] * FLUX_REDUCED[0] - per["single"] * FLUX_REDUCED[1]
        out["full_depth_bytes"] = shared + per["double"] * FLUX_FULL[0] + per["single"] * FLUX_FULL[1]
        # the same extrapolation of the fp32 model (measured before quantizing)
        count = fp32_blocks
        fp32_shared = full_bytes - count["double"] * FLUX_REDUCED[0] - count["single"] * FLUX_REDUCED[1]
        out["full_depth_fp32_bytes"] = fp32_shared + count["double"] * FLUX_FULL[0] + count["single"] * FLUX_FULL[1]
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
# child: the seed's pipeline on a GPU — a 7B vision-language model and a 12B LLM, both in NF4

# Qwen2.5-VL-7B-Instruct and Mistral-Nemo-12B, from their published configs (vlm-llm-quantize.md §8)
QWEN25_VL_7B = dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                              num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000,
                              rope_theta=1e6, tie_word_embeddings=False,
                              rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
                    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                                fullatt_block_indexes=[7, 15, 23, 31]))
MISTRAL_NEMO_12B = dict(hidden_size=5120, intermediate_size=14336, num_hidden_layers=40, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, vocab_size=131072, max_position_embeddings=128000,
                        rope_theta=1e6, tie_word_embeddings=False)
# the same architectures, a few features wide: the CPU smoke test of this code path
TINY_VL = dict(text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=152064, max_position_embeddings=4096,
                         rope_theta=1e6, tie_word_embeddings=False, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
               vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1]))
TINY_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               head_dim=16, vocab_size=1024, max_position_embeddings=4096, tie_word_embeddings=False)


def _materialize_nf4(model, device, compute, keep: tuple[str, ...], gen) -> dict:
    """Give a meta-device transformers model random weights, block by block: each decoder layer's Linears
    straight to NF4 on ``device`` with :func:`nodes.quantize.methods.bnb_nf4` (what ``QuantizeModel`` and the
    LLM loaders use), the rest (embeddings, norms, ``keep``: lm_head, the vision tower) in ``compute``.
    The full-precision model never exists: the peak is one layer's fp32 weights on the CPU."""
    import torch

    from nodes.quantize.methods import bnb_nf4

    def fill(module):
        for name, p in list(module.named_parameters(recurse=False)):
            t = torch.empty(p.shape, dtype=torch.float32)
            t.normal_(0, 0.02, generator=gen) if p.ndim > 1 else t.fill_(1.0)
            module._parameters[name] = torch.nn.Parameter(t, requires_grad=False)

    quantized = 0
    layers = [m for n, m in model.named_modules() if n.endswith("layers") and isinstance(m, torch.nn.ModuleList)
              and not any(k in n for k in keep)]
    for stack in layers:
        for layer in stack:
            for m in layer.modules():
                fill(m)
            quantized += bnb_nf4(layer, compute, device, skip=())
            layer.to(device=device)  # norms (the NF4 layers are there already)
            for p in layer.parameters():
                if p.dtype == torch.float32:
                    p.data = p.data.to(compute)
    for m in model.modules():
        if any(p.device.type == "meta" for p in m.parameters(recurse=False)):
            fill(m)
            m.to(device=device, dtype=compute)
    for name, b in list(model.named_buffers()):
        if b.device.type == "meta":
            raise RuntimeError(f"buffer {name} was not materialized")
    return {"nf4_linears": quantized}


def _bytes_of(model) -> int:
    from nodes.devices import module_bytes

    return module_bytes([model])


def vlm_llm(device_name: str, tiny: bool, prompt_tokens: int, new_tokens: int, image_side: int) -> dict:
    """Caption an image with the VLM, then write with the LLM — both resident, both NF4 — and report the
    peak device memory (torch's allocator and, on CUDA, the driver's view incl. the context)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import (MistralConfig, MistralForCausalLM, Qwen2_5_VLConfig,
                              Qwen2_5_VLForConditionalGeneration)

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    compute = torch.bfloat16 if cuda else torch.float32
    gen = torch.Generator().manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        free0, total = torch.cuda.mem_get_info(device)
    vl_cfg, lm_cfg = (TINY_VL, TINY_LM) if tiny else (QWEN25_VL_7B, MISTRAL_NEMO_12B)
    config = Qwen2_5_VLConfig(text_config=vl_cfg["text"], vision_config=vl_cfg["vision"])
    with init_empty_weights():
        vlm = Qwen2_5_VLForConditionalGeneration(config)
        llm = MistralForCausalLM(MistralConfig(**lm_cfg))
    t0 = time.perf_counter()
    out = {"device": str(device), "tiny": tiny}
    out["vlm"] = _materialize_nf4(vlm, device, compute, ("visual", "lm_head"), gen)
    out["llm"] = _materialize_nf4(llm, device, compute, ("lm_head",), gen)
    vlm.eval().requires_grad_(False)
    llm.eval().requires_grad_(False)
    out["build_s"] = time.perf_counter() - t0
    out["vlm"]["weight_bytes"], out["llm"]["weight_bytes"] = _bytes_of(vlm), _bytes_of(llm)

    # the VLM: one image (patches of 14, merged 2×2 into tokens) + a short instruction → a caption
    vc = config.vision_config
    grid = image_side // vc.patch_size
    patches = torch.randn(grid * grid, 3 * vc.temporal_patch_size * vc.patch_size ** 2, generator=gen).to(device, compute)
    image_tokens = grid * grid // vc.spatial_merge_size ** 2
    text = torch.randint(0, 1000, (32,), generator=gen).tolist()
    ids = [config.vision_start_token_id] + [config.image_token_id] * image_tokens + [config.vision_end_token_id] + text
    input_ids = torch.tensor([ids], device=device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        caption = vlm.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values=patches,
                               image_grid_thw=torch.tensor([[1, grid, grid]], device=device), max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False)
        out["vlm"]["generate_s"] = time.perf_counter() - t0
        # the LLM: the caption inside a longer prompt → a story
        prompt = torch.randint(0, lm_cfg["vocab_size"], (1, prompt_tokens), generator=gen).to(device)
        t0 = time.perf_counter()
        story = llm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False)
        out["llm"]["generate_s"] = time.perf_counter() - t0
    out["vlm"]["tokens"], out["llm"]["tokens"] = caption.shape[1] - input_ids.shape[1], story.shape[1] - prompt_tokens
    out["image_tokens"], out["prompt_tokens"] = image_tokens, prompt_tokens
    if cuda:
        torch.cuda.synchronize(device)
        out["peak_allocated"] = torch.cuda.max_memory_allocated(device)
        out["peak_reserved"] = torch.cuda.max_memory_reserved(device)
        out["driver_used"] = free0 - torch.cuda.mem_get_info(device)[0]  # + the CUDA context, at the end
        out["total"] = total
    else:
        out["peak_rss"] = _status("VmHWM")
    return out


def vlm_llm_table(r: dict, target_gb: float = 16.0) -> str:
    if "error" in r and "vlm" not in r:
        return f"| failed: {r['error']} |||||"
    lines = ["| model | NF4 Linears | weight GB | tokens | generate s |", "|---|---|---|---|---|"]
    for key, name in (("vlm", "Qwen2.5-VL-7B shape (vision, lm_head bf16)"), ("llm", "Mistral-Nemo-12B shape (lm_head bf16)")):
        m = r[key]
        lines.append(f"| {name}{' (tiny)' if r['tiny'] else ''} | {m['nf4_linears']} | {fmt_gb(m['weight_bytes'])} | "
                     f"{m['tokens']} | {m['generate_s']:.1f} |")
    if "peak_reserved" in r:
        peak = max(r["peak_reserved"], r["driver_used"])
        lines.append(f"\nPeak on {r['device']}: allocated {fmt_gb(r['peak_allocated'])} GB, reserved "
                     f"{fmt_gb(r['peak_reserved'])} GB, driver's view (with context) {fmt_gb(r['driver_used'])} GB — "
                     f"target ≤ {target_gb:.0f} GB: {'met' if peak <= target_gb * GB else 'NOT met'}")
    else:
        lines.append(f"\nPeak RSS on {r['device']}: {fmt_gb(r['peak_rss'])} GB (the ≤ 16 GB target is for a CUDA GPU)")
    return "\n".join(lines)


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


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def fmt_gb(n: float | None) -> str:
    return "–" if n is None else f"{n / GB:.2f}"


def _full_depth(r: dict) -> str:
    """FLUX at its real depth: bytes extrapolated from the reduced model, and their ratio to fp32 there."""
    full = r.get("full_depth_bytes")
    if full is None:
        return "–"
    fp32_full = r.get("full_depth_fp32_bytes")
    ratio = f" ({full / fp32_full:.3f})" if fp32_full else ""
    return fmt_gb(full) + ratio


def table1(rows: list[dict]) -> str:
    lines = ["| arch | method | weight GB | × fp32 | × unquantized | RSS GB | peak GB | s/step | × time | "
             "FLUX full depth GB (× fp32) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base = {r["arch"]: r for r in rows if r.get("method") == "none" and "error" not in r}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['method']} | failed: {r['error']} ||||||||")
            continue
        b = base.get(r["arch"])
        ratio = f"{r['weight_bytes'] / r['full_bytes']:.3f}"  # against the fp32 weights
        uratio = f"{r['weight_bytes'] / b['weight_bytes']:.3f}" if b else "–"
        tratio = f"{r['step_s'] / b['step_s']:.2f}" if b else "–"
        lines.append(f"| {r['arch']}{' (reduced)' if r['arch'] == 'flux' else ''} | {r['method']} | "
                     f"{fmt_gb(r['weight_bytes'])} | {ratio} | {uratio} | {fmt_gb(r['rss'])} | {fmt_gb(r['peak'])} | "
                     f"{r['step_s']:.2f} | {tratio} | {_full_depth(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--device", nargs="+", default=None, choices=("cpu", "cuda"),
                        help="where table 1 runs (default: the CPU, and the CUDA GPU when one is present)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 256 px images)")
    parser.add_argument("--steps", type=int, default=2, help="timed denoiser calls after one warm-up")
    parser.add_argument("--two-checkpoints-only", action="store_true")
    parser.add_argument("--skip-two-checkpoints", action="store_true")
    parser.add_argument("--ckpt-channels", type=int, nargs="+", default=[320, 640, 1280, 1280],
                        help="UNet widths of the two checkpoints (default: SD1.5's, 3.4 GB each in fp32)")
    parser.add_argument("--budget-mb", type=int, default=None, help="default: 1.3 × one checkpoint's UNet")
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--vlm-llm", choices=("auto", "run", "skip"), default="auto",
                        help="the 7B VLM + 12B LLM in NF4 part (auto: when a CUDA GPU is present)")
    parser.add_argument("--vlm-llm-device", default="cuda", help="device of that part (cpu: only with --vlm-llm-tiny)")
    parser.add_argument("--vlm-llm-tiny", action="store_true", help="the same code path on few-feature models (smoke)")
    parser.add_argument("--vlm-llm-prompt-tokens", type=int, default=1024)
    parser.add_argument("--vlm-llm-new-tokens", type=int, default=32)
    parser.add_argument("--vlm-llm-image", type=int, default=448, help="image side in px (448: 256 image tokens)")
    parser.add_argument("--vlm-llm-only", action="store_true", help="only the VLM + LLM part")
    parser.add_argument("--vlm-llm-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("ARCH", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--two-child", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.latent, args.steps, (args.device or ["cpu"])[0])))
        return 0
    if args.two_child:
        print(json.dumps(two_checkpoints(Path(args.two_child), tuple(args.ckpt_channels), args.budget_mb)))
        return 0
    vlm_args = ["--vlm-llm-device", args.vlm_llm_device, "--vlm-llm-prompt-tokens", str(args.vlm_llm_prompt_tokens),
                "--vlm-llm-new-tokens", str(args.vlm_llm_new_tokens), "--vlm-llm-image", str(args.vlm_llm_image)]
    if args.vlm_llm_child:
        print(json.dumps(vlm_llm(args.vlm_llm_device, args.vlm_llm_tiny, args.vlm_llm_prompt_tokens,
                                 args.vlm_llm_new_tokens, args.vlm_llm_image)))
        return 0
    if args.vlm_llm == "run" or (args.vlm_llm != "skip" and (args.vlm_llm_only or _has_cuda())):
        if args.vlm_llm_device.startswith("cpu") and not args.vlm_llm_tiny:
            parser.error("the full-size VLM + LLM part needs a CUDA GPU (--vlm-llm-tiny runs the code path on CPU)")
        r = run_child(["--vlm-llm-child", *vlm_args, *(["--vlm-llm-tiny"] if args.vlm_llm_tiny else [])], args.timeout)
        print(f"\nThe seed's pipeline: a VLM captions a {args.vlm_llm_image}² image, then an LLM writes from a "
              f"{args.vlm_llm_prompt_tokens}-token prompt; both resident, both NF4 (bitsandbytes, double-quantized), "
              "random weights of the real shapes")
        print(vlm_llm_table(r))
    elif args.vlm_llm == "auto":
        print("\nThe 7B VLM + 12B LLM in NF4 part: skipped (no CUDA GPU; its target, peak ≤ 16 GB, is for one)")
    if args.vlm_llm_only:
        return 0
    if not args.two_checkpoints_only:
        for device in args.device or (["cpu", "cuda"] if _has_cuda() else ["cpu"]):
            rows = []
            for arch in args.archs:
                for method in args.methods:
                    r = run_child(["--child", arch, method, "--device", device, "--latent", str(args.latent),
                                   "--steps", str(args.steps)], args.timeout)
                    rows.append({"arch": arch, "method": method, **r})
                    print(f"  {device} {arch} {method}: {r}", file=sys.stderr, flush=True)
            what = (f"on CPU, fp32 compute, {os.environ.get('OMP_NUM_THREADS', '1')} thread(s)" if device == "cpu" else
                    "on the CUDA GPU, in its compute dtype (× fp32: against the fp32 weights; × time and the ratios of "
                    "the unquantized row against the bf16/fp16 model); peak = torch's allocator high-water mark")
            print(f"\nDenoisers {what}, CFG batch 2, {args.latent * 8}² px")
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
