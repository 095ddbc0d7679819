"""Building and serving the aiohttp application.

``create_app(runtime)`` wires one :class:`~graph_runtime.service.Runtime` to HTTP and
WebSocket: the async façade every route awaits, route modules (each mounted at ``/X`` and
``/api/X``), the WebSocket hub (registered as a runtime listener), authentication, metrics,
webhooks, the log buffer and static files.  By default the app starts the runtime's worker
when it starts and stops it on shutdown.

``serve(args, paths, options)`` is ``server.py serve``: it wipes ``temp/``, answers on the
port before anything heavy is imported (torch is imported by the first prompt, or in the
background), then writes the tiny demo models in a background thread on a first start
(:mod:`web.first_start`: announced at once, the worker held until they are there).
"""
from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from graph_runtime.async_runtime import AsyncRuntime
from graph_runtime.loop_mailbox import LoopMailbox
from web.auth import AUTH, AuthSettings, authenticate
from web.logbuffer import LogBuffer
from web.metrics import METRICS, ServerMetrics, count_requests
from web.middleware import cache_control, origin_guard
from web.routes import files, health, internal, jobs, queue, run, static, system, users
from web.routing import mount
from web.webhooks import WebhookSender, load_secret
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
               ws_queue_limit: int | None = None, auth: AuthSettings | None = None,
               webhook_secret: str | None = None, webhook_attempts: int = 5, webhook_first_delay: float = 1.0,
               webhook_timeout: float = 10.0) -> web.Application:
    """The application for ``runtime``.

    ``manage_runtime``: start the runtime's worker with the app and stop it on shutdown.
    ``frontend``: True finds ``comfyui-frontend-package``; a path overrides it; False serves none.
    ``auth``: who may call (see :mod:`web.auth`); None: no tokens (a loopback server).
    ``webhook_*``: signing secret (None: the one stored in the user directory), attempts per
    delivery, the first retry delay (doubled each time) and the timeout of one attempt.
    """
    root = static.frontend_root() if frontend is True else (frontend or None)
    if frontend is True and root is None:
        log.warning("comfyui-frontend-package is not installed: only the API is served")
    paths = runtime.paths
    auth = auth if auth is not None else AuthSettings(multi_user=multi_user)
    multi_user = multi_user or auth.multi_user
    auth.multi_user = multi_user
    mailbox = LoopMailbox()  # worker and write threads -> the loop: one wake-up per burst
    api = AsyncRuntime(runtime, mailbox=mailbox)
    server_features = {"supports_preview_metadata": True, "max_upload_size": max_upload_bytes}
    hub_kwargs = {"queue_limit": ws_queue_limit} if ws_queue_limit else {}
    hub = Hub(lambda: runtime.queue_remaining, server_features, mailbox=mailbox, **hub_kwargs)
    extension_dirs = {p.name: p for p in sorted(EXTENSIONS_DIR.iterdir()) if p.is_dir()}
    for name, directory in runtime.registry.web_directories.items():
        extension_dirs.setdefault(name, directory)
    user_store = UserStore(paths.user_dir, multi_user=multi_user)
    if not multi_user:
        user_store.ensure_user("default")
    state = WebState(runtime=runtime, api=api, hub=hub, users=user_store,
                     logs=LogBuffer(), sysinfo=SystemInfo(argv, probe_torch=probe_torch),
                     max_upload_bytes=max_upload_bytes, frontend_root=root, extension_dirs=extension_dirs,
                     default_workflow=default_workflow if default_workflow and default_workflow.is_file() else None)

    metrics = ServerMetrics(api, hub)
    webhooks = WebhookSender(api, load_secret(paths.user_dir, webhook_secret), attempts=webhook_attempts,
                             first_delay=webhook_first_delay, timeout=webhook_timeout,
                             on_attempt=lambda outcome: metrics.webhooks.labels(outcome).inc())
    app = web.Application(client_max_size=max_upload_bytes,
                          middlewares=[count_requests, origin_guard(auth.cors_origins), authenticate, cache_control])
    app[STATE] = state
    app[AUTH] = auth
    app[METRICS] = metrics
    for module in (queue, run, jobs, files, users, system, health):
        mount(app, module.routes)
    mount(app, internal.routes, api_twin=False)
    app.router.add_get("/ws", hub.handle)
    app.router.add_get("/api/ws", hub.handle)
    mount(app, static.routes, api_twin=False)
    if root is not None:
        app.router.add_static("/", root, follow_symlinks=False)

    async def on_startup(app: web.Application) -> None:
        api.bind(asyncio.get_running_loop())
        await webhooks.start()
        hub.bind(asyncio.get_running_loop())
        runtime.add_listener(hub.on_event)
        state.logs.on_entry = hub.post_log
        state.logs.attach()
        if manage_runtime:
            runtime.start()

    async def on_shutdown(app: web.Application) -> None:
        await hub.close_all()

    async def on_cleanup(app: web.Application) -> None:
        await webhooks.close()
        runtime.remove_listener(hub.on_event)
        state.logs.detach()
        if manage_runtime:
            await asyncio.to_thread(runtime.stop)
        api.close()

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


