"""Genesis entry point.

    python server.py [serve] [--listen 127.0.0.1] [--port 8188] [--base-directory DIR] [--token T]
    python server.py serve --ray auto|local [--ray-workers N]     (GPU workers on a Ray cluster)
    python server.py run WORKFLOW [--set NODE.INPUT=VALUE ...] [--output-dir DIR] [--remote URL [--token T]]
    python server.py queue list|clear|interrupt --remote URL [--token T]
    python server.py tiny-models [--dir DIR]

Heavy libraries (torch, diffusers) are imported only when a node needs them, so the server
answers its first request quickly.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
SUBCOMMANDS = ("serve", "run", "queue", "tiny-models")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-directory", type=Path, default=None,
                        help="where models/, input/, output/, temp/ and user/ live (default: the repo root)")
    parser.add_argument("--extra-model-paths-config", type=Path, action="append", default=[],
                        help="extra_model_paths.yaml files (one next to server.py is read automatically)")
    parser.add_argument("--cpu", action="store_true", help="run models on the CPU even when a GPU is present")
    vram = parser.add_mutually_exclusive_group()
    vram.add_argument("--highvram", action="store_true",
                      help="keep models on the GPU: evict instead of offloading them to RAM")
    vram.add_argument("--lowvram", action="store_true",
                      help="models that do not fit the GPU run with their blocks streamed from RAM")
    vram.add_argument("--novram", action="store_true", help="every GPU model runs with its blocks streamed from RAM")
    parser.add_argument("--reserve-vram", type=float, default=None, metavar="GB",
                        help="GPU memory (GB) left free for the OS and other programs")
    parser.add_argument("--disable-smart-memory", action="store_true",
                        help="offload models to RAM after each node instead of keeping them on the GPU")
    parser.add_argument("--dtype", choices=("auto", "fp32", "fp16", "bf16"), default="auto",
                        help="compute dtype of the models")
    parser.add_argument("--fp8-weights", action="store_true", help="store diffusion weights in fp8, upcast to compute")
    parser.add_argument("--cache-budget-mb", type=int, default=512,
                        help="memory budget of the output cache kept across prompts (LRU)")
    parser.add_argument("--model-budget-mb", type=int, default=None, help="memory budget of resident models")
    parser.add_argument("--preview-method", choices=("auto", "latent2rgb", "none"), default="auto")
    parser.add_argument("--network-concurrency", type=int, default=4,
                        help="remote jobs (video API calls) in flight per provider; the rest wait in order")
    parser.add_argument("--verbose", "-v", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="server.py", description="Genesis node-graph runtime")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve the canvas and the ComfyUI-compatible API (default)")
    _common(serve)
    serve.add_argument("--listen", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--no-tiny-models", action="store_true",
                       help="do not create the tiny demo models when no checkpoint is present")
    serve.add_argument("--max-upload-size", type=float, default=100, help="upload limit in MB")
    access = serve.add_argument_group("access (see web/auth.py)")
    access.add_argument("--token", default=None,
                        help="access token required off loopback (also GENESIS_TOKEN; default: tokens.json in the "
                             "user directory, or one created there)")
    access.add_argument("--require-token", action="store_true", help="require a token on loopback too")
    access.add_argument("--multi-user", action="store_true",
                        help="isolate users: each sees only their own queue, history and user data")
    access.add_argument("--metrics-public", action="store_true", help="serve /metrics without a token")
    access.add_argument("--enable-cors-header", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                        help="let pages on ORIGIN call the API (repeatable; other origins stay refused)")
    hooks = serve.add_argument_group("webhooks")
    hooks.add_argument("--webhook-secret", default=None,
                       help="HMAC key of X-Genesis-Signature (also GENESIS_WEBHOOK_SECRET; default: one stored in "
                            "the user directory)")
    hooks.add_argument("--webhook-attempts", type=int, default=5, help="deliveries tried per webhook")
    cluster = serve.add_argument_group("scale-out on Ray (pip install -e \".[ray]\"; see deploy/README.md)")
    cluster.add_argument("--ray", metavar="auto|local|ADDRESS", default=None,
                         help="run prompts on Ray workers, one per GPU: 'auto' joins the cluster this machine "
                              "belongs to (ray start), 'local' starts a private one that stops with the server, "
                              "or a cluster address")
    cluster.add_argument("--ray-workers", type=int, default=None, metavar="N",
                         help="number of workers (default: one per GPU in the cluster; CPU workers when it has "
                              "fewer GPUs than workers)")
    cluster.add_argument("--ray-affinity-wait", type=float, default=1.5, metavar="S",
                         help="seconds a prompt waits for a busy worker that already holds its models")
    cluster.add_argument("--ray-hang-timeout", type=float, default=60.0, metavar="S",
                         help="a worker silent this long while running a prompt is killed and replaced")
    run = sub.add_parser("run", help="run a workflow file (API JSON, UI JSON or PNG) without a server")
    _common(run)
    run.add_argument("workflow", type=Path)
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                     help="override an input value (JSON values are parsed: 5, 1.5, true, \"text\")")
    run.add_argument("--output-dir", type=Path, default=None, help="where SaveImage writes (default base/output)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    run.add_argument("--remote", default=None, metavar="URL",
                     help="run on a running server (http://host:port) and download the outputs")
    run.add_argument("--token", default=None, help="access token of the remote server (also GENESIS_TOKEN)")
    queue = sub.add_parser("queue", help="list, clear or interrupt the queue of a running server")
    queue.add_argument("action", choices=("list", "clear", "interrupt"))
    queue.add_argument("prompt_id", nargs="?", default=None, help="interrupt: only this prompt")
    queue.add_argument("--remote", required=True, metavar="URL", help="the server, e.g. http://127.0.0.1:8188")
    queue.add_argument("--token", default=None, help="access token (also GENESIS_TOKEN)")
    queue.add_argument("--json", action="store_true", help="list: print the server's /queue answer")
    tiny = sub.add_parser("tiny-models", help="write tiny random-weight models for tests and first start")
    tiny.add_argument("--dir", type=Path, default=None, help="models directory (default base/models)")
    tiny.add_argument("--base-directory", type=Path, default=None)
    return parser


def build_paths(args: argparse.Namespace):
    from graph_runtime.paths import FolderPaths

    base = args.base_directory or REPO_ROOT
    paths = FolderPaths(base)
    default_yaml = REPO_ROOT / "extra_model_paths.yaml"
    for yaml_path in ([default_yaml] if default_yaml.exists() else []) + list(args.extra_model_paths_config):
        paths.load_extra_model_paths(yaml_path)
    if getattr(args, "output_dir", None):
        paths.output_dir = Path(args.output_dir).resolve()
    return paths


def default_registry(paths):
    """The node registry of this server: the built-in packs (``nodes.PACKS``) plus custom nodes.

    This is the one place the runtime meets the node packs: graph_runtime never imports nodes/.
    """
    import nodes
    from graph_runtime.registry import build_registry

    return build_registry(nodes.PACKS, paths.custom_nodes_dirs)


def build_options(args: argparse.Namespace):
    from graph_runtime.context import RuntimeOptions

    mode = ("cpu" if args.cpu else "highvram" if args.highvram else "lowvram" if args.lowvram
            else "novram" if args.novram else "normal")
    return RuntimeOptions(device="cpu" if args.cpu else "auto", dtype=args.dtype, fp8_weights=args.fp8_weights,
                          preview_method=args.preview_method, cache_budget_bytes=args.cache_budget_mb << 20,
                          model_budget_bytes=None if args.model_budget_mb is None else args.model_budget_mb << 20,
                          vram_mode=mode, reserve_vram_bytes=int((args.reserve_vram or 0) * (1 << 30)),
                          network_concurrency=max(1, args.network_concurrency),
                          smart_memory=not args.disable_smart_memory)


def build_runner(args: argparse.Namespace):
    """The runtime's prompt runner for ``--ray`` (None: the in-process worker; Ray is not imported)."""
    mode = getattr(args, "ray", None)
    if not mode:
        if getattr(args, "ray_workers", None) is not None:
            raise SystemExit("error: --ray-workers needs --ray auto|local")
        return None
    import nodes
    from graph_runtime.cluster.pool import PoolSettings, RayPool
    from graph_runtime.cluster.ray_session import RaySession, RayUnavailable

    if args.ray_workers is not None and args.ray_workers < 1:
        raise SystemExit("error: --ray-workers must be at least 1")
    settings = PoolSettings(workers=args.ray_workers, affinity_wait=args.ray_affinity_wait,
                            hang_timeout=args.ray_hang_timeout, packs=tuple(nodes.PACKS))
    session = RaySession(mode)
    try:
        session.start()  # before the web app: a cluster that cannot be joined is a clear error, not a traceback
    except RayUnavailable as exc:
        raise SystemExit(f"error: {exc}") from None
    return lambda runtime: RayPool(runtime, session, settings)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS + ("-h", "--help"):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.command == "tiny-models":
        from models.tools.tiny_models import main as tiny_main

        target = args.dir or ((args.base_directory or REPO_ROOT) / "models")
        return tiny_main(["--dir", str(target)])
    if args.command == "queue":
        from web.client import queue_command, token_of

        return queue_command(args.action, args.remote, token=token_of(args), prompt_id=args.prompt_id,
                             as_json=args.json)
    if args.command == "run" and args.remote:
        from web.client import run_remote, token_of

        return run_remote(args.workflow, args.remote, token=token_of(args), overrides=args.overrides,
                          output_dir=args.output_dir or Path("output"), progress=not args.quiet)
    if args.command == "run":
        from graph_runtime.cli import run_workflow_command

        paths = build_paths(args)
        return run_workflow_command(args, paths, build_options(args), default_registry(paths))
    from web.app import serve

    paths = build_paths(args)
    return serve(args, paths, build_options(args), default_registry(paths), runner=build_runner(args))


if __name__ == "__main__":
    sys.exit(main())
