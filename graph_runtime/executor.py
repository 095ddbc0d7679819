"""Runs one validated API prompt: ordering, caching, lazy inputs, list mapping, expansion, interrupts.

Design, in short:

* **Plan.** Only output nodes (``outputs_to_execute``) and the ancestors they need are visited.
  Signatures (:mod:`graph_runtime.signatures`) are computed once per node.  A node whose
  signature is in the cross-prompt :class:`~graph_runtime.cache.OutputCache` when it is planned
  takes the cached outputs right away (so a later eviction cannot take them back) and its
  ancestors are not visited.  Lazy inputs are planned only when the node asks for them.
* **Schedule.** A topological dissolve with a ready queue.  Async nodes run as asyncio tasks, so
  network-bound nodes overlap each other and other ready nodes; sync nodes then run in a thread.
  A node whose signature another node of this prompt already computed (the same sub-graph under
  other ids) reuses that result, and waits for it when it is still running.
* **Reference counting.** Every planned, uncached node *holds* each source it links to (lazy ones
  included) and releases exactly what it holds when it is done — whether it ran, was replayed
  from the cache, found its result computed under another id, was blocked by an
  ``ExecutionBlocker``, or ran an expansion.  A source's outputs are dropped when its last holder
  is done (the cache may still keep them within its budget).  Nodes cached at planning time hold
  nothing.  Outputs of the prompt's output nodes, and of every ancestor of a lazy input's source,
  are kept until the prompt ends (a lazy input may be asked for late, after its source's other
  consumers are done).  Should a finished node be needed again after all, it is re-planned: taken
  from the cache, or run again.
* **Expansion.** A node may return a sub-graph to run in its place (:mod:`graph_runtime.node_calls`);
  the expanded nodes are planned like any other, and the expanding node completes when the nodes
  its outputs link to are done.
* **Lanes.** With a :class:`~graph_runtime.lanes.Lanes` object (the service gives one), network
  nodes run on the network lane, the prompt gives the GPU gate back while it only waits on them
  (it *parks*) and takes it again before running other nodes; nodes whose remote job was accepted
  before a restart run without their inputs and their ancestors are not planned (see
  :mod:`graph_runtime.lanes`).  Without one, everything runs on the prompt's own loop.
* Exceptions become a structured ``execution_error``; an interrupt becomes
  ``execution_interrupted``.  The executor never raises for a node's failure.
"""
from __future__ import annotations

import asyncio
import logging
import resource
import sys
import threading
import time
import traceback as tb
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from graph_runtime import node_memory
from graph_runtime.cache import CacheEntry, OutputCache
from graph_runtime.context import Interrupted, NodeContext, NodeError, RuntimeOptions
from graph_runtime.lanes import Lanes
from graph_runtime.events import (Event, EventSink, Executed, Executing, ExecutionCached, ExecutionError,
                                  ExecutionInterrupted, ExecutionStart, ExecutionSuccess, NodeProgress, PreviewImage,
                                  Progress, ProgressState, ProgressText, discard)
from graph_runtime.model_manager import ModelManager, is_out_of_memory, manager_for, out_of_memory_message
from graph_runtime.node_calls import CallOutcome, NodeResultError, assemble, collect, find_blocker, mapped_calls
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.schema import CachePolicy, ExecutionBlocker, HiddenKind, NodeDefinition
from graph_runtime.signatures import compute_signatures
from graph_runtime.validation import is_link

log = logging.getLogger(__name__)


