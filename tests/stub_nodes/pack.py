"""A stub node pack for executor tests: cheap nodes that record what ran."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import (Boolean, CachePolicy, ExecutionBlocker, Float, Hidden, HiddenKind, Int, Node,
                                  NodeResult, Output, Socket, String)

CALLS: list[str] = []
"""Node ids in the order they executed (tests clear it)."""

GATES: dict[str, threading.Event] = {}


class StubConst(Node):
    """Outputs an integer."""

    CATEGORY = "test"
    INPUTS = (Int("value", 0, min=-1000, max=1000),)
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, value: int) -> tuple:
        CALLS.append(ctx.node_id)
        return (value,)


class StubAdd(Node):
    """Adds two integers."""

    CATEGORY = "test"
    INPUTS = (Socket("a", "INT"), Socket("b", "INT", optional=True))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, a: int, b: int = 0) -> tuple:
        CALLS.append(ctx.node_id)
        return (a + b,)


class StubOutput(Node):
    """Shows a value (an output node)."""

    CATEGORY = "test"
    OUTPUT_NODE = True
    INPUTS = (Socket("value", "*"),)
    OUTPUTS = ()

    def execute(self, ctx: NodeContext, value: Any) -> NodeResult:
        CALLS.append(ctx.node_id)
        return NodeResult((), {"value": [value]})


class StubLazySwitch(Node):
    """Returns ``on_true`` or ``on_false``; only the chosen branch is computed."""

    CATEGORY = "test"
    INPUTS = (Boolean("choose", True), Socket("on_true", "INT", lazy=True), Socket("on_false", "INT", lazy=True))
    OUTPUTS = (Output("INT"),)

    def check_lazy_status(self, ctx: NodeContext, choose: bool, on_true: Any = None, on_false: Any = None) -> list[str]:
        return ["on_true"] if choose else ["on_false"]

    def execute(self, ctx: NodeContext, choose: bool, on_true: Any = None, on_false: Any = None) -> tuple:
        CALLS.append(ctx.node_id)
        return (on_true if choose else on_false,)


class StubMakeList(Node):
    """Outputs a list of integers 0..count-1 (OUTPUT_IS_LIST)."""

    CATEGORY = "test"
    INPUTS = (Int("count", 3, min=1, max=100),)
    OUTPUTS = (Output("INT", is_list=True),)

    def execute(self, ctx: NodeContext, count: int) -> tuple:
        CALLS.append(ctx.node_id)
        return (list(range(count)),)


class StubSum(Node):
    """Sums a whole list input (INPUT_IS_LIST)."""

    CATEGORY = "test"
    INPUT_IS_LIST = True
    INPUTS = (Socket("values", "INT"),)
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, values: list[int]) -> tuple:
        CALLS.append(ctx.node_id)
        return (sum(values),)


class StubFail(Node):
    """Raises an error."""

    CATEGORY = "test"
    INPUTS = (Socket("value", "INT"), String("message", "boom"))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, value: int, message: str) -> tuple:
        CALLS.append(ctx.node_id)
        raise NodeError(message, input_name="value")


class StubWait(Node):
    """Blocks (checking interrupt) until the gate named ``gate`` opens — no sleeps in tests."""

    CATEGORY = "test"
    INPUTS = (Socket("value", "INT"), String("gate", "g"))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, value: int, gate: str) -> tuple:
        CALLS.append(ctx.node_id)
        event = GATES.setdefault(gate, threading.Event())
        step = 0
        while not event.wait(0.01):
            step += 1
            ctx.progress(step, 1_000_000)
        return (value,)


class StubAsyncDelay(Node):
    """An async node that waits for an asyncio-side gate (network-bound stand-in)."""

    CATEGORY = "test"
    RESOURCE = "network"
    INPUTS = (Int("value", 0, min=0, max=1000), String("gate", "a"))
    OUTPUTS = (Output("INT"),)

    async def execute(self, ctx: NodeContext, value: int, gate: str) -> tuple:
        CALLS.append(f"{ctx.node_id}:start")
        event = GATES.setdefault(gate, threading.Event())
        while not event.is_set():
            await asyncio.sleep(0.005)
        CALLS.append(f"{ctx.node_id}:end")
        return (value,)


class StubOpenGate(Node):
    """Opens a gate (lets a waiting async node finish)."""

    CATEGORY = "test"
    INPUTS = (Int("value", 0, min=0, max=1000), String("gate", "a"))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, value: int, gate: str) -> tuple:
        CALLS.append(ctx.node_id)
        GATES.setdefault(gate, threading.Event()).set()
        return (value,)


class StubVolatile(Node):
    """Never cached: returns how many times it ran."""

    CATEGORY = "test"
    CACHE = CachePolicy.VOLATILE
    INPUTS = ()
    OUTPUTS = (Output("INT"),)
    runs = 0

    def execute(self, ctx: NodeContext) -> tuple:
        CALLS.append(ctx.node_id)
        type(self).runs += 1
        return (type(self).runs,)


class StubBlock(Node):
    """Blocks its consumers (ExecutionBlocker) when ``block`` is true."""

    CATEGORY = "test"
    INPUTS = (Socket("value", "INT"), Boolean("block", True))
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, value: int, block: bool) -> tuple:
        CALLS.append(ctx.node_id)
        return (ExecutionBlocker(None) if block else value,)


class StubCustomValidation(Node):
    """Accepts only even numbers (custom validation)."""

    CATEGORY = "test"
    INPUTS = (Int("value", 0, min=-1000, max=1000), Float("scale", 1.0, min=0.0, max=10.0))
    OUTPUTS = (Output("INT"),)

    @classmethod
    def validate_inputs(cls, value: int) -> bool | str:
        return True if value % 2 == 0 else f"value must be even, got {value}"

    def execute(self, ctx: NodeContext, value: int, scale: float) -> tuple:
        return (int(value * scale),)


class StubUniqueId(Node):
    """Uses its node id (hidden input), so it is cached per id."""

    CATEGORY = "test"
    INPUTS = ()
    HIDDEN = (Hidden("unique_id", HiddenKind.UNIQUE_ID),)
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, unique_id: str) -> tuple:
        CALLS.append(ctx.node_id)
        return (unique_id,)
