"""Primitive value nodes (ComfyUI's ``comfy_extras/nodes_primitive.py`` names)."""
from __future__ import annotations

import sys

from graph_runtime.context import NodeContext
from graph_runtime.schema import Boolean, Float, Int, Node, Output, String


class PrimitiveInt(Node):
    """An integer value to wire into other nodes."""

    DISPLAY_NAME = "Int"
    CATEGORY = "utils/primitive"
    INPUTS = (Int("value", 0, min=-sys.maxsize, max=sys.maxsize, control_after_generate=True),)
    OUTPUTS = (Output("INT"),)

    def execute(self, ctx: NodeContext, value: int) -> tuple:
        return (value,)


class PrimitiveFloat(Node):
    """A floating-point value to wire into other nodes."""

    DISPLAY_NAME = "Float"
    CATEGORY = "utils/primitive"
    INPUTS = (Float("value", 0.0, min=-sys.maxsize, max=sys.maxsize),)
    OUTPUTS = (Output("FLOAT"),)

    def execute(self, ctx: NodeContext, value: float) -> tuple:
        return (value,)


class PrimitiveString(Node):
    """A single-line text value."""

    DISPLAY_NAME = "String"
    CATEGORY = "utils/primitive"
    INPUTS = (String("value", ""),)
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, value: str) -> tuple:
        return (value,)


class PrimitiveStringMultiline(Node):
    """A multi-line text value."""

    DISPLAY_NAME = "String (Multiline)"
    CATEGORY = "utils/primitive"
    INPUTS = (String("value", "", multiline=True),)
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, value: str) -> tuple:
        return (value,)


class PrimitiveBoolean(Node):
    """A true/false value."""

    DISPLAY_NAME = "Boolean"
    CATEGORY = "utils/primitive"
    INPUTS = (Boolean("value", False),)
    OUTPUTS = (Output("BOOLEAN"),)

    def execute(self, ctx: NodeContext, value: bool) -> tuple:
        return (value,)
