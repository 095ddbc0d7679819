"""The executor against a naive evaluator, on random graphs and random sequences of prompts.

Hypothesis draws a DAG of the stub nodes in :mod:`tests.stub_nodes.differential` (pure, seeded,
volatile, async, lazy, list outputs, INPUT_IS_LIST, ExecutionBlocker, expansion) and a sequence
of prompts for one executor: each step changes a random subset of literals, renames node ids or
resubmits unchanged, under an output cache holding from one entry to unbounded.  After each step:

* the outputs equal those of a naive evaluator (plain recursion over the same ``execute``
  methods, nothing cached, list mapping and lazy rules re-implemented here);
* **soundness** — no node runs while its signature's result is in the cache or being computed
  by another node of the step (replaying runs, cache puts and evictions in the order they
  happened);
* **minimality** — every node that ran (other than an output node) has a consumer that ran: nothing
  is computed for a consumer whose result came from the cache;
* **completeness** — every node the naive evaluator needed whose signature is new (no earlier
  step computed it) ran, or a node of the same signature did.

A failure shrinks to a minimal graph and sequence.
"""
from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from graph_runtime.cache import OutputCache
from graph_runtime.context import NodeContext
from graph_runtime.executor import Executor
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.schema import ExecutionBlocker, NodeResult
from graph_runtime.validation import PromptValidator
from tests.stub_nodes import differential as diff

# -- the graphs ---------------------------------------------------------------------------------

LITERALS: dict[str, dict[str, st.SearchStrategy]] = {
    "DConst": {"value": st.integers(0, 40)},
    "DAdd": {"k": st.integers(0, 4)},
    "DSeeded": {"seed": st.integers(0, 4)},
    "DVolatile": {},
    "DAsync": {"k": st.integers(0, 4)},
    "DSwitch": {"invert": st.booleans()},
    "DRange": {"count": st.integers(1, 3)},
    "DSum": {"k": st.integers(0, 4)},
    "DBlock": {"every": st.integers(2, 5)},
    "DExpand": {"depth": st.integers(1, 3)},
}
SOCKETS = {"DConst": (), "DAdd": ("a", "b?"), "DSeeded": ("a",), "DVolatile": ("a",), "DAsync": ("a",),
           "DSwitch": ("cond", "on_odd", "on_even"), "DRange": ("a",), "DSum": ("values",), "DBlock": ("a",),
           "DExpand": ("a",)}
KINDS = st.sampled_from(["DAdd"] * 3 + ["DConst", "DSeeded", "DAsync", "DSwitch", "DRange", "DSum", "DBlock",
                                        "DExpand", "DVolatile"])


@st.composite
def graphs(draw) -> dict[str, dict]:
    size = draw(st.integers(1, 9))
    prompt: dict[str, dict] = {}
    for i in range(size):
        if i > 0 and draw(st.integers(0, 6)) == 0:  # a twin: the same sub-graph under another id
            prompt[f"n{i}"] = copy.deepcopy(prompt[f"n{draw(st.integers(0, i - 1))}"])
            continue
        kind = "DConst" if i == 0 else draw(KINDS)
        inputs: dict[str, Any] = {}
        for socket in SOCKETS[kind]:
            if socket.endswith("?"):
                if not draw(st.booleans()):
                    continue
                socket = socket[:-1]
            source = i - 1 if draw(st.booleans()) else draw(st.integers(0, i - 1))  # favour chains
            inputs[socket] = [f"n{source}", 0]
        inputs.update({name: draw(strategy) for name, strategy in LITERALS[kind].items()})
        prompt[f"n{i}"] = {"class_type": kind, "inputs": inputs}
    for j in range(draw(st.integers(1, 2))):
        prompt[f"out{j}"] = {"class_type": "DOut", "inputs": {"value": [f"n{draw(st.integers(0, size - 1))}", 0]}}
    return prompt


