"""Node types that exist only in the browser and never reach the backend.

The frontend resolves them while building the API prompt: a Reroute forwards its input, a
PrimitiveNode writes its value into the widgets it is wired to, a note is dropped.  Only types
known to be frontend-only are listed; anything else that is missing from ``object_info`` is
treated as an (unknown) backend node, so the validator can name it to the user.
"""
from __future__ import annotations

# Forward input slot N to output slot N (litegraph's virtual-node rule).
PASS_THROUGH_TYPES = frozenset({"Reroute", "Reroute (rgthree)"})

# Hold a widget value that is copied into every widget input they are linked to.
PRIMITIVE_TYPES = frozenset({"PrimitiveNode"})

# KJNodes "Set/Get" pairs: a GetNode outputs whatever feeds the SetNode with the same name.
SET_NODE_TYPES = frozenset({"SetNode"})
GET_NODE_TYPES = frozenset({"GetNode"})

# Annotations and UI helpers without outputs that matter to execution.
DROPPED_TYPES = frozenset({
    "Note", "MarkdownNote",
    "Label (rgthree)", "Bookmark (rgthree)",
    "Fast Groups Bypasser (rgthree)", "Fast Groups Muter (rgthree)",
})

FRONTEND_ONLY_TYPES = PASS_THROUGH_TYPES | PRIMITIVE_TYPES | SET_NODE_TYPES | GET_NODE_TYPES | DROPPED_TYPES

# litegraph node modes (LGraphEventMode)
MODE_ALWAYS = 0
MODE_NEVER = 2    # "muted": not executed, consumers lose the input
MODE_BYPASS = 4   # consumers are wired to a matching input of the node instead


def is_frontend_only(node_type: str) -> bool:
    return node_type in FRONTEND_ONLY_TYPES
