"""Executor behaviour on the stub pack: ordering, pruning, caching, lazy inputs, lists, errors, interrupts."""
from __future__ import annotations

import threading

import pytest

from graph_runtime.events import (Executed, Executing, ExecutionCached, ExecutionError, ExecutionInterrupted,
                                  ExecutionStart, ExecutionSuccess, Progress)
from graph_runtime.executor import InterruptToken
from graph_runtime.validation import PromptValidator


def run(executor, prompt, registry, **kw):
    result = PromptValidator(registry, executor.paths).validate(prompt)
    assert result.ok, result.summary()
    events = []
    report = executor.execute(kw.pop("prompt_id", "p"), result.prompt, result.outputs, sink=events.append, **kw)
    return report, events


def chain_prompt(value=1):
    return {
        "c": {"class_type": "StubConst", "inputs": {"value": value}},
        "add": {"class_type": "StubAdd", "inputs": {"a": ["c", 0], "b": ["c", 0]}},
        "out": {"class_type": "StubOutput", "inputs": {"value": ["add", 0]}},
        "unused": {"class_type": "StubConst", "inputs": {"value": 99}},
    }


def test_runs_in_topological_order_and_prunes_unreachable(executor, stub_registry, calls):
    report, events = run(executor, chain_prompt(2), stub_registry)
    assert report.ok
    assert calls == ["c", "add", "out"]  # "unused" feeds no output
    assert report.outputs == {"out": {"value": [4]}}
    types = [type(e) for e in events]
    assert types[0] is ExecutionStart and types[1] is ExecutionCached and types[-1] is ExecutionSuccess
    assert [e.node for e in events if isinstance(e, Executing)] == ["c", "add", "out"]
    assert [e.node for e in events if isinstance(e, Executed)] == ["out"]


def test_partial_execution_targets_only_run_the_chosen_output(executor, stub_registry, calls):
    prompt = chain_prompt(1)
    prompt["out2"] = {"class_type": "StubOutput", "inputs": {"value": ["unused", 0]}}
    result = PromptValidator(stub_registry).validate(prompt, partial_targets=["out2"])
    assert result.outputs == ["out2"]
    report = executor.execute("p", result.prompt, result.outputs)
    assert calls == ["unused", "out2"] and report.outputs == {"out2": {"value": [99]}}


def test_cache_hits_across_prompts_and_changed_literal_reruns_downstream_only(executor, stub_registry, calls):
    prompt = chain_prompt(1)
    prompt["k"] = {"class_type": "StubConst", "inputs": {"value": 5}}
    prompt["add2"] = {"class_type": "StubAdd", "inputs": {"a": ["k", 0], "b": ["add", 0]}}
    prompt["out"]["inputs"]["value"] = ["add2", 0]
    run(executor, prompt, stub_registry)
    calls.clear()
    report, events = run(executor, prompt, stub_registry)
    assert calls == []  # fully cached; the output node replays its UI
    assert set(report.cached) >= {"c", "add", "k", "add2", "out"}
    assert [e.node for e in events if isinstance(e, Executed)] == ["out"]
    assert not [e for e in events if isinstance(e, Executing)]
    prompt["k"]["inputs"]["value"] = 6  # changed literal: only k and its downstream re-run
    calls.clear()
    report, _ = run(executor, prompt, stub_registry)
    assert sorted(calls) == ["add2", "k", "out"] and report.outputs["out"] == {"value": [8]}


def test_changed_upstream_invalidates_every_downstream_node(executor, stub_registry, calls):
    run(executor, chain_prompt(1), stub_registry)
    calls.clear()
    report, _ = run(executor, chain_prompt(3), stub_registry)
    assert calls == ["c", "add", "out"] and report.outputs["out"] == {"value": [6]}


def test_same_subgraph_under_renamed_ids_hits_the_cache(executor, stub_registry, calls):
    run(executor, chain_prompt(7), stub_registry)
    renamed = {
        "10": {"class_type": "StubConst", "inputs": {"value": 7}},
        "20": {"class_type": "StubAdd", "inputs": {"a": ["10", 0], "b": ["10", 0]}},
        "30": {"class_type": "StubOutput", "inputs": {"value": ["20", 0]}},
    }
    calls.clear()
    report, _ = run(executor, renamed, stub_registry)
    assert calls == [] and report.outputs == {"30": {"value": [14]}}


