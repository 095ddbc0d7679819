"""Behaviour of the durable SQLite job queue/history (graph_runtime.jobs).

Stdlib only (no torch); the crash tests run a real child process and SIGKILL it.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import textwrap
from pathlib import Path

import pytest

from graph_runtime.jobs import (
    CRASH_LOOP_MESSAGE,
    DuplicateJobError,
    JobSort,
    JobStateError,
    JobStoreError,
    JobStatus,
    JobStore,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def _prompt(seed: int = 0) -> dict:
    return {
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "model": ["4", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
    }


@pytest.fixture
def store(tmp_path: Path):
    s = JobStore(tmp_path / "jobs.sqlite3")
    yield s
    s.close()


def add(store: JobStore, pid: str, **kw):
    kw.setdefault("extra_data", {"client_id": "cli"})
    kw.setdefault("outputs_to_execute", ["9"])
    kw.setdefault("client_id", "cli")
    return store.enqueue(pid, _prompt(), **kw)


def claim_all(store: JobStore) -> list[str]:
    out = []
    while (job := store.claim_next(timeout=0)) is not None:
        out.append(job.prompt_id)
    return out


# ------------------------------------------------------------------ basics / ordering
def test_enqueue_stores_everything_and_numbers_increment(store: JobStore) -> None:
    extra = {"client_id": "cli", "extra_pnginfo": {"workflow": {"nodes": [1, 2]}},
             "api_key_comfy_org": "secret", "auth_token_comfy_org": "tok"}
    a = store.enqueue("a", _prompt(7), extra_data=extra, outputs_to_execute=["9"], client_id="cli")
    b = add(store, "b")
    assert (a.number, b.number) == (0.0, 1.0)
    got = store.get("a")
    assert got is not None
    assert got.status is JobStatus.PENDING
    assert got.prompt == _prompt(7)
    assert got.outputs_to_execute == ["9"]
    assert got.client_id == "cli"
    assert got.attempts == 0 and got.started_at is None and got.finished_at is None
    # credentials never reach the disk
    assert got.extra_data == {"client_id": "cli", "extra_pnginfo": {"workflow": {"nodes": [1, 2]}}}
    raw = (store.db_path.read_bytes()
           + Path(str(store.db_path) + "-wal").read_bytes())
    assert b"secret" not in raw and b"tok\"" not in raw
    assert a.queue_item() == [0, "a", _prompt(7), got.extra_data, ["9"]]
    assert store.get("missing") is None


def test_duplicate_prompt_id_rejected(store: JobStore) -> None:
    add(store, "a")
    with pytest.raises(DuplicateJobError):
        add(store, "a")
    assert [j.prompt_id for j in store.pending()] == ["a"]


def test_order_priority_front_and_explicit_number(store: JobStore) -> None:
    add(store, "n0")                       # 0
    add(store, "n1")                       # 1
    f = add(store, "front", front=True)    # lower than every pending
    add(store, "explicit", number=0.5)     # between n0 and n1
    add(store, "urgent", priority=5)       # highest priority wins regardless of number
    f2 = add(store, "front2", front=True)  # the newest front goes first
    assert f.number < 0 and f2.number < f.number
    expected = ["urgent", "front2", "front", "n0", "explicit", "n1"]
    assert [j.prompt_id for j in store.pending()] == expected
    assert [j.prompt_id for j in store.queue_snapshot().pending] == expected
    assert claim_all(store) == expected


def test_front_is_lower_than_explicit_negative_numbers(store: JobStore) -> None:
    add(store, "neg", number=-50)
    f = add(store, "front", front=True)
    assert f.number < -50
    assert claim_all(store) == ["front", "neg"]


def test_number_counter_survives_reopen(tmp_path: Path) -> None:
    with JobStore(tmp_path / "j.db") as s:
        add(s, "a"); add(s, "b")
        s.clear_pending()
    with JobStore(tmp_path / "j.db") as s:
        assert add(s, "c").number == 2.0


def test_claim_moves_to_running_and_counts_attempts(store: JobStore) -> None:
    add(store, "a"); add(store, "b")
    job = store.claim_next(timeout=0)
    assert job is not None and job.prompt_id == "a"
    assert job.status is JobStatus.RUNNING and job.attempts == 1 and job.started_at is not None
    assert job.prompt == _prompt()
    snap = store.queue_snapshot()
    assert [j.prompt_id for j in snap.running] == ["a"]
    assert [j.prompt_id for j in snap.pending] == ["b"]
    assert store.queue_remaining() == 2
    assert [j.prompt_id for j in store.running()] == ["a"]


def test_claim_timeout_returns_none_when_empty(store: JobStore) -> None:
    assert store.claim_next(timeout=0) is None
    assert store.claim_next(timeout=0.01) is None


def test_blocked_claim_wakes_on_enqueue(store: JobStore) -> None:
    got: list = []
    t = threading.Thread(target=lambda: got.append(store.claim_next(timeout=30)))
    t.start()
    add(store, "a")
    t.join(timeout=30)
    assert not t.is_alive()
    assert got[0] is not None and got[0].prompt_id == "a"


def test_close_wakes_blocked_claimer(tmp_path: Path) -> None:
    s = JobStore(tmp_path / "j.db")
    got: list = []
    started = threading.Event()

    def worker() -> None:
        started.set()
        got.append(s.claim_next(timeout=None))

    t = threading.Thread(target=worker)
    t.start()
    started.wait(30)
    s.close()
    t.join(timeout=30)
    assert not t.is_alive() and got == [None]


def test_claim_is_atomic_across_threads(store: JobStore) -> None:
    n_jobs, n_threads = 200, 4
    claimed: list[list[str]] = [[] for _ in range(n_threads)]
    barrier = threading.Barrier(n_threads + 1)

    def worker(i: int) -> None:
        barrier.wait()
        while True:
            job = store.claim_next(timeout=0.2)
            if job is None:
                return
            claimed[i].append(job.prompt_id)
            store.finish(job.prompt_id, JobStatus.SUCCEEDED, outputs={}, messages=[])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    for k in range(n_jobs):          # enqueue while the workers claim
        add(store, f"p{k}")
    for t in threads:
        t.join(timeout=60)
    everything = [pid for lst in claimed for pid in lst]
    assert len(everything) == n_jobs
    assert set(everything) == {f"p{k}" for k in range(n_jobs)}
    assert store.count([JobStatus.SUCCEEDED]) == n_jobs
    assert store.pending() == [] and store.running() == []


# ------------------------------------------------------------------ finish / history
def test_finish_stores_outputs_messages_meta_error(store: JobStore) -> None:
    add(store, "ok"); add(store, "bad")
    store.claim_next(timeout=0)
    outputs = {"9": {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}}
    messages = [["execution_start", {"prompt_id": "ok", "timestamp": 1}],
                ["execution_success", {"prompt_id": "ok", "timestamp": 2}]]
    meta = {"9": {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}}
    store.finish("ok", JobStatus.SUCCEEDED, outputs=outputs, messages=messages, meta=meta)
    store.claim_next(timeout=0)
    err = {"type": "ValueError", "message": "boom", "node_id": "3"}
    store.finish("bad", JobStatus.FAILED, outputs={}, messages=[["execution_error", err]], error=err)

    ok = store.get("ok")
    assert ok is not None and ok.status is JobStatus.SUCCEEDED and ok.finished_at is not None
    assert (ok.outputs, ok.messages, ok.meta, ok.error) == (outputs, messages, meta, None)
    entry = ok.history_entry()
    assert entry["prompt"] == [0, "ok", _prompt(), {"client_id": "cli"}, ["9"]]
    assert entry["status"] == {"status_str": "success", "completed": True, "messages": messages}
    assert entry["outputs"] == outputs and entry["meta"] == meta
    bad = store.get("bad")
    assert bad is not None and bad.error == err
    assert bad.history_entry()["status"]["status_str"] == "error"
    assert bad.history_entry()["status"]["completed"] is False


def test_finish_rejects_wrong_state(store: JobStore) -> None:
    add(store, "a")
    with pytest.raises(JobStateError):
        store.finish("a", JobStatus.SUCCEEDED, outputs={}, messages=[])   # still pending
    with pytest.raises(KeyError):
        store.finish("nope", JobStatus.SUCCEEDED, outputs={}, messages=[])
    store.claim_next(timeout=0)
    with pytest.raises(ValueError):
        store.finish("a", JobStatus.RUNNING, outputs={}, messages=[])
    store.finish("a", JobStatus.INTERRUPTED, outputs={}, messages=[])
    with pytest.raises(JobStateError):
        store.finish("a", JobStatus.SUCCEEDED, outputs={}, messages=[])   # twice
    job = store.get("a")
    assert job is not None and job.status is JobStatus.INTERRUPTED


def _run_and_finish(store: JobStore, ids: list[str], status=JobStatus.SUCCEEDED) -> None:
    for pid in ids:
        add(store, pid)
        job = store.claim_next(timeout=0)
        assert job is not None and job.prompt_id == pid
        store.finish(pid, status, outputs={"9": {"images": [{"filename": pid}]}}, messages=[])


def test_history_pagination_newest_first(store: JobStore) -> None:
    ids = [f"h{i}" for i in range(10)]
    _run_and_finish(store, ids)
    add(store, "still_pending")
    page = store.history(max_items=3)
    assert [j.prompt_id for j in page.jobs] == ["h9", "h8", "h7"]
    assert page.total == 10 and page.has_more
    page = store.history(max_items=3, offset=9)
    assert [j.prompt_id for j in page.jobs] == ["h0"] and not page.has_more
    assert [j.prompt_id for j in store.history().jobs] == ids[::-1]
    assert [j.prompt_id for j in store.history(newest_first=False, max_items=2).jobs] == ["h0", "h1"]
    assert store.history(offset=50).jobs == []
    with pytest.raises(ValueError):
        store.history(statuses=[JobStatus.PENDING])


def test_history_filters_by_status(store: JobStore) -> None:
    _run_and_finish(store, ["s1"], JobStatus.SUCCEEDED)
    _run_and_finish(store, ["f1"], JobStatus.FAILED)
    _run_and_finish(store, ["s2"], JobStatus.SUCCEEDED)
    page = store.history(statuses=["succeeded"])
    assert [j.prompt_id for j in page.jobs] == ["s2", "s1"] and page.total == 2
    assert store.count([JobStatus.FAILED]) == 1


def test_list_jobs_sorts(store: JobStore) -> None:
    _run_and_finish(store, ["a", "b"])
    add(store, "p1"); add(store, "p2", priority=3)
    assert [j.prompt_id for j in store.list_jobs(["pending"], sort=JobSort.QUEUE,
                                                 descending=False).jobs] == ["p2", "p1"]
    page = store.list_jobs(None, limit=3, sort=JobSort.CREATED)
    assert [j.prompt_id for j in page.jobs] == ["p2", "p1", "b"] and page.total == 4
    assert store.list_jobs([], limit=3).total == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_timestamps_and_duration_sort(store: JobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    import graph_runtime.jobs.store as store_module

    clock = _Clock()
    monkeypatch.setattr(store_module.time, "time", clock)
    for pid, seconds in [("slow", 5.0), ("fast", 1.0), ("mid", 3.0)]:
        add(store, pid)
        clock.now += 1
        store.claim_next(timeout=0)
        clock.now += seconds
        store.finish(pid, JobStatus.SUCCEEDED, outputs={}, messages=[])
    add(store, "waiting")
    slow = store.get("slow")
    assert (slow.created_at, slow.started_at, slow.finished_at) == (1000.0, 1001.0, 1006.0)
    by_duration = store.list_jobs(None, sort=JobSort.DURATION).jobs
    assert [j.prompt_id for j in by_duration] == ["slow", "mid", "fast", "waiting"]
    ascending = store.list_jobs(None, sort=JobSort.DURATION, descending=False).jobs
    assert [j.prompt_id for j in ascending] == ["fast", "mid", "slow", "waiting"]


def test_max_attempts_is_configurable(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    with JobStore(db, max_attempts=1) as s:
        add(s, "a")
        s.claim_next(timeout=0)
    with JobStore(db, max_attempts=1) as s:
        report = s.recover_after_restart()
        assert report.failed == ["a"] and report.requeued == []
        assert s.get("a").status is JobStatus.FAILED


def test_history_is_capped_oldest_evicted(tmp_path: Path) -> None:
    with JobStore(tmp_path / "j.db", max_history=3) as s:
        _run_and_finish(s, [f"h{i}" for i in range(5)])
        assert [j.prompt_id for j in s.history().jobs] == ["h4", "h3", "h2"]
        assert s.get("h0") is None
        # the payload table does not keep orphans
        conn = sqlite3.connect(s.db_path)
        try:
            assert conn.execute("SELECT COUNT(*) FROM job_payloads").fetchone()[0] == 3
        finally:
            conn.close()


# ------------------------------------------------------------------ delete / clear / cancel
def test_delete_pending_only_touches_pending(store: JobStore) -> None:
    _run_and_finish(store, ["done"])
    add(store, "run"); store.claim_next(timeout=0)
    add(store, "p1"); add(store, "p2"); add(store, "p3")
    removed = store.delete_pending(["p1", "p3", "run", "done", "unknown"])
    assert sorted(removed) == ["p1", "p3"]
    assert [j.prompt_id for j in store.pending()] == ["p2"]
    assert store.get("run").status is JobStatus.RUNNING
    assert store.get("done").status is JobStatus.SUCCEEDED
    assert len(store.clear_pending()) == 1
    assert store.pending() == []


def test_cancel_pending_goes_to_history_running_reported(store: JobStore) -> None:
    add(store, "run"); store.claim_next(timeout=0)
    add(store, "p1"); add(store, "p2")
    result = store.cancel(["p1", "run", "ghost"])
    assert result.cancelled == ["p1"] and result.running == ["run"]
    p1 = store.get("p1")
    assert p1 is not None and p1.status is JobStatus.CANCELLED and p1.finished_at is not None
    assert [j.prompt_id for j in store.history().jobs] == ["p1"]
    assert [j.prompt_id for j in store.pending()] == ["p2"]
    assert store.claim_next(timeout=0).prompt_id == "p2"


def test_delete_and_clear_history(store: JobStore) -> None:
    _run_and_finish(store, ["a", "b", "c"])
    add(store, "p")
    assert store.delete_history(["a", "p", "zzz"]) == ["a"]
    assert [j.prompt_id for j in store.history().jobs] == ["c", "b"]
    assert store.clear_history() == 2
    assert store.history().total == 0
    assert [j.prompt_id for j in store.pending()] == ["p"]


# ------------------------------------------------------------------ durability (real crash)
_CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from graph_runtime.jobs import JobStatus, JobStore

    db, mode = Path(sys.argv[1]), sys.argv[2]
    store = JobStore(db)
    if mode == "first":
        store.recover_after_restart()
        for i in range(3):
            store.enqueue(f"done{i}", {"n": i}, extra_data={"client_id": "c"},
                          outputs_to_execute=["9"], client_id="c")
            job = store.claim_next(timeout=0)
            store.finish(job.prompt_id, JobStatus.SUCCEEDED,
                         outputs={"9": {"images": [{"filename": f"{i}.png"}]}},
                         messages=[["execution_success", {"prompt_id": job.prompt_id}]])
        for i in range(20):
            store.enqueue(f"job{i:02d}", {"n": i}, extra_data={"client_id": "c"},
                          outputs_to_execute=["9"], client_id="c")
        claimed = store.claim_next(timeout=0)
    else:
        report = store.recover_after_restart()
        claimed = store.claim_next(timeout=0)
    print("RUNNING", claimed.prompt_id, flush=True)
    sys.stdin.read()   # block until killed; the parent never closes stdin first
""")


