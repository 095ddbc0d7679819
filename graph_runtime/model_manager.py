"""The one authority on which models are loaded, where they live, and what gets freed.

Why handles: a node output (MODEL, CLIP, VAE, CONTROL_NET, a VLM …) used to hold the loaded
``nn.Module`` itself, so the output cache kept every model alive and ``/free`` freed nothing.
Now a loader asks the manager for a :class:`ModelHandle` and puts the *handle* into its output::

    handle = ctx.models.load(("unet", *file_key), lambda: build_unet(path), ops=TorchModuleOps(),
                             device="cuda:0", sources=(path,), label="tiny-sd15 UNet")
    module = handle.get()     # loaded (again, after an eviction) and on its device, pinned for this node

The manager owns the loaded value; a handle holds only the key, the loader and metadata, so
evicting a model (LRU under the budget, ``/free``, an out-of-memory retry) really drops the last
reference to its tensors.  Loading the same key twice returns the same handle and one copy.

Placement by budget: before a model is loaded or moved to its device, the manager makes room:
it evicts least-recently-used models not pinned by the running node, or — on an accelerator,
when the mode allows — first offloads them to the CPU; when that is not enough it raises
:class:`ModelMemoryError` saying how much was needed and what was loaded.  Free memory comes
from a :class:`~graph_runtime.device_memory.DeviceMemory` probe (``torch.cuda.mem_get_info``,
available RAM) unless a fixed ``budget_bytes`` is given.

No torch here: what "size", "device" and "move" mean for a value comes from the
:class:`ModelOps` the loader passes (``nodes.devices.TorchModuleOps`` for torch modules).

Concurrency: one ``RLock`` guards the tables; a model is loaded under its own lock so two nodes
asking for the same key wait for one load.  The set of handles a node used (pinned until it
ends) is a ``contextvars`` value, so async nodes and ``asyncio.to_thread`` calls each see their
own node's scope.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Hashable, Iterable, Iterator, Protocol, Sequence

from graph_runtime.device_memory import DeviceMemory

log = logging.getLogger(__name__)

CPU = "cpu"


class VramMode(str, Enum):
    """ComfyUI's memory flags (``--highvram`` … ``--novram``, ``--cpu``) as one setting."""

    HIGH = "highvram"      # keep models on the accelerator; evict instead of offloading to RAM
    NORMAL = "normal"      # whole models move between accelerator and RAM as room requires
    LOW = "lowvram"        # models that do not fit run with their blocks offloaded (streamed per layer)
    NO = "novram"          # every accelerator model runs block-offloaded
    CPU = "cpu"            # everything on the CPU


class ModelMemoryError(MemoryError):
    """Not enough room for a model even after evicting/offloading everything allowed."""


class ModelOps(Protocol):
    """How the manager measures and moves one kind of loaded value (torch code lives in ``nodes``).

    Optional: ``stream(value, device) -> bool`` turns on block offloading (``--lowvram``/``--novram``).
    """

    def size_bytes(self, value: Any) -> int: ...

    def device_of(self, value: Any) -> str: ...

    def move(self, value: Any, device: str) -> None: ...


def default_size_of(obj: Any) -> int:
    """Bytes held by an object's tensors, found through ``size_bytes()``, ``parameters()`` or ``nbytes``."""
    fn = getattr(obj, "size_bytes", None)
    if callable(fn):
        return int(fn())
    params = getattr(obj, "parameters", None)
    if callable(params):
        try:
            return sum(p.numel() * p.element_size() for p in params())
        except Exception:  # pragma: no cover - exotic objects
            return 0
    return int(getattr(obj, "nbytes", 0) or 0)


class PlainOps:
    """Ops for values that live in RAM and never move (embeddings, detectors, test objects)."""

    def size_bytes(self, value: Any) -> int:
        return default_size_of(value)

    def device_of(self, value: Any) -> str:
        return CPU

    def move(self, value: Any, device: str) -> None:
        return None


