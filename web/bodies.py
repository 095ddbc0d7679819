"""Request bodies (pydantic models) and the JSON error responses every route uses.

Bodies are validated before a handler looks at them, so a malformed request gets a clear
400 saying what is wrong instead of a 500 from deep inside a handler.  Error bodies follow
ComfyUI's ``{"error": {type, message, details, extra_info}}`` shape (``POST /prompt`` adds
``node_errors``), which the frontend knows how to show.
"""
from __future__ import annotations

import json
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError

M = TypeVar("M", bound=BaseModel)

MAX_ID_LENGTH = 256


def error_body(kind: str, message: str, details: str = "", **extra: Any) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "details": details, "extra_info": extra}}


def json_error(status: int, kind: str, message: str, details: str = "", *,
               node_errors: dict[str, Any] | None = None, **extra: Any) -> web.Response:
    body = error_body(kind, message, details, **extra)
    if node_errors is not None:
        body["node_errors"] = node_errors
    return web.json_response(body, status=status)


class BadRequest(web.HTTPBadRequest):
    """A 400 with a JSON error body (raise it from a handler or a helper)."""

    def __init__(self, kind: str, message: str, details: str = "", *, node_errors: dict[str, Any] | None = None,
                 **extra: Any) -> None:
        body = error_body(kind, message, details, **extra)
        if node_errors is not None:
            body["node_errors"] = node_errors
        super().__init__(text=json.dumps(body), content_type="application/json")


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


async def parse_body(request: web.Request, model: type[M], *, empty_ok: bool = False,
                     node_errors: bool = False) -> M:
    """The request body validated against ``model``; a 400 with a readable reason otherwise.

    ``empty_ok`` turns an empty body into the model's defaults (ComfyUI treats an empty
    ``/interrupt`` body as ``{}``).  ``node_errors`` adds ComfyUI's ``node_errors: {}`` to the
    error body (``POST /prompt`` clients expect it).
    """
    raw = await request.read()
    extra_errors = {"node_errors": {}} if node_errors else {}
    if not raw.strip():
        if empty_ok:
            return model()
        raise BadRequest("invalid_request", "Empty request body", "a JSON object is required", **extra_errors)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        kinds = {e.get("type") for e in exc.errors(include_url=False)}
        if "json_invalid" in kinds:
            raise BadRequest("invalid_json", "Request body is not valid JSON", _describe(exc),
                             **extra_errors) from None
        raise BadRequest("invalid_request", f"Invalid request body for {request.path}", _describe(exc),
                         **extra_errors) from None


async def parse_json_value(request: web.Request) -> Any:
    """Any JSON value (``POST /settings/{id}`` takes a bare value); 400 if the body is not JSON."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest("invalid_json", "Request body is not valid JSON", str(exc)) from None


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class PromptBody(_Body):
    """``POST /prompt``: an API prompt (or a UI workflow) plus queueing options."""

    prompt: dict[str, Any] | None = None
    client_id: str | None = Field(default=None, max_length=MAX_ID_LENGTH)
    prompt_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    extra_data: dict[str, Any] = Field(default_factory=dict)
    front: bool = False
    number: FiniteFloat | None = None
    partial_execution_targets: list[str] | None = None


class RunBody(PromptBody):
    """``POST /api/run``: a ``/prompt`` body plus the ``webhook`` URL to call when it finishes."""

    webhook: str | None = Field(default=None, max_length=2048)


class QueueBody(_Body):
    """``POST /queue`` and ``POST /history``: clear everything and/or delete some ids."""

    clear: bool = False
    delete: list[str] = Field(default_factory=list)


class InterruptBody(_Body):
    prompt_id: str | None = None


class FreeBody(_Body):
    unload_models: bool = False
    free_memory: bool = False


class CancelJobsBody(_Body):
    job_ids: list[str] = Field(min_length=1, max_length=100)


class NewUserBody(_Body):
    username: str = Field(min_length=1, max_length=128)


class LogsSubscribeBody(_Body):
    clientId: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    enabled: bool


class SettingsBody(BaseModel):
    """``POST /settings``: an object whose keys are setting ids."""

    model_config = ConfigDict(extra="allow")

    def values(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})