class InterruptToken:
    """A cooperative stop flag for one prompt (set by ``/interrupt``, read by nodes)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@dataclass
class NodeRun:
    """What one node's execution cost (stored in history ``meta``).

    ``memory`` holds ``rss_delta_bytes`` (resident memory the node added and kept) and, on CUDA,
    ``device_peak_bytes`` (the allocator's peak during the node above what was allocated before);
    see :mod:`graph_runtime.node_memory`.
    """

    node_id: str
    class_type: str
    seconds: float
    memory: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExecutionReport:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict[str, list]] = field(default_factory=dict)
    messages: list[list[Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    node_runs: dict[str, NodeRun] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    process_peak_rss_bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @classmethod
    def crashed(cls, prompt_id: str, exc: BaseException) -> "ExecutionReport":
        """The report of a prompt whose run raised outside any node (an executor or worker bug): it
        still ends as an error with the exception, so its job leaves the queue."""
        return cls(prompt_id, "error", error={"exception_message": str(exc), "exception_type": type(exc).__name__})


class _Stop(Exception):
    """Internal: ends the scheduling loop with a final event."""

    def __init__(self, event: Event, status: str) -> None:
        self.event = event
        self.status = status


_RUSAGE_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def _process_peak_rss() -> int:
    """The process's peak resident set (bytes).

    On Linux ``ru_maxrss`` is the address space's high-water mark whoever asks, so asking for this
    thread gives the process figure without RUSAGE_SELF's walk over every thread's CPU times (which
    locks the run queue of each CPU running one of them: measured 0.3 ms per call on a busy 2-core
    VM, a quarter of a trivial prompt).
    """
    return resource.getrusage(_RUSAGE_WHO).ru_maxrss * 1024


def _format_input(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)[:200]


class Executor:
    """Executes prompts against one registry; keeps the output cache between prompts."""

    def __init__(self, registry: NodeRegistry, paths: FolderPaths, *, models: ModelManager | None = None,
                 options: RuntimeOptions | None = None, cache: OutputCache | None = None,
                 lanes: Lanes | None = None, is_oom: Callable[[BaseException], bool] = is_out_of_memory) -> None:
        self.registry = registry
        self.paths = paths
        self.options = options or RuntimeOptions()
        self.models = models if models is not None else manager_for(self.options)
        self.is_oom = is_oom  # which exceptions mean "out of memory" (torch-free; the composition root may refine it)
        self.cache = cache if cache is not None else OutputCache(self.options.cache_budget_bytes)
        self.lanes = lanes
        self._local = threading.local()  # one event loop per thread: parked prompts run side by side

    # -- public -------------------------------------------------------------------------------
    def execute(self, prompt_id: str, prompt: dict[str, Any], outputs_to_execute: list[str], *,
                extra_data: dict[str, Any] | None = None, sink: EventSink = discard,
                interrupt: InterruptToken | None = None) -> ExecutionReport:
        """Run a validated prompt and return its report (blocking; prompts may run on several
        threads at once when a lane parks them, each on its thread's own event loop)."""
        loop = getattr(self._local, "loop", None)
        if loop is None or loop.is_closed():
            loop = self._local.loop = asyncio.new_event_loop()
        run = _PromptRun(self, prompt_id, prompt, [str(o) for o in outputs_to_execute], extra_data or {}, sink,
                         interrupt or InterruptToken())
        return loop.run_until_complete(run.run())

    def signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """The cache signature of every node of a (validated) prompt."""
        defs = {nid: self.registry.get(n["class_type"]) for nid, n in prompt.items()}
        return compute_signatures(prompt, defs, {}, paths=self.paths)

    def free(self) -> None:
        """Drop cached outputs and unload models (``POST /free``)."""
        self.cache.clear()
        self.models.unload_all()

    def close(self) -> None:
        """Close the calling thread's event loop (a thread that ran prompts calls this when it ends)."""
        loop = getattr(self._local, "loop", None)
        if loop is not None and not loop.is_closed():
            loop.close()
        self._local.loop = None


# node states while a prompt runs
_WAITING, _READY, _RUNNING, _EXPANDING, _DONE = "waiting", "ready", "running", "expanding", "done"


class _PromptRun:
    """The state of one prompt's execution (see the module docstring for the rules)."""

    def __init__(self, executor: Executor, prompt_id: str, prompt: dict[str, Any], outputs: list[str],
                 extra_data: dict[str, Any], sink: EventSink, interrupt: InterruptToken) -> None:
        self.ex = executor
        self.prompt_id = prompt_id
        self.prompt: dict[str, Any] = dict(prompt)  # expansions add nodes; the caller's dict stays as it is
        self.outputs = outputs
        self.extra_data = extra_data
        self.sink = sink
        self.interrupt = interrupt
        self.report = ExecutionReport(prompt_id, "success")
        self.defs: dict[str, NodeDefinition] = {nid: executor.registry.get(n["class_type"])
                                                for nid, n in self.prompt.items()}
        self.sig: dict[str, str] = {}
        self.values: dict[str, list[list[Any]]] = {}
        # reference counting: what each node holds, and how many unfinished holders each source has
        self.holds: dict[str, list[str]] = {}
        self.refs: dict[str, int] = {}
        self.pinned: set[str] = set()
        # scheduling
        self.state: dict[str, str] = {}
        self.deps: dict[str, set[str]] = {}
        self.waiters: dict[str, list[str]] = {}
        self.ready: deque[str] = deque()
        self.tasks: dict[asyncio.Task, str] = {}
        self.prefetched: dict[str, CacheEntry] = {}
        self.requested: dict[str, set[str]] = {}  # lazy inputs each node asked for
        self.expanding: dict[str, CallOutcome] = {}
        self.parent: dict[str, str] = {}  # expanded node -> the node that expanded into it
        self.computed_by_sig: dict[str, str] = {}  # signature -> a node of this prompt that computed it
        self.running_by_sig: dict[str, str] = {}
        self.blocker_reported: set[int] = set()
        self.running_progress: dict[str, NodeProgress] = {}
        self.order_hint = {nid: i for i, nid in enumerate(self.prompt)}
        # lanes: network nodes report from the lane's thread, so progress bookkeeping takes a lock
        self.lanes = executor.lanes
        self.resumable: set[str] = self.lanes.resumable_nodes(prompt_id) if self.lanes and prompt_id else set()
        self._progress_lock = threading.Lock()

    # -- events ---------------------------------------------------------------------------------
    def emit(self, event: Event, *, history: bool = False) -> None:
        if history:
            self.report.messages.append([event.type, event.data()])
        try:
            self.sink(event)
        except Exception:  # a broken listener must never break execution
            log.exception("event sink failed for %s", event.type)

    def display(self, nid: str) -> str:
        """The prompt node a (possibly expanded) node is shown as on the canvas."""
        while nid in self.parent:
            nid = self.parent[nid]
        return nid

    def _progress_state(self, node_id: str, value: float, maximum: float, state: str) -> None:
        """Send the changed node plus every node still running.

        The frontend replaces its per-prompt map with each message, so running nodes must be
        repeated; finished ones are not (ComfyUI resends every node touched so far, which makes
        the traffic quadratic in the length of the graph).
        """
        shown = self.display(node_id)
        entry = NodeProgress(value, maximum, state, node_id, self.prompt_id, shown, self.parent.get(node_id), shown)
        with self._progress_lock:
            if state == "running":
                self.running_progress[node_id] = entry
            else:
                self.running_progress.pop(node_id, None)
            nodes = {**self.running_progress, node_id: entry}
        self.emit(ProgressState(self.prompt_id, nodes))

    # -- signatures -----------------------------------------------------------------------------
    def compute_signatures(self) -> dict[str, str]:
        return compute_signatures(self.prompt, self.defs, self.sig, paths=self.ex.paths)

    def _lazy_ancestry(self) -> set[str]:
        """Every node a lazy input could reach: kept until the prompt ends."""
        stack = []
        for nid, node in self.prompt.items():
            definition = self.defs[nid]
            for name, value in node.get("inputs", {}).items():
                spec = definition.input_map.get(name)
                if spec is not None and spec.lazy and is_link(value):
                    stack.append(value[0])
        seen: set[str] = set()
        while stack:
            nid = stack.pop()
            if nid in seen or nid not in self.prompt:
                continue
            seen.add(nid)
            stack.extend(v[0] for v in self.prompt[nid].get("inputs", {}).values() if is_link(v))
        return seen

    # -- main loop ------------------------------------------------------------------------------
    async def run(self) -> ExecutionReport:
        started = time.perf_counter()
        self.emit(ExecutionStart(self.prompt_id), history=True)
        try:
            self.compute_signatures()
            cache = self.ex.cache
            self.report.cached = [nid for nid in self.prompt if self.sig[nid] in cache]
            self.emit(ExecutionCached(self.prompt_id, list(self.report.cached)), history=True)
            self.pinned = set(self.outputs) | self._lazy_ancestry()
            self._plan(self.outputs)
            await self._dissolve()
        except _Stop as stop:
            self.report.status = stop.status
            if isinstance(stop.event, ExecutionError):
                self.report.error = stop.event.data()
            self.emit(stop.event, history=True)
        else:
            self.emit(ExecutionSuccess(self.prompt_id), history=True)
        finally:
            for task in self.tasks:
                task.cancel()
        self.report.seconds = time.perf_counter() - started
        self.report.signatures = dict(self.sig)
        self.report.process_peak_rss_bytes = _process_peak_rss()
        self.values.clear()
        return self.report

    # -- planning -------------------------------------------------------------------------------
    def _hold(self, holder: str, source: str) -> None:
        self.holds.setdefault(holder, []).append(source)
        self.refs[source] = self.refs.get(source, 0) + 1

    def _release(self, holder: str) -> None:
        """The holder is done: drop each source it held whose last holder this was."""
        for source in self.holds.pop(holder, ()):
            left = self.refs[source] - 1
            if left > 0:
                self.refs[source] = left
                continue
            del self.refs[source]
            if source not in self.pinned:
                self.values.pop(source, None)

    def _depend(self, nid: str, source: str) -> None:
        """``nid`` cannot proceed before ``source`` is done."""
        self.deps[nid].add(source)
        self.waiters.setdefault(source, []).append(nid)

    def _plan(self, roots: list[str]) -> None:
        """Plan ``roots`` and the ancestors they need; nodes with nothing to wait for become ready."""
        added: list[str] = []
        stack = list(roots)
        while stack:
            nid = stack.pop()
            if nid in self.state:
                if self.state[nid] == _DONE and nid not in self.values:
                    del self.state[nid]  # needed again after its outputs were dropped: plan it anew
                else:
                    continue
            self.state[nid] = _WAITING
            self.deps[nid] = set()
            added.append(nid)
            entry = self.ex.cache.get(self.sig[nid])
            if entry is not None:
                self.prefetched[nid] = entry
                continue
            if nid in self.resumable:  # its remote job runs already: it needs none of its inputs
                continue
            definition = self.defs[nid]
            for name, value in self.prompt[nid].get("inputs", {}).items():
                if not is_link(value):
                    continue
                source = value[0]
                self._hold(nid, source)
                spec = definition.input_map.get(name)
                if spec is not None and spec.lazy:
                    continue
                if self.state.get(source) == _DONE and source in self.values:
                    continue
                if source not in self.state or self.state[source] == _DONE:
                    stack.append(source)
                self._depend(nid, source)
        for nid in sorted(added, key=lambda n: self.order_hint.get(n, len(self.order_hint))):
            if not self.deps[nid]:
                self.state[nid] = _READY
                self.ready.append(nid)

    def _done(self, nid: str) -> None:
        """Mark a node done, release what it held and wake the nodes waiting for it."""
        self.state[nid] = _DONE
        self._release(nid)
        for waiter in self.waiters.pop(nid, ()):
            deps = self.deps.get(waiter)
            if deps is None or nid not in deps:
                continue
            deps.discard(nid)
            if deps:
                continue
            if self.state[waiter] == _WAITING:
                self.state[waiter] = _READY
                self.ready.append(waiter)
            elif self.state[waiter] == _EXPANDING:
                self._finish_expansion(waiter)

    # -- scheduling -----------------------------------------------------------------------------
    async def _dissolve(self) -> None:
        while self.ready or self.tasks:
            if self.interrupt.is_set():
                self._raise_interrupted(None)
            if not self.ready:
                if self.lanes is not None and all(Lanes.is_network(self.defs[n]) for n in self.tasks.values()):
                    self.lanes.park(self.prompt_id)  # only waiting on providers: free the GPU queue
                finished, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    self.tasks.pop(task)
                    task.result()  # re-raises _Stop
                continue
            await self._stage(self.ready.popleft())
        stuck = [n for n, s in self.state.items() if s in (_WAITING, _EXPANDING)]
        if stuck:
            raise _Stop(self._error_event(stuck[0], "graph.DependencyCycleError", "Dependency cycle detected",
                                          [], {}), "error")

    async def _stage(self, nid: str) -> None:
        """Replay, reuse, defer (lazy inputs) or run one ready node."""
        definition = self.defs[nid]
        signature = self.sig[nid]
        entry = self.prefetched.pop(nid, None) or self.ex.cache.get(signature)
        if entry is not None:
            self._replay(nid, definition, entry.outputs, entry.ui)
            return
        twin = self.computed_by_sig.get(signature)
        if twin is not None and twin in self.values:
            self._replay(nid, definition, self.values[twin], self.report.outputs.get(twin))
            return
        running_twin = self.running_by_sig.get(signature)
        if running_twin is not None:  # the same result is being computed under another id: wait for it
            self.state[nid] = _WAITING
            self._depend(nid, running_twin)
            return
        if self.lanes is not None and not Lanes.is_network(definition):
            if not await self.lanes.unpark(self.prompt_id, self.interrupt.is_set):
                self._raise_interrupted(None)
        inputs = self._resolve_inputs(nid, definition)
        if definition.has_lazy_check and self._defer_for_lazy_inputs(nid, definition, inputs):
            return
        self.state[nid] = _RUNNING
        self.running_by_sig[signature] = nid
        if definition.is_async:
            task = asyncio.ensure_future(self._run_node(nid, definition, inputs))
            self.tasks[task] = nid
            await asyncio.sleep(0)  # let it start (and reach its first await) before other work
            return
        await self._run_node(nid, definition, inputs, offload=bool(self.tasks))

    def _replay(self, nid: str, definition: NodeDefinition, outputs: list[list[Any]], ui: dict | None) -> None:
        self.values[nid] = outputs
        self.computed_by_sig.setdefault(self.sig[nid], nid)
        if definition.output_node:
            if ui:
                self.report.outputs[nid] = ui
            self.emit(Executed(self.prompt_id, nid, self.display(nid), ui))
            self._progress_state(nid, 1, 1, "finished")
        self._done(nid)

    def _defer_for_lazy_inputs(self, nid: str, definition: NodeDefinition,
                               inputs: dict[str, list[Any] | None]) -> bool:
        """Ask the node which lazy inputs it needs; plan them and wait. False when it can run now."""
        missing = self._lazy_needed(nid, definition, inputs)
        if not missing:
            return False
        self.requested.setdefault(nid, set()).update(missing)
        self.state[nid] = _WAITING
        sources = [self.prompt[nid]["inputs"][name][0] for name in missing]
        for source in sources:
            if self.state.get(source) != _DONE or source not in self.values:
                self._depend(nid, source)
        self._plan([s for s in sources if s not in self.state or self.state[s] == _DONE])
        if not self.deps[nid]:
            self.state[nid] = _READY
            self.ready.appendleft(nid)
        return True

    def _resolve_inputs(self, nid: str, definition: NodeDefinition) -> dict[str, list[Any] | None]:
        """Input lists by name; None for a lazy input the node has not asked for (even if computed).

        Passing a lazy input only once asked for keeps a node's inputs independent of what
        happens to be cached (ComfyUI passes any value that is available, so the same prompt
        can map a node over a different number of calls depending on the cache).
        """
        resolved: dict[str, list[Any] | None] = {}
        asked = self.requested.get(nid, set())
        for name, value in self.prompt[nid].get("inputs", {}).items():
            if is_link(value):
                spec = definition.input_map.get(name)
                if spec is not None and spec.lazy and name not in asked:
                    resolved[name] = None
                    continue
                src_values = self.values.get(value[0])
                resolved[name] = None if src_values is None else src_values[int(value[1])]
            elif name in definition.input_map:
                resolved[name] = [value]
        for hidden in definition.hidden:
            if hidden.kind is HiddenKind.UNIQUE_ID:
                resolved[hidden.name] = [nid]
            elif hidden.kind in (HiddenKind.PROMPT, HiddenKind.DYNPROMPT):
                resolved[hidden.name] = [self.prompt]
            elif hidden.kind is HiddenKind.EXTRA_PNGINFO:
                resolved[hidden.name] = [self.extra_data.get("extra_pnginfo")]
        return resolved

    def _lazy_needed(self, nid: str, definition: NodeDefinition, inputs: dict[str, list[Any] | None]) -> list[str]:
        links = self.prompt[nid].get("inputs", {})
        asked = self.requested.get(nid, set())
        unresolved = [n for n, v in inputs.items() if v is None and is_link(links.get(n)) and n not in asked]
        if not unresolved:
            return []
        node = definition.node_class()
        ctx = self._context(nid, definition)
        wanted: list[str] = []
        try:  # asked once per mapped call, like execute (not for blocked calls); the union is needed
            for kwargs in mapped_calls(definition, inputs):
                if find_blocker(kwargs, definition.input_is_list) is not None:
                    continue
                wanted.extend(node.check_lazy_status(ctx, **kwargs) or [])
        except Exception as exc:
            raise _Stop(self._error_from_exception(nid, definition, exc, inputs), "error") from exc
        return [n for n in dict.fromkeys(wanted) if n in unresolved]

    def _context(self, nid: str, definition: NodeDefinition) -> NodeContext:
        return NodeContext(node_id=nid, class_type=definition.class_type, prompt_id=self.prompt_id,
                           paths=self.ex.paths, models=self.ex.models, options=self.ex.options,
                           _progress=self._on_progress, _interrupted=self.interrupt.is_set,
                           _progress_text=self._on_progress_text,
                           remote_jobs=self.lanes.journal(self.prompt_id, nid)
                           if self.lanes is not None and Lanes.is_network(definition) else None)

    def _on_progress(self, nid: str, value: float, maximum: float, preview: Any) -> None:
        self._progress_state(nid, value, maximum, "running")
        if preview is not None:
            self.emit(PreviewImage(self.prompt_id, nid, self.display(nid), preview))
        self.emit(Progress(self.prompt_id, nid, value, maximum))

    def _on_progress_text(self, nid: str, text: str) -> None:
        self.emit(ProgressText(self.prompt_id, nid, self.display(nid), text))

    # -- running ------------------------------------------------------------------------------
    async def _run_node(self, nid: str, definition: NodeDefinition, inputs: dict[str, list[Any] | None],
                        offload: bool = False) -> None:
        if self.interrupt.is_set():
            self._raise_interrupted(nid)
        self._progress_state(nid, 0, 1, "running")
        self.emit(Executing(self.prompt_id, nid, self.display(nid)))
        ctx = self._context(nid, definition)
        started = time.perf_counter()
        mark = node_memory.start()
        try:
            results = await self._call_with_memory(nid, definition, ctx, inputs, offload)
            outcome = collect(definition, nid, results)
        except Interrupted:
            self._raise_interrupted(nid)
        except _Stop:
            raise
        except Exception as exc:
            log.debug("node %s (%s) failed", nid, definition.class_type, exc_info=True)
            raise _Stop(self._error_from_exception(nid, definition, exc, inputs), "error") from exc
        self.report.executed.append(nid)
        self.report.node_runs[nid] = NodeRun(nid, definition.class_type, time.perf_counter() - started,
                                             node_memory.finish(mark), dict(ctx.info))
        if outcome.expanded:
            self._expand(nid, definition, outcome)
        else:
            self._complete(nid, definition, assemble(definition, outcome, self._resolve_link), outcome.ui)

    async def _call_with_memory(self, nid: str, definition: NodeDefinition, ctx: NodeContext,
                                inputs: dict[str, list[Any] | None], offload: bool) -> list[Any]:
        """Run a node in the model manager's scope: the models it uses stay pinned, its declared working
        memory is reserved first, and an out-of-memory error frees every model the node does not use and
        runs it once more; a second one becomes an error saying what to change."""
        models = self.ex.models
        first = {name: values[0] for name, values in inputs.items() if values}
        with models.prepare_for(nid, inputs=first):
            try:
                return await self._call(definition, ctx, inputs, offload)
            except Exception as exc:
                if not self.ex.is_oom(exc):
                    raise
                log.warning("node %s (%s) ran out of memory; freeing models and retrying once", nid,
                            definition.class_type)
            models.free_for_retry()
            try:
                return await self._call(definition, ctx, inputs, offload)
            except Exception as exc:
                if not self.ex.is_oom(exc):
                    raise
                raise NodeError(out_of_memory_message(definition.class_type, nid, exc,
                                                      models.loaded_models())) from exc

    async def _call(self, definition: NodeDefinition, ctx: NodeContext, inputs: dict[str, list[Any] | None],
                    offload: bool) -> list[Any]:
        """Call ``execute`` once per mapped call; blocked calls yield their ExecutionBlocker."""
        results = []
        node = definition.node_class()
        for kwargs in mapped_calls(definition, inputs):
            blocker = find_blocker(kwargs, definition.input_is_list)
            if blocker is not None:
                self._report_blocker(ctx, definition, blocker)
                results.append(blocker)
                continue
            if self.lanes is not None and Lanes.is_network(definition):
                results.append(await self.lanes.run_network(definition, lambda kw=kwargs: node.execute(ctx, **kw),
                                                            self.interrupt.is_set))
            elif definition.is_async:
                results.append(await node.execute(ctx, **kwargs))
            elif offload:
                results.append(await asyncio.to_thread(node.execute, ctx, **kwargs))
            else:
                results.append(node.execute(ctx, **kwargs))
        return results

    def _resolve_link(self, source: str, index: int) -> list[Any]:
        return self.values[source][index]

    def _complete(self, nid: str, definition: NodeDefinition, outputs: list[list[Any]], ui: dict | None) -> None:
        self.values[nid] = outputs
        self.running_by_sig.pop(self.sig[nid], None)
        self.computed_by_sig.setdefault(self.sig[nid], nid)
        if definition.cache is not CachePolicy.VOLATILE:
            self.ex.cache.put(self.sig[nid], outputs, ui)
        if ui:
            self.report.outputs[nid] = ui
            self.emit(Executed(self.prompt_id, nid, self.display(nid), ui))
        self._progress_state(nid, 1, 1, "finished")
        self._done(nid)

    def _expand(self, nid: str, definition: NodeDefinition, outcome: CallOutcome) -> None:
        """Add the sub-graph a node returned and complete the node once its linked outputs are done."""
        new_ids = list(outcome.expanded)
        for new_id in new_ids:
            node = outcome.expanded[new_id]
            child = self.ex.registry.get(node["class_type"])
            if child is None:
                raise _Stop(self._error_event(nid, "NodeResultError",
                                              f"{definition.class_type} (node {nid}) expanded into an unknown node "
                                              f"type {node['class_type']!r}", [], {}), "error")
            self.prompt[new_id] = node
            self.defs[new_id] = child
            self.parent[new_id] = nid
            self.order_hint[new_id] = len(self.order_hint)
        compute_signatures(self.prompt, self.defs, self.sig, nodes=new_ids, paths=self.ex.paths)
        self.state[nid] = _EXPANDING
        self.expanding[nid] = outcome
        targets = list(dict.fromkeys(link[0] for link in outcome.pending_links))
        for target in targets:
            self._hold(nid, target)
            if self.state.get(target) != _DONE or target not in self.values:
                self._depend(nid, target)
        self._plan([t for t in targets if t not in self.state or self.state[t] == _DONE])
        if not self.deps[nid]:
            self._finish_expansion(nid)

    def _finish_expansion(self, nid: str) -> None:
        definition = self.defs[nid]
        outcome = self.expanding.pop(nid)
        self.state[nid] = _RUNNING
        self._complete(nid, definition, assemble(definition, outcome, self._resolve_link), outcome.ui)

    def _report_blocker(self, ctx: NodeContext, definition: NodeDefinition, blocker: ExecutionBlocker) -> None:
        if blocker.message is None or id(blocker) in self.blocker_reported:
            return
        self.blocker_reported.add(id(blocker))
        self.emit(ExecutionError(self.prompt_id, ctx.node_id, definition.class_type, list(self.report.executed),
                                 f"Execution Blocked: {blocker.message}", "ExecutionBlocked", [], {}, []))

    # -- errors ------------------------------------------------------------------------------
    def _raise_interrupted(self, nid: str | None) -> None:
        node_type = self.defs[nid].class_type if nid else None
        raise _Stop(ExecutionInterrupted(self.prompt_id, nid, node_type, list(self.report.executed)), "interrupted")

    def _error_event(self, nid: str, exc_type: str, message: str, trace: list[str],
                     inputs: dict[str, Any]) -> ExecutionError:
        return ExecutionError(self.prompt_id, nid, self.defs[nid].class_type, list(self.report.executed), message,
                              exc_type, trace, inputs, list(self.values))

    def _error_from_exception(self, nid: str, definition: NodeDefinition, exc: BaseException,
                              inputs: dict[str, list[Any] | None]) -> ExecutionError:
        cls = type(exc)
        exc_type = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
        message = str(exc) or exc_type
        if not isinstance(exc, (NodeError, NodeResultError)):
            where = f"node {nid}" if nid not in self.parent else f"node {nid}, expanded from node {self.display(nid)}"
            message = f"{definition.class_type} ({where}) failed: {message}"
        current = {k: [_format_input(x) for x in (v or [])][:4] for k, v in inputs.items()}
        trace = tb.format_exception(exc) if sys.version_info >= (3, 10) else tb.format_exc().splitlines()
        return self._error_event(nid, exc_type, message, trace, current)
