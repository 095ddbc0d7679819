"""The shared machinery of the fake video providers: a real aiohttp server on 127.0.0.1, jobs that
walk queued → running → done on a scaled-down clock (or wait on a gate the test opens), injected
faults, a slow/expiring/truncated download, and a log of every request with its headers.

Each provider module (``runway``, ``luma``, ``gemini``, ``kling``, ``fal``, ``openai``) subclasses
:class:`FakeProvider` and speaks that provider's documented wire format on top of this.
"""
from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Awaitable, Callable

import av
import numpy as np
from aiohttp import web

TIMEOUT = 20.0


def make_mp4(width: int = 48, height: int = 32, frames: int = 10, fps: int = 24, audio: bool = False) -> bytes:
    """A small real H.264 MP4 (moving colour bars), optionally with an AAC tone."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        astream = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        for i in range(frames):
            x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
            frame = np.broadcast_to(x, (height, width, 3)).copy()
            frame[..., 1] = (i * 255 // max(frames - 1, 1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if astream is not None:
            seconds = frames / fps
            t = np.arange(int(16000 * seconds), dtype=np.float32) / 16000
            samples = (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)[None]
            aframe = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            aframe.sample_rate, aframe.pts = 16000, 0
            for packet in astream.encode(aframe):
                out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)
    return buffer.getvalue()


@dataclass
class Outcome:
    """How a job ends: ``ok``, ``fail`` (a provider error) or ``reject`` (moderation)."""

    kind: str = "ok"
    code: str = ""
    message: str = ""


@dataclass
class FakeJob:
    id: str
    body: Any
    created: float
    queued_s: float
    running_s: float
    outcome: Outcome
    gate: threading.Event | None = None
    cancelled: bool = False
    released_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def phase(self, now: float) -> tuple[str, float]:
        """(queued | running | ok | fail | reject | cancelled, progress 0..1)."""
        if self.cancelled:
            return "cancelled", 0.0
        elapsed = now - self.created
        if elapsed < self.queued_s:
            return "queued", 0.0
        if self.gate is not None:
            if not self.gate.is_set():
                return "running", 0.4
            if self.released_at is None:
                self.released_at = now
            return self.outcome.kind, 1.0
        run = elapsed - self.queued_s
        if run < self.running_s:
            return "running", min(0.99, run / self.running_s) if self.running_s else 0.5
        return self.outcome.kind, 1.0


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    endpoint: str


class FakeProvider:
    """A provider on 127.0.0.1:<ephemeral port>, run on its own thread and event loop."""

    name = "fake"

    def __init__(self, *, key: str = "test-key-0123456789", width: int = 48, height: int = 32, frames: int = 10,
                 fps: int = 24, audio: bool = False, queued_s: float = 0.05, running_s: float = 0.15) -> None:
        self.key = key
        self.video = make_mp4(width, height, frames, fps, audio)
        self.size = (width, height)
        self.frames = frames
        self.queued_s = queued_s
        self.running_s = running_s
        self.jobs: dict[str, FakeJob] = {}
        self.requests: list[Recorded] = []
        self.faults: dict[str, deque[Fault]] = {}
        self.next_outcomes: deque[Outcome] = deque()
        self.hold_jobs = False
        self.gates: dict[str, threading.Event] = {}
        self.download_delay = 0.0  # seconds between 1 KiB chunks: a slow download
        self.expire_downloads = 0  # answer 403 to this many downloads (an expired link)
        self.truncate_downloads = 0  # serve half the file this many times
        self.submit_count = 0
        self.cancel_count = 0
        self._lock = threading.RLock()  # wait_until's predicates read state under the same lock
        self._changed = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, name=f"fake-{self.name}", daemon=True)
        self._ready = threading.Event()
        self.port = 0
        self.app = web.Application(middlewares=[self._record_middleware], client_max_size=64 << 20)
        self.routes(self.app)
        self.app.router.add_get("/files/{name}", self._file, name="files")

    # -- provider-specific ------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def endpoint_of(self, request: web.Request) -> str:
        """A name for fault injection and counting ("submit", "status", "cancel", "download" …)."""
        name = request.match_info.route.name or request.path
        return "download" if name in ("files", "content") else name

    # -- lifecycle ---------------------------------------------------------------------------------
    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> "FakeProvider":
        self._thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("fake provider did not start")
        return self

    def stop(self) -> None:
        for gate in list(self.gates.values()):
            gate.set()
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)

    def __enter__(self) -> "FakeProvider":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What the adapter's base URL override should be set to."""
        return self.url

    # -- test controls -----------------------------------------------------------------------------
    def fail_next(self, endpoint: str, status: int, *, times: int = 1, headers: dict[str, str] | None = None,
                  body: Any = None) -> None:
        with self._lock:
            queue = self.faults.setdefault(endpoint, deque())
            for _ in range(times):
                queue.append(Fault(status, dict(headers or {}), body))

    def end_next_job(self, outcome: Outcome) -> None:
        with self._lock:
            self.next_outcomes.append(outcome)

    def release(self) -> None:
        """Let every held job finish."""
        with self._lock:
            gates = list(self.gates.values())
        for gate in gates:
            gate.set()

    def count(self, endpoint: str, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.endpoint == endpoint and (method is None or r.method == method))

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fake {self.name}: timed out waiting for {what}")
                self._changed.wait(min(left, 0.5))

    def recorded(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    # -- helpers for subclasses ------------------------------------------------------------------
    def new_job(self, body: Any, job_id: str | None = None) -> FakeJob:
        with self._lock:
            outcome = self.next_outcomes.popleft() if self.next_outcomes else Outcome()
            job_id = job_id or uuid.uuid4().hex
            gate = None
            if self.hold_jobs:
                gate = self.gates.setdefault(job_id, threading.Event())
            job = FakeJob(job_id, body, time.monotonic(), self.queued_s, self.running_s, outcome, gate)
            self.jobs[job_id] = job
            self.submit_count += 1
            self._changed.notify_all()
            return job

    def job(self, job_id: str) -> FakeJob | None:
        with self._lock:
            return self.jobs.get(job_id)

    def cancel_job(self, job: FakeJob) -> None:
        with self._lock:
            job.cancelled = True
            self.cancel_count += 1
            self._changed.notify_all()

    def file_url(self, job: FakeJob) -> str:
        return f"{self.url}/files/{job.id}.mp4"

    @web.middleware
    async def _record_middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        body = await request.read()
        endpoint = self.endpoint_of(request)
        with self._lock:
            self.requests.append(Recorded(request.method, request.path_qs, dict(request.headers), body, endpoint))
            queue = self.faults.get(endpoint)
            fault = queue.popleft() if queue else None
            self._changed.notify_all()
        if fault is not None:
            if fault.body is None or isinstance(fault.body, (dict, list)):
                return web.json_response(fault.body or {"error": f"injected {fault.status}"}, status=fault.status,
                                         headers=fault.headers)
            return web.Response(status=fault.status, text=str(fault.body), headers=fault.headers)
        return await handler(request)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            expire = self.expire_downloads > 0
            if expire:
                self.expire_downloads -= 1
            truncate = not expire and self.truncate_downloads > 0
            if truncate:
                self.truncate_downloads -= 1
        if expire:
            return web.Response(status=403, text="<Error>Request has expired</Error>")
        if not self.file_authorized(request):
            return web.Response(status=401, text="unauthorized")
        data = self.video[: len(self.video) // 2] if truncate else self.video
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(data)
        await response.prepare(request)
        step = 1024 if self.download_delay else len(data)
        for i in range(0, len(data), step):
            await response.write(data[i:i + step])
            if self.download_delay:
                await asyncio.sleep(self.download_delay)
        await response.write_eof()
        return response

    def file_authorized(self, request: web.Request) -> bool:
        """Downloads are public CDN links unless a provider says otherwise."""
        return True