@st.composite
def changes(draw, prompt: dict[str, dict]) -> dict[str, dict]:
    """The next prompt of a sequence: some literals changed, ids renamed, or the same again."""
    how = draw(st.sampled_from(["literals", "literals", "rename", "same"]))
    prompt = copy.deepcopy(prompt)
    if how == "literals":
        for nid in draw(st.lists(st.sampled_from(sorted(prompt)), min_size=1, max_size=3, unique=True)):
            node = prompt[nid]
            for name, strategy in LITERALS.get(node["class_type"], {}).items():
                if draw(st.booleans()):
                    node["inputs"][name] = draw(strategy)
    elif how == "rename":
        names = sorted(prompt)
        shuffled = draw(st.permutations(names))
        mapping = {old: f"r{draw(st.integers(0, 99))}_{new}" for old, new in zip(names, shuffled)}
        prompt = {mapping[nid]: {"class_type": node["class_type"],
                                 "inputs": {k: ([mapping[v[0]], v[1]] if isinstance(v, list) else v)
                                            for k, v in node["inputs"].items()}}
                  for nid, node in prompt.items()}
    return prompt


@st.composite
def sequences(draw) -> tuple[list[dict[str, dict]], int | None]:
    prompts = [draw(graphs())]
    for _ in range(draw(st.integers(1, 4))):
        prompts.append(draw(changes(prompts[-1])))
    budget = draw(st.sampled_from([None, 1, 2, 3, 8]))
    return prompts, budget


# -- the naive evaluator --------------------------------------------------------------------------

BLOCKED = object()


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


class Naive:
    """Plain recursion, each node once per prompt, nothing kept between prompts."""

    def __init__(self, registry: NodeRegistry, paths: FolderPaths) -> None:
        self.registry = registry
        self.paths = paths
        self.needed: set[str] = set()

    def outputs(self, prompt: dict[str, dict], output_ids: list[str]) -> dict[str, dict]:
        memo: dict[str, tuple[list[list[Any]], dict]] = {}
        result = {}
        for nid in output_ids:
            _, ui = self._eval(nid, prompt, memo, top_level=True)
            if ui:
                result[nid] = ui
        return result

    def _ctx(self, nid: str, class_type: str) -> NodeContext:
        return NodeContext(node_id=nid, class_type=class_type, prompt_id="naive", paths=self.paths, models=None,
                           options=None)

    @staticmethod
    def _calls(input_is_list: bool, lists: dict[str, list | None]) -> list[dict[str, Any]]:
        lists = {k: ([None] if v is None else v) for k, v in lists.items()}
        if input_is_list:
            return [lists]
        count = max([len(v) for v in lists.values()] + [1])
        return [{k: v[min(i, len(v) - 1)] for k, v in lists.items()} for i in range(count)]

    @staticmethod
    def _blocked(kwargs: dict[str, Any], input_is_list: bool) -> bool:
        for value in kwargs.values():
            items = value if input_is_list and isinstance(value, list) else [value]
            if any(isinstance(item, ExecutionBlocker) for item in items):
                return True
        return False

    def _eval(self, nid: str, graph: dict[str, dict], memo: dict, top_level: bool) -> tuple[list[list[Any]], dict]:
        if nid in memo:
            return memo[nid]
        if top_level:
            self.needed.add(nid)
        node = graph[nid]
        definition = self.registry.get(node["class_type"])
        instance = definition.node_class()
        ctx = self._ctx(nid, definition.class_type)
        lists: dict[str, list | None] = {}
        lazy_links: dict[str, list] = {}
        for name, value in node["inputs"].items():
            if _is_link(value) and definition.input_map[name].lazy:
                lists[name] = None
                lazy_links[name] = value
            elif _is_link(value):
                lists[name] = self._eval(value[0], graph, memo, top_level)[0][value[1]]
            else:
                lists[name] = [value]
        if definition.has_lazy_check:
            while True:
                wanted = {w for kw in self._calls(definition.input_is_list, lists)
                          if not self._blocked(kw, definition.input_is_list)
                          for w in instance.check_lazy_status(ctx, **kw) or []}
                new = [w for w in wanted if w in lazy_links and lists[w] is None]
                if not new:
                    break
                for name in new:
                    link = lazy_links[name]
                    lists[name] = self._eval(link[0], graph, memo, top_level)[0][link[1]]
        outputs: list[list[Any]] = [[] for _ in definition.outputs]
        ui: dict[str, list] = {}
        for kwargs in self._calls(definition.input_is_list, lists):
            if self._blocked(kwargs, definition.input_is_list):
                for slot in outputs:
                    slot.append(ExecutionBlocker(None))
                continue
            result = instance.execute(ctx, **kwargs)
            if asyncio.iscoroutine(result):
                result = asyncio.run(result)
            values = result.outputs if isinstance(result, NodeResult) else result
            if isinstance(result, NodeResult) and result.ui:
                for key, items in result.ui.items():
                    ui.setdefault(key, []).extend(items)
            if isinstance(result, NodeResult) and result.expand:
                sub_memo: dict = {}
                resolved = []
                for value in values:
                    if _is_link(value) and value[0] in result.expand:
                        resolved.append(("list", self._eval(value[0], result.expand, sub_memo, False)[0][value[1]]))
                    else:
                        resolved.append(("value", value))
                for i, (kind, value) in enumerate(resolved):
                    outputs[i].extend(value) if kind == "list" else outputs[i].append(value)
                continue
            for i, value in enumerate(values):
                outputs[i].extend(value) if definition.outputs[i].is_list else outputs[i].append(value)
        memo[nid] = (outputs, ui)
        return memo[nid]