PLAIN_OPS = PlainOps()


class ModelRef(Protocol):
    """What a node output holds for its weights: anything whose ``get()`` returns the loaded value."""

    def get(self) -> Any: ...


@dataclass(frozen=True)
class Resident:
    """A :class:`ModelRef` to a value that is simply kept (tests, values built in place).

    The manager does not know about it, so it is never evicted; loaders use :class:`ModelHandle`.
    """

    value: Any = field(compare=False)

    def get(self) -> Any:
        return self.value

    def model_handles(self) -> tuple:
        return ()


def as_ref(value: Any) -> Any:
    """``value`` if it is already a ref (a handle or a :class:`Resident`), else a :class:`Resident` holding it."""
    if value is None:
        return None
    return value if isinstance(value, (ModelHandle, Resident)) else Resident(value)


def _attr(value: Any, name: str) -> Any:
    """getattr that also survives classes whose ``__getattr__`` raises something else (diffusers raises KeyError)."""
    try:
        return getattr(value, name, None)
    except Exception:
        return None


@dataclass
class _Slot:
    """A loaded value (owned by the manager)."""

    value: Any
    size: int
    device: str
    pins: int = 0
    streamed: bool = False  # block-offloaded: lives in RAM, runs on its device layer by layer
    loaded_at: float = field(default_factory=time.monotonic)
    source_sha256: dict[str, str | None] | None = None
    """The SHA-256 of the files this load read, once a record asked (see ``prompt_models``)."""


class ModelHandle:
    """A model owned by a :class:`ModelManager`: cheap to copy around, never holding the weights.

    ``get()`` returns the loaded value — loading it again if it was evicted, moving it back to its
    device if it was offloaded — and pins it until the running node ends.  Metadata (``sources``,
    ``label``, ``device``, ``dtype``, ``size_bytes``) stays readable without loading anything.
    """

    __slots__ = ("key", "label", "sources", "wanted_device", "dtype", "options", "_manager", "_loader", "_ops",
                 "_estimate", "_on_evict", "_load_lock", "_last_size", "__weakref__")

    def __init__(self, manager: "ModelManager", key: Hashable, loader: Callable[[], Any], *, ops: ModelOps,
                 device: str, sources: Sequence[str], label: str, estimate_bytes: int | None,
                 on_evict: Callable[[Any], None] | None, dtype: str | None, options: dict | None) -> None:
        self.key = key
        self.label = label
        self.sources = tuple(str(s) for s in sources)
        self.wanted_device = device
        self.dtype = dtype
        self.options = dict(options or {})
        self._manager = manager
        self._loader = loader
        self._ops = ops
        self._estimate = estimate_bytes
        self._on_evict = on_evict
        self._load_lock = threading.Lock()
        self._last_size: int | None = None

    # -- use ----------------------------------------------------------------------------------
    def get(self) -> Any:
        """The loaded value on its device (loads/reloads as needed; pinned for the current node)."""
        return self._manager._acquire(self)

    def peek(self) -> Any | None:
        """The value if it is loaded now, else None (never loads, never pins)."""
        return self._manager._peek(self)

    def load_detached(self) -> Any:
        """A fresh copy from the loader that the manager does not own (e.g. to quantize or save it)."""
        return self._loader()

    def model_handles(self) -> tuple["ModelHandle", ...]:
        return (self,)

    # -- state --------------------------------------------------------------------------------
    @property
    def manager(self) -> "ModelManager":
        return self._manager

    @property
    def ops(self) -> ModelOps:
        return self._ops

    @property
    def loaded(self) -> bool:
        return self._manager._peek(self) is not None

    @property
    def size_bytes(self) -> int:
        """Measured bytes when loaded (or last loaded), else the loader's estimate (0 if none)."""
        if self._last_size is not None:
            return self._last_size
        return int(self._estimate or 0)

    @property
    def device(self) -> str | None:
        """Where the weights are now (None when not loaded)."""
        return self._manager._device_now(self)

    def offload(self, device: str = CPU) -> bool:
        """Move the weights off their accelerator (True if they moved)."""
        return self._manager.offload(self, device)

    def evict(self) -> bool:
        """Drop the loaded value (True if it was loaded); the next ``get()`` loads it again."""
        return self._manager.evict(self)

    def describe(self) -> dict[str, Any]:
        """What this handle is, for history records and ``/api/system_stats``."""
        return {"key": repr(self.key), "label": self.label, "files": list(self.sources), "dtype": self.dtype,
                "device": self.device or self.wanted_device, "loaded": self.loaded, "size_bytes": self.size_bytes,
                **({"options": self.options} if self.options else {})}

    def __repr__(self) -> str:
        return f"ModelHandle({self.label or self.key!r}, {'loaded' if self.loaded else 'not loaded'})"

    def __reduce__(self):  # a handle never travels by pickle (it would copy the loader, not the weights)
        raise TypeError("a ModelHandle belongs to its process's ModelManager and cannot be pickled")


