"""Runs one validated API prompt: ordering, caching, lazy inputs, list mapping, interrupts.

Design, in short:

* Only output nodes (``outputs_to_execute``) and their non-lazy ancestors run; a node whose
  signature is in the cross-prompt :class:`~graph_runtime.cache.OutputCache` is not run and its
  ancestors are not even visited.
* Signatures are computed once per node, in topological order, from the signatures of its
  inputs (see :mod:`graph_runtime.cache`): linear in the size of the graph.
* Scheduling is a topological dissolve with a ready queue; async nodes run as asyncio tasks so
  network-bound nodes overlap with each other and with other ready nodes.
* Each intermediate output is reference-counted and dropped after its last consumer ran
  (the cache may still hold it within its budget).
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
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from graph_runtime.cache import OutputCache, canonical, digest
from graph_runtime.context import Interrupted, NodeContext, NodeError, RuntimeOptions
from graph_runtime.events import (Event, EventSink, Executed, Executing, ExecutionCached, ExecutionError,
                                  ExecutionInterrupted, ExecutionStart, ExecutionSuccess, NodeProgress, PreviewImage,
                                  Progress, ProgressState, ProgressText, discard)
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.schema import CachePolicy, ExecutionBlocker, HiddenKind, NodeDefinition, NodeResult
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
    """What one node's execution cost and where it ran (stored in history ``meta``)."""

    node_id: str
    class_type: str
    seconds: float
    peak_rss_bytes: int
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
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "success"


