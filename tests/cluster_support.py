"""Nodes and the registry for the Ray tests; Ray workers import this module by name.

``make_registry`` is the worker's ``registry_factory`` ("tests.cluster_support:make_registry"):
the built-in packs plus the test nodes below, so the server and its workers know the same nodes.
The nodes are cross-process: gates are files, identities are process ids.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psutil

from graph_runtime.context import NodeContext
from graph_runtime.registry import NodeRegistry, build_registry
from graph_runtime.schema import CachePolicy, Float, Int, Node, NodeResult, Resource, String
from tests.server_process import ServerProcess, poll, wait_for_file_prompt  # noqa: F401 (re-exported)

REGISTRY_FACTORY = "tests.cluster_support:make_registry"
REPO = Path(__file__).resolve().parent.parent
GATE_PACK = Path(__file__).parent / "data" / "custom_nodes" / "genesis_test_gate.py"
"""A ComfyUI-style custom node pack (``WaitForFile``) that server processes load from ``custom_nodes``."""


class FileGate(Node):
    """Blocks until the file ``path`` exists (checking the interrupt flag), then shows its text and pid."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    CACHE = CachePolicy.VOLATILE
    INPUTS = (String("path", ""), Int("tag", 0, min=0, max=10**6))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, path: str, tag: int) -> NodeResult:
        while not os.path.exists(path):
            ctx.check_interrupted()
            time.sleep(0.01)  # polls a file another process writes
        return NodeResult((), {"text": [Path(path).read_text()], "tag": [tag], "pid": [os.getpid()]})


class StubbornGate(Node):
    """Like FileGate but never looks at the interrupt flag (a node stuck in C code)."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    CACHE = CachePolicy.VOLATILE
    INPUTS = (String("path", ""),)
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, path: str) -> NodeResult:
        while not os.path.exists(path):
            time.sleep(0.01)
        return NodeResult((), {"pid": [os.getpid()]})


class Chatty(Node):
    """Reports ``count`` steps with previews, shows a growing text, outputs ``value`` (a streaming check)."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = (Int("value", 0, min=0, max=1000), Int("count", 3, min=1, max=100))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, value: int, count: int) -> NodeResult:
        from PIL import Image

        text = ""
        for step in range(1, count + 1):
            text += f"step{step} "
            ctx.progress_text(text)
            ctx.progress(step, count, Image.new("RGB", (16, 8), (value % 256, 20 * step % 256, 99)))
        return NodeResult((), {"value": [value], "text": [text]})


class Explode(Node):
    """Reports one step, then fails (an error's way from a worker to the WebSocket)."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    CACHE = CachePolicy.VOLATILE
    INPUTS = (Int("value", 0, min=0, max=1000),)
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, value: int) -> NodeResult:
        ctx.progress(1, 2)
        raise ValueError(f"boom {value}")


class Sleep(Node):
    """Sleeps ``seconds`` (the cost of a prompt in the scale-out benchmark), checking interrupts."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    CACHE = CachePolicy.VOLATILE
    INPUTS = (Float("seconds", 0.1, min=0.0, max=60.0), Int("tag", 0, min=0, max=10**6))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, seconds: float, tag: int) -> NodeResult:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ctx.check_interrupted()
            time.sleep(min(left, 0.05))
        return NodeResult((), {"tag": [tag], "pid": [os.getpid()]})


class RemoteRender(Node):
    """A network-bound node (a video provider stand-in): awaits, then shows the pid that ran it."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    RESOURCE = Resource.NETWORK
    CACHE = CachePolicy.VOLATILE
    INPUTS = (Int("tag", 0, min=0, max=10**6),)
    OUTPUTS = ()

    async def execute(self, ctx: NodeContext, tag: int) -> NodeResult:
        await asyncio.sleep(0.01)
        return NodeResult((), {"tag": [tag], "pid": [os.getpid()]})


def make_registry() -> NodeRegistry:
    import nodes

    registry = build_registry(nodes.PACKS)
    for node in (FileGate, StubbornGate, Chatty, Explode, Sleep, RemoteRender):
        registry.register(node, __name__)
    return registry


def gate_prompt(path: Path, tag: int = 0) -> dict[str, Any]:
    return {"1": {"class_type": "FileGate", "inputs": {"path": str(path), "tag": tag}}}


WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "default_sd15.json"


def sd15_prompt(registry: NodeRegistry, paths: Any, ckpt_name: str, seed: int, prefix: str = "ray") -> dict[str, Any]:
    """The default SD1.5 workflow as an API prompt, small and quick: 64×64, 2 steps."""
    import json

    from graph_runtime.node_info import object_info
    from graph_runtime.workflow_files.ui_to_api import convert_ui_to_api

    prompt = convert_ui_to_api(json.loads(WORKFLOW.read_text()), object_info(registry, paths))
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = ckpt_name
        elif node["class_type"] == "EmptyLatentImage":
            inputs.update(width=64, height=64)
        elif node["class_type"] == "KSampler":
            inputs.update(steps=2, seed=seed)
        elif node["class_type"] == "SaveImage":
            inputs["filename_prefix"] = prefix
    return prompt


class RayServer(ServerProcess):
    """``server.py serve --cpu --ray MODE --ray-workers N`` as a process on a free port (``env``: extra
    variables, e.g. ``RAY_ADDRESS``), and every process it started.  ``base`` holds the gate pack."""

    def __init__(self, base: Path, mode: str = "local", workers: int = 2, env: dict[str, str] | None = None) -> None:
        super().__init__(base, "--ray", mode, "--ray-workers", str(workers),
                         env={"RAY_USAGE_STATS_ENABLED": "0", **(env or {})}, answer_timeout=120, stop_timeout=60)
        try:
            poll(lambda: len([w for w in self.workers() if w.get("alive")]) == workers, f"{workers} Ray worker(s)",
                 timeout=180)
        except BaseException:  # never leave a half-started server (and its cluster) behind
            self.stop()
            raise

    def workers(self) -> list[dict]:
        return _http("GET", self.url + "/system_stats").json()["models"].get("workers", [])

    def family(self) -> list[psutil.Process]:
        """The server and every process under it (GCS, raylet, agents, workers)."""
        try:
            me = psutil.Process(self.proc.pid)
            return [me] + me.children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    def running(process: psutil.Process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [p for p in processes if running(p)]


def _http(*args: Any, **kwargs: Any) -> Any:
    from tests.web_harness import http

    return http(*args, **kwargs)