_SCOPE: contextvars.ContextVar["_NodeScope | None"] = contextvars.ContextVar("genesis_model_scope", default=None)


@dataclass
class PromptModels:
    """The models one prompt used, in first-use order (:meth:`ModelManager.begin_prompt`)."""

    used: dict[Hashable, "ModelHandle"] = field(default_factory=dict)


_PROMPT_MODELS: contextvars.ContextVar["PromptModels | None"] = contextvars.ContextVar("genesis_prompt_models",
                                                                                      default=None)


@dataclass
class _NodeScope:
    node_id: str
    used: dict[Hashable, "ModelHandle"] = field(default_factory=dict)
    working_bytes: int = 0


@dataclass(frozen=True)
class LoadedModel:
    """One row of :meth:`ModelManager.loaded_models`."""

    label: str
    key: str
    device: str
    size_bytes: int
    pinned: bool
    files: tuple[str, ...]


class ModelManager:
    """Loaded models keyed by what identifies their weights, placed under a memory budget.

    * ``budget_bytes``: a fixed budget for all resident models (``--model-budget-mb``); None: use
      the free memory the probe reports.
    * ``reserve_bytes``: memory left free on each device for activations and the OS
      (``--reserve-vram``).
    * ``mode``: :class:`VramMode`; ``smart_memory=False`` (``--disable-smart-memory``) offloads
      accelerator models to RAM after each node instead of keeping them.
    """

    def __init__(self, budget_bytes: int | None = None, size_of: Callable[[Any], int] | None = None, *,
                 memory: DeviceMemory | None = None, reserve_bytes: int = 0, mode: VramMode = VramMode.NORMAL,
                 smart_memory: bool = True, hashes: Any = None) -> None:
        self.budget_bytes = budget_bytes
        self.memory = memory or DeviceMemory()
        self.reserve_bytes = int(reserve_bytes)
        self.mode = mode
        self.smart_memory = smart_memory
        self.hashes = hashes  # graph_runtime.file_hashes.FileHashes, for records of what a prompt loaded
        self._default_ops: ModelOps = PlainOps() if size_of is None else _SizeOnlyOps(size_of)
        self._slots: OrderedDict[Hashable, _Slot] = OrderedDict()  # LRU order: first = least recent
        self._handles: "weakref.WeakValueDictionary[Hashable, ModelHandle]" = weakref.WeakValueDictionary()
        self._lock = threading.RLock()
        self.loads = 0
        self.load_seconds = 0.0  # time spent in loaders (``/metrics``)
        self.hits = 0
        self.evictions = 0
        self.offloads = 0

    # -- the API loaders use --------------------------------------------------------------------
    def handle(self, key: Hashable, loader: Callable[[], Any], *, ops: ModelOps | None = None, device: str = CPU,
               sources: Iterable[Any] = (), label: str = "", estimate_bytes: int | None = None,
               on_evict: Callable[[Any], None] | None = None, dtype: str | None = None,
               options: dict | None = None) -> ModelHandle:
        """The handle for ``key`` (the existing one if any), without loading it.

        ``loader`` builds the value (on ``device``); ``ops`` measures and moves it; ``sources`` are
        the files it is read from (for records and hashes); ``estimate_bytes`` lets the manager make
        room before the first load (e.g. the file size); ``on_evict`` runs when the value is dropped.
        """
        with self._lock:
            existing = self._handles.get(key)
            if existing is not None:
                return existing
            handle = ModelHandle(self, key, loader, ops=ops or self._default_ops, device=str(device),
                                 sources=[str(s) for s in sources], label=label or _label(key),
                                 estimate_bytes=estimate_bytes, on_evict=on_evict, dtype=dtype, options=options)
            self._handles[key] = handle
            return handle

    def load(self, key: Hashable, loader: Callable[[], Any], **kwargs: Any) -> ModelHandle:
        """:meth:`handle`, then load it now (so a bad file fails in the loader node, not later)."""
        handle = self.handle(key, loader, **kwargs)
        handle.get()
        return handle

    def get(self, key: Hashable, loader: Callable[[], Any], *, on_evict: Callable[[Any], None] | None = None,
            **kwargs: Any) -> Any:
        """The thin form: ``load(key, loader).get()`` — for values used inside one node and not output."""
        return self.load(key, loader, on_evict=on_evict, **kwargs).get()

    def peek(self, key: Hashable) -> Any | None:
        with self._lock:
            slot = self._slots.get(key)
            return None if slot is None else slot.value

    # -- node and prompt scopes (the executor calls these) -------------------------------------------
    @contextlib.contextmanager
    def node_scope(self, node_id: str, working_bytes: int = 0, device: str | None = None,
                   inputs: dict | None = None) -> Iterator[_NodeScope]:
        """Pin every model a node gets until it ends; reserve ``working_bytes`` on ``device`` first.

        With ``inputs`` (the node's input values) and no explicit reservation, values that declare
        ``working_memory(inputs) -> (device, bytes)`` (a MODEL next to a LATENT) give the reservation.
        Reserving evicts/offloads other models when the device lacks room; when even that is not
        enough the node still runs (and may hit the out-of-memory retry).
        """
        if inputs and not working_bytes:
            found = working_memory_of(inputs)
            if found is not None:
                device, working_bytes = found
        scope = _NodeScope(node_id, working_bytes=int(working_bytes))
        if working_bytes and device:
            keep = {h.key for h in model_handles_in(list((inputs or {}).values()))}
            try:
                self.make_room(device, int(working_bytes), keep=keep)
            except ModelMemoryError:
                log.info("node %s: %.0f MB of working memory not available on %s; running anyway", node_id,
                         working_bytes / 2**20, device)
        token = _SCOPE.set(scope)
        try:
            yield scope
        finally:
            _SCOPE.reset(token)
            with self._lock:
                for key in scope.used:
                    slot = self._slots.get(key)
                    if slot is not None and slot.pins > 0:
                        slot.pins -= 1
                if not self.smart_memory:
                    for key in list(scope.used):
                        handle = self._handles.get(key)
                        if handle is not None:
                            self._offload_locked(handle, CPU)

    def prepare_for(self, node_id: str, working_bytes: int = 0, device: str | None = None,
                    inputs: dict | None = None):
        """Alias of :meth:`node_scope` under the name the executor uses."""
        return self.node_scope(node_id, working_bytes, device, inputs)

    def free_for_retry(self) -> int:
        """After an out-of-memory error: drop every model the running node has not pinned.

        Returns the bytes released (estimated from the models' sizes); the device allocator's cache
        is emptied too, so the retry starts from the most room there can be.
        """
        scope = _SCOPE.get()
        keep = set(scope.used) if scope is not None else set()
        freed = 0
        with self._lock:
            for key in [k for k, s in self._slots.items() if s.pins == 0 and k not in keep]:
                freed += self._slots[key].size
                self._drop(key)
        self.memory.release_cached()
        log.warning("out of memory: unloaded %.1f MB of models not needed by the node, retrying", freed / 2**20)
        return freed

    def begin_prompt(self) -> "PromptModels":
        """Start recording which models a prompt uses (see :meth:`prompt_models`).

        The record lives in the calling context (a ``contextvars`` value, copied into the asyncio
        tasks and ``asyncio.to_thread`` calls the prompt's nodes run in), so prompts in flight at
        once — an image prompt on the GPU and a parked video prompt that resumes later — each
        keep their own list.  Returns the record, for callers outside that context.
        """
        record = PromptModels()
        _PROMPT_MODELS.set(record)
        return record

    def note_prompt_use(self, handles: Iterable["ModelHandle"], record: "PromptModels | None" = None) -> None:
        """Count handles as used by the current prompt without loading them: the models behind
        node outputs replayed from the output cache still made this prompt's results."""
        record = record if record is not None else _PROMPT_MODELS.get()
        if record is None:
            return
        with self._lock:
            for handle in handles:
                record.used.setdefault(handle.key, handle)

    def prompt_models(self, *, with_sha256: bool = True, record: "PromptModels | None" = None) -> list[dict[str, Any]]:
        """The models used since :meth:`begin_prompt` (of this context, or ``record``): files (with
        SHA-256 when hashes are known), dtype, device."""
        record = record if record is not None else _PROMPT_MODELS.get()
        with self._lock:
            used = list(record.used.values()) if record is not None else []
        rows = []
        for handle in used:
            row = handle.describe()
            if with_sha256 and self.hashes is not None:
                row["sha256"] = dict(self._source_sha256(handle))
            rows.append(row)
        return rows

    def _source_sha256(self, handle: ModelHandle) -> dict[str, str | None]:
        """The SHA-256 of ``handle``'s files: for a loaded model, those of the files as it loaded
        them, asked once per load (a record per prompt used to stat every file of a model folder
        again: about 1 ms a prompt); for a model not loaded now (an output replayed from the
        cache), as the files are now."""
        with self._lock:
            slot = self._slots.get(handle.key)
        if slot is not None and slot.source_sha256 is not None:
            return slot.source_sha256
        digests: dict[str, str | None] = {}
        for path in handle.sources:
            try:
                digests[path] = self.hashes.sha256(path)  # type: ignore[union-attr]
            except OSError:
                digests[path] = None
        if slot is not None:
            slot.source_sha256 = digests
        return digests

    # -- freeing ---------------------------------------------------------------------------------
    def evict(self, handle: ModelHandle) -> bool:
        with self._lock:
            if handle.key not in self._slots:
                return False
            self._drop(handle.key)
            return True

    def offload(self, handle: ModelHandle, device: str = CPU) -> bool:
        with self._lock:
            return self._offload_locked(handle, device)

    def unload_all(self) -> int:
        """Drop every model not in use by a running node (``POST /free``); returns how many."""
        with self._lock:
            keys = [k for k, s in self._slots.items() if s.pins == 0]
            for key in keys:
                self._drop(key)
        self.memory.release_cached()
        return len(keys)

    def free(self, *, unload_models: bool = False, free_memory: bool = False) -> int:
        """``POST /free``: ``unload_models`` drops the models, ``free_memory`` also returns freed
        memory to the OS and the device; returns how many models were unloaded."""
        count = self.unload_all() if (unload_models or free_memory) else 0
        if free_memory:
            self.memory.release_cached()
        return count

    # -- placement ---------------------------------------------------------------------------------
    def capacity(self, device: str) -> int | None:
        """Bytes models may hold on ``device`` now: held + free − reserve, capped by the budget (None: unknown)."""
        hard = self._hard_capacity(device)
        if self.budget_bytes is not None:
            return self.budget_bytes if hard is None else min(hard, self.budget_bytes)
        return hard

    def _hard_capacity(self, device: str) -> int | None:
        """What physically fits (measured free memory); the budget is a preference on top of it."""
        free = self.memory.free_bytes(device)
        if free is None:
            return None
        reserve = 0 if _same_device(device, CPU) else self.reserve_bytes
        return self.held_bytes(device) + free - reserve

    def make_room(self, device: str, need: int, keep: Iterable[Hashable] = ()) -> None:
        """Evict (or offload) least-recently-used, unpinned models until ``need`` more bytes fit on ``device``."""
        with self._lock:
            self._make_room_locked(device, need, set(keep))

    def held_bytes(self, device: str | None = None) -> int:
        with self._lock:
            return sum(s.size for s in self._slots.values() if device is None or _same_device(s.device, device))

    @property
    def total_bytes(self) -> int:
        return self.held_bytes()

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._slots)

    def loaded_models(self) -> list[LoadedModel]:
        with self._lock:
            rows = []
            for key, slot in self._slots.items():
                handle = self._handles.get(key)
                rows.append(LoadedModel(handle.label if handle else _label(key), repr(key), slot.device, slot.size,
                                        slot.pins > 0, handle.sources if handle else ()))
            return rows

    def stats(self) -> dict[str, Any]:
        """The manager's view for ``/api/system_stats``."""
        return {"mode": self.mode.value, "smart_memory": self.smart_memory, "budget_bytes": self.budget_bytes,
                "reserve_bytes": self.reserve_bytes, "held_bytes": self.held_bytes(), "loads": self.loads,
                "hits": self.hits, "evictions": self.evictions, "offloads": self.offloads,
                "models": [r.__dict__ for r in self.loaded_models()]}

    # -- internals --------------------------------------------------------------------------------
    def _peek(self, handle: ModelHandle) -> Any | None:
        with self._lock:
            slot = self._slots.get(handle.key)
            return None if slot is None else slot.value

    def _device_now(self, handle: ModelHandle) -> str | None:
        with self._lock:
            slot = self._slots.get(handle.key)
            return None if slot is None else slot.device

    def _note_use(self, handle: ModelHandle, slot: _Slot) -> None:
        scope = _SCOPE.get()
        if scope is not None and handle.key not in scope.used:
            scope.used[handle.key] = handle
            slot.pins += 1
        record = _PROMPT_MODELS.get()
        if record is not None:
            record.used.setdefault(handle.key, handle)

    def _acquire(self, handle: ModelHandle) -> Any:
        with self._lock:
            slot = self._slots.get(handle.key)
            if slot is not None:
                self._slots.move_to_end(handle.key)
                self.hits += 1
                self._note_use(handle, slot)
                self._ensure_on_device(handle, slot)
                return slot.value
        with handle._load_lock:
            with self._lock:  # another thread may have loaded it meanwhile
                slot = self._slots.get(handle.key)
                if slot is not None:
                    self._slots.move_to_end(handle.key)
                    self._note_use(handle, slot)
                    return slot.value
                if handle._estimate:
                    self._make_room_locked(handle.wanted_device, int(handle._estimate), {handle.key})
            started = time.perf_counter()
            value = handle._loader()
            loaded_in = time.perf_counter() - started
            size = int(handle.ops.size_bytes(value))
            device = handle.ops.device_of(value)
            with self._lock:
                self.loads += 1
                self.load_seconds += loaded_in
                slot = _Slot(value, size, device)
                self._slots[handle.key] = slot
                self._slots.move_to_end(handle.key)
                handle._last_size = size
                self._note_use(handle, slot)
                # the model is in memory now: bring the others back under the budget around it
                self._make_room_locked(device, 0, {handle.key}, soft=True)
                self._ensure_on_device(handle, slot)
            log.info("loaded %s (%.1f MB on %s)", handle.label, size / 2**20, device)
            return value

    def _ensure_on_device(self, handle: ModelHandle, slot: _Slot) -> None:
        """Put a model on its device when it is used: loaders may build on the CPU, and an offloaded model
        comes back (after making room).  ``--novram`` streams every accelerator model block by block from
        RAM; ``--lowvram`` does so for a model that does not fit even after freeing everything else."""
        want = handle.wanted_device
        if _same_device(slot.device, want) or slot.streamed:
            return
        accelerator = not _same_device(want, CPU)
        if accelerator and self.mode is VramMode.NO and self._stream(handle, slot):
            return
        try:
            self._make_room_locked(want, slot.size, {handle.key})
        except ModelMemoryError:
            if not (accelerator and self.mode is VramMode.LOW and self._stream(handle, slot)):
                raise
            return
        handle.ops.move(slot.value, want)
        slot.device = handle.ops.device_of(slot.value)

    def _stream(self, handle: ModelHandle, slot: _Slot) -> bool:
        """Block offloading (weights stay in RAM, each block visits the device when it runs)."""
        stream = getattr(handle.ops, "stream", None)
        if not callable(stream) or not stream(slot.value, handle.wanted_device):
            return False
        slot.streamed = True
        slot.device = CPU
        log.info("%s runs block by block from RAM on %s", handle.label, handle.wanted_device)
        return True

    def _offload_locked(self, handle: ModelHandle, device: str) -> bool:
        slot = self._slots.get(handle.key)
        if slot is None or _same_device(slot.device, device) or slot.pins > 0:
            return False
        handle.ops.move(slot.value, device)
        new_device = handle.ops.device_of(slot.value)
        if _same_device(new_device, slot.device):
            return False
        slot.device = new_device
        self.offloads += 1
        log.info("offloaded %s to %s", handle.label, device)
        return True

    def _make_room_locked(self, device: str, need: int, keep: set, soft: bool = False) -> None:
        """Evict/offload LRU models until ``need`` more bytes fit under the capacity of ``device``.

        The budget is soft (a model bigger than it still loads, alone); measured free memory is
        hard: when even that cannot be met, :class:`ModelMemoryError` (unless ``soft``).
        """
        accelerator = not _same_device(device, CPU)
        while True:
            cap = self.capacity(device)
            if cap is None or self.held_bytes(device) + need <= cap:
                return
            victim = next((k for k, s in self._slots.items()
                           if s.pins == 0 and k not in keep and _same_device(s.device, device)), None)
            if victim is None:
                break
            handle = self._handles.get(victim)
            if not (accelerator and handle is not None and self.mode is not VramMode.HIGH
                    and self._fits_in_ram(self._slots[victim].size) and self._offload_locked(handle, CPU)):
                self._drop(victim)
        hard = self._hard_capacity(device)
        if not soft and hard is not None and self.held_bytes(device) + need > hard:
            raise ModelMemoryError(self._no_room_message(device, need, hard))

    def _fits_in_ram(self, size: int) -> bool:
        free = self.memory.free_bytes(CPU)
        return free is None or size < free

    def _no_room_message(self, device: str, need: int, cap: int) -> str:
        loaded = ", ".join(f"{r.label} ({r.size_bytes / 2**20:.0f} MB on {r.device}{', in use' if r.pinned else ''})"
                           for r in self.loaded_models()) or "nothing"
        return (f"not enough memory on {device}: {need / 2**20:.0f} MB needed, {max(cap - self.held_bytes(device), 0) / 2**20:.0f} MB "
                f"available to models after freeing what the running node does not use; loaded: {loaded}. "
                f"Use a smaller size or batch, a quantized model (QuantizeModel / fp8 weight_dtype), or --lowvram.")

    def _drop(self, key: Hashable) -> None:
        slot = self._slots.pop(key)
        handle = self._handles.get(key)
        self.evictions += 1
        if handle is not None and handle._on_evict is not None:
            try:
                handle._on_evict(slot.value)
            except Exception:  # pragma: no cover
                log.exception("error while unloading %s", key)
        label = handle.label if handle is not None else _label(key)
        del slot
        log.info("unloaded %s", label)