def _crash_child(db: Path, mode: str) -> str:
    """Run the child until it has a job running, then SIGKILL it; return that job's id."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("RUNNING "), (line, proc.stderr.read() if proc.poll() is not None else "")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close(); proc.stdout.close(); proc.stderr.close()
    return line.split()[1]


def test_sigkill_while_running_requeues_then_fails_on_second_crash(tmp_path: Path) -> None:
    db = tmp_path / "user" / "jobs.sqlite3"

    # crash 1: job00 is running, job01..job19 pending, 3 finished in history
    assert _crash_child(db, "first") == "job00"
    with JobStore(db) as store:
        assert [j.prompt_id for j in store.running()] == ["job00"]   # as the crash left it
        report = store.recover_after_restart()
        assert report.requeued == ["job00"] and report.failed == [] and report.pending == 20
        pending = store.pending()
        assert [j.prompt_id for j in pending] == [f"job{i:02d}" for i in range(20)]
        first = pending[0]
        assert first.attempts == 1 and first.status is JobStatus.PENDING
        assert first.prompt == {"n": 0} and first.started_at is None
        assert all(j.attempts == 0 for j in pending[1:])
        hist = store.history()
        assert [j.prompt_id for j in hist.jobs] == ["done2", "done1", "done0"]
        assert hist.jobs[0].outputs == {"9": {"images": [{"filename": "2.png"}]}}
        assert hist.jobs[0].messages == [["execution_success", {"prompt_id": "done2"}]]
        # new work queues behind the recovered job, numbers keep growing
        assert store.enqueue("later", {}, extra_data={}, outputs_to_execute=[],
                             client_id=None).number == 23.0

    # crash 2: the child recovers (nothing running), claims job00 again and dies
    assert _crash_child(db, "second") == "job00"
    with JobStore(db) as store:
        report = store.recover_after_restart()
        assert report.failed == ["job00"] and report.requeued == []
        dead = store.get("job00")
        assert dead is not None and dead.status is JobStatus.FAILED and dead.attempts == 2
        assert dead.error is not None and dead.error["message"] == CRASH_LOOP_MESSAGE
        assert dead.history_entry()["status"]["completed"] is False
        assert [j.prompt_id for j in store.pending()] == [f"job{i:02d}" for i in range(1, 20)] + ["later"]
        assert [j.prompt_id for j in store.history().jobs] == ["job00", "done2", "done1", "done0"]
        assert store.recover_after_restart().requeued == []   # idempotent


def test_recovery_keeps_order_of_several_running_jobs(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    with JobStore(db) as s:
        for pid in ["a", "b", "c", "d"]:
            add(s, pid)
        s.claim_next(timeout=0); s.claim_next(timeout=0)   # a, b running; c, d pending
    with JobStore(db) as s:                                # "restart" without finishing
        report = s.recover_after_restart()
        assert report.requeued == ["a", "b"]
        assert [j.prompt_id for j in s.pending()] == ["a", "b", "c", "d"]


def test_recover_puts_job_before_front_queued_work(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    with JobStore(db) as s:
        add(s, "a")
        s.claim_next(timeout=0)
        add(s, "f", front=True)
    with JobStore(db) as s:
        s.recover_after_restart()
        assert [j.prompt_id for j in s.pending()] == ["a", "f"]


def test_database_is_wal_and_json_is_text(store: JobStore) -> None:
    add(store, "a")
    conn = sqlite3.connect(store.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        prompt_text, typ = conn.execute(
            "SELECT prompt, typeof(prompt) FROM job_payloads").fetchone()
        assert typ == "text" and json.loads(prompt_text) == _prompt()
    finally:
        conn.close()


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    s = JobStore(tmp_path / "j.db")
    assert any(t.name.startswith("job-store-checkpoint") for t in threading.enumerate())
    s.close()
    s.close()  # idempotent
    assert not any(t.name.startswith("job-store-checkpoint") and t.is_alive()
                   for t in threading.enumerate())
    assert s.claim_next(timeout=0) is None
    with pytest.raises(JobStoreError):
        add(s, "a")


def test_claim_is_atomic_across_connections(tmp_path: Path) -> None:
    """Two stores on one file (two connections, no shared lock) never claim the same job."""
    db = tmp_path / "j.db"
    stores = [JobStore(db), JobStore(db)]
    try:
        for k in range(100):
            add(stores[0], f"p{k}")
        claimed: list[list[str]] = [[], []]
        barrier = threading.Barrier(2)

        def worker(i: int) -> None:
            barrier.wait()
            while (job := stores[i].claim_next(timeout=0)) is not None:
                claimed[i].append(job.prompt_id)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        everything = claimed[0] + claimed[1]
        assert sorted(everything) == sorted(f"p{k}" for k in range(100))
        assert len(set(everything)) == 100
    finally:
        for s in stores:
            s.close()


# ------------------------------------------------------------------ owners and notes (schemas 2 and 3)

def test_each_owner_sees_and_removes_only_their_jobs(store):
    for pid, owner in (("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("n1", None)):
        add(store, pid, owner=owner)
    assert store.get("a1").owner == "alice" and store.get("n1").owner is None
    assert [j.prompt_id for j in store.queue_snapshot(owner="alice").pending] == ["a1", "a2"]
    assert [j.prompt_id for j in store.queue_snapshot().pending] == ["a1", "a2", "b1", "n1"]
    assert store.count(owner="bob") == 1 and store.count([JobStatus.PENDING], owner="alice") == 2
    assert store.delete_pending(["a1", "b1"], owner="alice") == ["a1"]  # bob's job is not alice's to delete
    assert store.cancel(["b1", "a2"], owner="bob").cancelled == ["b1"]
    assert store.clear_pending(owner="alice") == ["a2"]
    assert [j.prompt_id for j in store.list_jobs(owner="bob").jobs] == ["b1"]
    assert store.list_jobs(owner="bob").total == 1
    assert [j.prompt_id for j in store.history(owner="alice").jobs] == []
    assert [j.prompt_id for j in store.history(owner="bob").jobs] == ["b1"]
    assert store.delete_history(["b1"], owner="alice") == [] and store.clear_history(owner="alice") == 0
    assert store.clear_history(owner="bob") == 1 and store.get("b1") is None
    assert [j.prompt_id for j in store.pending()] == ["n1"]


def test_notes_are_set_at_finish_and_after_and_show_in_history(store):
    add(store, "p")
    assert store.claim_next(timeout=0).prompt_id == "p"
    store.finish("p", JobStatus.SUCCEEDED, outputs={}, messages=[], notes={"record": {"torch": "2.14.1"}})
    assert store.annotate("p", "webhook", {"attempts": [{"status": 500}]})
    assert store.annotate("p", "webhook", {"attempts": [{"status": 500}, {"status": 200}], "delivered": True})
    assert not store.annotate("unknown", "webhook", {})
    job = store.get("p")
    assert job.notes == {"record": {"torch": "2.14.1"},
                         "webhook": {"attempts": [{"status": 500}, {"status": 200}], "delivered": True}}
    assert job.history_entry()["genesis"] == job.notes


def test_a_version_1_database_is_migrated_keeping_its_jobs(tmp_path):
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY, prompt_id TEXT NOT NULL UNIQUE, number REAL NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL, client_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL, finished_at REAL,
            finish_seq INTEGER, error TEXT, meta TEXT NOT NULL DEFAULT '{}', messages TEXT NOT NULL DEFAULT '[]',
            outputs TEXT NOT NULL DEFAULT '{}');
        CREATE TABLE job_payloads (seq INTEGER PRIMARY KEY REFERENCES jobs (seq) ON DELETE CASCADE,
            outputs_to_execute TEXT NOT NULL, prompt TEXT NOT NULL, extra_data TEXT NOT NULL);
        CREATE VIEW job_rows AS SELECT j.*, p.outputs_to_execute, p.prompt, p.extra_data
            FROM jobs AS j JOIN job_payloads AS p ON p.seq = j.seq;
        INSERT INTO jobs (seq, prompt_id, number, status, created_at) VALUES (1, 'old', 0, 'pending', 1.0);
        INSERT INTO job_payloads VALUES (1, '["9"]', '{}', '{}');
        PRAGMA user_version = 1;
    """)
    conn.close()
    with JobStore(db) as s:
        job = s.get("old")
        assert job.status is JobStatus.PENDING and job.owner is None and job.notes == {}
        add(s, "new", owner="alice")
        assert s.get("new").owner == "alice"
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == 3


