"""Scale-out on Ray: throughput with 1, 2 and 4 workers, the dispatcher's cost, and model affinity.

    python bench/scaleout.py                      # the whole table (about 2-3 minutes here)
    python bench/scaleout.py --prompts 8 --workers 1,2 --affinity-prompts 6   # a quick look

A local Ray cluster with logical GPUs (``ray.init(num_gpus=4)``) on this machine.  Part 1: prompts
whose cost is one node that sleeps (so the 2 CPU cores are not what limits them), through the
runtime's queue and the Ray pool: throughput per worker count, the speed-up over one worker, the
dispatcher's own time per prompt (planning + claiming) and the end-to-end overhead per prompt
(wall time beyond the sleeping, with one worker).  Part 2: prompts alternating two tiny SD1.5
checkpoints on two workers whose model budget holds one checkpoint, with affinity and without
(least recently used): how many times each worker loaded each checkpoint.

Targets (issue 13): 2 workers ≥ 1.85× one, 4 workers ≥ 3.5×; dispatcher < 5 ms per prompt;
with affinity each checkpoint is loaded once per worker.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graph_runtime.cluster.pool import PoolSettings, RayPool  # noqa: E402
from graph_runtime.cluster.ray_session import RaySession  # noqa: E402
from graph_runtime.context import RuntimeOptions  # noqa: E402
from graph_runtime.events import Executing  # noqa: E402
from graph_runtime.paths import FolderPaths  # noqa: E402
from graph_runtime.service import Runtime  # noqa: E402
from tests.cluster_support import REGISTRY_FACTORY, make_registry, sd15_prompt  # noqa: E402

CKPTS = ("tiny-sd15.safetensors", "tiny-sd15-b.safetensors")


class Finished:
    """Counts prompts that ended (``executing`` with ``node: null``), and wakes a waiter at ``target``."""

    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, event, client_id) -> None:
        if isinstance(event, Executing) and event.node is None:
            with self._lock:
                self.count += 1
                if self.count >= self.target:
                    self.done.set()

    def expect(self, n: int) -> None:
        with self._lock:
            self.count, self.target = 0, n
            self.done.clear()


def start_runtime(base: Path, registry, settings: PoolSettings, options: RuntimeOptions | None = None):
    paths = FolderPaths(base)
    paths.ensure_dirs()
    runtime = Runtime(paths, options, registry=registry,
                      runner=lambda rt: RayPool(rt, RaySession("attached"), settings))
    finished = Finished()
    runtime.add_listener(finished)
    runtime.start()
    if not runtime.runner.wait_ready(600):
        raise SystemExit(f"workers did not start: {runtime.runner.workers()}")
    return runtime, finished


def run_batch(runtime: Runtime, finished: Finished, prompts: list[dict], timeout: float = 900) -> float:
    finished.expect(len(prompts))
    started = time.perf_counter()
    for prompt in prompts:
        result = runtime.submit(prompt)
        assert result.ok, result.error
    if not finished.done.wait(timeout):
        raise SystemExit(f"only {finished.count} of {len(prompts)} prompts finished in {timeout} s")
    return time.perf_counter() - started


def throughput(workdir: Path, registry, counts: list[int], prompts: int, sleep: float) -> list[dict]:
    rows = []
    tag = 0
    for n in counts:
        runtime, finished = start_runtime(workdir / f"sleep-{n}", registry,
                                          PoolSettings(workers=n, registry_factory=REGISTRY_FACTORY))
        try:
            tag += 1
            run_batch(runtime, finished, [{"1": {"class_type": "Sleep", "inputs": {"seconds": 0.0, "tag": tag}}}] * 1)
            pool = runtime.runner
            pool.dispatch_seconds, pool.dispatched = 0.0, 0
            batch = []
            for _ in range(prompts):
                tag += 1
                batch.append({"1": {"class_type": "Sleep", "inputs": {"seconds": sleep, "tag": tag}}})
            wall = run_batch(runtime, finished, batch)
            rows.append({"workers": n, "wall": wall, "per_s": prompts / wall,
                         "dispatch_ms": 1e3 * pool.dispatch_seconds / max(pool.dispatched, 1),
                         "overhead_ms": 1e3 * (wall * n - prompts * sleep) / prompts})
        finally:
            runtime.stop(30)
    base = rows[0]["per_s"]
    for row in rows:
        row["speedup"] = row["per_s"] / base
    return rows


WARM_UP_SLEEP = 3.0
"""Seconds a warm-up prompt holds its worker: longer than the affinity wait, so the second warm-up
prompt (the same VAE) goes to the other worker instead of waiting for the first one."""


def warm_up_prompt(seed: int) -> dict:
    """Decodes an empty latent with the tiny VAE: imports torch and diffusers, loads no checkpoint."""
    return {"1": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-sd-vae.safetensors"}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0]}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
            "5": {"class_type": "Sleep", "inputs": {"seconds": WARM_UP_SLEEP, "tag": seed}}}


def warm_up(runtime: Runtime, finished: Finished) -> None:
    """One warm-up prompt on each of the two workers (checked: a cold worker would skew the loads)."""
    run_batch(runtime, finished, [warm_up_prompt(i) for i in range(2)])
    ran_on = {job.notes.get("worker", {}).get("name") for job in runtime.store.history(max_items=2).jobs}
    if len(ran_on) != 2:
        raise SystemExit(f"the warm-up ran on {sorted(ran_on)}, not on both workers")


def loaded_size(paths: FolderPaths, registry) -> int:
    """Bytes one checkpoint takes once loaded (UNet + CLIP + VAE), measured in this process."""
    from graph_runtime.executor import Executor
    from graph_runtime.validation import PromptValidator

    executor = Executor(registry, paths)
    checked = PromptValidator(registry, paths).validate(sd15_prompt(registry, paths, CKPTS[0], seed=1))
    report = executor.execute("size", checked.prompt, checked.outputs)
    assert report.ok, report.error
    size = executor.models.held_bytes()
    executor.models.unload_all()
    executor.close()
    return size


def affinity(workdir: Path, registry, prompts: int) -> list[dict]:
    from models.tools.tiny_models import write_tiny_models
    from tests.conftest_models import link_models

    shared = workdir / "tiny-models"
    write_tiny_models(shared)
    rows = []
    budget = None
    for enabled in (True, False):
        base = workdir / f"affinity-{enabled}"
        link_models(shared, base / "models")
        checkpoints = base / "models" / "checkpoints"
        os.link(checkpoints / CKPTS[0], checkpoints / CKPTS[1])
        paths = FolderPaths(base)
        paths.ensure_dirs()
        if budget is None:
            budget = int(loaded_size(paths, registry) * 1.5)  # room for one checkpoint, not two
        settings = PoolSettings(workers=2, registry_factory=REGISTRY_FACTORY, affinity=enabled)
        runtime, finished = start_runtime(base, registry, settings, RuntimeOptions(model_budget_bytes=budget))
        try:
            # steady state: each worker imports torch and diffusers first (a VAE decode, no checkpoint),
            # so the first checkpoint prompts do not pay seconds of imports while others wait for them
            warm_up(runtime, finished)
            batch = [sd15_prompt(registry, paths, CKPTS[i % 2], seed=i) for i in range(prompts)]
            wall = run_batch(runtime, finished, batch)
            loads: Counter = Counter()
            for job in runtime.store.history(max_items=prompts).jobs:  # the checkpoint prompts only
                worker = job.notes.get("worker", {}).get("name", "?")
                for ckpt in {Path(f).name for row in job.notes.get("models_loaded", []) for f in row["files"]}:
                    loads[(worker, ckpt)] += 1
            rows.append({"affinity": enabled, "wall": wall, "loads": sum(loads.values()),
                         "per_worker": dict(sorted(loads.items())), "budget_mb": budget / 2**20})
        finally:
            runtime.stop(30)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--sleep", type=float, default=0.25, help="seconds each throughput prompt sleeps")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--affinity-prompts", type=int, default=20)
    parser.add_argument("--skip-affinity", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the measured rows here")
    args = parser.parse_args(argv)
    measured: dict = {}
    counts = [int(x) for x in args.workers.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="genesis-scaleout-"))
    registry = make_registry()
    import ray

    if ray.is_initialized():  # a cluster this process already runs (the test session's: tests/test_cluster_bench.py)
        session = RaySession("attached")
    else:  # a local cluster as with --ray local (its reaper ends it even if the bench is killed)
        session = RaySession("local", num_cpus=2, num_gpus=max(counts),
                             init_kwargs={"namespace": "genesis-bench", "log_to_driver": False})
    session.start()
    try:
        rows = throughput(workdir, registry, counts, args.prompts, args.sleep)
        if args.json is not None:
            measured["throughput"] = rows
        print(f"\n{args.prompts} prompts, each one node sleeping {args.sleep:g} s, "
              "through the queue and the Ray pool\n")
        print("| workers | wall (s) | prompts/s | speed-up vs 1 | dispatcher per prompt | overhead per prompt |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['workers']} | {r['wall']:.2f} | {r['per_s']:.2f} | {r['speedup']:.2f}x "
                  f"| {r['dispatch_ms']:.2f} ms | {r['overhead_ms']:.1f} ms |")
        if not args.skip_affinity:
            rows = affinity(workdir, registry, args.affinity_prompts)
            if args.json is not None:
                measured["affinity"] = [{**r, "per_worker": [[w, c, n] for (w, c), n in r["per_worker"].items()]}
                                        for r in rows]
            print(f"\n{args.affinity_prompts} prompts alternating two tiny SD1.5 checkpoints on 2 workers, "
                  f"model budget {rows[0]['budget_mb']:.0f} MB per worker (one checkpoint)\n")
            print("| dispatch | wall (s) | checkpoint loads | loads per (worker, checkpoint) |")
            print("|---|---:|---:|---|")
            for r in rows:
                per = ", ".join(f"{w}/{c.split('.')[0]}: {n}" for (w, c), n in r["per_worker"].items())
                print(f"| {'affinity' if r['affinity'] else 'least recently used'} | {r['wall']:.1f} "
                      f"| {r['loads']} | {per} |")
    finally:
        session.stop()  # an attached session is left running
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(measured, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