_OOM_CLASSES = frozenset({"OutOfMemoryError"})  # torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError)
_OOM_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocator's out-of-memory error (CUDA, MPS, the CPU allocator), judged without torch:
    by the exception class name, or by the message of the RuntimeErrors MPS and the CPU allocator raise."""
    if any(cls.__name__ in _OOM_CLASSES for cls in type(exc).__mro__):
        return True
    if isinstance(exc, MemoryError) and not isinstance(exc, ModelMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _OOM_MESSAGES)


def out_of_memory_message(class_type: str, node_id: str, exc: BaseException, loaded: list[LoadedModel]) -> str:
    """The error a node gets when it ran out of memory again after everything else was freed."""
    kept = ", ".join(f"{m.label} ({m.size_bytes / 2**20:.0f} MB on {m.device})" for m in loaded) or "no models"
    return (f"{class_type} (node {node_id}) ran out of memory, again after every model it does not use was "
            f"unloaded ({kept} still loaded): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}. "
            f"Use a smaller image size or batch, a quantized model (QuantizeModel, fp8 weight_dtype, a GGUF/NF4 "
            f"checkpoint), or start with --lowvram.")


def manager_for(options: Any, **kwargs: Any) -> ModelManager:
    """The manager a runtime's :class:`~graph_runtime.context.RuntimeOptions` ask for (memory flags)."""
    mode = VramMode(getattr(options, "vram_mode", "normal") or "normal")
    if getattr(options, "device", "auto") == "cpu":
        mode = VramMode.CPU
    return ModelManager(getattr(options, "model_budget_bytes", None), reserve_bytes=getattr(options, "reserve_vram_bytes", 0),
                        mode=mode, smart_memory=getattr(options, "smart_memory", True), **kwargs)