# ------------------------------------------------------------------ the in-memory queue size

def test_queue_remaining_follows_every_state_change(tmp_path):
    """``queue_remaining`` (kept in memory) equals a count in SQL after any sequence of operations."""
    from hypothesis import given, seed, settings
    from hypothesis import strategies as st

    import itertools

    files = itertools.count()
    ops = st.lists(st.sampled_from(["enqueue", "claim", "claim_id", "finish", "requeue", "cancel", "cancel_running",
                                    "delete", "clear", "clear_history", "reopen"]), max_size=40)

    @settings(max_examples=60, deadline=None, database=None)
    @seed(7)
    @given(ops)
    def check(sequence: list[str]) -> None:
        db = tmp_path / f"q-{next(files)}.sqlite3"
        store = JobStore(db)
        running: list[str] = []
        n = 0
        try:
            for op in sequence:
                pending = [j.prompt_id for j in store.pending()]
                if op == "enqueue":
                    n += 1
                    add(store, f"p{n}")
                elif op == "claim" and (job := store.claim_next(timeout=0)) is not None:
                    running.append(job.prompt_id)
                elif op == "claim_id" and pending and (job := store.claim(pending[-1])) is not None:
                    running.append(job.prompt_id)  # a scheduler's pick (the Ray pool)
                elif op == "requeue" and running:
                    store.requeue(running.pop(0), reason="worker died")  # back to pending, or failed
                elif op == "finish" and running:
                    store.finish(running.pop(0), JobStatus.SUCCEEDED, outputs={}, messages=[])
                elif op == "cancel" and pending:
                    store.cancel(pending[:1])
                elif op == "cancel_running" and running:
                    store.cancel(running[:1])  # reported back, still running
                elif op == "delete" and pending:
                    store.delete_pending(pending[-1:])
                elif op == "clear":
                    store.clear_pending()
                elif op == "clear_history":
                    store.clear_history()
                elif op == "reopen":
                    store.close()
                    store = JobStore(db)
                    store.recover_after_restart()
                    running = []
                assert store.queue_remaining() == store.count([JobStatus.PENDING, JobStatus.RUNNING]), op
        finally:
            store.close()

    check()


