"""The affinity dispatcher (pure policy, no Ray): properties against a naive reference, and a
simulated queue of prompts alternating two checkpoints on two workers that hold one model each."""
from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.cluster.dispatch import AffinityDispatcher, Assignment, PendingPrompt, WorkerState

MODELS = ("a", "b", "c")


def naive_plan(pending, workers, now, affinity, wait):
    """The documented policy, written out literally (no shared code with the dispatcher)."""
    free = [w for w in workers if w.alive and not w.busy]
    free.sort(key=lambda w: (w.released_at, w.name))
    taken = {}  # worker name -> the models it holds once given its prompt in this plan
    out = []
    waiting_priorities = []
    for p in pending:
        if not free:
            break
        if waiting_priorities and p.priority < waiting_priorities[0]:
            break
        if not affinity or not p.models:
            w = free[0]
            out.append(Assignment(p.prompt_id, w.name, bool(p.models) and p.models.issubset(w.models)))
            free.remove(w)
            taken[w.name] = w.models | p.models
            continue
        holders = [w for w in free if p.models.issubset(w.models)]
        if holders:
            out.append(Assignment(p.prompt_id, holders[0].name, True))
            free.remove(holders[0])
            taken[holders[0].name] = holders[0].models | p.models
            continue
        busy_holder = any(w.alive and w.busy and p.models.issubset(w.models) for w in workers) \
            or any(p.models.issubset(held) for held in taken.values())
        if busy_holder and now - p.since < wait:
            waiting_priorities.append(p.priority)
            continue
        best, best_score = None, -1
        for w in free:  # most models in common; ties to the least recently used (first in ``free``)
            score = len(p.models & w.models)
            if score > best_score:
                best, best_score = w, score
        out.append(Assignment(p.prompt_id, best.name, False))
        free.remove(best)
        taken[best.name] = best.models | p.models
    return out


model_sets = st.frozensets(st.sampled_from(MODELS), max_size=3)
workers_st = st.lists(st.tuples(model_sets, st.booleans(), st.integers(0, 5), st.booleans()), min_size=1, max_size=4)
pending_st = st.lists(st.tuples(st.integers(0, 2), model_sets, st.integers(0, 10)), max_size=8)


def build(workers, pending):
    ws = [WorkerState(f"w{i}", models, busy, float(released), alive)
          for i, (models, busy, released, alive) in enumerate(workers)]
    ps = [PendingPrompt(f"p{i}", priority, models, float(since)) for i, (priority, models, since) in enumerate(pending)]
    ps.sort(key=lambda p: -p.priority)  # run order: priority first (stable: queue number within)
    return ws, ps


@settings(max_examples=400, deadline=None)
@given(workers_st, pending_st, st.integers(0, 12), st.booleans(), st.sampled_from([0.0, 1.5, 100.0]))
def test_plan_equals_the_naive_policy_and_keeps_its_promises(workers, pending, now, affinity, wait):
    ws, ps = build(workers, pending)
    plan = AffinityDispatcher(affinity=affinity, affinity_wait=wait).plan(ps, ws, float(now))
    assert plan.assignments == naive_plan(ps, ws, float(now), affinity, wait)

    by_name = {w.name: w for w in ws}
    assigned = {a.prompt_id for a in plan.assignments}
    assert len(assigned) == len(plan.assignments)
    assert len({a.worker for a in plan.assignments}) == len(plan.assignments)
    for a in plan.assignments:
        worker = by_name[a.worker]
        assert worker.alive and not worker.busy
        prompt = next(p for p in ps if p.prompt_id == a.prompt_id)
        assert a.warm == (bool(prompt.models) and prompt.models <= worker.models)
        # never ahead of an unassigned prompt of higher priority
        assert all(q.prompt_id in assigned for q in ps if q.priority > prompt.priority)
    # work-conserving: an idle worker stays idle only while every unassigned prompt waits (or is behind one)
    idle_left = [w for w in ws if w.alive and not w.busy and w.name not in {a.worker for a in plan.assignments}]
    if idle_left and affinity is False:
        assert assigned == {p.prompt_id for p in ps}
    if plan.wake_at is not None:
        assert plan.wake_at >= min(p.since for p in ps) + wait


def simulate(affinity: bool, prompts: int = 20, workers: int = 2) -> tuple[int, dict[str, set[str]]]:
    """Prompts alternating checkpoints a and b, each taking 1 to 1.5 s on a worker that holds one model
    at a time (loading the other evicts it); returns the number of loads and which models each worker ran."""
    import random

    durations = random.Random(7)
    dispatcher = AffinityDispatcher(affinity=affinity, affinity_wait=100.0)
    states = [WorkerState(f"w{i}") for i in range(workers)]
    pending = [PendingPrompt(f"p{i}", 0, frozenset("ab"[i % 2]), 0.0) for i in range(prompts)]
    events: list[tuple[float, str, str]] = []  # (done at, worker, model)
    now, loads, ran = 0.0, 0, {}
    while pending or events:
        plan = dispatcher.plan(pending, states, now)
        for a in plan.assignments:
            prompt = next(p for p in pending if p.prompt_id == a.prompt_id)
            pending.remove(prompt)
            worker = next(w for w in states if w.name == a.worker)
            if not a.warm:
                loads += 1
            worker.busy, worker.models = True, prompt.models
            ran.setdefault(worker.name, set()).update(prompt.models)
            heapq.heappush(events, (now + 1.0 + durations.random() / 2, worker.name, next(iter(prompt.models))))
        done_at, name, _ = heapq.heappop(events)
        now = done_at
        worker = next(w for w in states if w.name == name)
        worker.busy, worker.released_at = False, now
    return loads, ran


def test_affinity_loads_each_checkpoint_once_per_worker_where_lru_reloads():
    loads, ran = simulate(affinity=True)
    assert loads == 2 and sorted(map(sorted, ran.values())) == [["a"], ["b"]]
    lru_loads, _ = simulate(affinity=False)
    assert lru_loads > 2 * loads


def test_a_prompt_waits_for_its_busy_worker_then_spills_over():
    busy = WorkerState("w1", frozenset({"a"}), busy=True)
    idle = WorkerState("w2", frozenset({"b"}), released_at=1.0)
    dispatcher = AffinityDispatcher(affinity_wait=1.5)
    head, other = PendingPrompt("p1", 0, frozenset({"a"}), since=10.0), PendingPrompt("p2", 0, frozenset({"b"}), 10.0)
    plan = dispatcher.plan([head, other], [busy, idle], now=10.5)
    assert plan.assignments == [Assignment("p2", "w2", True)] and plan.wake_at == 11.5
    plan = dispatcher.plan([head], [busy, idle], now=11.6)  # waited long enough: the idle worker loads it
    assert plan.assignments == [Assignment("p1", "w2", False)] and plan.wake_at is None
    # two prompts of one model, two idle workers, one holding it: the second waits for the holder
    holder, other = WorkerState("w1", frozenset({"a"})), WorkerState("w2", frozenset({"b"}), released_at=1.0)
    second = PendingPrompt("p4", 0, frozenset({"a"}), 10.0)
    assert dispatcher.plan([head, second], [holder, other], now=10.5).assignments == [Assignment("p1", "w1", True)]
    # a lower-priority prompt never passes a waiting one
    low = PendingPrompt("p3", -1, frozenset({"b"}), 10.0)
    assert dispatcher.plan([head, low], [busy, idle], now=10.5).assignments == []
