"""Prompt threads are reused: one thread per prompt running at once, not one per prompt ever run.

A property test drives random schedules of concurrent batches (prompts parked side by side) and
checks every task ran exactly once, on as many threads as the widest batch needed; then the
worker itself: Run many prompts in sequence on a live Runtime and the thread count stays flat,
with every prompt's result recorded.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.context import RuntimeOptions
from graph_runtime.jobs import JobStatus
from graph_runtime.paths import FolderPaths
from graph_runtime.prompt_threads import PromptThreads
from graph_runtime.service import Runtime
from server import default_registry

WAIT = 10.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=6))
def test_threads_grow_to_the_widest_batch_and_every_task_runs_once(batches: list[int]) -> None:
    exits: list[str] = []
    pool = PromptThreads(on_exit=lambda: exits.append(threading.current_thread().name))
    ran: list[int] = []
    ran_lock = threading.Lock()
    next_id = 0
    try:
        for width in batches:
            # Every task of a batch must be running at the same time (a parked prompt holds its
            # thread), or the barrier breaks: the pool may not make a task wait for a busy thread.
            barrier = threading.Barrier(width + 1)

            def task(i: int) -> None:
                barrier.wait(WAIT)
                with ran_lock:
                    ran.append(i)

            for _ in range(width):
                pool.submit(lambda i=next_id: task(i))
                next_id += 1
            barrier.wait(WAIT)
            assert pool.wait_all_idle(WAIT)
        assert sorted(ran) == list(range(next_id))
        assert pool.size() == max(batches)
    finally:
        pool.close(WAIT)
    assert len(exits) == max(batches)  # every thread ended and closed its event loop


def test_a_closed_pool_refuses_work_and_a_raising_task_does_not_kill_its_thread() -> None:
    pool = PromptThreads()
    done = threading.Event()
    pool.submit(lambda: 1 / 0)
    assert pool.wait_all_idle(WAIT) and pool.idle() == 1
    pool.submit(done.set)
    assert done.wait(WAIT) and pool.size() == 1
    pool.close(WAIT)
    with pytest.raises(RuntimeError):
        pool.submit(done.set)


@pytest.fixture
def runtime(tmp_path: Path):
    paths = FolderPaths(tmp_path / "base")
    paths.ensure_dirs()
    rt = Runtime(paths, RuntimeOptions(device="cpu"), registry=default_registry(paths))
    rt.start()
    yield rt
    rt.stop()


def _prompt(value: int) -> dict:
    return {"1": {"class_type": "PrimitiveInt", "inputs": {"value": value}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}


def test_prompts_run_in_sequence_reuse_their_thread(runtime: Runtime) -> None:
    before = {t.ident for t in threading.enumerate()}
    ended: dict[str, threading.Event] = {}
    runtime.add_completion_listener(lambda outcome: ended.setdefault(outcome.prompt_id, threading.Event()).set())
    ids = []
    for value in range(30):  # Run, wait for the result, Run again with a new value
        submitted = runtime.submit(_prompt(value))
        assert submitted.prompt_id, submitted.response()
        ids.append(submitted.prompt_id)
        assert ended.setdefault(submitted.prompt_id, threading.Event()).wait(WAIT)
    assert [runtime.store.get(pid).status for pid in ids] == [JobStatus.SUCCEEDED] * 30
    started = {t.ident for t in threading.enumerate()} - before
    # prompts run one after the other all run on the claiming thread itself
    assert runtime.runner._threads.size() == 1
    assert len(started) <= 1


def test_a_second_start_neither_requeues_the_running_prompt_nor_adds_a_worker(runtime: Runtime) -> None:
    """Runtime.start() is idempotent: crash recovery runs once, one claiming thread."""
    release = threading.Event()
    entered = threading.Event()
    ended: dict[str, threading.Event] = {}
    runtime.add_completion_listener(lambda outcome: ended.setdefault(outcome.prompt_id, threading.Event()).set())

    def gate_listener(event, client_id) -> None:
        if getattr(event, "type", None) == "executing" and getattr(event, "node", None) == "2":
            entered.set()
            release.wait(WAIT)  # hold the prompt in the middle of its run

    runtime.add_listener(gate_listener)
    submitted = runtime.submit(_prompt(1))
    assert entered.wait(WAIT)
    runtime.start()  # again, while the prompt runs
    assert runtime.store.get(submitted.prompt_id).status is JobStatus.RUNNING
    threads = runtime.runner._threads.size()  # the claimer runs the held prompt itself: one thread
    release.set()
    assert ended.setdefault(submitted.prompt_id, threading.Event()).wait(WAIT)
    assert runtime.store.get(submitted.prompt_id).status is JobStatus.SUCCEEDED
    assert threads == 1
