"""Scheduling overhead of the runtime: per-node cost, cached re-runs, trivial-prompt throughput.

    python bench/overhead.py            # executor and HTTP + WebSocket figures
    python bench/overhead.py --only executor

Chains are ``EmptyImage → ImageInvert × N → PreviewImage`` on 8×8 images, with the colour
varied per run so nothing is cached (except in the cached re-run row).  Prints a table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graph_runtime.executor import Executor  # noqa: E402
from graph_runtime.paths import FolderPaths  # noqa: E402
from graph_runtime.registry import build_registry  # noqa: E402
from graph_runtime.validation import PromptValidator  # noqa: E402


def chain_prompt(n: int, color: int, size: int = 8) -> dict:
    prompt = {"0": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                           "color": color}}}
    for i in range(1, n + 1):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": [str(n), 0]}}
    return prompt


def bench_executor(repeats: int = 5) -> list[tuple[str, str]]:
    base = Path(tempfile.mkdtemp(prefix="genesis-bench-"))
    paths = FolderPaths(base)
    paths.ensure_dirs()
    registry = build_registry(packs=["nodes.primitives", "nodes.image"])
    validator = PromptValidator(registry, paths)
    executor = Executor(registry, paths)
    executor.execute("warm", *_validated(validator, chain_prompt(2, 1)))  # imports torch, warms allocators
    rows: list[tuple[str, str]] = []
    color = 100
    for n in (10, 100, 500):
        per_node = []
        for _ in range(repeats):
            color += 1
            prompt, outputs = _validated(validator, chain_prompt(n, color))
            start = time.perf_counter()
            report = executor.execute("b", prompt, outputs)
            elapsed = time.perf_counter() - start
            assert report.ok and len(report.executed) == n + 2
            per_node.append(elapsed / (n + 2))
        rows.append((f"executor: per-node time, chain of {n}", f"{statistics.median(per_node) * 1e3:.3f} ms"))
    prompt, outputs = _validated(validator, chain_prompt(500, color))
    executor.execute("fill", prompt, outputs)
    cached = []
    for _ in range(repeats):
        start = time.perf_counter()
        report = executor.execute("c", prompt, outputs)
        cached.append(time.perf_counter() - start)
        assert report.ok and not report.executed
    rows.append(("executor: fully cached re-run, chain of 500", f"{statistics.median(cached) * 1e3:.2f} ms"))
    start = time.perf_counter()
    for i in range(200):
        p, o = _validated(validator, chain_prompt(1, 1000 + i))
        assert executor.execute(str(i), p, o).ok
    elapsed = time.perf_counter() - start
    rows.append(("executor: 200 trivial distinct prompts (validate + run)", f"{200 / elapsed:.0f} prompts/s"))
    executor.close()
    return rows


def _validated(validator: PromptValidator, prompt: dict) -> tuple[dict, list[str]]:
    result = validator.validate(prompt)
    assert result.ok, result.summary()
    return result.prompt, result.outputs


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)} | value")
    print(f"{'-' * width}-|-{'-' * 16}")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("executor", "http"), default=None)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    if args.only in (None, "executor"):
        rows += bench_executor()
    if args.only in (None, "http"):
        bench_http = globals().get("bench_http")
        if bench_http is not None:
            rows += bench_http()
    print_table(rows)


if __name__ == "__main__":
    main()