class _Stop(Exception):
    """Internal: ends the scheduling loop with a final event."""

    def __init__(self, event: Event, status: str) -> None:
        self.event = event
        self.status = status


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _format_input(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    return str(value)[:200]


class Executor:
    """Executes prompts against one registry; keeps the output cache between prompts."""

    def __init__(self, registry: NodeRegistry, paths: FolderPaths, *, models: ModelManager | None = None,
                 options: RuntimeOptions | None = None, cache: OutputCache | None = None) -> None:
        self.registry = registry
        self.paths = paths
        self.options = options or RuntimeOptions()
        self.models = models if models is not None else ModelManager(self.options.model_budget_bytes)
        self.cache = cache if cache is not None else OutputCache(self.options.cache_budget_bytes)
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- public -------------------------------------------------------------------------------
    def execute(self, prompt_id: str, prompt: dict[str, Any], outputs_to_execute: list[str], *,
                extra_data: dict[str, Any] | None = None, sink: EventSink = discard,
                interrupt: InterruptToken | None = None) -> ExecutionReport:
        """Run a validated prompt and return its report (blocking; call from one worker thread)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        run = _PromptRun(self, prompt_id, prompt, [str(o) for o in outputs_to_execute], extra_data or {}, sink,
                         interrupt or InterruptToken())
        return self._loop.run_until_complete(run.run())

    def signatures(self, prompt: dict[str, Any]) -> dict[str, str]:
        """The cache signature of every node of a (validated) prompt."""
        return _PromptRun(self, "", prompt, [], {}, discard, InterruptToken()).compute_signatures()

    def free(self) -> None:
        """Drop cached outputs and unload models (``POST /free``)."""
        self.cache.clear()
        self.models.unload_all()

    def close(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.close()


class _PromptRun:
    """The state of one prompt's execution."""

    def __init__(self, executor: Executor, prompt_id: str, prompt: dict[str, Any], outputs: list[str],
                 extra_data: dict[str, Any], sink: EventSink, interrupt: InterruptToken) -> None:
        self.ex = executor
        self.prompt_id = prompt_id
        self.prompt = prompt
        self.outputs = outputs
        self.extra_data = extra_data
        self.sink = sink
        self.interrupt = interrupt
        self.report = ExecutionReport(prompt_id, "success")
        self.defs: dict[str, NodeDefinition] = {nid: executor.registry.get(n["class_type"]) for nid, n in prompt.items()}
        self.values: dict[str, list[list[Any]]] = {}
        self.sig: dict[str, str] = {}
        self.remaining_consumers: dict[str, int] = {}
        self.keep: set[str] = set()  # sources of lazy inputs are kept for late consumers
        self.blocker_reported: set[int] = set()
        self.running_progress: dict[str, NodeProgress] = {}

    # -- events ---------------------------------------------------------------------------------
    def emit(self, event: Event, *, history: bool = False) -> None:
        if history:
            self.report.messages.append([event.type, event.data()])
        try:
            self.sink(event)
        except Exception:  # a broken listener must never break execution
            log.exception("event sink failed for %s", event.type)

    def _progress_state(self, node_id: str, value: float, maximum: float, state: str) -> None:
        """Send the changed node plus every node still running.

        The frontend replaces its per-prompt map with each message, so running nodes must be
        repeated; finished ones are not (ComfyUI resends every node touched so far, which makes
        the traffic quadratic in the length of the graph).
        """
        entry = NodeProgress(value, maximum, state, node_id, self.prompt_id, node_id, None, node_id)
        if state == "running":
            self.running_progress[node_id] = entry
        else:
            self.running_progress.pop(node_id, None)
        self.emit(ProgressState(self.prompt_id, {**self.running_progress, node_id: entry}))

    # -- signatures -----------------------------------------------------------------------------
    def compute_signatures(self) -> dict[str, str]:
        order = self._topological_order()
        for node_id in order:
            node = self.prompt[node_id]
            definition = self.defs[node_id]
            inputs = node.get("inputs", {})
            parts = [definition.class_type, definition.version]
            literals: dict[str, Any] = {}
            for name in sorted(inputs):
                value = inputs[name]
                if is_link(value):
                    src = self.sig.get(value[0])
                    parts.append(f"{name}=>{src}#{int(value[1])}")
                elif name in definition.input_map:
                    literals[name] = value
                    parts.append(f"{name}={canonical(value)}")
            if definition.uses_unique_id:
                parts.append(f"id={node_id}")
            if definition.cache is CachePolicy.VOLATILE:
                parts.append(f"nonce={uuid.uuid4().hex}")
            if definition.has_fingerprint:
                try:
                    fp = definition.node_class.fingerprint(**literals, **self._paths_kw(definition))
                    parts.append(f"fp={canonical(fp)}")
                except Exception:
                    parts.append(f"fp-failed={uuid.uuid4().hex}")
            self.sig[node_id] = digest("|".join(parts))
        return self.sig

    def _paths_kw(self, definition: NodeDefinition) -> dict[str, Any]:
        """Hooks that declare a ``paths`` parameter get the runtime's folders."""
        import inspect

        params = inspect.signature(definition.node_class.fingerprint).parameters
        return {"paths": self.ex.paths} if "paths" in params else {}

    def _topological_order(self) -> list[str]:
        indegree = {nid: 0 for nid in self.prompt}
        consumers: dict[str, list[str]] = {nid: [] for nid in self.prompt}
        for nid, node in self.prompt.items():
            for value in node.get("inputs", {}).values():
                if is_link(value) and value[0] in self.prompt:
                    indegree[nid] += 1
                    consumers[value[0]].append(nid)
        queue = deque(n for n, d in indegree.items() if d == 0)
        order = []
        while queue:
            nid = queue.popleft()
            order.append(nid)
            for c in consumers[nid]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    queue.append(c)
        if len(order) != len(self.prompt):  # validation rejects cycles; stay safe anyway
            order.extend(n for n in self.prompt if n not in set(order))
        return order

    # -- main loop ------------------------------------------------------------------------------
    async def run(self) -> ExecutionReport:
        started = time.perf_counter()
        self.emit(ExecutionStart(self.prompt_id), history=True)
        try:
            self.compute_signatures()
            cache = self.ex.cache
            cached_nodes = [nid for nid in self.prompt if self.sig[nid] in cache]
            self.report.cached = cached_nodes
            self.emit(ExecutionCached(self.prompt_id, list(cached_nodes)), history=True)
            await self._schedule()
        except _Stop as stop:
            self.report.status = stop.status
            if isinstance(stop.event, ExecutionError):
                self.report.error = stop.event.data()
            self.emit(stop.event, history=True)
        else:
            self.emit(ExecutionSuccess(self.prompt_id), history=True)
        self.report.seconds = time.perf_counter() - started
        self.values.clear()
        return self.report

    def _is_cached(self, node_id: str) -> bool:
        return self.sig[node_id] in self.ex.cache

    def _collect(self, roots: list[str], needed: set[str], deps: dict[str, set[str]],
                 consumers: dict[str, list[str]]) -> list[str]:
        """Add ``roots`` and their uncached non-lazy ancestors to the plan; returns the new nodes."""
        added: list[str] = []
        stack = list(roots)
        while stack:
            nid = stack.pop()
            if nid in needed or nid in self.values:
                continue
            needed.add(nid)
            added.append(nid)
            deps[nid] = set()
            if self._is_cached(nid):
                continue
            definition = self.defs[nid]
            for name, value in self.prompt[nid].get("inputs", {}).items():
                if not is_link(value):
                    continue
                spec = definition.input_map.get(name)
                if spec is not None and spec.lazy:
                    self.keep.add(value[0])
                    continue
                src = value[0]
                if src not in self.values:
                    deps[nid].add(src)
                consumers.setdefault(src, []).append(nid)
                self.remaining_consumers[src] = self.remaining_consumers.get(src, 0) + 1
                stack.append(src)
        return added

    async def _schedule(self) -> None:
        needed: set[str] = set()
        deps: dict[str, set[str]] = {}
        consumers: dict[str, list[str]] = {}
        order_hint = {nid: i for i, nid in enumerate(self.prompt)}
        self._collect(self.outputs, needed, deps, consumers)
        ready: deque[str] = deque(sorted((n for n in needed if not deps[n]), key=order_hint.__getitem__))
        waiting: set[str] = {n for n in needed if deps[n]}
        tasks: dict[asyncio.Task, str] = {}
        done: set[str] = set()

        def finish(nid: str) -> None:
            done.add(nid)
            for consumer in consumers.get(nid, ()):
                if consumer in waiting:
                    deps[consumer].discard(nid)
                    if not deps[consumer]:
                        waiting.discard(consumer)
                        ready.append(consumer)

        try:
            await self._dissolve(ready, waiting, tasks, finish, needed, deps, consumers)
        finally:
            for task in tasks:
                task.cancel()
        if waiting:
            first = next(iter(waiting))
            raise _Stop(self._error_event(first, "graph.DependencyCycleError", "Dependency cycle detected", [], {}),
                        "error")

    async def _dissolve(self, ready: deque[str], waiting: set[str], tasks: dict[asyncio.Task, str], finish: Any,
                        needed: set[str], deps: dict[str, set[str]], consumers: dict[str, list[str]]) -> None:
        while ready or tasks:
            if self.interrupt.is_set():
                self._raise_interrupted(None)
            if not ready:
                finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    nid = tasks.pop(task)
                    task.result()  # re-raises _Stop
                    finish(nid)
                continue
            nid = ready.popleft()
            outcome = await self._stage(nid, needed, deps, consumers, waiting, ready, tasks)
            if outcome == "done":
                finish(nid)

    async def _stage(self, nid: str, needed: set[str], deps: dict[str, set[str]], consumers: dict[str, list[str]],
                     waiting: set[str], ready: deque[str], tasks: dict[asyncio.Task, str]) -> str:
        """Run (or replay from cache, or defer for lazy inputs) one ready node."""
        definition = self.defs[nid]
        entry = self.ex.cache.get(self.sig[nid])
        if entry is not None:
            self.values[nid] = entry.outputs
            if definition.output_node:
                if entry.ui:
                    self.report.outputs[nid] = entry.ui
                self.emit(Executed(self.prompt_id, nid, nid, entry.ui))
                self._progress_state(nid, 1, 1, "finished")
            self._release_inputs(nid)
            return "done"
        inputs = self._resolve_inputs(nid, definition)
        if definition.has_lazy_check:
            missing = self._lazy_needed(nid, definition, inputs)
            if missing:
                sources = [self.prompt[nid]["inputs"][name][0] for name in missing]
                added = self._collect([s for s in sources if s not in self.values], needed, deps, consumers)
                for name in missing:
                    src = self.prompt[nid]["inputs"][name][0]
                    consumers.setdefault(src, []).append(nid)
                    self.remaining_consumers[src] = self.remaining_consumers.get(src, 0) + 1
                    if src not in self.values:
                        deps[nid].add(src)
                for src in list(deps[nid]):
                    if src in self.values:
                        deps[nid].discard(src)
                for node in added:
                    (waiting.add(node) if deps[node] else ready.append(node))
                if deps[nid]:
                    waiting.add(nid)
                else:
                    ready.append(nid)
                return "pending"
        if definition.is_async:
            task = asyncio.ensure_future(self._run_node(nid, definition, inputs))
            tasks[task] = nid
            await asyncio.sleep(0)  # let it start (and reach its first await) before other work
            return "async"
        await self._run_node(nid, definition, inputs, offload=bool(tasks))
        return "done"

    def _resolve_inputs(self, nid: str, definition: NodeDefinition) -> dict[str, list[Any] | None]:
        resolved: dict[str, list[Any] | None] = {}
        for name, value in self.prompt[nid].get("inputs", {}).items():
            if is_link(value):
                src_values = self.values.get(value[0])
                resolved[name] = None if src_values is None else src_values[int(value[1])]
            elif name in definition.input_map:
                resolved[name] = [value]
        for hidden in definition.hidden:
            if hidden.kind is HiddenKind.UNIQUE_ID:
                resolved[hidden.name] = [nid]
            elif hidden.kind is HiddenKind.PROMPT:
                resolved[hidden.name] = [self.prompt]
            elif hidden.kind is HiddenKind.EXTRA_PNGINFO:
                resolved[hidden.name] = [self.extra_data.get("extra_pnginfo")]
            elif hidden.kind is HiddenKind.DYNPROMPT:
                resolved[hidden.name] = [self.prompt]
        return resolved

    def _lazy_needed(self, nid: str, definition: NodeDefinition, inputs: dict[str, list[Any] | None]) -> list[str]:
        links = self.prompt[nid].get("inputs", {})
        unresolved = [n for n, v in inputs.items() if v is None and is_link(links.get(n))]
        if not unresolved:
            return []
        node = definition.node_class()
        ctx = self._context(nid, definition)
        kwargs = {k: (None if v is None else v[0]) for k, v in inputs.items()}
        try:
            wanted = node.check_lazy_status(ctx, **kwargs) or []
        except Exception as exc:
            raise _Stop(self._error_from_exception(nid, definition, exc, inputs), "error") from exc
        return [n for n in dict.fromkeys(wanted) if n in unresolved]

    def _context(self, nid: str, definition: NodeDefinition) -> NodeContext:
        return NodeContext(node_id=nid, class_type=definition.class_type, prompt_id=self.prompt_id,
                           paths=self.ex.paths, models=self.ex.models, options=self.ex.options,
                           _progress=self._on_progress, _interrupted=self.interrupt.is_set,
                           _progress_text=self._on_progress_text)

    def _on_progress(self, nid: str, value: float, maximum: float, preview: Any) -> None:
        self._progress_state(nid, value, maximum, "running")
        if preview is not None:
            self.emit(PreviewImage(self.prompt_id, nid, nid, preview))
        self.emit(Progress(self.prompt_id, nid, value, maximum))

    def _on_progress_text(self, nid: str, text: str) -> None:
        self.emit(ProgressText(self.prompt_id, nid, nid, text))

    async def _run_node(self, nid: str, definition: NodeDefinition, inputs: dict[str, list[Any] | None],
                        offload: bool = False) -> None:
        if self.interrupt.is_set():
            self._raise_interrupted(nid)
        self._progress_state(nid, 0, 1, "running")
        self.emit(Executing(self.prompt_id, nid, nid))
        ctx = self._context(nid, definition)
        started = time.perf_counter()
        try:
            results = await self._call_mapped(definition, ctx, inputs, offload)
        except Interrupted:
            self._raise_interrupted(nid)
        except _Stop:
            raise
        except Exception as exc:
            log.debug("node %s (%s) failed", nid, definition.class_type, exc_info=True)
            raise _Stop(self._error_from_exception(nid, definition, exc, inputs), "error") from exc
        outputs, ui = self._merge(definition, results)
        self.values[nid] = outputs
        if definition.cache is not CachePolicy.VOLATILE:
            self.ex.cache.put(self.sig[nid], outputs, ui)
        self.report.executed.append(nid)
        self.report.node_runs[nid] = NodeRun(nid, definition.class_type, time.perf_counter() - started,
                                             _peak_rss(), dict(ctx.info))
        if ui:
            self.report.outputs[nid] = ui
            self.emit(Executed(self.prompt_id, nid, nid, ui))
        self._progress_state(nid, 1, 1, "finished")
        self._release_inputs(nid)

    async def _call_mapped(self, definition: NodeDefinition, ctx: NodeContext,
                           inputs: dict[str, list[Any] | None], offload: bool) -> list[Any]:
        """Call ``execute`` once (INPUT_IS_LIST or all inputs single) or once per list index (ComfyUI rules)."""
        lists = {k: (v if v is not None else [None]) for k, v in inputs.items()}
        if definition.input_is_list:
            calls = [lists]
        else:
            count = max((len(v) for v in lists.values()), default=1)
            calls = [{k: (v[i] if len(v) > i else v[-1]) if v else None for k, v in lists.items()}
                     for i in range(max(count, 1))]
        results = []
        node = definition.node_class()
        for kwargs in calls:
            blocker = _find_blocker(kwargs, definition.input_is_list)
            if blocker is not None:
                self._report_blocker(ctx, definition, blocker)
                results.append(blocker)
                continue
            if definition.is_async:
                results.append(await node.execute(ctx, **kwargs))
            elif offload:
                results.append(await asyncio.to_thread(node.execute, ctx, **kwargs))
            else:
                results.append(node.execute(ctx, **kwargs))
        return results

    def _report_blocker(self, ctx: NodeContext, definition: NodeDefinition, blocker: ExecutionBlocker) -> None:
        if blocker.message is None or id(blocker) in self.blocker_reported:
            return
        self.blocker_reported.add(id(blocker))
        self.emit(ExecutionError(self.prompt_id, ctx.node_id, definition.class_type, list(self.report.executed),
                                 f"Execution Blocked: {blocker.message}", "ExecutionBlocked", [], {}, []))

    def _merge(self, definition: NodeDefinition, results: list[Any]) -> tuple[list[list[Any]], dict | None]:
        n_out = len(definition.outputs)
        outputs: list[list[Any]] = [[] for _ in range(n_out)]
        ui: dict[str, list] | None = None
        for result in results:
            if isinstance(result, ExecutionBlocker):
                for slot in outputs:
                    slot.append(result)
                continue
            if isinstance(result, NodeResult):
                values, call_ui = tuple(result.outputs), result.ui
            elif isinstance(result, tuple):
                values, call_ui = result, None
            elif result is None:
                values, call_ui = (), None
            else:
                raise TypeError(f"{definition.class_type}.execute must return a tuple or NodeResult, "
                                f"got {type(result).__name__}")
            if values and len(values) != n_out:
                raise TypeError(f"{definition.class_type} returned {len(values)} values for {n_out} outputs")
            for i, value in enumerate(values):
                if definition.outputs[i].is_list:
                    outputs[i].extend(value)
                else:
                    outputs[i].append(value)
            if call_ui:
                if ui is None:
                    ui = {k: list(v) for k, v in call_ui.items()}
                else:
                    for k in ui:
                        ui[k].extend(call_ui.get(k, []))
        return outputs, ui

    def _release_inputs(self, nid: str) -> None:
        """Drop upstream outputs whose last consumer has now run (reference counting)."""
        for value in self.prompt[nid].get("inputs", {}).values():
            if not is_link(value):
                continue
            src = value[0]
            if src not in self.remaining_consumers:
                continue
            self.remaining_consumers[src] -= 1
            if self.remaining_consumers[src] <= 0 and src not in self.keep and src not in self.outputs:
                self.values.pop(src, None)
                del self.remaining_consumers[src]

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
        if not isinstance(exc, NodeError):
            message = f"{definition.class_type} (node {nid}) failed: {message}"
        current = {k: [_format_input(x) for x in (v or [])][:4] for k, v in inputs.items()}
        trace = tb.format_exception(exc) if sys.version_info >= (3, 10) else tb.format_exc().splitlines()
        return self._error_event(nid, exc_type, message, trace, current)


def _find_blocker(kwargs: dict[str, Any], input_is_list: bool) -> ExecutionBlocker | None:
    for value in kwargs.values():
        if isinstance(value, ExecutionBlocker):
            return value
        if input_is_list and isinstance(value, list):
            for item in value:
                if isinstance(item, ExecutionBlocker):
                    return item
    return None