def test_unique_id_nodes_are_cached_per_node_id(executor, stub_registry, calls):
    prompt = {"u": {"class_type": "StubUniqueId", "inputs": {}},
              "o": {"class_type": "StubOutput", "inputs": {"value": ["u", 0]}}}
    run(executor, prompt, stub_registry)
    renamed = {"v": prompt["u"], "o": {"class_type": "StubOutput", "inputs": {"value": ["v", 0]}}}
    calls.clear()
    report, _ = run(executor, renamed, stub_registry)
    assert calls == ["v", "o"] and report.outputs["o"] == {"value": ["v"]}


def test_volatile_nodes_run_every_time(executor, stub_registry, calls):
    prompt = {"v": {"class_type": "StubVolatile", "inputs": {}},
              "o": {"class_type": "StubOutput", "inputs": {"value": ["v", 0]}}}
    first, _ = run(executor, prompt, stub_registry)
    second, _ = run(executor, prompt, stub_registry)
    assert second.outputs["o"]["value"][0] == first.outputs["o"]["value"][0] + 1


def test_lazy_inputs_compute_only_the_branch_needed(executor, stub_registry, calls):
    prompt = {
        "t": {"class_type": "StubConst", "inputs": {"value": 1}},
        "f": {"class_type": "StubConst", "inputs": {"value": 2}},
        "f2": {"class_type": "StubAdd", "inputs": {"a": ["f", 0]}},
        "s": {"class_type": "StubLazySwitch", "inputs": {"choose": False, "on_true": ["t", 0], "on_false": ["f2", 0]}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["s", 0]}},
    }
    report, _ = run(executor, prompt, stub_registry)
    assert report.ok and report.outputs["o"] == {"value": [2]}
    assert "t" not in calls and calls.index("f") < calls.index("f2") < calls.index("s")


def test_list_outputs_map_over_consumers_and_list_inputs_get_the_whole_list(executor, stub_registry, calls):
    prompt = {
        "l": {"class_type": "StubMakeList", "inputs": {"count": 4}},
        "one": {"class_type": "StubConst", "inputs": {"value": 10}},
        "add": {"class_type": "StubAdd", "inputs": {"a": ["l", 0], "b": ["one", 0]}},
        "sum": {"class_type": "StubSum", "inputs": {"values": ["add", 0]}},
        "o1": {"class_type": "StubOutput", "inputs": {"value": ["add", 0]}},
        "o2": {"class_type": "StubOutput", "inputs": {"value": ["sum", 0]}},
    }
    report, _ = run(executor, prompt, stub_registry)
    assert report.outputs["o1"] == {"value": [10, 11, 12, 13]}  # add ran once per list item, ui merged
    assert report.outputs["o2"] == {"value": [46]}
    assert calls.count("add") == 4 and calls.count("sum") == 1


def test_a_failing_node_reports_a_structured_error_and_stops(executor, stub_registry, calls):
    prompt = {
        "c": {"class_type": "StubConst", "inputs": {"value": 1}},
        "bad": {"class_type": "StubFail", "inputs": {"value": ["c", 0], "message": "the model file is broken"}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["bad", 0]}},
    }
    report, events = run(executor, prompt, stub_registry)
    assert report.status == "error" and "o" not in calls
    err = [e for e in events if isinstance(e, ExecutionError)][0]
    assert err.node_id == "bad" and err.node_type == "StubFail"
    assert err.exception_message == "the model file is broken"
    assert err.exception_type == "graph_runtime.context.NodeError"
    assert err.executed == ["c"] and err.current_inputs["value"] == [1] and err.traceback
    assert report.messages[-1][0] == "execution_error"
    # the executor keeps serving
    report2, _ = run(executor, chain_prompt(1), stub_registry)
    assert report2.ok


def test_interrupt_mid_prompt_stops_a_running_node(executor, stub_registry, calls):
    prompt = {
        "c": {"class_type": "StubConst", "inputs": {"value": 1}},
        "w": {"class_type": "StubWait", "inputs": {"value": ["c", 0], "gate": "never"}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["w", 0]}},
    }
    token = InterruptToken()
    seen_progress = threading.Event()

    def sink(event):
        if isinstance(event, Progress):
            seen_progress.set()
            token.set()

    result = PromptValidator(stub_registry).validate(prompt)
    report = executor.execute("p", result.prompt, result.outputs, sink=sink, interrupt=token)
    assert seen_progress.is_set()
    assert report.status == "interrupted" and "o" not in calls
    assert report.messages[-1][0] == "execution_interrupted"
    assert report.messages[-1][1]["node_id"] == "w"


