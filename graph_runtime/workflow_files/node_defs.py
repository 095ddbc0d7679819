"""Widget layout of a node class, read from its ComfyUI ``/object_info`` entry.

A UI-format workflow stores widget values positionally (``widgets_values``), in the order the
frontend created the widgets.  That order is derived from the node definition: every input whose
type is a primitive (INT, FLOAT, STRING, BOOLEAN, a combo) and that is not ``forceInput`` becomes
a widget, in ``input_order`` (required, then optional).  The frontend also adds widgets that never
reach the backend, and their values sit in the same list:

* ``control_after_generate`` after an INT (or FLOAT) with ``control_after_generate`` set, and
  after an INT named ``seed``/``noise_seed`` unless the option says otherwise (frontend
  ``useIntWidget``: ``control_after_generate ?? name in ("seed", "noise_seed")``);
* for a combo with ``control_after_generate``, the control plus a ``control_filter_list`` string;
* one ``upload`` widget (value ``"image"`` in practice) after the required widgets when a required
  combo has an ``*_upload`` option (LoadImage, LoadVideo, LoadAudio...).

This module only describes that layout; :mod:`.widgets` matches values against it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3"})
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
SEED_INPUT_NAMES = frozenset({"seed", "noise_seed"})
CONTROL_MODES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})


class SlotKind(enum.Enum):
    """What one position of ``widgets_values`` holds."""

    VALUE = "value"        # a real input value, sent to the backend
    CONTROL = "control"    # control_after_generate mode (frontend only)
    FILTER = "filter"      # control_filter_list of a combo control (frontend only)
    UPLOAD = "upload"      # the upload button of a media combo (frontend only)


@dataclass(frozen=True)
class InputView:
    """One declared input of a node class, normalised from the V1/V3 ``object_info`` shapes."""

    name: str
    type: str                       # "COMBO" for both ``[[...], {...}]`` and ``["COMBO", {...}]``
    options: Mapping[str, Any]
    optional: bool
    choices: tuple[Any, ...] | None = None

    @property
    def is_widget(self) -> bool:
        """True when the frontend shows this input as a widget (so it owns a ``widgets_values`` slot)."""
        return self.type in WIDGET_TYPES and not self.options.get("forceInput")

    def option_inputs(self, key: Any) -> tuple["InputView", ...]:
        """A dynamic combo's inputs for option ``key``, named ``NAME.CHILD`` as the API sends them."""
        for option in self.options.get("options") or ():
            if isinstance(option, Mapping) and option.get("key") == key:
                return _parse_inputs(option.get("inputs") or {}, {}, prefix=self.name + ".")
        return ()

    @property
    def has_control(self) -> bool:
        """True when the frontend adds a ``control_after_generate`` widget right after this one."""
        flag = self.options.get("control_after_generate")
        if self.type == "INT":
            return self.name in SEED_INPUT_NAMES if flag is None else bool(flag)
        if self.type in ("FLOAT", "COMBO"):
            return bool(flag)
        return False

    @property
    def has_filter(self) -> bool:
        """Combo controls also get a ``control_filter_list`` widget."""
        return self.type == "COMBO" and self.has_control

    @property
    def has_upload(self) -> bool:
        """A media combo (``image_upload``, ``video_upload``...) makes the frontend add an upload widget."""
        return self.type == "COMBO" and any(
            key.endswith("_upload") and bool(val) for key, val in self.options.items())

    def default_value(self) -> Any:
        """The value a freshly created widget holds, used when a workflow lacks one."""
        if "default" in self.options:
            return self.options["default"]
        if self.type in ("COMBO", DYNAMIC_COMBO):
            return self.choices[0] if self.choices else None
        if self.type in ("INT", "FLOAT"):
            low, high = self.options.get("min"), self.options.get("max")
            value = 0
            if isinstance(low, (int, float)) and value < low:
                value = low
            if isinstance(high, (int, float)) and value > high:
                value = high
            return value
        if self.type == "STRING":
            return ""
        if self.type == "BOOLEAN":
            return False
        return None


@dataclass(frozen=True)
class WidgetSlot:
    """One position in a node's ``widgets_values`` list."""

    kind: SlotKind
    input: InputView


