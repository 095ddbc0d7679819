"""The affinity dispatcher: which pending prompt goes to which idle worker (pure policy, no Ray).

Policy (SwarmUI's "model pressure", on top of the durable queue's run order)::

    for each pending prompt in run order (priority, then number: ``front`` is first):
        an idle worker already holding all of its models   → that worker (least recently used first)
        else a busy worker holds them (or was just given a prompt that loads them),
             and the prompt has waited less than ``affinity_wait``
                                                            → wait for it (later prompts may pass,
                                                              never one of lower priority)
        else                                                → the idle worker holding most of its
                                                              models, ties to the least recently used

Why a wait at all: with two workers and prompts alternating two checkpoints, "any idle worker"
makes both workers load both checkpoints (and evict each other's under a tight budget), while a
short wait keeps each checkpoint on one worker and both workers busy with their own.  Why a
bound on the wait: when one model is in demand (many prompts, one holder), the pressure spills
over to other workers after ``affinity_wait`` seconds instead of queueing behind one GPU.

Priority: a prompt never passes a waiting prompt of higher priority, so ``priority`` and
``front`` order the queue exactly as on one machine except for the affinity wait of the head.
The dispatcher holds no state between calls apart from what the caller passes in: the pool
owns the worker table (:class:`WorkerState`) and the first-seen time of each prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

DEFAULT_AFFINITY_WAIT = 1.5
"""Seconds a prompt waits for a busy worker that holds its models (SwarmUI's 1.5 s)."""


@dataclass
class WorkerState:
    """The dispatcher's view of one worker."""

    name: str
    models: frozenset[str] = frozenset()  # model ids it held after its last prompt
    busy: bool = False
    released_at: float = 0.0  # monotonic time it last became idle: the least recently used goes first
    alive: bool = True


@dataclass(frozen=True)
class PendingPrompt:
    """A pending prompt as the dispatcher sees it (``pending`` lists come in run order)."""

    prompt_id: str
    priority: int = 0
    models: frozenset[str] = field(default_factory=frozenset)
    since: float = 0.0  # monotonic time the dispatcher first saw it pending


@dataclass(frozen=True)
class Assignment:
    prompt_id: str
    worker: str
    warm: bool  # the worker already held every model of the prompt


@dataclass(frozen=True)
class Plan:
    assignments: list[Assignment]
    wake_at: float | None  # when a waiting prompt's affinity wait ends (re-plan then), else None


class AffinityDispatcher:
    """Plans assignments; ``affinity=False`` gives plain least-recently-used (for comparison)."""

    def __init__(self, *, affinity: bool = True, affinity_wait: float = DEFAULT_AFFINITY_WAIT) -> None:
        if affinity_wait < 0:
            raise ValueError("affinity_wait must be >= 0")
        self.affinity = affinity
        self.affinity_wait = affinity_wait

    def plan(self, pending: Sequence[PendingPrompt], workers: Sequence[WorkerState], now: float) -> Plan:
        idle = sorted((w for w in workers if w.alive and not w.busy), key=lambda w: (w.released_at, w.name))
        # what busy workers hold, including the ones this plan makes busy (they will hold their prompt's models)
        busy = [w.models for w in workers if w.alive and w.busy]
        assignments: list[Assignment] = []
        floor: int | None = None  # priority of the first prompt left waiting
        wake_at: float | None = None
        for prompt in pending:
            if not idle:
                break
            if floor is not None and prompt.priority < floor:
                break
            chosen, warm = self._choose(prompt, idle, busy, now)
            if chosen is None:
                floor = prompt.priority if floor is None else floor
                expires = prompt.since + self.affinity_wait
                wake_at = expires if wake_at is None else min(wake_at, expires)
                continue
            idle.remove(chosen)
            busy.append(chosen.models | prompt.models)
            assignments.append(Assignment(prompt.prompt_id, chosen.name, warm))
        return Plan(assignments, wake_at)

    def _choose(self, prompt: PendingPrompt, idle: list[WorkerState], busy: list[frozenset[str]],
                now: float) -> tuple[WorkerState | None, bool]:
        """The worker for ``prompt`` among ``idle`` (in LRU order), or None to wait for a busy holder."""
        if not self.affinity or not prompt.models:
            return idle[0], bool(prompt.models) and prompt.models <= idle[0].models
        for worker in idle:
            if prompt.models <= worker.models:
                return worker, True
        if now - prompt.since < self.affinity_wait and any(prompt.models <= held for held in busy):
            return None, False
        best = max(range(len(idle)), key=lambda i: (len(prompt.models & idle[i].models), -i))
        return idle[best], False
