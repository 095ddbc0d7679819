"""A newcomer's first minute: the tiny demo models of a first start, and a first Run that works
whenever it is pressed.

On a first start (no checkpoint at all) the server writes tiny random-weight models so the
default workflow runs — 17-29 s of work on a small machine.  The port opens at once anyway, so:

1. before anything else the models the default workflow names are *announced*
   (:meth:`FolderPaths.announce`): object_info and validation list them at once, so the canvas
   shows no "missing model" warning and a Run pressed in those seconds is accepted;
2. the runtime *holds* its worker (:meth:`Runtime.hold`) until the files are in place, so that
   Run waits for them instead of failing;
3. when the files are there, every canvas is told (WebSocket message
   ``genesis.models_changed``) and our frontend extension refreshes its model lists.

Files are written into a hidden staging folder and moved into ``models/`` one by one, so a
listing never shows a half-written model.
"""
from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

STAGING = ".genesis-tiny-staging"
MODELS_CHANGED = "genesis.models_changed"

Writer = Callable[[Path], Any]


def write_tiny_models(target: Path) -> Any:
    from models.tools.tiny_models import write_tiny_models as write

    return write(target)


def workflow_models(runtime: Any, workflow_file: Path | None) -> dict[str, set[str]]:
    """``{model folder: {names}}`` the workflow's loader widgets name (from the node schema)."""
    if workflow_file is None or not workflow_file.is_file():
        return {}
    from graph_runtime.schema import FileList

    try:
        prompt = runtime.to_api_prompt(json.loads(workflow_file.read_text()))
    except Exception:  # a broken default workflow only costs the announcement
        log.warning("could not read the models of %s", workflow_file, exc_info=True)
        return {}
    wanted: dict[str, set[str]] = {}
    for node in prompt.values():
        definition = runtime.registry.get(node.get("class_type"))
        if definition is None:
            continue
        for name, value in (node.get("inputs") or {}).items():
            spec = definition.input_map.get(name)
            options = getattr(spec, "options", None)
            if isinstance(options, FileList) and options.folder != "input" and isinstance(value, str):
                wanted.setdefault(options.folder, set()).add(value)
    return wanted


class DemoModels:
    """Announce, hold, write, release (see the module docstring)."""

    def __init__(self, runtime: Any, *, writer: Writer = write_tiny_models, workflow: Path | None = None,
                 on_arrival: Callable[[], None] | None = None) -> None:
        self.runtime = runtime
        self.paths = runtime.paths
        self.writer = writer
        self.workflow = workflow
        self.on_arrival = on_arrival
        self.ready = threading.Event()
        self.thread: threading.Thread | None = None

    def needed(self) -> bool:
        """A first start: no checkpoint at all."""
        return not self.paths.list_models("checkpoints")

    def announce(self) -> dict[str, set[str]]:
        """List the default workflow's models now and hold the worker until they are written."""
        wanted = workflow_models(self.runtime, self.workflow)
        for folder, names in wanted.items():
            self.paths.announce(folder, names)
        self.runtime.hold(self.ready)
        return wanted

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self._work, name="genesis-tiny-models", daemon=True)
        self.thread.start()
        return self.thread

    def _work(self) -> None:
        started = time.monotonic()
        models_dir = self.paths.models_dir
        staging = models_dir / STAGING
        try:
            shutil.rmtree(staging, ignore_errors=True)
            self.writer(staging)
            moved = _move_into_place(staging, models_dir)
            log.info("wrote %d tiny demo models to %s in %.1f s (random weights: pictures are noise; "
                     "put real checkpoints in models/checkpoints)", moved, models_dir, time.monotonic() - started)
        except Exception:
            log.exception("could not write the tiny demo models")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            self.paths.withdraw_announced()
            self.ready.set()
            if self.on_arrival is not None:
                try:
                    self.on_arrival()
                except Exception:  # telling the canvases is a courtesy
                    log.exception("could not announce the demo models")


def _move_into_place(staging: Path, models_dir: Path) -> int:
    moved = 0
    for entry in sorted(p for p in staging.iterdir() if p.is_file()):  # manifests
        if not (models_dir / entry.name).exists():
            entry.replace(models_dir / entry.name)
    for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
        target_dir = models_dir / folder.name
        target_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(folder.iterdir()):
            target = target_dir / entry.name
            if not target.exists():
                entry.replace(target)
                moved += 1
    return moved
