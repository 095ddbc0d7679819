"""Typed errors of the video-API engine, each worded for the person who pressed Run.

They are :class:`~graph_runtime.context.NodeError` subclasses, so the executor shows the message
as it is.  Every message is built by the engine or an adapter and passed through
:func:`redact` with the credentials in use, so a key (or a token minted from it) never reaches an
error text, the history or the log even when a provider echoes it back.
"""
from __future__ import annotations

from typing import Iterable

from graph_runtime.context import NodeError


class VideoApiError(NodeError):
    """A video provider call failed; ``provider`` is its display name."""

    def __init__(self, message: str, *, provider: str = "", input_name: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, input_name=input_name)
        self.provider = provider
        self.code = code


class MissingKeyError(VideoApiError):
    """No credential: names the environment variable (or secrets.yaml entry) to set."""


class AuthError(VideoApiError):
    """The provider refused the key (401/403): wrong, revoked, or for another account."""


class OutOfCreditsError(VideoApiError):
    """The account has no credits or quota left; retrying will not help."""


class ContentRejectedError(VideoApiError):
    """The provider's moderation refused the prompt, an input image or the result."""


class RateLimitedError(VideoApiError):
    """Still rate limited after the retries the engine allows."""


class ProviderTimeoutError(VideoApiError):
    """The job did not finish before the deadline; the message carries the remote job id."""


class InvalidRequestError(VideoApiError):
    """The provider rejected the request's parameters (HTTP 400/422) with its reason."""


class ProviderFailedError(VideoApiError):
    """The remote job ended in failure; carries the provider's code and message."""


class ProviderUnavailableError(VideoApiError):
    """The provider kept answering 5xx or could not be reached."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (of 6+ characters) replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "***")
    return text
