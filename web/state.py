"""What the route handlers share: the runtime façade, the WebSocket hub and per-server settings.

One :class:`WebState` per application, stored under :data:`STATE` (an ``aiohttp`` app key),
so several servers can run side by side in one process (tests do) — no module globals.
Handlers reach the runtime only through :attr:`WebState.api` (the async façade); ``runtime``
stays for wiring and for reading configuration (paths, registry).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:  # pragma: no cover
    from graph_runtime.async_runtime import AsyncRuntime
    from graph_runtime.paths import FolderPaths
    from graph_runtime.service import Runtime
    from web.logbuffer import LogBuffer
    from web.sysinfo import SystemInfo
    from web.userdata import UserStore
    from web.ws import Hub


@dataclass
class WebState:
    runtime: "Runtime"
    api: "AsyncRuntime"
    hub: "Hub"
    users: "UserStore"
    logs: "LogBuffer"
    sysinfo: "SystemInfo"
    max_upload_bytes: int
    frontend_root: Path | None
    template_dirs: list[Path] = field(default_factory=list)
    extension_dirs: dict[str, Path] = field(default_factory=dict)
    default_workflow: Path | None = None

    @property
    def paths(self) -> "FolderPaths":
        return self.runtime.paths


STATE: web.AppKey[WebState] = web.AppKey("genesis_state", WebState)


def state_of(request: web.Request) -> WebState:
    return request.app[STATE]
