"""Live-server helpers for the web tests: a real aiohttp server on 127.0.0.1 (ephemeral port) in
a background thread, plain ``urllib`` HTTP and ``websocket-client`` sockets.

Tests import the fixtures they use from here (``from tests.web_harness import web_server``).
The default registry is the built-in non-ML nodes (EmptyImage, ImageInvert, SaveImage,
PreviewImage, LoadImage …) plus the executor stub pack and :class:`PreviewEmitter`.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest
from aiohttp import web

from graph_runtime.context import NodeContext
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry, build_registry
from graph_runtime.schema import Int, Node, NodeResult, Socket
from graph_runtime.service import Runtime
from tests.stub_nodes import pack as stub_pack

TIMEOUT = 20.0


class PreviewEmitter(Node):
    """Reports progress ``count`` times with a preview image (exercises binary WebSocket frames).

    ``noise`` makes the previews random (large, incompressible JPEGs) for back-pressure tests.
    """

    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = (Int("value", 0, min=0, max=1000), Int("count", 2, min=1, max=1000),
              Int("size", 16, min=8, max=1024), Int("noise", 0, min=0, max=1))
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, value: int, count: int, size: int, noise: int) -> NodeResult:
        from PIL import Image

        for step in range(1, count + 1):
            if noise:
                image = Image.merge("RGB", [Image.effect_noise((size, size), 100 + step) for _ in range(3)])
            else:
                image = Image.new("RGB", (size, size // 2), (value % 256, 10 * step % 256, 200))
            ctx.progress(step, count, image)
        return NodeResult((), {"value": [value]})


class TextEmitter(Node):
    """Shows ``count`` growing texts on itself through ``ctx.progress_text`` (binary frame type 3)."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = (Int("count", 3, min=1, max=1000),)
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, count: int) -> NodeResult:
        text = ""
        for step in range(count):
            text += f"word{step} "
            ctx.progress_text(text)
        return NodeResult((), {"text": [text]})


class EchoOutput(Node):
    """An output node that shows its INT input (a trivial, torch-free output)."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = (Socket("value", "INT"),)
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, value: int) -> NodeResult:
        return NodeResult((), {"value": [value]})


def make_registry() -> NodeRegistry:
    registry = build_registry(packs=["nodes.primitives", "nodes.image"])
    registry.register_module(stub_pack, "tests.stub_nodes.pack")
    registry.register(PreviewEmitter, "tests.web_harness")
    registry.register(EchoOutput, "tests.web_harness")
    registry.register(TextEmitter, "tests.web_harness")
    return registry


# -- HTTP ----------------------------------------------------------------------------------------

@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def http(method: str, url: str, body: Any = None, *, raw: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = TIMEOUT) -> Reply:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = dict(headers or {})
    if body is not None and raw is None:
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Reply(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as err:
        return Reply(err.code, err.headers, err.read())


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content, ctype) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: {ctype}\r\n\r\n'.encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# -- the server ----------------------------------------------------------------------------------

class LiveServer:
    """``create_app(runtime)`` served on 127.0.0.1:<ephemeral> from a background thread."""

    def __init__(self, runtime: Runtime, **app_kwargs: Any) -> None:
        from web.app import create_app

        self.runtime = runtime
        self.app = create_app(runtime, **app_kwargs)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)
        self._runner: web.AppRunner | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def start(self) -> "LiveServer":
        self._thread.start()
        self._ready.wait(TIMEOUT)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result (for inspecting the hub)."""
        async def wrapper() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(TIMEOUT)

    # -- convenience -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def paths(self) -> FolderPaths:
        return self.runtime.paths

    def get(self, path: str, **kw: Any) -> Reply:
        return http("GET", self.url + path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return http("POST", self.url + path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Reply:
        return http("DELETE", self.url + path, **kw)

    def queue(self, prompt: dict[str, Any], client_id: str | None = None, **extra: Any) -> str:
        body = {"prompt": prompt, **extra}
        if client_id is not None:
            body["client_id"] = client_id
        reply = self.post("/prompt", body)
        assert reply.status == 200, reply.text
        return reply.json()["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The history entry of a prompt, polling until it is finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.get(f"/history/{prompt_id}")
            if reply.status == 200 and reply.json():
                return reply.json()[prompt_id]
            time.sleep(0.01)  # poll interval, not a wait for an event
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout} s")


def make_runtime(base: Path, registry: NodeRegistry | None = None) -> Runtime:
    paths = FolderPaths(base)
    paths.ensure_dirs()
    return Runtime(paths, registry=registry if registry is not None else make_registry())


@pytest.fixture
def web_server(tmp_path: Path) -> Iterable[LiveServer]:
    """A live server over the test registry in a fresh base directory."""
    server = LiveServer(make_runtime(tmp_path / "base"), probe_torch=False).start()
    yield server
    for gate in stub_pack.GATES.values():
        gate.set()
    server.stop()


# -- WebSocket -----------------------------------------------------------------------------------

@dataclass
class WsClient:
    """A ``websocket-client`` socket that records every message it reads."""

    url: str
    client_id: str | None = None
    features: dict[str, Any] | None = None
    messages: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        import websocket

        url = self.url + (f"?clientId={self.client_id}" if self.client_id else "")
        self.ws = websocket.create_connection(url, timeout=TIMEOUT)
        first = self._read()
        assert first["type"] == "status" and first["data"]["sid"], first
        self.sid = first["data"]["sid"]
        if self.features is not None:
            self.ws.send(json.dumps({"type": "feature_flags", "data": self.features}))
            reply = self.read_until(lambda m: isinstance(m, dict) and m["type"] == "feature_flags")
            self.server_features = reply["data"]

    def _read(self) -> Any:
        import websocket

        opcode, data = self.ws.recv_data()
        message: Any = json.loads(data) if opcode == websocket.ABNF.OPCODE_TEXT else bytes(data)
        self.messages.append(message)
        return message

    def read_until(self, predicate: Callable[[Any], bool], timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.ws.settimeout(max(0.05, deadline - time.monotonic()))
            message = self._read()
            if predicate(message):
                return message
        raise AssertionError(f"no matching message in {timeout} s; got {self.types()[-20:]}")

    def wait_done(self, prompt_id: str, timeout: float = TIMEOUT) -> list[Any]:
        """Read until ``executing`` with ``node: null`` for ``prompt_id``; the prompt's messages."""
        start = len(self.messages)
        self.read_until(lambda m: isinstance(m, dict) and m["type"] == "executing"
                        and m["data"]["node"] is None and m["data"]["prompt_id"] == prompt_id, timeout)
        return self.messages[start:]

    def types(self, messages: list[Any] | None = None) -> list[str]:
        return [m["type"] if isinstance(m, dict) else f"binary:{int.from_bytes(m[:4], 'big')}"
                for m in (self.messages if messages is None else messages)]

    def close(self) -> None:
        self.ws.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chain(n: int, color: int = 0, size: int = 8, output: str = "PreviewImage") -> dict[str, Any]:
    """``EmptyImage → ImageInvert × n → output`` (vary ``color`` to avoid the cache)."""
    prompt: dict[str, Any] = {"0": {"class_type": "EmptyImage",
                                    "inputs": {"width": size, "height": size, "batch_size": 1, "color": color}}}
    for i in range(1, n + 1):
        prompt[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
    out_inputs: dict[str, Any] = {"images": [str(n), 0]}
    if output == "SaveImage":
        out_inputs["filename_prefix"] = "test"
    prompt["out"] = {"class_type": output, "inputs": out_inputs}
    return prompt
