"""The command line against a running server: ``run FILE --remote URL`` and ``queue … --remote URL``.

``run --remote`` reads the workflow file here (API JSON, UI JSON or a PNG; UI workflows are
converted with the server's own ``/object_info``), applies ``--set`` overrides, opens the
WebSocket (the ``websockets`` package) *before* queueing so no message is missed, posts the
prompt, shows progress on the terminal, then downloads every output file through ``/view``
into ``--output-dir`` and prints their paths.  Exit codes are the local ``run``'s:
0 success, 1 execution error, 2 invalid workflow or input (also: server unreachable, token
refused), 130 interrupted (Ctrl-C interrupts the prompt on the server too).

``queue list|clear|interrupt --remote URL`` are for scripts; ``list --json`` prints the
server's ``/queue`` answer as is.

The token comes from ``--token`` or ``GENESIS_TOKEN`` and is sent as ``Authorization:
Bearer`` on every request and on the WebSocket handshake.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from graph_runtime.cli import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, ProgressPrinter, UsageError,
                               apply_overrides, load_prompt_file)
from graph_runtime.events import Executing, Progress

TIMEOUT = 60.0
TOKEN_ENV = "GENESIS_TOKEN"


class RemoteError(Exception):
    """The server could not be used (unreachable, token refused, unexpected answer)."""


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Remote:
    """Plain HTTP calls to one server (``urllib``: no session state to keep)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = TIMEOUT) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"--remote {url!r}: expected a URL such as http://127.0.0.1:8188")
        self.base = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def ws_url(self) -> str:
        parts = urllib.parse.urlsplit(self.base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path + "/ws", "", ""))

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return Reply(resp.status, resp.read())
        except urllib.error.HTTPError as err:
            reply = Reply(err.code, err.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RemoteError(f"cannot reach {self.base}: {reason}") from None
        if reply.status == 401:
            raise RemoteError(f"{self.base} refused the token: pass --token or set {TOKEN_ENV}")
        return reply

    def json(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200,)) -> Any:
        reply = self.call(method, path, body)
        if reply.status not in ok:
            raise RemoteError(f"{method} {path} answered {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}")
        return reply.json()


def validation_summary(body: dict[str, Any]) -> str:
    """A readable version of ``/prompt``'s 400 body (as the local run prints it)."""
    error = body.get("error") or {}
    lines = [str(error.get("message") or "invalid prompt") + (f": {error['details']}" if error.get("details") else "")]
    for node_id, entry in (body.get("node_errors") or {}).items():
        for err in entry.get("errors", []):
            name = (err.get("extra_info") or {}).get("input_name")
            where = f"node {node_id} ({entry.get('class_type')})" + (f", input '{name}'" if name else "")
            lines.append(f"  {where}: {err.get('message')}" + (f" — {err['details']}" if err.get("details") else ""))
    return "\n".join(lines)


async def _follow(remote: Remote, prompt: dict[str, Any], extra_data: dict[str, Any], printer: ProgressPrinter
                  ) -> tuple[str, str, dict[str, Any] | None]:
    """Queue ``prompt`` and follow it to its end; (prompt id, final message type, its data)."""
    from websockets.asyncio.client import connect

    client_id = uuid.uuid4().hex
    url = f"{remote.ws_url}?{urllib.parse.urlencode({'clientId': client_id})}"
    from websockets.exceptions import InvalidStatus

    try:
        ws = await connect(url, additional_headers=remote.headers, max_size=None, open_timeout=remote.timeout)
    except InvalidStatus as exc:
        if exc.response.status_code == 401:
            raise RemoteError(f"{remote.base} refused the token: pass --token or set {TOKEN_ENV}") from None
        raise RemoteError(f"cannot open {remote.ws_url}: {exc}") from None
    except OSError as exc:  # refused, unreachable
        raise RemoteError(f"cannot reach {remote.base}: {exc}") from None
    except Exception as exc:  # a bad handshake, TLS …
        raise RemoteError(f"cannot open {remote.ws_url}: {exc}") from None
    async with ws:
        reply = await asyncio.to_thread(remote.call, "POST", "/prompt",
                                        {"prompt": prompt, "client_id": client_id, "extra_data": extra_data})
        if reply.status == 400:
            raise UsageError("the workflow is not valid\n" + validation_summary(reply.json() or {}))
        if reply.status != 200:
            raise RemoteError(f"POST /prompt answered {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}")
        prompt_id = reply.json()["prompt_id"]
        final: tuple[str, str, dict[str, Any] | None] = (prompt_id, "execution_success", None)
        try:
            async for raw in ws:
                if isinstance(raw, bytes):  # previews
                    continue
                message = json.loads(raw)
                kind, data = message.get("type"), message.get("data") or {}
                if not isinstance(data, dict) or data.get("prompt_id") not in (None, prompt_id):
                    continue
                if kind == "executing" and data.get("prompt_id") == prompt_id:
                    if data.get("node") is None:
                        return final
                    printer(Executing(prompt_id, str(data["node"])))
                elif kind == "progress":
                    printer(Progress(prompt_id, str(data.get("node", "")), data.get("value", 0), data.get("max", 1)))
                elif kind in ("execution_error", "execution_interrupted"):
                    final = (prompt_id, kind, data)
        except asyncio.CancelledError:
            await asyncio.to_thread(remote.call, "POST", "/interrupt", {"prompt_id": prompt_id})
            raise
        raise RemoteError("the server closed the WebSocket before the prompt finished") from None


