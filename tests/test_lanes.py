"""The network lane's per-key limits and order, and the GPU gate's hand-over rules."""
from __future__ import annotations

import asyncio
import threading
import time

from graph_runtime.lanes import GpuGate, NetworkLane


def test_network_lane_limits_jobs_per_key_and_keeps_arrival_order():
    lane = NetworkLane(per_key_limit=2)
    started: list[str] = []
    release = {}
    peak = {"runway": 0, "luma": 0}
    running = {"runway": 0, "luma": 0}
    lock = threading.Lock()

    def job(key: str, name: str):
        async def body():
            with lock:
                started.append(name)
                running[key] += 1
                peak[key] = max(peak[key], running[key])
            event = release.setdefault(name, asyncio.Event())
            await event.wait()
            with lock:
                running[key] -= 1
            return name
        return body

    try:
        futures = [lane.run(job("runway", f"r{i}"), "runway") for i in range(5)]
        futures.append(lane.run(job("luma", "l0"), "luma"))
        deadline = time.monotonic() + 5
        while len(started) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert sorted(started) == ["l0", "r0", "r1"]  # two runway slots, the other key unaffected
        assert lane.load()["runway"] == (2, 3)
        for name in ["r0", "r1", "r2", "r3", "r4", "l0"]:
            while name not in started:
                time.sleep(0.005)
            lane._loop.call_soon_threadsafe(release.setdefault(name, asyncio.Event()).set)
        assert [f.result(5) for f in futures] == ["r0", "r1", "r2", "r3", "r4", "l0"]
        assert [n for n in started if n.startswith("r")] == ["r0", "r1", "r2", "r3", "r4"]  # in order
        assert peak == {"runway": 2, "luma": 1}
        assert lane.cpu_seconds() > 0
    finally:
        lane.stop()


def test_gpu_gate_prefers_resuming_prompts_and_frees_for_the_worker():
    gate = GpuGate()
    assert gate.acquire("a")
    order: list[str] = []

    def take(pid: str, resuming: bool):
        assert gate.acquire(pid, resuming=resuming)
        order.append(pid)
        gate.release(pid)

    new = threading.Thread(target=take, args=("new", False))
    new.start()
    time.sleep(0.05)
    parked = threading.Thread(target=take, args=("parked", True))
    parked.start()
    time.sleep(0.05)
    assert not gate.wait_free(0.01)  # held, and two wait
    gate.release("a")
    new.join(5)
    parked.join(5)
    assert order == ["parked", "new"]
    assert gate.wait_free(1) and gate.holder is None


def test_gpu_gate_waiter_gives_up_when_interrupted():
    gate = GpuGate()
    gate.acquire("a")
    flag = threading.Event()
    result = []
    t = threading.Thread(target=lambda: result.append(gate.acquire("b", interrupted=flag.is_set, poll=0.01)))
    t.start()
    flag.set()
    t.join(5)
    assert result == [False] and gate.holder == "a"
    gate.release("a")
    assert gate.wait_free(1)
