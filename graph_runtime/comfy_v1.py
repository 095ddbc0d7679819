"""Run ComfyUI V1 custom node classes (INPUT_TYPES / RETURN_TYPES / FUNCTION) unchanged.

Third-party packs written for ComfyUI export ``NODE_CLASS_MAPPINGS``; each class is wrapped
into a :class:`~graph_runtime.schema.Node` subclass so the rest of the runtime sees one kind
of declaration.
"""
from __future__ import annotations

import inspect
from typing import Any

from graph_runtime.schema import (ExecutionBlocker, HiddenKind, HiddenSpec, InputSpec, Node, NodeResult,
                                  OutputSpec)

_HIDDEN_KINDS = {k.value: k for k in HiddenKind}
_KNOWN_OPTION_KEYS = {"default", "min", "max", "step", "round", "multiline", "tooltip", "lazy", "forceInput",
                      "control_after_generate", "image_upload", "display", "dynamicPrompts", "options"}


def _input_spec(name: str, raw: Any, optional: bool) -> InputSpec:
    type_ = raw[0] if isinstance(raw, (list, tuple)) else raw
    opts: dict = dict(raw[1]) if isinstance(raw, (list, tuple)) and len(raw) > 1 and isinstance(raw[1], dict) else {}
    extra = {k: v for k, v in opts.items() if k not in _KNOWN_OPTION_KEYS}
    common = dict(tooltip=opts.get("tooltip"), optional=optional, lazy=bool(opts.get("lazy")),
                  force_input=bool(opts.get("forceInput")), extra=extra)
    if isinstance(type_, (list, tuple)):
        return InputSpec(name, "COMBO", default=opts.get("default"), options=list(type_),
                         image_upload=bool(opts.get("image_upload")),
                         control_after_generate=bool(opts.get("control_after_generate")), **common)
    if type_ == "COMBO":
        return InputSpec(name, "COMBO", default=opts.get("default"), options=list(opts.get("options", [])),
                         **common)
    return InputSpec(name, str(type_), default=opts.get("default"), min=opts.get("min"), max=opts.get("max"),
                     step=opts.get("step"), round=opts.get("round"), multiline=bool(opts.get("multiline")),
                     control_after_generate=bool(opts.get("control_after_generate")), display=opts.get("display"),
                     dynamic_prompts=opts.get("dynamicPrompts"), **common)


def adapt_v1_class(class_type: str, cls: type, display_name: str | None = None) -> type[Node]:
    """Wrap a ComfyUI V1 node class in a :class:`Node` subclass."""
    types = cls.INPUT_TYPES()
    inputs: list[InputSpec] = []
    for section, optional in (("required", False), ("optional", True)):
        for name, raw in (types.get(section) or {}).items():
            inputs.append(_input_spec(name, raw, optional))
    hidden = [HiddenSpec(n, _HIDDEN_KINDS[k]) for n, k in (types.get("hidden") or {}).items() if k in _HIDDEN_KINDS]
    return_types = tuple(getattr(cls, "RETURN_TYPES", ()))
    names = tuple(getattr(cls, "RETURN_NAMES", None) or return_types)
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * len(return_types))
    outputs = tuple(OutputSpec(t if isinstance(t, str) else "COMBO", n if n != t else None, bool(li))
                    for t, n, li in zip(return_types, names, is_list))
    function = getattr(cls, "FUNCTION")
    original = getattr(cls, function)

    def _convert(result: Any) -> Any:
        if isinstance(result, dict):
            return NodeResult(tuple(result.get("result", ()) or ()), result.get("ui"), result.get("expand"))
        if isinstance(result, ExecutionBlocker):
            return tuple(result for _ in return_types)
        return result

    if inspect.iscoroutinefunction(original):
        async def execute(self: Any, ctx: Any, **kw: Any) -> Any:
            return _convert(await getattr(self._inner, function)(**kw))
    else:
        def execute(self: Any, ctx: Any, **kw: Any) -> Any:  # type: ignore[misc]
            return _convert(getattr(self._inner, function)(**kw))

    attrs: dict[str, Any] = {
        "NODE_ID": class_type,
        "DISPLAY_NAME": display_name or class_type,
        "CATEGORY": getattr(cls, "CATEGORY", "sd"),
        "DESCRIPTION": getattr(cls, "DESCRIPTION", "") or "",
        "INPUTS": tuple(inputs),
        "HIDDEN": tuple(hidden),
        "OUTPUTS": outputs,
        "OUTPUT_NODE": bool(getattr(cls, "OUTPUT_NODE", False)),
        "INPUT_IS_LIST": bool(getattr(cls, "INPUT_IS_LIST", False)),
        "DEPRECATED": bool(getattr(cls, "DEPRECATED", False)),
        "EXPERIMENTAL": bool(getattr(cls, "EXPERIMENTAL", False)),
        "__init__": lambda self: setattr(self, "_inner", cls()),
        "execute": execute,
        "__module__": cls.__module__,
        "__doc__": cls.__doc__,
    }
    if hasattr(cls, "check_lazy_status"):
        def check_lazy_status(self: Any, ctx: Any, **kw: Any) -> Any:
            return self._inner.check_lazy_status(**kw)
        attrs["check_lazy_status"] = check_lazy_status
    if hasattr(cls, "VALIDATE_INPUTS"):
        def validate_inputs(c: Any, **kw: Any) -> Any:
            return cls.VALIDATE_INPUTS(**_accepted(cls.VALIDATE_INPUTS, kw))
        attrs["validate_inputs"] = classmethod(validate_inputs)
    if hasattr(cls, "IS_CHANGED"):
        def fingerprint(c: Any, **kw: Any) -> Any:
            return cls.IS_CHANGED(**_accepted(cls.IS_CHANGED, kw))
        attrs["fingerprint"] = classmethod(fingerprint)
    return type(f"V1_{cls.__name__}", (Node,), attrs)


def _accepted(fn: Any, kwargs: dict) -> dict:
    """The keyword arguments ``fn`` declares (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}
