"""The narrow context handed to each node while it runs.

Nodes never reach into the server: everything they may use — progress reporting, the
interrupt flag, model folders, the model cache, device options — comes through this object.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from graph_runtime.paths import FolderPaths

if TYPE_CHECKING:  # pragma: no cover
    from graph_runtime.model_manager import ModelManager


class InterruptedError_(Exception):
    """Raised inside a node when the user interrupted its prompt."""


Interrupted = InterruptedError_


class NodeError(Exception):
    """An error a node raises on purpose: the message is shown to the user as is.

    ``input_name`` names the input at fault, so clients can highlight it.
    """

    def __init__(self, message: str, *, input_name: str | None = None) -> None:
        super().__init__(message)
        self.input_name = input_name


@dataclass(frozen=True)
class RuntimeOptions:
    """Process-wide execution options (from the command line)."""

    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N" | "mps"
    dtype: str = "auto"  # "auto" | "fp32" | "fp16" | "bf16"
    fp8_weights: bool = False
    preview_method: str = "auto"  # "auto" | "latent2rgb" | "none"
    cache_budget_bytes: int = 512 << 20  # outputs kept across prompts; models are budgeted apart
    network_concurrency: int = 4  # remote jobs in flight per provider (network lane)
    model_budget_bytes: int | None = None  # fixed budget for loaded models (None: the free memory measured)
    # ComfyUI's memory flags: --highvram/--lowvram/--novram/--cpu as one mode, --reserve-vram,
    # --disable-smart-memory (see graph_runtime.model_manager.VramMode)
    vram_mode: str = "normal"  # "highvram" | "normal" | "lowvram" | "novram" | "cpu"
    reserve_vram_bytes: int = 0
    smart_memory: bool = True


@dataclass
class NodeContext:
    """Per-node-execution view of the runtime."""

    node_id: str
    class_type: str
    prompt_id: str
    paths: FolderPaths
    models: "ModelManager"
    options: RuntimeOptions
    _progress: Callable[[str, float, float, Any], None] = field(repr=False, default=lambda *a: None)
    _interrupted: Callable[[], bool] = field(repr=False, default=lambda: False)
    _progress_text: Callable[[str, str], None] = field(repr=False, default=lambda *a: None)
    remote_jobs: Any = None
    """For network-bound nodes run by the service: a :class:`~graph_runtime.jobs.remote.RemoteJobJournal`
    where a node records the remote jobs it starts, so a restart resumes them instead of paying twice."""
    info: dict[str, Any] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("genesis.node"))

    @property
    def interrupted(self) -> bool:
        return self._interrupted()

    def check_interrupted(self) -> None:
        """Raise :class:`Interrupted` if the user stopped this prompt (call this in long loops)."""
        if self._interrupted():
            raise Interrupted(f"prompt {self.prompt_id} interrupted")

    def progress(self, value: float, total: float, preview: Any = None) -> None:
        """Report progress (``value`` of ``total``) with an optional preview image; also checks interrupt.

        ``preview`` is a PIL image or an (H, W, 3) uint8 array; the web layer sends it as a binary frame.
        """
        self._progress(self.node_id, value, total, preview)
        self.check_interrupted()

    def progress_text(self, text: str) -> None:
        """Show ``text`` on the node while it runs (replaces the previous text; send the whole text so far).

        Each call is one WebSocket frame: callers streaming many updates throttle them (e.g. every 100 ms).
        """
        self._progress_text(self.node_id, str(text))

    def record(self, **info: Any) -> None:
        """Attach facts about this run to the node's history entry (device, dtype, model file …)."""
        self.info.update(info)
