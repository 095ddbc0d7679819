"""Typed execution events, emitted by the executor and the queue, fanned out by the web layer.

Each event knows its ComfyUI WebSocket message ``type`` and its ``data`` payload, so the web
layer stays a thin transport.  Events of one prompt are emitted in order from one thread.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar


def now_ms() -> int:
    return int(time.time() * 1000)


def _plain(value: Any) -> Any:
    """A copy of ``value`` made of new dicts and lists (what ``dataclasses.asdict`` gives for an
    event's fields, at a fifth of its cost: events are copied for every prompt's history)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value] if isinstance(value, list) else type(value)(_plain(v) for v in value)
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        return asdict(value)
    return value


@dataclass(frozen=True)
class Event:
    TYPE: ClassVar[str] = ""
    prompt_id: str | None

    @property
    def type(self) -> str:
        return self.TYPE

    def data(self) -> dict[str, Any]:
        return {name: _plain(value) for name, value in self.__dict__.items()}


@dataclass(frozen=True)
class ExecutionStart(Event):
    TYPE: ClassVar[str] = "execution_start"
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionCached(Event):
    TYPE: ClassVar[str] = "execution_cached"
    nodes: list[str] = field(default_factory=list)
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class Executing(Event):
    """A node starts running; ``node=None`` marks the end of the prompt (ComfyUI clients wait for it)."""

    TYPE: ClassVar[str] = "executing"
    node: str | None = None
    display_node: str | None = None

    def data(self) -> dict[str, Any]:
        if self.node is None:
            return {"node": None, "prompt_id": self.prompt_id}
        return {"node": self.node, "display_node": self.display_node or self.node, "prompt_id": self.prompt_id}


@dataclass(frozen=True)
class Progress(Event):
    TYPE: ClassVar[str] = "progress"
    node: str = ""
    value: float = 0
    max: float = 1


@dataclass(frozen=True)
class NodeProgress:
    value: float
    max: float
    state: str  # "running" | "finished"
    node_id: str
    prompt_id: str
    display_node_id: str
    parent_node_id: str | None = None
    real_node_id: str | None = None


@dataclass(frozen=True)
class ProgressState(Event):
    """Progress of the node that changed plus every node still running in this prompt.

    The frontend replaces its node map with each message; it only shows running nodes, so
    finished nodes are sent once (ComfyUI resends all of them: quadratic traffic on long graphs).
    """

    TYPE: ClassVar[str] = "progress_state"
    nodes: dict[str, NodeProgress] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        # NodeProgress holds scalars only: a dict of its fields is a full copy
        return {"prompt_id": self.prompt_id, "nodes": {k: dict(v.__dict__) for k, v in self.nodes.items()}}


@dataclass(frozen=True)
class Executed(Event):
    TYPE: ClassVar[str] = "executed"
    node: str = ""
    display_node: str = ""
    output: dict[str, list] | None = None


@dataclass(frozen=True)
class ExecutionSuccess(Event):
    TYPE: ClassVar[str] = "execution_success"
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionError(Event):
    TYPE: ClassVar[str] = "execution_error"
    node_id: str = ""
    node_type: str = ""
    executed: list[str] = field(default_factory=list)
    exception_message: str = ""
    exception_type: str = ""
    traceback: list[str] = field(default_factory=list)
    current_inputs: dict[str, Any] = field(default_factory=dict)
    current_outputs: list[str] = field(default_factory=list)
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class ExecutionInterrupted(Event):
    TYPE: ClassVar[str] = "execution_interrupted"
    node_id: str | None = None
    node_type: str | None = None
    executed: list[str] = field(default_factory=list)
    timestamp: int = field(default_factory=now_ms)


@dataclass(frozen=True)
class PreviewImage(Event):
    """A binary preview (PIL image) for a node; the web layer encodes it as frame type 1 or 4."""

    TYPE: ClassVar[str] = "preview"
    node_id: str = ""
    display_node_id: str = ""
    image: Any = None
    image_format: str = "JPEG"

    def data(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "display_node_id": self.display_node_id, "prompt_id": self.prompt_id}


@dataclass(frozen=True)
class ProgressText(Event):
    """Text shown on a node while it runs (ComfyUI's ``progress_text``; binary frame type 3).

    ``text`` is the whole text so far: the frontend replaces the node's text preview with each
    frame, so a receiver that missed frames still shows the latest state.
    """

    TYPE: ClassVar[str] = "progress_text"
    node_id: str = ""
    display_node_id: str = ""
    text: str = ""


@dataclass(frozen=True)
class QueueStatus(Event):
    """The queue changed: ``queue_remaining`` counts pending plus running prompts (broadcast)."""

    TYPE: ClassVar[str] = "status"
    queue_remaining: int = 0

    def data(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self.queue_remaining}}}


EventSink = Callable[[Event], None]


def discard(event: Event) -> None:
    """An EventSink that drops everything (CLI without progress, tests)."""