class _SizeOnlyOps(PlainOps):
    def __init__(self, size_of: Callable[[Any], int]) -> None:
        self._size_of = size_of

    def size_bytes(self, value: Any) -> int:
        return int(self._size_of(value))


def _same_device(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    if a == b:
        return True
    # "cuda" and "cuda:0" are one device; "cpu" has no index
    norm = lambda d: d if ":" in d or d == CPU else f"{d}:0"  # noqa: E731
    return norm(a) == norm(b)


def _label(key: Hashable) -> str:
    if isinstance(key, tuple) and key:
        parts = [str(p) for p in key[:2]]
        return " ".join(p.rsplit("/", 1)[-1] for p in parts)
    return str(key)


def working_memory_of(inputs: dict) -> tuple[str, int] | None:
    """The largest (device, bytes) that an input value declares through ``working_memory(inputs)``."""
    best: tuple[str, int] | None = None
    for value in inputs.values():
        for item in (value if isinstance(value, list) else [value]):
            fn = _attr(item, "working_memory")
            if not callable(fn) or isinstance(item, type):
                continue
            try:
                found = fn(inputs)
            except Exception:  # an estimate must never fail a node
                log.debug("working memory estimate failed", exc_info=True)
                continue
            if found and (best is None or found[1] > best[1]):
                best = (str(found[0]), int(found[1]))
    return best


def model_handles_in(value: Any, depth: int = 0) -> list[ModelHandle]:
    """Handles reachable from a node input value (models, lists of them, conditioning options)."""
    if depth > 4 or value is None or isinstance(value, (str, bytes, int, float, bool)):
        return []
    if isinstance(value, ModelHandle):
        return [value]
    fn = _attr(value, "model_handles")
    if callable(fn) and not isinstance(value, type):
        try:
            return [h for h in fn() if isinstance(h, ModelHandle)]
        except Exception:  # pragma: no cover
            return []
    if isinstance(value, dict):
        return [h for v in value.values() for h in model_handles_in(v, depth + 1)]
    if isinstance(value, (list, tuple)):
        return [h for v in value for h in model_handles_in(v, depth + 1)]
    return []