def beyond_loopback(hosts: list[str]) -> bool:
    """Whether any bound address is reachable from other machines."""
    from web.middleware import is_loopback

    return any(not is_loopback(h.strip("[]")) for h in hosts)


def display_url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


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


def settle_heap() -> None:
    """Collect once, then exclude every object alive now from later garbage collections.

    Why: the start-up objects (node packs, their libraries, the frontend's routes) live as long as
    the process, yet every full collection walks them again: measured 16–32 ms per collection,
    every few hundred prompts under load, a pause of the whole server (the p99 of ``/api/jobs``
    went from 14 to 46 ms).  ``gc.freeze`` moves them out of the collector's way (objects made
    later are collected as before).
    """
    gc.collect()
    gc.freeze()


def serve(args: Any, paths: Any, options: Any, registry: Any, *, runner: Any = None) -> int:
    """``server.py serve``: run the server until SIGINT/SIGTERM; returns the exit code.

    ``runner``: builds the runtime's prompt runner (the Ray pool with ``--ray``), None for the default.
    """
    from graph_runtime.service import Runtime

    from web.auth import AuthSettings, TokenFileError

    launched = process_start_time()
    paths.ensure_dirs()
    wipe_temp(paths.temp_dir)
    hosts = listen_hosts(getattr(args, "listen", "127.0.0.1"))
    port = int(getattr(args, "port", 8188))
    try:
        auth = AuthSettings.configure(
            paths.user_dir, required=bool(getattr(args, "require_token", False)) or beyond_loopback(hosts),
            token=getattr(args, "token", None), multi_user=bool(getattr(args, "multi_user", False)),
            metrics_public=bool(getattr(args, "metrics_public", False)),
            cors_origins=tuple(getattr(args, "cors_origins", None) or ()))
    except TokenFileError as exc:
        log.error("cannot read the tokens: %s", exc)
        return 2
    runtime = Runtime(paths, options, registry=registry, runner=runner)
    for failure in runtime.registry.failures:
        log.error("node pack %s failed to load: %s", failure.name, failure.error)
    max_upload = int(float(getattr(args, "max_upload_size", 100)) * 1024 * 1024)
    app = create_app(runtime, max_upload_bytes=max_upload, argv=list(sys.argv), auth=auth,
                     webhook_secret=getattr(args, "webhook_secret", None),
                     webhook_attempts=int(getattr(args, "webhook_attempts", 5)))

    demo = None
    if not getattr(args, "no_tiny_models", False):
        from web.first_start import MODELS_CHANGED, DemoModels

        hub = app[STATE].hub
        demo = DemoModels(runtime, workflow=DEFAULT_WORKFLOW,
                          on_arrival=lambda: hub.send_threadsafe(MODELS_CHANGED, {"folders": sorted(paths.folders)}))
        if demo.needed():
            demo.announce()  # before the port opens: the first canvas already lists them
        else:
            demo = None

    def on_listening() -> None:
        settle_heap()
        urls = ", ".join(display_url(h, port) for h in hosts)
        log.info("Genesis is ready at %s (%d node types, %.2f s after launch)", urls, len(runtime.registry),
                 time.time() - launched)
        if auth.required:
            login = auth.login_url(display_url(hosts[0], port))
            if login is not None:
                # Like Jupyter: the one-time URL that opens the canvas logged in (the token is also in
                # user/genesis_token, readable by this user only).
                print(f"\n    To open Genesis, visit:\n        {login}\n", flush=True)
            else:
                log.info("a token is required off loopback (Authorization: Bearer, or /?token= in the browser)")
        if demo is not None:
            demo.start()

    return asyncio.run(_serve_until_stopped(app, hosts, port, bool(getattr(args, "verbose", False)), on_listening))
