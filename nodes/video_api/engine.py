"""One provider-agnostic engine: submit → poll → download, for every video provider.

A run of :meth:`VideoJobEngine.run`:

1. **Resume or submit.**  With a journal (``ctx.remote_jobs``, backed by SQLite), the engine first
   looks for a record of this call: a job the provider already accepted is *resumed* — polled
   again, never resubmitted.  Otherwise a ``submitting`` record is written, the submit is sent
   (with an idempotency key where the provider honours one), and the remote id is committed the
   moment the provider answers (see :mod:`graph_runtime.jobs.remote`).
2. **Poll** every ``poll_interval`` seconds until a terminal state, mapping the provider's answer
   to canonical states (:mod:`nodes.video_api.protocol`) and reporting progress in percent and
   a status line ("Runway: running 40 % · 12 s") on the node.
3. **Download** the video in chunks, check it is a readable video (PyAV), and re-poll for a fresh
   URL when a link expired (403/404/410) or the file arrived truncated.

Requests that fail with 408/429/5xx or a connection error are repeated with exponential backoff and
jitter, honouring ``Retry-After``/``retry-after-ms`` (:mod:`nodes.video_api.retry`); other 4xx are
not repeated.  A submit (POST) is only repeated when it cannot create a second job.  An overall
deadline (from the original submit, so it survives restarts) bounds everything.

**Interrupt.**  The job runs as a task watched every ``interrupt_check`` seconds; when the user
interrupts, the in-flight request is cancelled, the provider's cancel endpoint is called once
(where it has one) and :class:`~graph_runtime.context.Interrupted` is raised.

**Keys.**  Auth headers are built at send time and sent only to the provider's own origin (never
to a CDN link found in a response); every error text is passed through
:func:`~nodes.video_api.errors.redact` with the secrets and the headers in use.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Protocol, Union

import aiohttp

from graph_runtime.context import Interrupted
from graph_runtime.jobs.remote import RemoteJobStore
from nodes.video import codec
from nodes.video.codec import VideoFormatError
from nodes.video_api.errors import (ContentRejectedError, ProviderFailedError, ProviderTimeoutError,
                                    ProviderUnavailableError, VideoApiError, redact)
from nodes.video_api.protocol import HttpRequest, ProviderAdapter, RemoteStatus, State, Submitted
from nodes.video_api.retry import NOT_TAKEN_STATUSES, RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)

EXPIRED_LINK_STATUSES = frozenset({403, 404, 410})
DOWNLOAD_ATTEMPTS = 3
CHUNK = 256 << 10
AUTH_REFRESH = 60.0  # seconds an auth header is reused within a run


class Reporter(Protocol):
    """Where the engine reports: the node's progress bar, its status text, the interrupt flag."""

    def progress(self, percent: float) -> None: ...

    def text(self, message: str) -> None: ...

    def interrupted(self) -> bool: ...


class Journal(Protocol):
    """The durable record of the node's remote jobs (:class:`graph_runtime.jobs.remote.RemoteJobJournal`)."""

    def next_call(self) -> int: ...

    def idempotency_key(self, call_index: int) -> str: ...

    def get(self, call_index: int) -> Any: ...

    def begin(self, call_index: int, provider: str) -> Any: ...

    def accepted(self, call_index: int, remote_id: str, handle: dict[str, Any]) -> Any: ...

    def ended(self, call_index: int, state: str) -> None: ...


SubmitSource = Union[HttpRequest, Callable[[], Awaitable[HttpRequest]]]
"""The submit request, or a coroutine function that builds it (only called when nothing can be resumed,
so a resumed node needs none of its inputs)."""


class SilentReporter:
    def progress(self, percent: float) -> None:
        pass

    def text(self, message: str) -> None:
        pass

    def interrupted(self) -> bool:
        return False


@dataclass
class JobOutcome:
    """What a finished run produced: the video bytes and facts for the node's history entry."""

    data: bytes
    remote_id: str
    resumed: bool
    polls: int
    retries: int
    seconds: float
    status: RemoteStatus


@dataclass
class _RunState:
    call_index: int = 0
    remote_id: str | None = None
    handle: Mapping[str, Any] = field(default_factory=dict)
    submitted_at: float | None = None
    resumed: bool = False
    polls: int = 0
    retries: int = 0
    last_text: str = ""
    last_percent: int = -1
    auth: dict[str, str] = field(default_factory=dict)
    auth_at: float = -1e9
    started: float = field(default_factory=time.monotonic)