# -- the property ---------------------------------------------------------------------------------

class RecordingCache(OutputCache):
    """Logs puts and evictions into the same event list the stub nodes log their runs to."""

    def put(self, signature: str, outputs: list[list[Any]], ui: dict[str, list] | None) -> None:
        before = set(self._entries)
        super().put(signature, outputs, ui)
        after = set(self._entries)
        if signature in after:
            diff.EVENTS.append(("put", signature))
        for gone in before - after:
            diff.EVENTS.append(("evict", gone))


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = NodeRegistry()
    registry.register_module(diff, "tests.stub_nodes.differential")
    return registry


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> FolderPaths:
    paths = FolderPaths(tmp_path_factory.mktemp("differential"))
    paths.ensure_dirs()
    return paths


def definition_of(registry: NodeRegistry, prompt: dict, nid: str):
    return registry.get(prompt[nid]["class_type"])


def check_sequence(registry: NodeRegistry, paths: FolderPaths, prompts: list[dict], budget: int | None) -> None:
    cache = RecordingCache(budget_bytes=1 << 40, max_entries=budget)
    executor = Executor(registry, paths, cache=cache)
    validator = PromptValidator(registry, paths)
    ever_computed: set[str] = set()
    try:
        for step, prompt in enumerate(prompts):
            validated = validator.validate(copy.deepcopy(prompt))
            assert validated.ok, validated.summary()
            cached_before = set(cache._entries)
            diff.EVENTS.clear()
            report = executor.execute(f"step{step}", validated.prompt, validated.outputs)
            assert report.ok, report.error
            events = list(diff.EVENTS)

            naive = Naive(registry, paths)
            expected = naive.outputs(copy.deepcopy(validated.prompt), validated.outputs)
            diff.EVENTS.clear()
            assert report.outputs == expected, f"step {step}: outputs differ from the naive evaluator"

            present = set(cached_before)
            runs: list[str] = []
            for kind, subject in events:
                if kind == "put":
                    present.add(subject)
                elif kind == "evict":
                    present.discard(subject)
                elif subject not in runs:  # (a list-mapped node runs once per item: check the first)
                    runs.append(subject)
                    signature = report.signatures[subject]
                    assert signature not in present, \
                        f"step {step}: node {subject} ran although its result was cached or being computed"
                    present.add(signature)
            assert set(runs) <= set(report.executed)
            executed_signatures = {report.signatures[n] for n in report.executed}
            for nid in naive.needed:
                signature = report.signatures[nid]
                if signature not in ever_computed:
                    assert signature in executed_signatures, \
                        f"step {step}: node {nid} was needed, its signature is new, and it did not run"
            ever_computed |= executed_signatures
            consumers: dict[str, set[str]] = {}
            for nid, node in validated.prompt.items():
                for value in node["inputs"].values():
                    if _is_link(value):
                        consumers.setdefault(value[0], set()).add(nid)
            executed = set(report.executed)
            for nid in executed & set(validated.prompt):
                if not definition_of(registry, validated.prompt, nid).output_node:
                    assert consumers.get(nid, set()) & executed, \
                        f"step {step}: node {nid} ran but no node consuming it ran (its result was not needed)"
    finally:
        executor.close()


