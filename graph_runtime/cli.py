"""``python server.py run WORKFLOW``: run a workflow file in-process, no server.

Reads API JSON, UI JSON or a PNG with embedded ``prompt``/``workflow`` chunks, applies
``--set NODE_ID.INPUT=VALUE`` overrides, validates, runs with a progress bar and prints the
paths of the files it wrote.  Exit codes: 0 success, 1 execution error, 2 invalid workflow
or input, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from graph_runtime.context import RuntimeOptions
from graph_runtime.events import Event, Executing, Progress
from graph_runtime.executor import ExecutionReport, Executor, InterruptToken
from graph_runtime.file_hashes import FileHashes
from graph_runtime.model_manager import manager_for
from graph_runtime.node_info import object_info
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.validation import PromptValidator

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line or the workflow file, reported without a traceback."""


def parse_override(text: str) -> tuple[str, str, Any]:
    """``NODE_ID.INPUT=VALUE`` → (node_id, input, value); VALUE is JSON if it parses, else text."""
    key, sep, raw = text.partition("=")
    node_id, dot, name = key.rpartition(".")
    if not sep or not dot or not node_id or not name:
        raise UsageError(f"--set {text!r}: expected NODE_ID.INPUT=VALUE, e.g. --set 3.seed=42")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name, value


def apply_overrides(prompt: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        node_id, name, value = parse_override(text)
        if node_id not in prompt:
            known = ", ".join(f"{k} ({v.get('class_type')})" for k, v in list(prompt.items())[:30])
            raise UsageError(f"--set {text!r}: the workflow has no node {node_id!r}. Nodes: {known}")
        prompt[node_id].setdefault("inputs", {})[name] = value
    return prompt


def load_api_prompt(path: Path, registry: NodeRegistry, paths: FolderPaths) -> tuple[dict, dict | None]:
    """The API prompt of a workflow file and its UI workflow (for PNG metadata), if any."""
    return load_prompt_file(path, lambda: object_info(registry, paths))


def load_prompt_file(path: Path, node_defs: Callable[[], dict[str, Any]]) -> tuple[dict, dict | None]:
    """The API prompt of a workflow file and its UI workflow, converting UI workflows with the
    node definitions ``node_defs()`` returns (called only when needed: the remote CLI fetches
    them from the server)."""
    from graph_runtime.workflow_files import WorkflowFormatError, load_workflow_file
    from graph_runtime.workflow_files.ui_to_api import convert_ui_to_api

    if not path.exists():
        raise UsageError(f"workflow file not found: {path}")
    try:
        loaded = load_workflow_file(path)
    except WorkflowFormatError as exc:
        raise UsageError(f"{path}: {exc}") from exc
    # Prefer the UI workflow when the file has one: converting it with our node definitions fills
    # inputs that older ComfyUI versions did not write into the embedded API prompt (defaults added
    # since), exactly as the canvas does when the file is opened.
    if loaded.ui_workflow is not None:
        try:
            return convert_ui_to_api(loaded.ui_workflow, node_defs()), loaded.ui_workflow
        except WorkflowFormatError as exc:
            if loaded.api_prompt is None:
                raise UsageError(f"{path}: {exc}") from exc
    if loaded.api_prompt is not None:
        return loaded.api_prompt, loaded.ui_workflow
    raise UsageError(f"{path}: no workflow found (expected API JSON, UI JSON or a PNG with a workflow)")


class ProgressPrinter:
    """A tqdm bar over nodes, with the step count of the running node in its postfix."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="node", file=stream, disable=not enabled, dynamic_ncols=True)
        self.class_of: dict[str, str] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, Executing) and event.node is not None:
            self.bar.update(1)
            self.bar.set_description(f"{event.node} {self.class_of.get(event.node, '')}".strip())
        elif isinstance(event, Progress):
            self.bar.set_postfix_str(f"step {int(event.value)}/{int(event.max)}")

    def close(self) -> None:
        self.bar.close()


def written_files(report: ExecutionReport, paths: FolderPaths) -> list[Path]:
    files = []
    for ui in report.outputs.values():
        for key in ("images", "gifs", "audio", "video", "files"):
            for item in ui.get(key, []):
                if isinstance(item, dict) and item.get("type") == "output":
                    files.append(paths.output_dir / item.get("subfolder", "") / item["filename"])
    return files


def run_workflow(path: Path, paths: FolderPaths, options: RuntimeOptions, *, registry: NodeRegistry,
                 overrides: list[str] = (), progress: bool = True,
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run one workflow file; returns the process exit code."""
    paths.ensure_dirs()
    try:
        prompt, ui_workflow = load_api_prompt(path, registry, paths)
        prompt = apply_overrides(prompt, list(overrides))
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_INVALID
    result = PromptValidator(registry, paths, options).validate(prompt)
    if not result.ok:
        print(f"error: the workflow is not valid\n{result.summary()}", file=err)
        return EXIT_INVALID
    executor = Executor(registry, paths, options=options,
                        models=manager_for(options, hashes=FileHashes(paths.user_dir / "model_hashes.json")))
    executor.models.begin_prompt()  # saved pictures record the models this run used
    printer = ProgressPrinter(len(result.prompt), err, progress)
    printer.class_of = {k: v["class_type"] for k, v in result.prompt.items()}
    token = InterruptToken()
    previous = signal.signal(signal.SIGINT, lambda *_: token.set()) if _main_thread() else None
    try:
        extra = {"extra_pnginfo": {"workflow": ui_workflow}} if ui_workflow else {}
        report = executor.execute("cli", result.prompt, result.outputs, extra_data=extra, sink=printer,
                                  interrupt=token)
    finally:
        printer.close()
        executor.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if report.status == "interrupted":
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
    if report.status == "error":
        e = report.error or {}
        print(f"error: node {e.get('node_id')} ({e.get('node_type')}) failed: {e.get('exception_message')}", file=err)
        return EXIT_FAILED
    for file in written_files(report, paths):
        print(file, file=out)
    return EXIT_OK


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_workflow_command(args: argparse.Namespace, paths: FolderPaths, options: RuntimeOptions,
                         registry: NodeRegistry) -> int:
    return run_workflow(args.workflow, paths, options, registry=registry, overrides=args.overrides,
                        progress=not args.quiet)
