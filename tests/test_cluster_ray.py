"""The Ray pool on a real local Ray cluster: 2 logical GPUs, 2 workers, one live server.

The session's local Ray cluster (``ray_cluster``, tests/conftest_ray.py: ``num_cpus=2,
num_gpus=2``) gives logical GPUs on this CPU-only machine (each worker gets
``CUDA_VISIBLE_DEVICES`` of its own and runs on the CPU); the server and its pool are started
once for the module.  Workers run the tiny SD1.5 checkpoint and the test nodes of
:mod:`tests.cluster_support` (imported by name in each worker process).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import uuid
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install -e ".[ray]" (./test.sh installs it)')

from PIL import Image  # noqa: E402

from graph_runtime.cluster.pool import PoolSettings, RayPool  # noqa: E402
from graph_runtime.cluster.ray_session import RaySession  # noqa: E402
from graph_runtime.executor import Executor  # noqa: E402
from graph_runtime.paths import FolderPaths  # noqa: E402
from graph_runtime.service import Runtime  # noqa: E402
from graph_runtime.validation import PromptValidator  # noqa: E402
from tests.cluster_support import REGISTRY_FACTORY, gate_prompt, make_registry, poll, sd15_prompt  # noqa: E402
from tests.conftest_models import link_models  # noqa: E402
from tests.web_harness import LiveServer, WsClient, make_runtime  # noqa: E402

CKPT_A, CKPT_B = "tiny-sd15.safetensors", "tiny-sd15-b.safetensors"
# hang_timeout: long enough that a starved machine (2 shared cores) never passes for a frozen worker
SETTINGS = PoolSettings(workers=2, registry_factory=REGISTRY_FACTORY, heartbeat_s=0.2, hang_timeout=10.0,
                        interrupt_grace=5.0, affinity_wait=60.0, start_timeout=120.0)


@pytest.fixture(scope="module")
def registry():
    return make_registry()


@pytest.fixture(scope="module")
def cluster_paths(tmp_path_factory, tiny_models_dir) -> FolderPaths:
    base = tmp_path_factory.mktemp("cluster") / "base"
    link_models(tiny_models_dir, base / "models")
    checkpoints = base / "models" / "checkpoints"
    os.link(checkpoints / CKPT_A, checkpoints / CKPT_B)  # a second checkpoint (another file, the same weights)
    paths = FolderPaths(base)
    paths.ensure_dirs()
    return paths


@pytest.fixture(scope="module")
def server(ray_cluster, cluster_paths, registry):
    runtime = Runtime(cluster_paths, registry=registry,
                      runner=lambda rt: RayPool(rt, RaySession("attached"), SETTINGS))
    live = LiveServer(runtime, probe_torch=False).start()
    assert runtime.runner.wait_ready(180), runtime.runner.workers()
    yield live
    live.stop()


@pytest.fixture
def short_deadlines(server):
    """Hang and interrupt deadlines of 3 s for a test that freezes a worker on purpose (the module's
    10 s keep a worker on a starved machine from passing for a frozen one in the other tests)."""
    pool = pool_of(server)
    pool.settings = dataclasses.replace(SETTINGS, hang_timeout=3.0, interrupt_grace=3.0)
    yield pool
    pool.settings = SETTINGS


def pool_of(server: LiveServer) -> RayPool:
    return server.runtime.runner


def worker_running(server: LiveServer, prompt_id: str) -> dict | None:
    return next((w for w in pool_of(server).workers() if w["running"] == prompt_id), None)


def executing_node(ws: WsClient, prompt_id: str, node: str = "1") -> None:
    """Wait until ``prompt_id`` runs ``node``, as the client saw it.

    Prompts on two workers run at once, so their messages interleave in any order: a message read
    while waiting for another prompt counts too (``ws.messages`` keeps everything read).
    """
    def running(m: object) -> bool:
        return (isinstance(m, dict) and m["type"] == "executing" and m["data"]["prompt_id"] == prompt_id
                and m["data"]["node"] == node)

    if not any(running(m) for m in ws.messages):
        ws.read_until(running, timeout=60)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_alternating_checkpoints_stay_on_their_workers_and_images_match_one_process(server, registry, cluster_paths,
                                                                                   tmp_path):
    pool = pool_of(server)
    actors = [pool.actor_of(w["name"]) for w in pool.workers()]
    # both idle: they free at once (a /free racing the first prompt would apply after it instead)
    assert ray.get([a.control.remote("free", unload_models=True, free_memory=True) for a in actors]) == [True, True]
    prompts = [sd15_prompt(registry, cluster_paths, CKPT_A if i % 2 == 0 else CKPT_B, seed=100 + i, prefix="alt")
               for i in range(6)]
    ids = [server.queue(p) for p in prompts]
    history = {pid: server.wait_history(pid, timeout=240) for pid in ids}

    loads: dict[tuple[str, str], int] = {}
    ran: dict[str, set[str]] = {}
    for i, pid in enumerate(ids):
        entry = history[pid]
        assert entry["status"]["status_str"] == "success", entry["status"]
        worker = entry["worker"]["name"]
        ckpt = CKPT_A if i % 2 == 0 else CKPT_B
        ran.setdefault(worker, set()).add(ckpt)
        for ckpt_loaded in {Path(f).name for row in entry["genesis"]["models_loaded"] for f in row["files"]}:
            loads[(worker, ckpt_loaded)] = loads.get((worker, ckpt_loaded), 0) + 1
    story = [(i, history[pid]["worker"]["name"], CKPT_A if i % 2 == 0 else CKPT_B,
              sorted({Path(f).name for row in history[pid]["genesis"]["models_loaded"] for f in row["files"]}))
             for i, pid in enumerate(ids)]
    assert len(ran) == 2 and all(len(ckpts) == 1 for ckpts in ran.values()), story  # each busy with its own
    assert loads and all(count == 1 for count in loads.values()), story  # each checkpoint loaded once per worker
    assert {w for w, _ in loads} == set(ran)
    # the reproducibility record comes back from the worker: its checkpoint's SHA-256 equals hashlib's
    import hashlib

    for i, pid in enumerate(ids):
        ckpt = CKPT_A if i % 2 == 0 else CKPT_B
        record = history[pid]["genesis"]["record"]
        hashed = {f["file"]: f["sha256"] for m in record["models"] for f in m["files"]}
        assert hashed[ckpt] == hashlib.sha256(cluster_paths.model_path("checkpoints", ckpt).read_bytes()).hexdigest()

    # the files are in the server's output folder, one per prompt, and equal a single-process run
    files = [cluster_paths.output_dir / img["subfolder"] / img["filename"]
             for pid in ids for ui in history[pid]["outputs"].values() for img in ui.get("images", [])]
    assert len(files) == len(ids) == len(set(files)) and all(f.is_file() for f in files)
    local = FolderPaths(cluster_paths.base)
    local.output_dir = tmp_path / "local-output"
    local.ensure_dirs()
    executor, validator = Executor(registry, local), PromptValidator(registry, local)
    try:
        for prompt, remote_file in zip(prompts, files):
            checked = validator.validate(prompt)
            report = executor.execute("local", checked.prompt, checked.outputs)
            assert report.ok, report.error
            image = next(img for ui in report.outputs.values() for img in ui.get("images", []))
            assert np.array_equal(pixels(local.output_dir / image["subfolder"] / image["filename"]),
                                  pixels(remote_file))
    finally:
        executor.close()

    # /system_stats lists the workers and what they hold; /free reaches them
    workers = server.get("/system_stats").json()["models"]["workers"]
    assert sorted(w["name"] for w in workers) == sorted(ran)
    assert all(w["models"] for w in workers)
    server.post("/free", {"unload_models": True})
    actors = [pool.actor_of(w["name"]) for w in workers]
    poll(lambda: all(not s["held"] for s in ray.get([a.control.remote("stats") for a in actors])),
         "the workers to unload their models")


def normalized(messages: list) -> list:
    """Messages without what differs between runs: prompt ids, timestamps, socket ids."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            out.append(("binary", int.from_bytes(message[:4], "big")))
            continue
        data = {k: v for k, v in message["data"].items() if k not in ("prompt_id", "timestamp", "sid")}
        if message["type"] == "progress_state":
            data["nodes"] = {k: {f: x for f, x in v.items() if f != "prompt_id"} for k, v in data["nodes"].items()}
        out.append((message["type"], data))
    return out