@dataclass(frozen=True)
class NodeDefView:
    """The parts of one ``object_info`` entry that UI→API conversion needs."""

    class_type: str
    display_name: str
    inputs: tuple[InputView, ...]
    outputs: tuple[str, ...] = ()
    _by_name: dict[str, InputView] = field(default_factory=dict, repr=False, compare=False)

    def input(self, name: str) -> InputView | None:
        return self._by_name.get(name)

    def widget_inputs(self, selection: Mapping[str, Any] | None = None) -> tuple[InputView, ...]:
        """Widget inputs in ``widgets_values`` order; a dynamic combo is followed by the widgets of its
        option chosen in ``selection`` (default: its first option)."""
        out: list[InputView] = []
        for inp in self.inputs:
            if not inp.is_widget:
                continue
            out.append(inp)
            if inp.type == DYNAMIC_COMBO:
                key = (selection or {}).get(inp.name, inp.default_value())
                out.extend(c for c in inp.option_inputs(key) if c.is_widget)
        return tuple(out)

    def dynamic_combos(self) -> tuple[InputView, ...]:
        return tuple(i for i in self.inputs if i.type == DYNAMIC_COMBO)

    def widget_slots(self, *, control: bool = True, filter_list: bool = True,
                     upload: bool = True, selection: Mapping[str, Any] | None = None) -> list[WidgetSlot]:
        """The ``widgets_values`` layout; the flags drop frontend-only slots some versions omit."""
        slots: list[WidgetSlot] = []
        widget_inputs = self.widget_inputs(selection)
        upload_input = next((i for i in widget_inputs if not i.optional and i.has_upload), None)
        upload_done = False
        for inp in widget_inputs:
            if inp.optional and upload and upload_input is not None and not upload_done:
                slots.append(WidgetSlot(SlotKind.UPLOAD, upload_input))
                upload_done = True
            slots.append(WidgetSlot(SlotKind.VALUE, inp))
            if control and inp.has_control:
                slots.append(WidgetSlot(SlotKind.CONTROL, inp))
                if filter_list and inp.has_filter:
                    slots.append(WidgetSlot(SlotKind.FILTER, inp))
        if upload and upload_input is not None and not upload_done:
            slots.append(WidgetSlot(SlotKind.UPLOAD, upload_input))
        return slots


def _parse_spec(name: str, raw: Any, optional: bool) -> InputView:
    """Normalise ``[TYPE]``, ``[TYPE, opts]``, ``[[choices], opts]``, ``["COMBO", {"options"}]`` or ``"TYPE"``."""
    if isinstance(raw, str):
        type_part, opts = raw, {}
    elif isinstance(raw, (list, tuple)) and raw:
        type_part = raw[0]
        opts = raw[1] if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
    else:
        type_part, opts = "*", {}
    if isinstance(type_part, (list, tuple)):
        return InputView(name, "COMBO", opts, optional, tuple(type_part))
    type_name = str(type_part)
    if type_name == "COMBO":
        choices = opts.get("options")
        return InputView(name, "COMBO", opts, optional,
                         tuple(choices) if isinstance(choices, (list, tuple)) else None)
    if type_name == DYNAMIC_COMBO:
        keys = tuple(o.get("key") for o in opts.get("options") or () if isinstance(o, Mapping))
        return InputView(name, DYNAMIC_COMBO, opts, optional, keys)
    return InputView(name, type_name, opts, optional)


def _parse_inputs(inputs_raw: Mapping[str, Any], order_raw: Mapping[str, Any],
                  prefix: str = "") -> tuple[InputView, ...]:
    views: list[InputView] = []
    for section, optional in (("required", False), ("optional", True)):
        specs = inputs_raw.get(section) or {}
        if not isinstance(specs, Mapping):
            continue
        names = [n for n in (order_raw.get(section) or []) if n in specs]
        names += [n for n in specs if n not in names]
        views.extend(_parse_spec(prefix + n, specs[n], optional) for n in names)
    return tuple(views)


def parse_node_def(class_type: str, raw: Mapping[str, Any]) -> NodeDefView:
    """Build a :class:`NodeDefView` from one ``object_info`` entry (V1 or V3-derived shape)."""
    views = list(_parse_inputs(raw.get("input") or {}, raw.get("input_order") or {}))
    outputs = raw.get("output") or []
    display = raw.get("display_name") or raw.get("name") or class_type
    return NodeDefView(
        class_type=class_type,
        display_name=str(display),
        inputs=tuple(views),
        outputs=tuple(o if isinstance(o, str) else "COMBO" for o in outputs),
        _by_name={v.name: v for v in views},
    )


class NodeDefCatalog:
    """Lazily parsed views over a ``{class_type: object_info entry}`` mapping."""

    def __init__(self, node_defs: Mapping[str, Mapping[str, Any]]):
        self._raw = node_defs
        self._parsed: dict[str, NodeDefView | None] = {}

    def get(self, class_type: str) -> NodeDefView | None:
        if class_type not in self._parsed:
            raw = self._raw.get(class_type)
            self._parsed[class_type] = parse_node_def(class_type, raw) if isinstance(raw, Mapping) else None
        return self._parsed[class_type]