def test_interrupt_before_start_runs_nothing(executor, stub_registry, calls):
    token = InterruptToken()
    token.set()
    report, events = run(executor, chain_prompt(1), stub_registry, interrupt=token)
    assert report.status == "interrupted" and calls == []
    assert isinstance(events[-1], ExecutionInterrupted)


def test_async_nodes_overlap_with_other_work(executor, stub_registry, calls):
    # "a" waits on a gate that only the sync node "g" opens: this finishes only if the async node
    # does not block the rest of the prompt.
    prompt = {
        "a": {"class_type": "StubAsyncDelay", "inputs": {"value": 3, "gate": "x"}},
        "g": {"class_type": "StubOpenGate", "inputs": {"value": 4, "gate": "x"}},
        "sum": {"class_type": "StubAdd", "inputs": {"a": ["a", 0], "b": ["g", 0]}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["sum", 0]}},
    }
    report, _ = run(executor, prompt, stub_registry)
    assert report.ok and report.outputs["o"] == {"value": [7]}
    assert calls.index("a:start") < calls.index("g") < calls.index("a:end")


def test_execution_blocker_skips_consumers_silently(executor, stub_registry, calls):
    prompt = {
        "c": {"class_type": "StubConst", "inputs": {"value": 1}},
        "b": {"class_type": "StubBlock", "inputs": {"value": ["c", 0], "block": True}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["b", 0]}},
    }
    report, _ = run(executor, prompt, stub_registry)
    assert report.ok and "o" not in calls and "o" not in report.outputs


def test_intermediate_outputs_are_released_after_their_last_consumer(executor, stub_registry, calls):
    prompt = chain_prompt(1)
    result = PromptValidator(stub_registry).validate(prompt)
    from graph_runtime import executor as executor_module

    run_state = executor_module._PromptRun(executor, "p", result.prompt, result.outputs, {}, lambda e: None,
                                           InterruptToken())
    import asyncio

    released: list[str] = []
    original_release = run_state._release

    def watch(nid):
        original_release(nid)
        released.append((nid, sorted(run_state.values)))

    run_state._release = watch
    report = asyncio.new_event_loop().run_until_complete(run_state.run())
    assert report.ok
    # after "add" ran, "c" (its only producer) is gone; after "out" ran, "add" is gone too
    assert released == [("c", ["c"]), ("add", ["add"]), ("out", ["out"])]


def test_node_runs_record_time_and_memory(executor, stub_registry, calls):
    report, _ = run(executor, chain_prompt(1), stub_registry)
    runs = report.node_runs
    assert set(runs) == {"c", "add", "out"}
    assert all(r.seconds >= 0 and isinstance(r.memory["rss_delta_bytes"], int) for r in runs.values())
    assert report.process_peak_rss_bytes > 0


def test_signatures_are_computed_incrementally_and_linearly(executor, stub_registry):
    def chain(n):
        p = {"0": {"class_type": "StubConst", "inputs": {"value": 1}}}
        for i in range(1, n):
            p[str(i)] = {"class_type": "StubAdd", "inputs": {"a": [str(i - 1), 0]}}
        p["o"] = {"class_type": "StubOutput", "inputs": {"value": [str(n - 1), 0]}}
        return p

    sigs = executor.signatures(chain(2000))  # a recursive or quadratic scheme would blow up here
    assert len(set(sigs.values())) == 2001


def test_cache_respects_its_memory_budget(stub_registry, base_dir):
    import torch

    from graph_runtime.cache import OutputCache
    from graph_runtime.executor import Executor

    cache = OutputCache(budget_bytes=3 * 64 * 64 * 3 * 4)  # room for about three 64x64 images
    ex = Executor(stub_registry, base_dir, cache=cache)
    for color in range(6):
        prompt = {"e": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1,
                                                               "color": color}},
                  "i": {"class_type": "ImageInvert", "inputs": {"image": ["e", 0]}},
                  "o": {"class_type": "StubOutput", "inputs": {"value": ["i", 0]}}}
        result = PromptValidator(stub_registry).validate(prompt)
        assert ex.execute(str(color), result.prompt, result.outputs).ok
    assert cache.total_bytes <= cache.budget_bytes
    assert 0 < len(cache) < 18
    assert isinstance(torch.zeros(1), torch.Tensor)