def test_websocket_sees_the_same_messages_as_on_one_machine(server, tmp_path):
    """A prompt with progress, previews, text and outputs, then one that fails mid-node: the client
    of a Ray worker sees exactly the messages a client of one machine sees."""
    chatty = {"1": {"class_type": "Chatty", "inputs": {"value": 17, "count": 3}}}
    failing = {"1": {"class_type": "Chatty", "inputs": {"value": 5, "count": 2}},
               "2": {"class_type": "Explode", "inputs": {"value": 3}}}
    features = {"supports_preview_metadata": True}
    single = LiveServer(make_runtime(tmp_path / "single", registry=make_registry()), probe_torch=False).start()
    try:
        sequences = []
        for live in (single, server):
            ws = WsClient(live.ws_url, client_id=uuid.uuid4().hex, features=features)
            runs = []
            for prompt in (chatty, failing):
                pid = live.queue(prompt, client_id=ws.client_id)
                runs.append(normalized(ws.wait_done(pid, timeout=60)))
            ws.close()
            sequences.append(runs)
    finally:
        single.stop()
    assert sequences[0] == sequences[1]
    ok, failed = sequences[1]
    types = [m[0] for m in ok]
    assert types.count("progress") == 3 and types.count("binary") >= 6 and "executed" in types
    error = next(data for kind, data in failed if kind == "execution_error")
    assert error["exception_type"] == "ValueError" and error["exception_message"].endswith("failed: boom 3")
    assert error["node_id"] == "2" and "1" in error["executed"]


