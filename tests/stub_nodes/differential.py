"""Integer stub nodes for the executor's differential test: one of each behaviour the executor handles.

Every node is a pure function of its inputs (modulo :data:`MOD`), so a naive evaluator calling
the same ``execute`` methods must get the same outputs; each ``execute`` appends its node id to
:data:`EVENTS` so the test can tell exactly which nodes ran.
"""
from __future__ import annotations

import asyncio
from typing import Any

from graph_runtime.context import NodeContext
from graph_runtime.schema import (Boolean, CachePolicy, ExecutionBlocker, Int, Node, NodeResult, Output, Socket)

MOD = 10007
EVENTS: list[tuple[str, str]] = []
"""("exec", node id) when a node's execute runs; the test's cache adds ("put"/"evict", signature)."""


def _ran(ctx: NodeContext) -> None:
    EVENTS.append(("exec", ctx.node_id))


class DConst(Node):
    CATEGORY = "test/diff"
    INPUTS = (Int("value", 0, min=0, max=MOD),)
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, value: int) -> tuple:
        _ran(ctx)
        return (value,)


class DAdd(Node):
    CATEGORY = "test/diff"
    INPUTS = (Socket("a", "INT"), Socket("b", "INT", optional=True), Int("k", 0, min=0, max=MOD))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, a: int, k: int, b: int = 0) -> tuple:
        _ran(ctx)
        return ((a + b + k) % MOD,)


class DSeeded(Node):
    CATEGORY = "test/diff"
    CACHE = CachePolicy.SEEDED
    INPUTS = (Socket("a", "INT"), Int("seed", 0, min=0, max=MOD))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, a: int, seed: int) -> tuple:
        _ran(ctx)
        return ((a * 31 + seed * 17 + 5) % MOD,)


class DVolatile(Node):
    """Deterministic, but declared volatile: it must run every time it is needed."""

    CATEGORY = "test/diff"
    CACHE = CachePolicy.VOLATILE
    INPUTS = (Socket("a", "INT"),)
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, a: int) -> tuple:
        _ran(ctx)
        return ((a * 3 + 1) % MOD,)


class DAsync(Node):
    CATEGORY = "test/diff"
    INPUTS = (Socket("a", "INT"), Int("k", 1, min=0, max=MOD))
    OUTPUTS = (Output("INT"),)

    async def execute(self, ctx: NodeContext, a: int, k: int) -> tuple:
        _ran(ctx)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return ((a * k + 1) % MOD,)


class DSwitch(Node):
    """Lazy: computes only the branch ``cond`` (a computed value) and ``invert`` select."""

    CATEGORY = "test/diff"
    INPUTS = (Socket("cond", "INT"), Boolean("invert", False), Socket("on_odd", "INT", lazy=True),
              Socket("on_even", "INT", lazy=True))
    OUTPUTS = (Output("INT"),)

    @staticmethod
    def _branch(cond: int, invert: bool) -> str:
        return "on_odd" if (cond % 2 == 1) != invert else "on_even"

    def check_lazy_status(self, ctx: NodeContext, cond: int, invert: bool, on_odd: Any = None,
                          on_even: Any = None) -> list[str]:
        return [self._branch(cond, invert)]

    def execute(self, ctx: NodeContext, cond: int, invert: bool, on_odd: Any = None, on_even: Any = None) -> tuple:
        _ran(ctx)
        return (on_odd if self._branch(cond, invert) == "on_odd" else on_even,)


class DRange(Node):
    """A list output: ``count`` values starting at ``a``."""

    CATEGORY = "test/diff"
    INPUTS = (Socket("a", "INT"), Int("count", 2, min=1, max=4))
    OUTPUTS = (Output("INT", is_list=True),)

    def execute(self, ctx: NodeContext, a: int, count: int) -> tuple:
        _ran(ctx)
        return ([(a + i) % MOD for i in range(count)],)


class DSum(Node):
    """INPUT_IS_LIST: sums the whole list (and adds ``k``)."""

    CATEGORY = "test/diff"
    INPUT_IS_LIST = True
    INPUTS = (Socket("values", "INT"), Int("k", 0, min=0, max=MOD))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, values: list[int], k: list[int]) -> tuple:
        _ran(ctx)
        return ((sum(values) + k[0]) % MOD,)


class DBlock(Node):
    """Blocks its consumers (ExecutionBlocker) when ``a`` is a multiple of ``every``."""

    CATEGORY = "test/diff"
    INPUTS = (Socket("a", "INT"), Int("every", 3, min=2, max=7))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, a: int, every: int) -> tuple:
        _ran(ctx)
        return (ExecutionBlocker(None) if a % every == 0 else a,)


class DExpand(Node):
    """Expands into a chain of ``depth`` DAdd nodes that add ``a`` and 1 at each step.

    Outputs the end of the chain and its first link, which the rest of the chain consumes too.
    """

    CATEGORY = "test/diff"
    INPUTS = (Socket("a", "INT"), Int("depth", 1, min=1, max=3))
    OUTPUTS = (Output("INT", "last"), Output("INT", "first"))

    def execute(self, ctx: NodeContext, a: int, depth: int) -> NodeResult:
        _ran(ctx)
        graph: dict[str, dict] = {"start": {"class_type": "DConst", "inputs": {"value": a}}}
        previous = "start"
        for i in range(depth):
            graph[f"add{i}"] = {"class_type": "DAdd", "inputs": {"a": [previous, 0], "b": ["start", 0], "k": 1}}
            previous = f"add{i}"
        return NodeResult(([previous, 0], ["add0", 0]), expand=graph)


class DOut(Node):
    """An output node: shows its value."""

    CATEGORY = "test/diff"
    OUTPUT_NODE = True
    INPUTS = (Socket("value", "*"),)
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, value: Any) -> NodeResult:
        _ran(ctx)
        return NodeResult((), {"value": [value]})