def download_outputs(remote: Remote, outputs: dict[str, Any], output_dir: Path) -> list[Path]:
    """Fetch every ``type: output`` file of a history entry through ``/view``."""
    written: list[Path] = []
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for values in ui.values():
            for item in values if isinstance(values, list) else []:
                if not (isinstance(item, dict) and item.get("type") == "output" and item.get("filename")):
                    continue
                query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                                "type": "output"})
                reply = remote.call("GET", f"/view?{query}")
                if reply.status != 200:
                    raise RemoteError(f"/view {item['filename']} answered {reply.status}")
                name = Path(str(item["filename"])).name
                subfolder = [p for p in Path(str(item.get("subfolder") or "")).parts if p not in ("..", "/", "\\")]
                target = output_dir.joinpath(*subfolder, name)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(reply.body)
                written.append(target)
    return written


def run_remote(path: Path, url: str, *, token: str | None = None, overrides: list[str] = (),
               output_dir: Path = Path("output"), progress: bool = True, out: TextIO = sys.stdout,
               err: TextIO = sys.stderr) -> int:
    """``server.py run FILE --remote URL``; returns the process exit code."""
    try:
        remote = Remote(url, token)
        prompt, ui_workflow = load_prompt_file(path, lambda: remote.json("GET", "/object_info"))
        prompt = apply_overrides(prompt, list(overrides))
        printer = ProgressPrinter(len(prompt), err, progress)
        printer.class_of = {k: str(v.get("class_type", "")) for k, v in prompt.items() if isinstance(v, dict)}
        extra = {"extra_pnginfo": {"workflow": ui_workflow}} if ui_workflow else {}
        try:
            prompt_id, kind, data = asyncio.run(_follow(remote, prompt, extra, printer))
        finally:
            printer.close()
        if kind == "execution_interrupted":
            print("interrupted", file=err)
            return EXIT_INTERRUPTED
        if kind == "execution_error":
            e = data or {}
            print(f"error: node {e.get('node_id')} ({e.get('node_type')}) failed: {e.get('exception_message')}",
                  file=err)
            return EXIT_FAILED
        history = remote.json("GET", f"/history/{urllib.parse.quote(prompt_id)}")
        entry = (history or {}).get(prompt_id) or {}
        for file in download_outputs(remote, entry.get("outputs") or {}, output_dir):
            print(file, file=out)
        return EXIT_OK
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
    except (UsageError, RemoteError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_INVALID


# -- queue -------------------------------------------------------------------------------------

def queue_command(action: str, url: str, *, token: str | None = None, prompt_id: str | None = None,
                  as_json: bool = False, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``server.py queue list|clear|interrupt --remote URL``; returns the exit code."""
    try:
        remote = Remote(url, token)
        if action == "list":
            queue = remote.json("GET", "/queue")
            if as_json:
                print(json.dumps(queue), file=out)
                return EXIT_OK
            for state, key in (("running", "queue_running"), ("pending", "queue_pending")):
                for item in sorted(queue.get(key) or [], key=lambda i: i[0]):
                    print(f"{state}\t{item[1]}\t{item[0]}", file=out)
            return EXIT_OK
        if action == "clear":
            pending = len((remote.json("GET", "/queue") or {}).get("queue_pending") or [])
            remote.json("POST", "/queue", {"clear": True})
            print(f"cleared {pending} pending prompt(s)", file=out)
            return EXIT_OK
        if action == "interrupt":
            remote.json("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
            return EXIT_OK
        raise UsageError(f"unknown queue action {action!r}")
    except (UsageError, RemoteError) as exc:
        print(f"error: {exc}", file=err)
        return EXIT_INVALID


def token_of(args: argparse.Namespace) -> str | None:
    return getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