def _const(value: int) -> dict:
    return {"class_type": "DConst", "inputs": {"value": value}}


# shapes a random search may take long to hit, always tried first
LAZY_OVER_A_LIST = {  # a lazy switch mapped over [1, 2] needs both branches
    "n0": _const(1), "n1": {"class_type": "DRange", "inputs": {"a": ["n0", 0], "count": 2}},
    "n2": _const(10), "n3": _const(20),
    "n4": {"class_type": "DSwitch", "inputs": {"cond": ["n1", 0], "invert": False, "on_odd": ["n2", 0],
                                               "on_even": ["n3", 0]}},
    "out0": {"class_type": "DOut", "inputs": {"value": ["n4", 0]}}}
LAZY_BLOCKED = {  # a blocked call never asks for its lazy inputs
    "n0": _const(3), "n1": {"class_type": "DBlock", "inputs": {"a": ["n0", 0], "every": 3}}, "n2": _const(5),
    "n3": {"class_type": "DSwitch", "inputs": {"cond": ["n1", 0], "invert": False, "on_odd": ["n2", 0],
                                               "on_even": ["n2", 0]}},
    "out0": {"class_type": "DOut", "inputs": {"value": ["n3", 0]}}}
EXPANSION_OUTPUT_CONSUMED_INSIDE = {  # an expansion output that other expanded nodes consume
    "n0": _const(4), "n1": {"class_type": "DExpand", "inputs": {"a": ["n0", 0], "depth": 3}},
    "n2": {"class_type": "DAdd", "inputs": {"a": ["n1", 0], "b": ["n1", 1], "k": 0}},
    "out0": {"class_type": "DOut", "inputs": {"value": ["n2", 0]}}}


@example(([LAZY_OVER_A_LIST, LAZY_OVER_A_LIST], None))
@example(([LAZY_BLOCKED], 1))
@example(([EXPANSION_OUTPUT_CONSUMED_INSIDE, EXPANSION_OUTPUT_CONSUMED_INSIDE], 2))
@settings(max_examples=500, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequences())
def test_executor_matches_a_naive_evaluator_over_sequences_of_prompts(registry, paths, sequence):
    prompts, budget = sequence
    check_sequence(registry, paths, prompts, budget)


def test_a_cached_consumer_does_not_release_the_inputs_of_uncached_ones(registry, paths):
    """The issue's shape: a loader feeding two cached encoders and an uncached sampler and decoder."""
    loader = {"class_type": "DConst", "inputs": {"value": 7}}
    prompt = {
        "4": loader,
        "6": {"class_type": "DAdd", "inputs": {"a": ["4", 0], "k": 1}},
        "7": {"class_type": "DAdd", "inputs": {"a": ["4", 0], "k": 2}},
        "3": {"class_type": "DSeeded", "inputs": {"a": ["6", 0], "seed": 1}},
        "8": {"class_type": "DAdd", "inputs": {"a": ["3", 0], "b": ["4", 0], "k": 0}},
        "9": {"class_type": "DOut", "inputs": {"value": ["8", 0]}},
    }
    second = copy.deepcopy(prompt)
    second["3"]["inputs"]["seed"] = 2
    check_sequence(registry, paths, [prompt, second, second], None)