class VideoJobEngine:
    """Runs remote video jobs for one provider adapter (see the module docstring)."""

    def __init__(self, adapter: ProviderAdapter, *, session: aiohttp.ClientSession | None = None,
                 retry: RetryPolicy | None = None, interrupt_check: float = 0.5, request_timeout: float = 120.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.adapter = adapter
        self._session = session
        base = adapter.source.number("GENESIS_VIDEO_RETRY_BASE")
        self.retry = retry or (RetryPolicy(base=base) if base else RetryPolicy())
        self.interrupt_check = interrupt_check
        self.request_timeout = request_timeout
        self.rng = rng
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}

    # -- public -----------------------------------------------------------------------------------
    async def run(self, submit: SubmitSource, *, journal: Journal | None = None,
                  reporter: Reporter | None = None) -> JobOutcome:
        """Submit (or resume) one job and return the downloaded video; raises typed errors."""
        reporter = reporter or SilentReporter()
        if journal is None:  # not durable, but submits still carry an idempotency key
            journal = RemoteJobStore(":memory:").journal(uuid.uuid4().hex, "node")
        own_session = self._session is None
        session = self._session or aiohttp.ClientSession()
        state = _RunState(call_index=journal.next_call() if journal is not None else 0)
        try:
            task = asyncio.ensure_future(self._job(session, submit, journal, reporter, state))
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.interrupt_check)
                if done:
                    return task.result()
                if reporter.interrupted():
                    task.cancel()
                    with suppress(asyncio.CancelledError, Exception):
                        await task
                    await self._cancel_remote(session, state, journal, reporter)
                    raise Interrupted(f"{self.adapter.title} job interrupted")
        except asyncio.CancelledError:
            raise
        except VideoApiError as exc:
            raise self._redacted(exc) from None
        finally:
            if own_session:
                await session.close()

    # -- the job ----------------------------------------------------------------------------------
    async def _job(self, session: aiohttp.ClientSession, submit: SubmitSource, journal: Journal | None,
                   reporter: Reporter, state: _RunState) -> JobOutcome:
        title = self.adapter.title
        record = await asyncio.to_thread(journal.get, state.call_index) if journal is not None else None
        if record is not None and record.accepted:
            state.remote_id, state.handle, state.resumed = record.remote_id, dict(record.handle), True
            state.submitted_at = record.submitted_at
            self._say(reporter, state, f"{title}: resuming job {state.remote_id}")
            log.info("%s: resuming remote job %s (no new submit)", title, state.remote_id)
        else:
            submitted = None
            if record is not None and record.state == "submitting":
                submitted = await self._recover(session, record, reporter, state)
            if submitted is None:
                submitted = await self._submit(session, submit, journal, reporter, state)
            state.remote_id, state.handle = submitted.remote_id, dict(submitted.handle)
            state.submitted_at = time.time()
            if journal is not None:  # committed before anything else happens to this job
                await asyncio.to_thread(journal.accepted, state.call_index, submitted.remote_id,
                                        dict(submitted.handle))
            log.info("%s: job %s accepted", title, state.remote_id)
        try:
            status = await self._wait_until_done(session, reporter, state, first_poll_now=state.resumed)
            data, status = await self._download_video(session, reporter, state, status)
        except VideoApiError:
            if journal is not None:
                await asyncio.to_thread(journal.ended, state.call_index, "failed")
            raise
        if journal is not None:
            await asyncio.to_thread(journal.ended, state.call_index, "succeeded")
        reporter.progress(100.0)
        self._say(reporter, state, f"{title}: done")
        return JobOutcome(data, state.remote_id or "", state.resumed, state.polls, state.retries,
                          time.monotonic() - state.started, status)

    async def _submit(self, session: aiohttp.ClientSession, submit: SubmitSource, journal: Journal | None,
                      reporter: Reporter, state: _RunState) -> Submitted:
        request = submit if isinstance(submit, HttpRequest) else await submit()
        if journal is not None:  # written before the POST leaves: see graph_runtime.jobs.remote
            await asyncio.to_thread(journal.begin, state.call_index, self.adapter.name)
        self._say(reporter, state, f"{self.adapter.title}: submitting")
        if journal is not None and self.adapter.supports_idempotency:
            request = self.adapter.with_idempotency(request, journal.idempotency_key(state.call_index))
        body = await self._send_json(session, request, "submit", reporter, state,
                                     repeat_post=self.adapter.supports_idempotency)
        return self.adapter.parse_submit(body)

    async def _recover(self, session: aiohttp.ClientSession, record: Any, reporter: Reporter,
                       state: _RunState) -> Submitted | None:
        """A submit was in flight when the process died: find the job by our own id, if possible."""
        request = self.adapter.recover_submit(record.idempotency_key)
        if request is None:
            return None
        try:
            body = await self._send_json(session, request, "lookup", reporter, state)
            return self.adapter.parse_submit(body)
        except VideoApiError:
            return None

    async def _wait_until_done(self, session: aiohttp.ClientSession, reporter: Reporter, state: _RunState, *,
                               first_poll_now: bool) -> RemoteStatus:
        title = self.adapter.title
        if not first_poll_now:
            await self._sleep(self.adapter.poll_interval, state)
        while True:
            self._check_deadline(state)
            body = await self._send_json(session, self.adapter.poll(state.handle), "status", reporter, state)
            state.polls += 1
            status = self.adapter.parse_status(body)
            self._report(reporter, state, status)
            if status.state is State.SUCCEEDED:
                extra = self.adapter.result_request(state.handle)
                if extra is not None:
                    status = self.adapter.parse_result(
                        await self._send_json(session, extra, "result", reporter, state), status)
                if status.state is State.SUCCEEDED:
                    return status
            if status.state is State.FAILED:
                raise self._failure(status, state)
            if status.state is State.CANCELLED:
                raise ProviderFailedError(f"{title}: job {state.remote_id} was cancelled at the provider",
                                          provider=title, code="cancelled")
            await self._sleep(self.adapter.poll_interval, state)

    async def _download_video(self, session: aiohttp.ClientSession, reporter: Reporter, state: _RunState,
                              status: RemoteStatus) -> tuple[bytes, RemoteStatus]:
        title = self.adapter.title
        for attempt in range(DOWNLOAD_ATTEMPTS):
            request = self.adapter.download(state.handle, status)
            try:
                data = await self._fetch(session, request, reporter, state)
            except _ExpiredLink:
                data = None
            if data is not None:
                try:
                    await asyncio.to_thread(codec.probe, data)
                    return data, status
                except VideoFormatError as exc:
                    log.warning("%s: job %s: downloaded file is not a readable video (%s)", title,
                                state.remote_id, exc)
            if attempt + 1 < DOWNLOAD_ATTEMPTS:  # fresh links come with a new status
                self._say(reporter, state, f"{title}: fetching a fresh download link")
                status = await self._wait_until_done(session, reporter, state, first_poll_now=True)
        raise ProviderFailedError(f"{title}: job {state.remote_id} finished but its video could not be downloaded "
                                  f"as a readable file after {DOWNLOAD_ATTEMPTS} tries", provider=title,
                                  code="download_failed")

    async def _cancel_remote(self, session: aiohttp.ClientSession, state: _RunState, journal: Journal | None,
                             reporter: Reporter) -> None:
        """Best effort, once, short timeout: the user is waiting for the interrupt to finish."""
        title = self.adapter.title
        if state.remote_id is None:
            return
        request = self.adapter.cancel(state.handle)
        if request is not None:
            try:
                async with self._request(session, request, timeout=10.0) as resp:
                    await resp.read()
                    log.info("%s: cancel of job %s answered HTTP %s", title, state.remote_id, resp.status)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                log.warning("%s: cancel of job %s failed: %s", title, state.remote_id, type(exc).__name__)
            self._say(reporter, state, f"{title}: cancelled job {state.remote_id}")
        else:
            self._say(reporter, state, f"{title}: stopped waiting (the provider has no cancel; the job may still "
                                       "finish and be billed)")
        if journal is not None:
            with suppress(Exception):
                journal.ended(state.call_index, "cancelled")

    # -- HTTP -------------------------------------------------------------------------------------
    def _headers(self, request: HttpRequest, state: _RunState | None) -> dict[str, str]:
        headers = dict(request.headers)
        if request.authenticated and self.adapter.same_origin(request.url):
            if state is None:
                headers.update(self.adapter.auth_headers())
            else:  # re-read once a minute: keys rotate, Kling tokens expire
                now = time.monotonic()
                if now - state.auth_at > AUTH_REFRESH:
                    state.auth, state.auth_at = self.adapter.auth_headers(), now
                headers.update(state.auth)
        return headers

    def _request(self, session: aiohttp.ClientSession, request: HttpRequest, *, timeout: float | None = None,
                 state: _RunState | None = None) -> Any:
        total = timeout or self.request_timeout
        client_timeout = self._timeouts.get(total)
        if client_timeout is None:
            client_timeout = self._timeouts[total] = aiohttp.ClientTimeout(total=total)
        kwargs: dict[str, Any] = {"headers": self._headers(request, state), "timeout": client_timeout}
        if request.files is not None:
            form = aiohttp.FormData(default_to_multipart=True)
            for k, v in (request.form or {}).items():
                form.add_field(k, str(v))
            for k, (filename, content, ctype) in request.files.items():
                form.add_field(k, content, filename=filename, content_type=ctype)
            kwargs["data"] = form
        elif request.form is not None:
            kwargs["data"] = {k: str(v) for k, v in request.form.items()}
        elif request.json is not None:
            kwargs["json"] = request.json
        return session.request(request.method, self.adapter.absolute(request.url), **kwargs)

    async def _send_json(self, session: aiohttp.ClientSession, request: HttpRequest, what: str, reporter: Reporter,
                         state: _RunState, *, repeat_post: bool = False) -> Any:
        """Send with retries; returns the decoded JSON body (or None for an empty body)."""
        attempt = 0
        is_post = request.method.upper() == "POST" and what == "submit"
        while True:
            try:
                async with self._request(session, request, state=state) as resp:
                    body = await resp.read()
                    if resp.status < 400:
                        if not body:
                            return None
                        try:
                            return await resp.json(content_type=None)
                        except ValueError as exc:
                            raise ProviderUnavailableError(f"{self.adapter.title} {what}: the answer is not JSON "
                                                           f"(HTTP {resp.status})", provider=self.adapter.title) from exc
                    code, message = self.adapter.error_text(body)
                    repeatable = self.adapter.retryable(resp.status, code, message) and (
                        not is_post or repeat_post or resp.status in NOT_TAKEN_STATUSES)
                    if not repeatable or attempt >= self.retry.max_retries:
                        raise self.adapter.http_error(resp.status, body, what)
                    delay = self.retry.delay(attempt, parse_retry_after(resp.headers), self.rng)
                    reason = "rate limited" if resp.status == 429 else f"HTTP {resp.status}"
            except aiohttp.ClientConnectorError as exc:  # never reached the server: always safe to repeat
                if attempt >= self.retry.max_retries:
                    raise ProviderUnavailableError(f"{self.adapter.title} {what}: cannot connect "
                                                   f"({type(exc).__name__})", provider=self.adapter.title) from None
                delay, reason = self.retry.delay(attempt, None, self.rng), "cannot connect"
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                if (is_post and not repeat_post) or attempt >= self.retry.max_retries:
                    hint = (" The job may exist at the provider: check its dashboard before running again."
                            if is_post else "")
                    raise ProviderUnavailableError(f"{self.adapter.title} {what}: connection lost "
                                                   f"({type(exc).__name__}).{hint}", provider=self.adapter.title) from None
                delay, reason = self.retry.delay(attempt, None, self.rng), "connection lost"
            attempt += 1
            state.retries += 1
            self._say(reporter, state, f"{self.adapter.title}: {reason}, retrying in {delay:.1f} s")
            log.info("%s %s: %s; retry %d in %.2f s", self.adapter.title, what, reason, attempt, delay)
            await self._sleep(delay, state)

    async def _fetch(self, session: aiohttp.ClientSession, request: HttpRequest, reporter: Reporter,
                     state: _RunState) -> bytes | None:
        """Stream a download; None when the server failed and retries ran out for this link."""
        title = self.adapter.title
        attempt = 0
        while True:
            try:
                async with self._request(session, request, timeout=max(self.request_timeout, 600.0),
                                         state=state) as resp:
                    if resp.status in EXPIRED_LINK_STATUSES:
                        await resp.read()
                        raise _ExpiredLink()
                    if resp.status >= 400:
                        body = await resp.read()
                        code, message = self.adapter.error_text(body)
                        if not self.adapter.retryable(resp.status, code, message) or attempt >= self.retry.max_retries:
                            raise self.adapter.http_error(resp.status, body, "download")
                        delay = self.retry.delay(attempt, parse_retry_after(resp.headers), self.rng)
                    else:
                        total = resp.content_length
                        parts: list[bytes] = []
                        received = 0
                        reported = 0
                        async for chunk in resp.content.iter_chunked(CHUNK):
                            parts.append(chunk)
                            received += len(chunk)
                            if received - reported >= CHUNK:
                                reported = received
                                self._say(reporter, state, f"{title}: downloading {_mb(received)}"
                                                           + (f" of {_mb(total)}" if total else ""))
                        self._say(reporter, state, f"{title}: downloaded {_mb(received)}")
                        return b"".join(parts)
            except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                if attempt >= self.retry.max_retries:
                    log.warning("%s: download of job %s failed: %s", title, state.remote_id, type(exc).__name__)
                    return None
                delay = self.retry.delay(attempt, None, self.rng)
            attempt += 1
            state.retries += 1
            self._say(reporter, state, f"{title}: download failed, retrying in {delay:.1f} s")
            await self._sleep(delay, state)

    # -- helpers ----------------------------------------------------------------------------------
    async def _sleep(self, seconds: float, state: _RunState) -> None:
        """Sleep, but never past the job's deadline (which then raises)."""
        if state.submitted_at is not None:
            left = state.submitted_at + self.adapter.deadline - time.time()
            if seconds >= left:
                await asyncio.sleep(max(0.0, left))
                self._check_deadline(state, force=True)
        await asyncio.sleep(seconds)

    def _check_deadline(self, state: _RunState, *, force: bool = False) -> None:
        if state.submitted_at is None:
            return
        if force or time.time() >= state.submitted_at + self.adapter.deadline:
            raise ProviderTimeoutError(
                f"{self.adapter.title}: job {state.remote_id} did not finish within {self.adapter.deadline:.0f} s; "
                "it may still finish at the provider (look it up by this id)", provider=self.adapter.title,
                code="timeout")

    def _report(self, reporter: Reporter, state: _RunState, status: RemoteStatus) -> None:
        title = self.adapter.title
        elapsed = time.time() - (state.submitted_at or time.time())
        if status.state is State.QUEUED:
            where = f" (position {status.queue_position})" if status.queue_position is not None else ""
            detail = f", {status.detail.lower()}" if status.detail and status.detail.lower() not in (
                "queued", "pending", "in_queue", "submitted") else ""
            self._say(reporter, state, f"{title}: queued{where}{detail} · {elapsed:.0f} s")
        elif status.state is State.RUNNING:
            if status.progress is not None:
                percent = max(0.0, min(100.0, float(status.progress)))
                if int(percent) != state.last_percent:  # one progress event per whole percent
                    state.last_percent = int(percent)
                    reporter.progress(percent)
                self._say(reporter, state, f"{title}: running {status.progress:.0f} % · {elapsed:.0f} s")
            else:
                self._say(reporter, state, f"{title}: running · {elapsed:.0f} s")

    def _say(self, reporter: Reporter, state: _RunState, text: str) -> None:
        if text != state.last_text:
            state.last_text = text
            reporter.text(text)

    def _failure(self, status: RemoteStatus, state: _RunState) -> VideoApiError:
        title = self.adapter.title
        code = status.error_code
        message = status.error_message or "no reason given"
        if status.content_rejected or self.adapter.is_content_rejection(code, message):
            return ContentRejectedError(f"{title} rejected the content of job {state.remote_id}: {message}"
                                        + (f" ({code})" if code else ""), provider=title, code=code)
        return ProviderFailedError(f"{title}: job {state.remote_id} failed: {message}" + (f" ({code})" if code else ""),
                                   provider=title, code=code)

    def _redacted(self, exc: VideoApiError) -> VideoApiError:
        secrets = [s.reveal() for s in self.adapter.secrets()]
        with suppress(Exception):
            secrets += [v.split(" ", 1)[-1] for v in self.adapter.auth_headers().values()]
        text = redact(str(exc), secrets)
        if text != str(exc):
            exc.args = (text,)
        return exc


class _ExpiredLink(Exception):
    """A download link answered 403/404/410: poll again for a fresh one."""


def _mb(n: int | None) -> str:
    return f"{(n or 0) / 1e6:.1f} MB"
