"""Output files of remote prompts: shipped by the worker, landed in the server's folders.

Why not let workers write into the server's output folder directly: workers may be on other
machines, and even on one machine two workers saving ``ComfyUI_00001_.png`` at the same moment
would overwrite each other (each keeps its own file counter).  So each worker saves into a
private staging folder; every ``executed`` event carries the bytes of the files its UI output
names (:class:`OutputShipper`), and the server writes them under a name that is free in *its*
folder, rewriting the UI entry before the event reaches the WebSocket (:class:`OutputLanding`):
the canvas asks ``/view`` for a file that is already there.

Landing is atomic and never overwrites: the bytes go to a temporary file that is then
hard-linked to the chosen name (``link`` fails if the name exists, and we pick the next one).
A cached output replayed later names a file the worker already shipped (and deleted from its
staging folder): the server remembers where each (worker, file) landed.
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from graph_runtime.cluster.messages import ShippedFile
from graph_runtime.paths import FolderPaths, PathEscapeError, safe_join

log = logging.getLogger(__name__)

SHIPPED_KINDS = ("output", "temp")
_COUNTER_NAME = re.compile(r"^(?P<base>.*)_(?P<counter>\d+)_(?P<ext>\.[^.]*)?$")
_REMEMBERED = 4096


def file_entries(ui: dict[str, Any] | None) -> Iterator[dict[str, Any]]:
    """The ``{filename, subfolder, type}`` entries of a UI output, whatever their key (images, gifs, video …)."""
    for items in (ui or {}).values():
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("filename"), str) and item.get("type") in SHIPPED_KINDS:
                yield item


class OutputShipper:
    """Worker side: reads (and removes) the staged files a UI output names."""

    def __init__(self, paths: FolderPaths) -> None:
        self.paths = paths

    def ship(self, ui: dict[str, Any] | None) -> tuple[ShippedFile, ...]:
        shipped = []
        for item in file_entries(ui):
            kind, subfolder, filename = item["type"], str(item.get("subfolder") or ""), item["filename"]
            data = None
            try:
                path = safe_join(self.paths.directory_for(kind), f"{subfolder}/{filename}" if subfolder else filename)
                data = path.read_bytes()
                path.unlink()
            except (OSError, PathEscapeError):
                pass  # shipped before (a replayed cached output), or never written
            shipped.append(ShippedFile(kind, subfolder, filename, data))
        return tuple(shipped)


class OutputLanding:
    """Server side: writes shipped files into the server's folders and renames UI entries to match."""

    def __init__(self, paths: FolderPaths, remembered: int = _REMEMBERED) -> None:
        self.paths = paths
        self._where: OrderedDict[tuple[str, str, str, str], tuple[str, str]] = OrderedDict()
        self._remembered = remembered
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], int] = {}

    def land(self, worker: str, files: tuple[ShippedFile, ...]) -> None:
        """Write each file with data under a free name (remembered for :meth:`rewrite`)."""
        for shipped in files:
            if shipped.data is None:
                continue
            try:
                landed = self._write(shipped)
            except (OSError, PathEscapeError):
                log.exception("could not write %s/%s from worker %s", shipped.subfolder, shipped.filename, worker)
                continue
            with self._lock:
                key = (worker, shipped.kind, shipped.subfolder, shipped.filename)
                self._where[key] = landed
                self._where.move_to_end(key)
                while len(self._where) > self._remembered:
                    self._where.popitem(last=False)

    def rewrite(self, worker: str, ui: dict[str, Any] | None) -> dict[str, Any] | None:
        """A copy of ``ui`` whose file entries name the files as landed here."""
        if not ui:
            return ui
        out: dict[str, Any] = {}
        for key, items in ui.items():
            if not isinstance(items, list):
                out[key] = items
                continue
            new_items = []
            for item in items:
                if isinstance(item, dict) and item.get("type") in SHIPPED_KINDS and isinstance(item.get("filename"), str):
                    with self._lock:
                        landed = self._where.get((worker, item["type"], str(item.get("subfolder") or ""),
                                                  item["filename"]))
                    if landed is not None:
                        item = {**item, "subfolder": landed[0], "filename": landed[1]}
                new_items.append(item)
            out[key] = new_items
        return out

    # -- internals ---------------------------------------------------------------------------------
    def _write(self, shipped: ShippedFile) -> tuple[str, str]:
        root = self.paths.directory_for(shipped.kind)
        folder = safe_join(root, shipped.subfolder) if shipped.subfolder else root.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        if os.sep in shipped.filename or "/" in shipped.filename or shipped.filename in ("", ".", ".."):
            raise PathEscapeError(f"bad file name {shipped.filename!r}")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".landing-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(shipped.data or b"")
            name = shipped.filename
            while True:
                try:
                    os.link(tmp, folder / name)
                    break
                except FileExistsError:
                    name = self._next_name(folder, name)
        finally:
            os.unlink(tmp)
        return shipped.subfolder, name

    def _next_name(self, folder: Path, name: str) -> str:
        """A name after ``name`` in its series: ``base_00007_.png`` → the next free counter of ``base``."""
        match = _COUNTER_NAME.match(name)
        if match is None:
            stem, ext = os.path.splitext(name)
            match = _COUNTER_NAME.match(f"{stem}_0_{ext}")
            assert match is not None
        base, ext, width = match["base"], match["ext"] or "", max(len(match["counter"]), 5)
        key = (str(folder), base)
        with self._lock:
            counter = self._counters.get(key)
            if counter is None:
                pattern = re.compile(rf"^{re.escape(base)}_(\d+)_")
                counter = max((int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m), default=0)
            counter += 1
            self._counters[key] = counter
        return f"{base}_{counter:0{width}}_{ext}"