def test_interrupt_and_delete_reach_the_worker_running_the_prompt(server, tmp_path):
    pool = pool_of(server)
    pids_before = sorted(w["pid"] for w in pool.workers())
    ws = WsClient(server.ws_url, client_id=uuid.uuid4().hex)
    gate = tmp_path / "never"
    first = server.queue(gate_prompt(gate, 1), client_id=ws.client_id)
    executing_node(ws, first)
    assert worker_running(server, first) is not None
    assert server.post("/interrupt", {"prompt_id": first}).status == 200
    entry = server.wait_history(first, timeout=30)
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]

    second = server.queue(gate_prompt(gate, 2), client_id=ws.client_id)
    executing_node(ws, second)
    assert server.post("/queue", {"delete": [second]}).status == 200
    entry = server.wait_history(second, timeout=30)
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]
    ws.close()
    # cooperative: the workers (and their loaded models) are still the same processes
    assert sorted(w["pid"] for w in pool.workers()) == pids_before


def test_a_killed_worker_prompt_completes_on_the_other_worker_and_the_pool_is_refilled(server, tmp_path):
    pool = pool_of(server)
    replaced = pool.replaced
    ws = WsClient(server.ws_url, client_id=uuid.uuid4().hex)
    gate = tmp_path / "gate"
    pid = server.queue(gate_prompt(gate, 7), client_id=ws.client_id)
    executing_node(ws, pid)
    victim = worker_running(server, pid)
    os.kill(victim["pid"], signal.SIGKILL)
    # requeued at the front, running on the other worker (blocked on the same gate)
    poll(lambda: (w := worker_running(server, pid)) is not None and w["name"] != victim["name"],
         "the prompt to run on the other worker")
    gate.write_text("open")
    entry = server.wait_history(pid, timeout=60)
    ws.close()
    assert entry["status"]["status_str"] == "success"
    assert entry["worker"]["name"] != victim["name"] and entry["worker"]["pid"] != victim["pid"]
    assert entry["outputs"]["1"]["pid"] == [entry["worker"]["pid"]]
    assert pool.wait_ready(120)
    workers = pool.workers()
    assert len(workers) == 2 and all(w["alive"] for w in workers)
    assert victim["name"] not in [w["name"] for w in workers] and pool.replaced == replaced + 1
    assert server.runtime.store.get(pid).attempts == 2


