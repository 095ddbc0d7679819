"""Scheduling overhead of the runtime: per-node cost, cached re-runs, trivial-prompt throughput.

    python bench/overhead.py            # executor, HTTP + WebSocket and serving figures
    python bench/overhead.py --only executor
    python bench/overhead.py --only serving [--count 600]

Chains are ``EmptyImage → ImageInvert × N → PreviewImage`` on 8×8 images, with the colour
varied per run so nothing is cached (except in the cached re-run row).  Prints a table.

``serving``: trivial prompts (one no-op output node, distinct values) through ``POST /prompt``
(completion read from the WebSocket) and ``POST /api/run`` (each request waits for its result)
with 1, 8 and 32 concurrent clients, on a server without and with a token (``--require-token``),
and the p50/p99 latency of ``GET /api/jobs`` while 32 clients post.  Targets: ≥ 1000 prompts/s
end to end with one client, auth costing < 3 %, ``/api/jobs`` p99 < 20 ms under load.
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


def _launch_server(base: Path, *extra: str, token: str | None = None) -> tuple[object, str, float]:
    """Start ``server.py serve``; returns (process, url, seconds from launch to first /object_info)."""
    import subprocess
    import urllib.request

    port = _free_port()
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "genesis_bench_nodes.py").write_text(BENCH_PACK)
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "server.py"), "serve", "--base-directory", str(base),
                             "--port", str(port), "--no-tiny-models", "--cpu", *extra], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/object_info", headers=headers),
                                        timeout=10) as resp:
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
        count, in_flight = 600, 16
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
        values = iter(range(1, 1 << 30))

        def summary(runs: list[tuple[float, float]]) -> str:
            done = sorted(r[0] for r in runs)
            return (f"{statistics.median(done):.0f} prompts/s (median of {len(runs)}: {done[0]:.0f}–{done[-1]:.0f}; "
                    f"queued at {statistics.median(r[1] for r in runs):.0f}/s)")

        runs = [await throughput([{"1": {"class_type": "BenchSink", "inputs": {"value": next(values)}}}
                                  for _ in range(count)]) for _ in range(3)]
        rows.append((f"http+ws: {count} trivial prompts end to end, {in_flight} in flight (one no-op output node)",
                     summary(runs)))
        runs = [await throughput([chain_prompt(0, next(values)) for _ in range(count)]) for _ in range(3)]
        rows.append((f"http+ws: {count} trivial image prompts end to end, {in_flight} in flight "
                     "(EmptyImage → PreviewImage)", summary(runs)))
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


# -- serving: /prompt and /api/run with concurrent clients, auth off and on (bench_serving) ------------

SERVING_CLIENTS = (1, 8, 32)
BENCH_TOKEN = "bench-token-0123456789abcdef0123"


def _sink(value: int) -> dict:
    return {"1": {"class_type": "BenchSink", "inputs": {"value": value}}}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _serving_async(url: str, token: str | None, count: int, values: "object",
                         pid: int) -> tuple[dict[str, float], list[float]]:
    """Measures of one server: prompts/s and the server's CPU ms per prompt per (route, clients),
    and /api/jobs latency under load."""
    import asyncio

    import aiohttp

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    found: dict[str, float] = {}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(limit=128)) as http:
        tracker = _WsTracker()
        ws = await http.ws_connect(f"{url}/ws?clientId=bench", max_msg_size=0)
        reader = asyncio.ensure_future(tracker.read(ws))

        async def post_prompt(value: int) -> str:
            async with http.post(url + "/prompt", json={"prompt": _sink(value), "client_id": "bench"}) as resp:
                assert resp.status == 200, await resp.text()
                return (await resp.json())["prompt_id"]

        async def run_sync(value: int) -> None:
            async with http.post(url + "/api/run", json={"prompt": _sink(value)}) as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "success"

        async def clients(n: int, total: int, work: "object") -> list[str]:
            per_client = [list(range(i, total, n)) for i in range(n)]

            async def one(items: list[int]) -> list[str]:
                return [await work(next(values)) for _ in items]  # type: ignore[operator, call-overload]

            done = await asyncio.gather(*(one(items) for items in per_client))
            return [pid for chunk in done for pid in (chunk or []) if pid]

        await run_sync(next(values))  # type: ignore[call-overload]  # warm-up
        for n in SERVING_CLIENTS:
            start, cpu = time.perf_counter(), _process_cpu_seconds(pid)
            ids = await clients(n, count, post_prompt)
            await asyncio.wait_for(asyncio.gather(*(tracker.expect(i).wait() for i in ids)), 300)  # type: ignore
            found[f"prompt/{n}"] = count / (time.perf_counter() - start)
            found[f"cpu:prompt/{n}"] = (_process_cpu_seconds(pid) - cpu) / count * 1e3
            start, cpu = time.perf_counter(), _process_cpu_seconds(pid)
            await clients(n, count, run_sync)
            found[f"run/{n}"] = count / (time.perf_counter() - start)
            found[f"cpu:run/{n}"] = (_process_cpu_seconds(pid) - cpu) / count * 1e3

        # /api/jobs while 32 clients post (the queue grows: the jobs API must stay quick)
        latencies: list[float] = []
        stop = asyncio.Event()

        async def poll_jobs() -> None:
            while not stop.is_set():
                start = time.perf_counter()
                async with http.get(url + "/api/jobs?status=in_progress,pending&limit=200&offset=0") as resp:
                    await resp.read()
                latencies.append(time.perf_counter() - start)
                await asyncio.sleep(0.005)

        poller = asyncio.ensure_future(poll_jobs())
        ids = await clients(32, count * 2, post_prompt)
        stop.set()
        await poller
        await asyncio.wait_for(asyncio.gather(*(tracker.expect(i).wait() for i in ids)), 300)  # type: ignore
        await ws.close()
        reader.cancel()
    return found, latencies


def _token_check_seconds() -> float:
    """What the ``authenticate`` middleware costs one request with a valid Bearer token: the
    end-to-end A/B above swings by several per cent between runs, this does not."""
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from web.auth import AUTH, AuthSettings, authenticate

    with tempfile.TemporaryDirectory(prefix="genesis-bench-auth-") as folder:
        settings = AuthSettings.configure(Path(folder), required=True, token=BENCH_TOKEN)
    app = web.Application()
    app[AUTH] = settings
    request = make_mocked_request("POST", "/prompt", headers={"Authorization": f"Bearer {BENCH_TOKEN}"}, app=app)
    response = web.Response()

    async def handler(_request: web.Request) -> web.StreamResponse:
        return response

    async def measure() -> float:
        loop_runs, number = 5, 20000

        async def many() -> None:
            for _ in range(number):
                await authenticate(request, handler)

        async def bare() -> None:
            for _ in range(number):
                await handler(request)

        times = []
        for _ in range(loop_runs):
            start = time.perf_counter()
            await many()
            middle = time.perf_counter()
            await bare()
            times.append(((middle - start) - (time.perf_counter() - middle)) / number)
        return statistics.median(times)

    return asyncio.run(measure())


def bench_serving(count: int = 600, repeats: int = 2) -> list[tuple[str, str]]:
    """The serving table: throughput per route and clients, auth off vs on, /api/jobs under load.

    The two servers are measured in turn, ``repeats`` times each (off, on, off, on …), and each
    throughput is the best of its repeats: on a shared machine a neighbour's burst slows one run,
    never speeds one up.  ``/api/jobs`` latencies are pooled over the repeats.
    """
    import asyncio
    import itertools
    import shutil

    base = Path(tempfile.mkdtemp(prefix="genesis-bench-serving-"))
    values = itertools.count(1)
    configs = (("auth off", (), None), ("auth on", ("--require-token", "--token", BENCH_TOKEN), BENCH_TOKEN))
    best: dict[str, dict[str, float]] = {label: {} for label, _, _ in configs}
    latencies: dict[str, list[float]] = {label: [] for label, _, _ in configs}
    servers = {}
    try:
        for label, extra, token in configs:
            servers[label] = _launch_server(base / label.replace(" ", "-"), *extra, token=token)[:2]
        for _ in range(repeats):
            for label, _, token in configs:
                proc, url = servers[label]
                found, waited = asyncio.run(_serving_async(url, token, count, values, proc.pid))  # type: ignore
                for key, value in found.items():
                    if key.startswith("cpu:"):  # the least CPU any repeat needed
                        best[label][key] = min(value, best[label].get(key, float("inf")))
                    else:
                        best[label][key] = max(value, best[label].get(key, 0.0))
                latencies[label] += waited
    finally:
        for proc, _ in servers.values():
            proc.terminate()  # type: ignore[attr-defined]
            proc.wait()  # type: ignore[attr-defined]
        shutil.rmtree(base, ignore_errors=True)
    rows: list[tuple[str, str]] = []
    off, on = best["auth off"], best["auth on"]
    for route, name in (("prompt", "POST /prompt (completion via WebSocket)"), ("run", "POST /api/run (waits)")):
        for n in SERVING_CLIENTS:
            key = f"{route}/{n}"
            cost = (off[key] - on[key]) / off[key] * 100
            cpu_off, cpu_on = off[f"cpu:{key}"], on[f"cpu:{key}"]
            cpu_cost = (cpu_on - cpu_off) / cpu_off * 100 if cpu_off else 0.0
            rows.append((f"serving: {count} trivial prompts, {name}, {n} client{'s' if n > 1 else ''}",
                         f"{off[key]:.0f}/s without token, {on[key]:.0f}/s with (auth cost {cost:+.1f} %); "
                         f"server CPU {cpu_off:.2f} vs {cpu_on:.2f} ms/prompt ({cpu_cost:+.1f} %)"))
    check = _token_check_seconds()
    cpu = off["cpu:prompt/1"] / 1e3
    rows.append(("serving: the token check itself (authenticate middleware, in process, median of 5 × 20000)",
                 f"{check * 1e6:.2f} µs per request = {check / cpu * 100:.2f} % of the server CPU per prompt"
                 if cpu else f"{check * 1e6:.2f} µs per request"))
    for label, waited in latencies.items():
        rows.append((f"serving: GET /api/jobs while 32 clients post {count * 2} prompts ({label})",
                     f"p50 {_percentile(waited, 0.5) * 1e3:.1f} ms, p99 {_percentile(waited, 0.99) * 1e3:.1f} ms "
                     f"({len(waited)} requests)"))
    return rows


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)} | value")
    print(f"{'-' * width}-|-{'-' * 16}")
    for name, value in rows:
        print(f"{name.ljust(width)} | {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=("executor", "http", "serving"), default=None)
    parser.add_argument("--count", type=int, default=600, help="serving: prompts per measurement")
    parser.add_argument("--repeats", type=int, default=2, help="serving: measurements per server (best kept)")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    if args.only in (None, "executor"):
        rows += bench_executor()
    if args.only in (None, "http"):
        bench_http = globals().get("bench_http")
        if bench_http is not None:
            rows += bench_http()
    if args.only in (None, "serving"):
        rows += bench_serving(args.count, args.repeats)
    print_table(rows)


if __name__ == "__main__":
    main()
