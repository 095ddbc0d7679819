"""Webhooks: when a job that named a ``webhook`` URL finishes, POST its result there.

* The body is :func:`web.results.run_result` as JSON, the same answer ``POST /api/run`` gives.
* ``X-Genesis-Signature: sha256=<hex>`` is the HMAC-SHA256 of the raw body under the server's
  webhook secret (``--webhook-secret`` / ``GENESIS_WEBHOOK_SECRET``; without one the server
  creates one in ``<user dir>/webhook_secret``, mode 0600).  A receiver recomputes it over the
  bytes it received and compares in constant time (:func:`signature` is the recipe).
* Delivery is retried with exponential backoff until a 2xx answer, at most ``attempts``
  times; each attempt has its own timeout.  Every attempt is recorded in the job's history
  entry (``genesis.webhook``) as it happens.
* Deliveries are tasks on the server's event loop, independent of the worker: a receiver that
  never answers delays nothing but its own delivery.  Deliveries still in flight when the
  server stops are abandoned (their history shows how far they got).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

import aiohttp

from web.results import run_result

if TYPE_CHECKING:  # pragma: no cover
    from graph_runtime.async_runtime import AsyncRuntime
    from graph_runtime.service import JobOutcome

log = logging.getLogger(__name__)

SECRET_ENV = "GENESIS_WEBHOOK_SECRET"
SECRET_FILE = "webhook_secret"
SIGNATURE_HEADER = "X-Genesis-Signature"
MAX_URL_LENGTH = 2048


class InvalidWebhook(ValueError):
    """The webhook value is not an absolute http(s) URL."""


def check_url(value: Any) -> str:
    """The webhook URL if it is an absolute http(s) URL; :class:`InvalidWebhook` otherwise."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_LENGTH:
        raise InvalidWebhook("the webhook must be an absolute http:// or https:// URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidWebhook(f"the webhook URL is malformed: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c in value for c in "\r\n\x00 "):
        raise InvalidWebhook("the webhook must be an absolute http:// or https:// URL")
    return value


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Genesis-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def load_secret(user_dir: Path, configured: str | None = None) -> bytes:
    """The configured secret, else the one stored in the user directory (created 0600 once)."""
    value = configured or os.environ.get(SECRET_ENV)
    if value:
        return value.encode()
    path = user_dir / SECRET_FILE
    try:
        stored = path.read_text().strip()
        if stored:
            return stored.encode()
    except FileNotFoundError:
        pass
    stored = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(stored + "\n")
    log.info("created a webhook signing secret in %s (mode 0600)", path)
    return stored.encode()


class WebhookSender:
    """Delivers webhooks for one server (see the module docstring)."""

    def __init__(self, facade: "AsyncRuntime", secret: bytes, *, attempts: int = 5, first_delay: float = 1.0,
                 timeout: float = 10.0, on_attempt: Callable[[str], None] | None = None) -> None:
        self.facade = facade
        self.secret = secret
        self.attempts = max(1, attempts)
        self.first_delay = first_delay
        self.timeout = timeout
        self.on_attempt = on_attempt
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()
        facade.on_finished(self._finished)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(headers={"User-Agent": "genesis-webhook/1"})

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _finished(self, outcome: "JobOutcome") -> None:
        url = outcome.extra_data.get("webhook") if isinstance(outcome.extra_data, dict) else None
        if outcome.status is None or not url or self._session is None:
            return
        task = asyncio.ensure_future(self.deliver(outcome.prompt_id, str(url)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def deliver(self, prompt_id: str, url: str) -> bool:
        """POST the job's result to ``url`` until a 2xx; True when delivered."""
        job = await self.facade.get(prompt_id)
        if job is None or self._session is None:
            return False
        body = json.dumps(run_result(job), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: signature(self.secret, body),
                   "X-Genesis-Prompt-Id": prompt_id}
        record: dict[str, Any] = {"url": url, "delivered": False, "attempts": []}
        delay = self.first_delay
        for number in range(1, self.attempts + 1):
            attempt: dict[str, Any] = {"at": round(time.time(), 3)}
            try:
                async with self._session.post(url, data=body, headers=headers,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                    await resp.read()
                    attempt["status"] = resp.status
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # timeouts, refused connections, bad TLS: retried
                attempt["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ok = 200 <= attempt.get("status", 0) < 300
            record["attempts"].append(attempt)
            record["delivered"] = ok
            await self.facade.annotate(prompt_id, "webhook", record)
            if self.on_attempt is not None:
                self.on_attempt("delivered" if ok else "failed")
            if ok:
                return True
            if number < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.warning("webhook for %s not delivered after %d attempts: %s", prompt_id, self.attempts, url)
        return False