# ------------------------------------------------------------------ a scheduler's claims (Ray pool)
def test_claim_by_id_requeue_once_at_the_front_then_fail_as_worker_lost(store: JobStore) -> None:
    """What the Ray pool does when a worker process dies under a prompt: the rule of a kill -9."""
    for pid in ("a", "b", "c"):
        add(store, pid)
    add(store, "urgent", priority=5)
    assert store.pending_order() == [("urgent", 5), ("a", 0), ("b", 0), ("c", 0)]
    assert store.pending_order(2) == [("urgent", 5), ("a", 0)]

    job = store.claim("b")  # a scheduler may pick any pending job (model affinity)
    assert job is not None and job.status is JobStatus.RUNNING and job.attempts == 1
    assert store.claim("b") is None and store.claim("nope") is None  # not pending (any more)
    assert [pid for pid, _ in store.pending_order()] == ["urgent", "a", "c"]

    # first death: back to pending, ahead of every job of its priority, behind higher priorities
    assert store.requeue("b", reason="worker-1 died") is True
    assert store.get("b").status is JobStatus.PENDING and store.get("b").started_at is None
    assert [pid for pid, _ in store.pending_order()] == ["urgent", "b", "a", "c"]
    assert claim_all(store)[:2] == ["urgent", "b"]
    assert store.get("b").attempts == 2

    # second death: failed, in history, with the reason
    assert store.requeue("b", reason="worker-3 died") is False
    dead = store.get("b")
    assert dead.status is JobStatus.FAILED and dead.error["type"] == "worker_lost"
    assert "worker-3 died" in dead.error["message"]
    assert "b" in [j.prompt_id for j in store.history().jobs]
    with pytest.raises(JobStateError):
        store.requeue("b", reason="again")
    with pytest.raises(KeyError):
        store.requeue("nope", reason="unknown")


