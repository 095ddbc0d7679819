"""When and how long to wait before repeating a failed request.

* The server's word wins: ``retry-after-ms`` (OpenAI/Stainless SDKs) or ``Retry-After`` (seconds or
  an HTTP date).  We wait exactly that long (capped), never less.
* Otherwise exponential backoff, ``base × 2ⁿ`` capped at ``cap``, minus up to 50 % random jitter
  (what Runway's docs ask for) so many clients that failed together do not retry together.
* Which statuses are worth repeating is the adapter's call (408, 429 and 5xx by default); a submit
  (POST) is repeated only when it cannot create a second job: the server said it did not take it
  (429, 503), the connection failed before the request was sent, or the provider honours an
  idempotency key.
"""
from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Callable, Mapping

NOT_TAKEN_STATUSES = frozenset({408, 429, 503})
"""Answers that mean the server did not act on the request: safe to repeat even a POST."""


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date), else None."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now())


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters; ``max_retries`` counts repeats of one request (not the first try)."""

    max_retries: int = 6
    base: float = 1.0
    cap: float = 30.0
    jitter: float = 0.5  # fraction of the step that may be taken off at random
    max_retry_after: float = 120.0

    def delay(self, attempt: int, retry_after: float | None, rng: Callable[[], float] = random.random) -> float:
        """Seconds before repeat number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        step = min(self.cap, self.base * (2 ** attempt))
        return step * (1.0 - self.jitter * rng())
