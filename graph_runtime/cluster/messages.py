"""Records that travel between the server and a worker (pickled by Ray; plain dataclasses).

Server → worker: :class:`WorkerSpec` (once, at actor creation) and :class:`JobSpec` (per prompt).
Worker → server, through the ``run`` streaming generator: lists of :class:`WorkerEvent` in the
order the executor emitted them (an empty list is a heartbeat), then one :class:`RunOutcome`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph_runtime.context import RuntimeOptions
from graph_runtime.events import Event
from graph_runtime.executor import ExecutionReport
from graph_runtime.paths import FolderPaths


@dataclass(frozen=True)
class FolderLayout:
    """The picklable part of :class:`FolderPaths` (the object itself holds caches and locks)."""

    base: str
    input_dir: str
    output_dir: str
    temp_dir: str
    user_dir: str
    custom_nodes_dirs: tuple[str, ...]
    folders: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, paths: FolderPaths) -> "FolderLayout":
        return cls(str(paths.base), str(paths.input_dir), str(paths.output_dir), str(paths.temp_dir),
                   str(paths.user_dir), tuple(str(p) for p in paths.custom_nodes_dirs),
                   {name: tuple(str(p) for p in dirs) for name, dirs in paths.folders.items()})

    def build(self, *, output_dir: str | None = None, temp_dir: str | None = None) -> FolderPaths:
        """A :class:`FolderPaths` with these folders (output and temp moved when given)."""
        paths = FolderPaths(Path(self.base))
        paths.input_dir, paths.user_dir = Path(self.input_dir), Path(self.user_dir)
        paths.output_dir = Path(output_dir or self.output_dir)
        paths.temp_dir = Path(temp_dir or self.temp_dir)
        paths.custom_nodes_dirs = [Path(p) for p in self.custom_nodes_dirs]
        paths.folders = {name: [Path(p) for p in dirs] for name, dirs in self.folders.items()}
        return paths


@dataclass(frozen=True)
class WorkerSpec:
    """How to build a worker: the server's folders and options, and its node registry.

    The worker's registry is built like the server's: ``packs`` (module names; the composition
    root passes the built-in ``nodes.PACKS``, graph_runtime never imports ``nodes``) plus the
    folders' ``custom_nodes``.  ``registry_factory`` (``"module:function"``, called without
    arguments) replaces that when set, e.g. in tests.
    ``heartbeat_s``: how often a running prompt reports in when it has nothing to say.
    """

    folders: FolderLayout
    options: RuntimeOptions = field(default_factory=RuntimeOptions)
    registry_factory: str | None = None
    heartbeat_s: float = 1.0
    packs: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkerIdentity:
    """Which actor ran a prompt, on which machine and process (stored in history as ``worker``)."""

    name: str
    host: str
    pid: int
    node_id: str = ""
    gpu_ids: tuple[Any, ...] = ()

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "pid": self.pid}


@dataclass(frozen=True)
class JobSpec:
    """One claimed prompt, as the executor needs it."""

    prompt_id: str
    prompt: dict[str, Any]
    outputs_to_execute: list[str]
    extra_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ShippedFile:
    """A file a node wrote on the worker (``type``/``subfolder``/``filename`` of its UI entry).

    ``data`` is None when the worker has no such file any more (it was shipped before, e.g. a
    cached output replayed): the server then maps the name to where it landed the first time.
    """

    kind: str  # "output" | "temp"
    subfolder: str
    filename: str
    data: bytes | None


@dataclass(frozen=True)
class WorkerEvent:
    """An executor event plus the files its UI output references (``executed`` events)."""

    event: Event
    files: tuple[ShippedFile, ...] = ()


@dataclass(frozen=True)
class RunOutcome:
    """The end of a prompt on a worker."""

    report: ExecutionReport
    worker: WorkerIdentity
    models_used: list[dict[str, Any]] = field(default_factory=list)  # ModelHandle.describe() rows
    models_loaded: list[dict[str, Any]] = field(default_factory=list)  # the ones it had to load for it
    record: dict[str, Any] = field(default_factory=dict)  # the reproducibility record (graph_runtime.provenance)
    held: frozenset[str] = frozenset()  # model ids resident after the prompt (affinity)
    seconds: float = 0.0