# ------------------------------------------------------------------ batched enqueue

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from graph_runtime.jobs import NewJob  # noqa: E402

_new_job = st.builds(
    lambda pid, front, number, priority: NewJob(f"p{pid}", _prompt(pid), {"client_id": "c"}, ["9"], "c",
                                                front=front, number=number, priority=priority),
    st.integers(0, 12), st.booleans(), st.one_of(st.none(), st.integers(-5, 20).map(float)), st.integers(0, 2),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_new_job, max_size=6), max_size=5))
def test_enqueue_many_equals_enqueue_one_by_one(tmp_path_factory: pytest.TempPathFactory,
                                                batches: list[list[NewJob]]) -> None:
    """A batch gives every job the number, order and error that one enqueue call each would."""
    folder = tmp_path_factory.mktemp("batched")
    batched, single = JobStore(folder / "a.sqlite3"), JobStore(folder / "b.sqlite3")
    try:
        for batch in batches:
            got = batched.enqueue_many(batch)
            want: list = []
            for job in batch:
                try:
                    want.append(single.enqueue(job.prompt_id, job.prompt, extra_data=job.extra_data,
                                               outputs_to_execute=job.outputs_to_execute, client_id=job.client_id,
                                               front=job.front, number=job.number, priority=job.priority))
                except DuplicateJobError as exc:
                    want.append(exc)
            assert [type(r) for r in got] == [type(r) for r in want]
            assert [r.number for r in got if not isinstance(r, Exception)] == \
                [r.number for r in want if not isinstance(r, Exception)]
            assert batched.queue_remaining() == single.queue_remaining()
        assert claim_all(batched) == claim_all(single)
    finally:
        batched.close()
        single.close()


def test_a_waiting_claimer_finds_a_job_another_connection_added(tmp_path: Path) -> None:
    """The pending-count hint never hides work: after its wait the claimer asks SQLite."""
    db = tmp_path / "j.db"
    owner, other = JobStore(db), JobStore(db)
    try:
        assert owner.claim_next(timeout=0) is None  # its own count says: nothing pending
        add(other, "from-elsewhere")
        job = owner.claim_next(timeout=0.05)  # no notify reaches it: found at the timeout
        assert job is not None and job.prompt_id == "from-elsewhere"
    finally:
        owner.close()
        other.close()
