"""The one exception this package raises for unusable workflow files."""
from __future__ import annotations


class WorkflowFormatError(ValueError):
    """A workflow file or UI-format graph is malformed beyond what the frontend would tolerate.

    Raised for structural problems a user must fix in the file (missing ``nodes``, a link that
    names a node which does not exist, a subgraph that contains itself, an image without any
    embedded workflow).  Recoverable oddities (an unknown node class, a widget value list of an
    unexpected length) are reported as warnings instead, because ComfyUI's frontend also runs
    such graphs and the validator gives the user a better message afterwards.
    """
