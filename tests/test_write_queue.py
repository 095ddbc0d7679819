"""The write queue: the web layer's writes on one thread, in arrival order, submissions in batches.

The runtime here is never started, so queued prompts stay pending and the queue's effects can be
read from the store: numbers follow arrival order, every write sees exactly the writes that came
before it, a batch gives each submission its own answer, and an error never stops the thread.
"""
from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.context import RuntimeOptions
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import NodeRegistry
from graph_runtime.service import Runtime, SubmitRequest
from graph_runtime.write_queue import WriteQueue
from tests.stub_nodes import differential

WAIT = 10.0


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory):
    paths = FolderPaths(tmp_path_factory.mktemp("write-queue"))
    paths.ensure_dirs()
    registry = NodeRegistry()
    registry.register_module(differential, "tests.stub_nodes.differential")
    rt = Runtime(paths, RuntimeOptions(device="cpu"), registry=registry)  # not started: nothing runs
    yield rt
    rt.stop()


def _prompt(value: int) -> dict:
    return {"c": {"class_type": "DConst", "inputs": {"value": value}},
            "o": {"class_type": "DOut", "inputs": {"value": ["c", 0]}}}


def _spy_batches(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = runtime.submit_many

    def spy(requests):
        sizes.append(len(requests))
        return real(requests)

    monkeypatch.setattr(runtime, "submit_many", spy)
    return sizes


def _pending(runtime: Runtime) -> list[str]:
    return [job.prompt_id for job in runtime.store.pending()]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["submit", "count", "delete_oldest"]), min_size=1, max_size=30))
def test_writes_run_in_arrival_order_and_each_sees_the_ones_before(runtime: Runtime, ops: list[str]) -> None:
    runtime.clear_pending()
    expected_pending: list[str] = []
    seen_counts: list[tuple[int, int]] = []

    async def scenario() -> list:
        queue = WriteQueue(runtime)
        try:
            tasks = []
            for i, op in enumerate(ops):  # all issued at once; tasks start in creation order
                if op == "submit":
                    tasks.append(queue.submit(SubmitRequest(_prompt(i), prompt_id=f"w{id(ops)}-{i}")))
                    expected_pending.append(f"w{id(ops)}-{i}")
                elif op == "count":
                    tasks.append(queue.call(runtime.store.queue_remaining))
                    seen_counts.append((i, len(expected_pending)))
                else:
                    oldest = expected_pending[:1]
                    tasks.append(queue.call(runtime.delete_pending, oldest))
                    del expected_pending[:1]
            return await asyncio.gather(*tasks)
        finally:
            queue.close()

    results = asyncio.run(scenario())
    for i, count in seen_counts:
        assert results[i] == count  # the count saw exactly the submits and deletes issued before it
    submitted = [r for op, r in zip(ops, results) if op == "submit"]
    assert all(r.ok for r in submitted)
    numbers = [r.number for r in submitted]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # arrival order
    assert _pending(runtime) == expected_pending


def test_submissions_waiting_together_are_enqueued_as_one_batch(runtime: Runtime, monkeypatch) -> None:
    runtime.clear_pending()
    sizes = _spy_batches(runtime, monkeypatch)
    gate = threading.Event()

    async def scenario() -> list:
        queue = WriteQueue(runtime)
        try:
            blocker = asyncio.ensure_future(queue.call(gate.wait, WAIT))  # the thread is busy...
            await asyncio.sleep(0)
            posts = [asyncio.ensure_future(queue.submit(SubmitRequest(_prompt(100 + i)))) for i in range(50)]
            await asyncio.sleep(0)  # ...while 50 submissions arrive
            gate.set()
            await blocker
            return await asyncio.gather(*posts)
        finally:
            queue.close()

    results = asyncio.run(scenario())
    assert sizes == [50]
    assert all(r.ok for r in results) and len({r.prompt_id for r in results}) == 50
    assert _pending(runtime) == [r.prompt_id for r in results]


def test_each_submission_of_a_batch_gets_its_own_answer(runtime: Runtime, monkeypatch) -> None:
    runtime.clear_pending()
    sizes = _spy_batches(runtime, monkeypatch)
    gate = threading.Event()
    broken = {"o": {"class_type": "DOut", "inputs": {"value": ["missing", 0]}}}

    async def scenario() -> list:
        queue = WriteQueue(runtime)
        try:
            blocker = asyncio.ensure_future(queue.call(gate.wait, WAIT))
            await asyncio.sleep(0)
            posts = [asyncio.ensure_future(queue.submit(request)) for request in (
                SubmitRequest(_prompt(1), prompt_id="same"),
                SubmitRequest(broken),
                SubmitRequest(_prompt(2), prompt_id="same"),
                SubmitRequest(_prompt(3), client_id="me"),
            )]
            await asyncio.sleep(0)
            gate.set()
            await blocker
            return await asyncio.gather(*posts)
        finally:
            queue.close()

    first, invalid, duplicate, last = asyncio.run(scenario())
    assert sizes == [4]
    assert first.ok and first.prompt_id == "same"
    assert not invalid.ok and invalid.response()["node_errors"]["o"]
    assert not duplicate.ok and duplicate.error["message"] == "Duplicate prompt id"
    assert last.ok and runtime.store.get(last.prompt_id).client_id == "me"
    assert _pending(runtime) == ["same", last.prompt_id]


def test_an_error_reaches_its_caller_and_the_thread_goes_on(runtime: Runtime) -> None:
    runtime.clear_pending()

    def fail() -> None:
        raise RuntimeError("disk on fire")

    async def scenario():
        queue = WriteQueue(runtime)
        try:
            with pytest.raises(RuntimeError, match="disk on fire"):
                await queue.call(fail)
            return await queue.submit(SubmitRequest(_prompt(7)))
        finally:
            queue.close()

    assert asyncio.run(scenario()).ok


def test_close_cancels_what_did_not_start(runtime: Runtime) -> None:
    gate, started = threading.Event(), threading.Event()

    def block() -> bool:
        started.set()
        return gate.wait(WAIT)

    async def scenario() -> None:
        queue = WriteQueue(runtime)
        blocker = asyncio.ensure_future(queue.call(block))
        assert await asyncio.to_thread(started.wait, WAIT)  # the write thread runs it now
        waiting = asyncio.ensure_future(queue.submit(SubmitRequest(_prompt(8))))
        await asyncio.sleep(0)
        queue.close()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.set()
        assert await blocker is True  # the running write finished
        with pytest.raises(RuntimeError, match="closed"):
            await queue.submit(SubmitRequest(_prompt(9)))

    asyncio.run(scenario())
