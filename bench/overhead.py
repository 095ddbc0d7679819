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


# -- HTTP + WebSocket (bench_http) ------------------------------------------------------------------
# A real server process (``server.py serve``) and an aiohttp client: every figure below includes
# HTTP parsing, validation, the durable queue, the worker, WebSocket encoding and the client.

REPO = Path(__file__).resolve().parent.parent

BENCH_PACK = """
class BenchSink:
    \"\"\"An output node that only echoes its input: a prompt with no work at all.\"\"\"
    CATEGORY = "bench"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 1 << 30})}}

    def run(self, value):
        return {"ui": {"value": [value]}}


NODE_CLASS_MAPPINGS = {"BenchSink": BenchSink}
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_server(base: Path) -> tuple[object, str, float]:
    """Start ``server.py serve``; returns (process, url, seconds from launch to first /object_info)."""
    import subprocess
    import urllib.request

    port = _free_port()
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "genesis_bench_nodes.py").write_text(BENCH_PACK)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "server.py"), "serve", "--base-directory", str(base),
                             "--port", str(port), "--no-tiny-models", "--cpu"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/object_info", timeout=10) as resp:
                resp.read()
            return proc, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.002)


class _WsTracker:
    """Reads the bench client's socket: completion events and bytes per prompt."""

    def __init__(self) -> None:
        import asyncio

        self.done: dict[str, asyncio.Event] = {}
        self.bytes: dict[str, int] = {}
        self.current: str | None = None  # prompt whose traffic is being counted (sequential runs)

    def expect(self, prompt_id: str) -> "object":
        import asyncio

        return self.done.setdefault(prompt_id, asyncio.Event())

    async def read(self, ws: "object") -> None:
        import json
        from aiohttp import WSMsgType

        async for msg in ws:  # type: ignore[attr-defined]
            if msg.type == WSMsgType.TEXT:
                data = msg.data
                if self.current is not None:
                    self.bytes[self.current] = self.bytes.get(self.current, 0) + len(data)
                if '"executing"' in data and '"node":null' in data:
                    prompt_id = json.loads(data)["data"]["prompt_id"]
                    self.expect(prompt_id).set()
            elif msg.type == WSMsgType.BINARY and self.current is not None:
                self.bytes[self.current] = self.bytes.get(self.current, 0) + len(msg.data)


async def _bench_http_async(url: str, repeats: int) -> list[tuple[str, str]]:
    import asyncio
    import json

    import aiohttp

    rows: list[tuple[str, str]] = []
    client_id = "bench"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as http:
        # object_info latency and size
        async with http.get(url + "/object_info") as resp:
            body = await resp.read()
        latencies = []
        for _ in range(30):
            start = time.perf_counter()
            async with http.get(url + "/object_info") as resp:
                await resp.read()
            latencies.append(time.perf_counter() - start)
        rows.append(("http: GET /object_info latency (median of 30)", f"{statistics.median(latencies) * 1e3:.2f} ms"))
        rows.append(("http: /object_info size", f"{len(body) / 1024:.0f} KiB, {len(json.loads(body))} node types"))

        tracker = _WsTracker()
        ws = await http.ws_connect(f"{url}/ws?clientId={client_id}", max_msg_size=0)
        reader = asyncio.ensure_future(tracker.read(ws))

        async def run(prompt: dict) -> tuple[float, str]:
            start = time.perf_counter()
            async with http.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as resp:
                reply = await resp.json()
            prompt_id = reply["prompt_id"]
            tracker.current = prompt_id
            await asyncio.wait_for(tracker.expect(prompt_id).wait(), 120)  # type: ignore[attr-defined]
            return time.perf_counter() - start, prompt_id

        await run(chain_prompt(2, 1))  # warm-up: the server imports torch on its first prompt
        color = 5000
        for n in (10, 100, 500):
            per_node, traffic = [], []
            for _ in range(repeats):
                color += 1
                seconds, prompt_id = await run(chain_prompt(n, color))
                per_node.append(seconds / (n + 2))
                traffic.append(tracker.bytes.get(prompt_id, 0))
            rows.append((f"http+ws: per-node time, chain of {n}", f"{statistics.median(per_node) * 1e3:.3f} ms"))
            rows.append((f"http+ws: WebSocket traffic per prompt, chain of {n}",
                         f"{statistics.median(traffic) / 1024:.1f} KiB ({statistics.median(traffic) / (n + 2):.0f} B/node)"))
        cached_prompt = chain_prompt(500, color)
        cached = [(await run(cached_prompt))[0] for _ in range(repeats)]
        rows.append(("http+ws: fully cached re-run, chain of 500", f"{statistics.median(cached) * 1e3:.2f} ms"))

        tracker.current = None
        count, in_flight = 200, 16
        semaphore = asyncio.Semaphore(in_flight)

        async def submit(prompt: dict) -> str:
            async with semaphore:
                async with http.post(url + "/prompt", json={"prompt": prompt, "client_id": client_id}) as resp:
                    return (await resp.json())["prompt_id"]

        async def throughput(prompts: list[dict]) -> tuple[float, float]:
            start = time.perf_counter()
            ids = await asyncio.gather(*(submit(p) for p in prompts))
            posted = time.perf_counter() - start
            await asyncio.wait_for(asyncio.gather(*(tracker.expect(i).wait() for i in ids)), 300)  # type: ignore
            return len(prompts) / (time.perf_counter() - start), len(prompts) / posted

        await throughput([{"1": {"class_type": "BenchSink", "inputs": {"value": 0}}}])  # warm-up
        done, queued = await throughput([{"1": {"class_type": "BenchSink", "inputs": {"value": 1 + i}}}
                                         for i in range(count)])
        rows.append((f"http+ws: {count} trivial prompts end to end (one no-op output node)",
                     f"{done:.0f} prompts/s (queued at {queued:.0f}/s)"))
        done, queued = await throughput([chain_prompt(0, 9000 + i) for i in range(count)])
        rows.append((f"http+ws: {count} trivial image prompts end to end (EmptyImage → PreviewImage)",
                     f"{done:.0f} prompts/s (queued at {queued:.0f}/s)"))
        await ws.close()
        reader.cancel()
    return rows


def bench_http(repeats: int = 3) -> list[tuple[str, str]]:
    """Cold start, object_info, per-node overhead and throughput through HTTP + WebSocket."""
    import asyncio
    import shutil

    base = Path(tempfile.mkdtemp(prefix="genesis-bench-http-"))
    colds = []
    for attempt in range(2):  # the first launch also warms the OS page cache
        proc, url, cold = _launch_server(base / f"cold{attempt}")
        colds.append(cold)
        if attempt == 0:
            proc.terminate()
            proc.wait()
    rows = [("http: cold start, process launch → first /object_info answer",
             f"{colds[1]:.2f} s (first launch {colds[0]:.2f} s)")]
    try:
        rows += asyncio.run(_bench_http_async(url, repeats))
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(base, ignore_errors=True)
    return rows


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
