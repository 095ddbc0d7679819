"""Map a node's saved ``widgets_values`` onto its input names.

The list form is positional and mixes real values with frontend-only widgets (see
:mod:`.node_defs`).  Frontend versions disagree on which of those extra slots they write (the
newest keeps control modes out of ``widgets_values``; old ones wrote an upload value; some
custom widgets add trailing values), so matching is done in two steps:

1. try the candidate layouts, most complete first, and take the first whose length equals the
   list and whose frontend-only slots hold plausible values (a control mode string, ...);
2. otherwise walk the full layout greedily, consuming an optional slot only when its value is
   plausible *and* there are more values left than real widgets still to fill.

Values that cannot be placed are reported; widgets without a value get the definition's default,
as the frontend does when it loads an older workflow into a newer node definition.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from graph_runtime.workflow_files.node_defs import CONTROL_MODES, InputView, NodeDefView, SlotKind, WidgetSlot

log = logging.getLogger(__name__)

# (control, filter_list, upload) flags, most complete layout first.
_LAYOUT_VARIANTS = (
    (True, True, True), (True, False, True), (True, True, False), (True, False, False),
    (False, False, True), (False, False, False),
)


def _frontend_value_ok(kind: SlotKind, value: Any) -> bool:
    if value is None:  # a hole left by a widget that was not serialised
        return True
    if kind is SlotKind.CONTROL:
        # Early frontends saved the control as a "randomize after generation" boolean.
        return isinstance(value, bool) or value in CONTROL_MODES
    if kind is SlotKind.FILTER:
        return isinstance(value, str)
    if kind is SlotKind.UPLOAD:
        return value is None or isinstance(value, str)
    return True


def _value_ok(inp: InputView, value: Any) -> bool:
    """Loose type check used only to choose between candidate layouts."""
    if value is None:
        return True
    if inp.type in ("INT", "FLOAT"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if inp.type == "BOOLEAN":
        return isinstance(value, bool)
    if inp.type == "STRING":
        return isinstance(value, str)
    return not isinstance(value, Mapping)


def _plausible(slots: Sequence[WidgetSlot], values: Sequence[Any]) -> bool:
    for slot, value in zip(slots, values):
        if slot.kind is SlotKind.VALUE:
            if not _value_ok(slot.input, value):
                return False
        elif not _frontend_value_ok(slot.kind, value):
            return False
    return True


def _greedy(slots: Sequence[WidgetSlot], values: Sequence[Any]) -> tuple[dict[str, Any], int]:
    """Place values walking the full layout; returns the mapping and how many values were used."""
    out: dict[str, Any] = {}
    remaining_real = sum(1 for s in slots if s.kind is SlotKind.VALUE)
    i = 0
    for slot in slots:
        if i >= len(values):
            break
        if slot.kind is SlotKind.VALUE:
            out[slot.input.name] = values[i]
            remaining_real -= 1
            i += 1
        elif _frontend_value_ok(slot.kind, values[i]) and len(values) - i > remaining_real:
            i += 1
    return out, i


def _map(node_def: NodeDefView, widgets_values: Any, widgets: tuple[InputView, ...], selection: dict[str, Any],
         report: Callable[[str], None]) -> dict[str, Any]:
    if isinstance(widgets_values, Mapping):
        return {i.name: widgets_values[i.name] for i in widgets if i.name in widgets_values}
    if isinstance(widgets_values, (list, tuple)):
        values = list(widgets_values)
        for control, filter_list, upload in _LAYOUT_VARIANTS:
            slots = node_def.widget_slots(control=control, filter_list=filter_list, upload=upload, selection=selection)
            if len(slots) == len(values) and _plausible(slots, values):
                return {s.input.name: v for s, v in zip(slots, values) if s.kind is SlotKind.VALUE}
        mapped, used = _greedy(node_def.widget_slots(selection=selection), values)
        if used < len(values):
            # Trailing values belong to widgets the definition does not declare (custom
            # frontend widgets, e.g. an audio player); the frontend ignores them too.
            log.debug("%s: %d trailing widget value(s) ignored", node_def.class_type, len(values) - used)
        return mapped
    if widgets_values is not None:
        report(f"{node_def.class_type}: widgets_values of type {type(widgets_values).__name__} ignored")
    return {}


def map_widget_values(node_def: NodeDefView, widgets_values: Any,
                      warn: Callable[[str], None] | None = None, where: str = "") -> dict[str, Any]:
    """Return ``{input_name: value}`` for every widget input of ``node_def``.

    ``widgets_values`` may be a list (positional) or a dict (by input name, as some nodes save
    it).  Missing values are filled with the definition's defaults and reported through ``warn``.
    """
    report = warn or (lambda msg: None)
    # a dynamic combo's chosen option decides which widgets follow it: map with the defaults, then
    # again with the options the values chose, until the choice is stable
    selection: dict[str, Any] = {}
    for _ in range(len(node_def.dynamic_combos()) + 1):
        widgets = node_def.widget_inputs(selection)
        mapped = _map(node_def, widgets_values, widgets, selection, report)
        chosen = {d.name: mapped[d.name] for d in node_def.dynamic_combos()
                  if isinstance(mapped.get(d.name), str) and d.name in mapped}
        if all(selection.get(k) == v for k, v in chosen.items()):
            break
        selection.update(chosen)
    # A workflow saved before an input existed lacks its value.  Required inputs get the
    # default (the frontend would show it); optional ones stay unset, so the node sees exactly
    # what it saw when the workflow was made.
    missing = [i for i in widgets if i.name not in mapped and not i.optional]
    if missing:
        report(f"{where or node_def.class_type} ({node_def.class_type}): no saved value for "
               f"{', '.join(i.name for i in missing)}; using the default")
    result: dict[str, Any] = {}
    for inp in widgets:
        if inp.name in mapped:
            result[inp.name] = mapped[inp.name]
        elif not inp.optional:
            result[inp.name] = inp.default_value()
    return result
