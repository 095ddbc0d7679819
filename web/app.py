"""Building and serving the aiohttp application.

``create_app(runtime)`` wires one :class:`~graph_runtime.service.Runtime` to HTTP and
WebSocket: route modules (each mounted at ``/X`` and ``/api/X``), the WebSocket hub
(registered as a runtime listener), the log buffer and static files.  By default the app
starts the runtime's worker when it starts and stops it on shutdown.

``serve(args, paths, options)`` is ``server.py serve``: it wipes ``temp/``, answers on the
port before anything heavy is imported (torch is imported by the first prompt, or in the
background), then writes the tiny demo models in a background thread on a first start.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from web.logbuffer import LogBuffer
from web.middleware import cache_control, origin_guard
from web.routes import files, internal, jobs, queue, static, system, users
from web.routing import mount
from web.state import STATE, WebState
from web.sysinfo import SystemInfo
from web.userdata import UserStore
from web.ws import Hub

log = logging.getLogger("genesis.web")

REPO_ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS_DIR = Path(__file__).resolve().parent / "extensions"
DEFAULT_WORKFLOW = REPO_ROOT / "workflows" / "default_sd15.json"
DEFAULT_MAX_UPLOAD = 100 << 20


def create_app(runtime: Any, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD, multi_user: bool = False,
               manage_runtime: bool = True, argv: list[str] | None = None, probe_torch: bool = True,
               default_workflow: Path | None = DEFAULT_WORKFLOW, frontend: Path | None | bool = True,
               ws_queue_limit: int | None = None) -> web.Application:
    """The application for ``runtime``.

    ``manage_runtime``: start the runtime's worker with the app and stop it on shutdown.
    ``frontend``: True finds ``comfyui-frontend-package``; a path overrides it; False serves none.
    """
    root = static.frontend_root() if frontend is True else (frontend or None)
    if frontend is True and root is None:
        log.warning("comfyui-frontend-package is not installed: only the API is served")
    paths = runtime.paths
    server_features = {"supports_preview_metadata": True, "max_upload_size": max_upload_bytes}
    hub_kwargs = {"queue_limit": ws_queue_limit} if ws_queue_limit else {}
    hub = Hub(runtime.store.queue_remaining, server_features, **hub_kwargs)
    extension_dirs = {p.name: p for p in sorted(EXTENSIONS_DIR.iterdir()) if p.is_dir()}
    for name, directory in runtime.registry.web_directories.items():
        extension_dirs.setdefault(name, directory)
    user_store = UserStore(paths.user_dir, multi_user=multi_user)
    if not multi_user:
        user_store.ensure_user("default")
    state = WebState(runtime=runtime, hub=hub, users=user_store,
                     logs=LogBuffer(), sysinfo=SystemInfo(argv, probe_torch=probe_torch),
                     max_upload_bytes=max_upload_bytes, frontend_root=root, extension_dirs=extension_dirs,
                     default_workflow=default_workflow if default_workflow and default_workflow.is_file() else None)

    app = web.Application(client_max_size=max_upload_bytes, middlewares=[origin_guard, cache_control])
    app[STATE] = state
    for module in (queue, jobs, files, users, system):
        mount(app, module.routes)
    mount(app, internal.routes, api_twin=False)
    app.router.add_get("/ws", hub.handle)
    app.router.add_get("/api/ws", hub.handle)
    mount(app, static.routes, api_twin=False)
    if root is not None:
        app.router.add_static("/", root, follow_symlinks=False)

    async def on_startup(app: web.Application) -> None:
        hub.bind(asyncio.get_running_loop())
        runtime.add_listener(hub.on_event)
        state.logs.on_entry = hub.post_log
        state.logs.attach()
        if manage_runtime:
            runtime.start()

    async def on_shutdown(app: web.Application) -> None:
        await hub.close_all()

    async def on_cleanup(app: web.Application) -> None:
        runtime.remove_listener(hub.on_event)
        state.logs.detach()
        if manage_runtime:
            await asyncio.to_thread(runtime.stop)

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app


# -- serve ---------------------------------------------------------------------------------------

def wipe_temp(temp_dir: Path) -> None:
    """Empty ``temp/`` (previews of a previous run are never shown again)."""
    if temp_dir.is_dir():
        for entry in temp_dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    temp_dir.mkdir(parents=True, exist_ok=True)


def listen_hosts(listen: str | None) -> list[str]:
    """``--listen`` values: one address, a comma-separated list; empty means all interfaces."""
    if listen is None or not listen.strip():
        return ["0.0.0.0", "::"]
    return [h.strip() for h in listen.split(",") if h.strip()]


def display_url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def write_demo_models_if_missing(paths: Any) -> threading.Thread | None:
    """On a first start (no checkpoint at all), write the tiny models in a background thread.

    Files are written into a hidden staging folder and moved into ``models/`` one by one, so a
    listing never shows a half-written model.
    """
    if paths.list_models("checkpoints"):
        return None

    def work() -> None:
        started = time.monotonic()
        staging = paths.models_dir / ".genesis-tiny-staging"
        try:
            from models.tools.tiny_models import write_tiny_models

            shutil.rmtree(staging, ignore_errors=True)
            write_tiny_models(staging)
            moved = 0
            for entry in sorted(p for p in staging.iterdir() if p.is_file()):  # manifests
                if not (paths.models_dir / entry.name).exists():
                    entry.replace(paths.models_dir / entry.name)
            for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
                target_dir = paths.models_dir / folder.name
                target_dir.mkdir(parents=True, exist_ok=True)
                for entry in sorted(folder.iterdir()):
                    target = target_dir / entry.name
                    if not target.exists():
                        entry.replace(target)
                        moved += 1
            log.info("wrote %d tiny demo models to %s in %.1f s (random weights: pictures are noise; "
                     "put real checkpoints in models/checkpoints)", moved, paths.models_dir,
                     time.monotonic() - started)
        except Exception:
            log.exception("could not write the tiny demo models")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    thread = threading.Thread(target=work, name="genesis-tiny-models", daemon=True)
    thread.start()
    return thread


async def _serve_until_stopped(app: web.Application, hosts: list[str], port: int, verbose: bool,
                               on_listening: Any) -> int:
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access") if verbose else None,
                           handle_signals=False)
    await runner.setup()
    try:
        for host in hosts:
            await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        log.error("cannot listen on %s port %d: %s", ",".join(hosts), port, exc)
        await runner.cleanup()
        return 1
    on_listening()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-main thread / Windows
            pass
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    return 0


def process_start_time() -> float:
    """Epoch seconds at which this process was launched (for the "ready after" log line)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # pragma: no cover - psutil comes with accelerate
        return time.time()