def test_a_prompt_whose_worker_dies_twice_fails_instead_of_looping_and_the_pool_is_refilled(server, tmp_path):
    pool = pool_of(server)
    assert pool.wait_ready(120)
    ws = WsClient(server.ws_url, client_id=uuid.uuid4().hex)
    pid = server.queue(gate_prompt(tmp_path / "never", 9), client_id=ws.client_id)
    executing_node(ws, pid)
    victims = [worker_running(server, pid)]
    os.kill(victims[0]["pid"], signal.SIGKILL)
    victims.append(poll(lambda: (w := worker_running(server, pid)) is not None and w["name"] != victims[0]["name"]
                        and w, "the prompt to run again on the other worker"))
    os.kill(victims[1]["pid"], signal.SIGKILL)
    error = ws.read_until(lambda m: isinstance(m, dict) and m["type"] == "execution_error"
                          and m["data"]["prompt_id"] == pid, timeout=60)
    assert error["data"]["exception_type"] == "WorkerLost" and "not retried again" in error["data"]["exception_message"]
    entry = server.wait_history(pid, timeout=30)
    ws.close()
    assert entry["status"]["status_str"] == "error"
    job = server.runtime.store.get(pid)
    assert job.attempts == 2 and job.error["type"] == "worker_lost"
    assert pool.wait_ready(120)
    names = [w["name"] for w in pool.workers()]
    assert len(names) == 2 and not {v["name"] for v in victims} & set(names)


def test_a_frozen_worker_is_killed_after_the_deadline_and_its_prompt_runs_elsewhere(server, short_deadlines,
                                                                                    tmp_path):
    pool = pool_of(server)
    ws = WsClient(server.ws_url, client_id=uuid.uuid4().hex)
    gate = tmp_path / "gate"
    pid = server.queue(gate_prompt(gate, 8), client_id=ws.client_id)
    executing_node(ws, pid)
    victim = worker_running(server, pid)
    os.kill(victim["pid"], signal.SIGSTOP)  # no heartbeats any more
    try:
        poll(lambda: (w := worker_running(server, pid)) is not None and w["name"] != victim["name"],
             "the frozen worker's prompt to move", timeout=60)
    finally:
        try:
            os.kill(victim["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass
    gate.write_text("open")
    entry = server.wait_history(pid, timeout=60)
    ws.close()
    assert entry["status"]["status_str"] == "success" and entry["worker"]["name"] != victim["name"]
    assert pool.wait_ready(120)
    poll(lambda: not _alive(victim["pid"]), "the frozen worker's process to be gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_node_that_ignores_the_interrupt_is_stopped_by_killing_its_worker(server, short_deadlines, tmp_path):
    pool = pool_of(server)
    ws = WsClient(server.ws_url, client_id=uuid.uuid4().hex)
    pid = server.queue({"1": {"class_type": "StubbornGate", "inputs": {"path": str(tmp_path / "never")}}},
                       client_id=ws.client_id)
    executing_node(ws, pid)
    victim = worker_running(server, pid)
    server.post("/interrupt", {"prompt_id": pid})
    entry = server.wait_history(pid, timeout=60)
    ws.close()
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]  # not run again
    assert pool.wait_ready(120)
    assert victim["name"] not in [w["name"] for w in pool.workers()]


def test_front_and_priority_order_hold_across_workers(server, tmp_path):
    store = server.runtime.store
    gates = [tmp_path / f"g{i}" for i in range(3)]
    ws = WsClient(server.ws_url, client_id=uuid.uuid4().hex)
    a = server.queue(gate_prompt(gates[0], 1), client_id=ws.client_id)
    b = server.queue(gate_prompt(gates[1], 2), client_id=ws.client_id)
    executing_node(ws, a)
    executing_node(ws, b)
    c = server.queue(gate_prompt(gates[2], 3))
    d = server.queue(gate_prompt(gates[2], 4))
    e = server.queue(gate_prompt(gates[2], 5), front=True)
    gates[0].write_text("a")
    poll(lambda: store.get(e).started_at is not None, "the front prompt to start")
    assert store.get(c).started_at is None and store.get(d).started_at is None
    gates[1].write_text("b")
    poll(lambda: store.get(c).started_at is not None, "the next prompt to start")
    assert store.get(d).started_at is None
    gates[2].write_text("c")
    for pid in (a, b, c, d, e):
        assert server.wait_history(pid, timeout=60)["status"]["status_str"] == "success"
    ws.close()


def test_network_bound_prompts_run_in_the_server_process(server):
    pid = server.queue({"1": {"class_type": "RemoteRender", "inputs": {"tag": 3}}})
    entry = server.wait_history(pid, timeout=30)
    assert entry["outputs"]["1"]["pid"] == [os.getpid()]
    assert entry["worker"] == {"name": "server", "host": entry["worker"]["host"], "pid": os.getpid()}