def serve(args: Any, paths: Any, options: Any, registry: Any, *, runner: Any = None) -> int:
    """``server.py serve``: run the server until SIGINT/SIGTERM; returns the exit code.

    ``runner``: builds the runtime's prompt runner (the Ray pool with ``--ray``), None for the default.
    """
    from graph_runtime.service import Runtime

    launched = process_start_time()
    paths.ensure_dirs()
    wipe_temp(paths.temp_dir)
    runtime = Runtime(paths, options, registry=registry, runner=runner)
    for failure in runtime.registry.failures:
        log.error("node pack %s failed to load: %s", failure.name, failure.error)
    max_upload = int(float(getattr(args, "max_upload_size", 100)) * 1024 * 1024)
    app = create_app(runtime, max_upload_bytes=max_upload, argv=list(sys.argv))
    hosts = listen_hosts(getattr(args, "listen", "127.0.0.1"))
    port = int(getattr(args, "port", 8188))

    def on_listening() -> None:
        urls = ", ".join(display_url(h, port) for h in hosts)
        log.info("Genesis is ready at %s (%d node types, %.2f s after launch)", urls, len(runtime.registry),
                 time.time() - launched)
        if any(h in ("0.0.0.0", "::") or not h.startswith(("127.", "localhost", "::1")) for h in hosts):
            log.warning("listening beyond this machine: anyone who can reach %s can run prompts and read outputs",
                        ",".join(hosts))
        if not getattr(args, "no_tiny_models", False):
            write_demo_models_if_missing(paths)

    return asyncio.run(_serve_until_stopped(app, hosts, port, bool(getattr(args, "verbose", False)), on_listening))
