"""Node declaration: one typed definition per node class.

A node class declares its inputs, outputs and behaviour once, as class attributes built
from the small constructors below (``Int``, ``Float``, ``String``, ``Boolean``, ``Combo``,
``Socket``, ``Hidden`` and ``Output``).  Everything else — ComfyUI ``object_info``,
prompt validation, docs — is derived from that declaration by :mod:`graph_runtime.node_info`
and :mod:`graph_runtime.validation`, so the three can never disagree.

Example::

    class ImageInvert(Node):
        '''Inverts the colours of an image.'''
        CATEGORY = "image"
        INPUTS = (Socket("image", "IMAGE"),)
        OUTPUTS = (Output("IMAGE"),)

        def execute(self, ctx: NodeContext, image):
            return (1.0 - image,)
"""
from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from graph_runtime.context import NodeContext

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF

PRIMITIVE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
"""ComfyUI V3 combo whose chosen option brings its own inputs (API keys ``NAME`` and ``NAME.CHILD``)."""
AUTOGROW = "COMFY_AUTOGROW_V3"
"""ComfyUI V3 input that grows one slot at a time from a template (API keys ``NAME.PREFIX0``, ``NAME.PREFIX1`` …)."""


class CachePolicy(str, enum.Enum):
    """How a node's outputs may be reused across prompts.

    PURE: the outputs depend only on the inputs (and the node's ``fingerprint``).
    SEEDED: pure given its seed input; identical to PURE for caching, kept apart so that
    tools (docs, UI) can tell the user "change the seed to get a new result".
    VOLATILE: never reused; runs every time it is reachable (e.g. reading a clock or a
    remote service whose answer changes).
    """

    PURE = "pure"
    SEEDED = "seeded"
    VOLATILE = "volatile"


class Resource(str, enum.Enum):
    """What a node mostly consumes, so schedulers and docs can reason about it."""

    GPU = "gpu"
    CPU = "cpu"
    NETWORK = "network"


class HiddenKind(str, enum.Enum):
    """Values the executor injects that the user never wires (ComfyUI's hidden inputs)."""

    UNIQUE_ID = "UNIQUE_ID"
    PROMPT = "PROMPT"
    EXTRA_PNGINFO = "EXTRA_PNGINFO"
    DYNPROMPT = "DYNPROMPT"


@dataclass(frozen=True)
class FileList:
    """Combo options that are the files of a model folder (or ``"input"`` images), listed when asked.

    Resolved against the runtime's :class:`~graph_runtime.paths.FolderPaths`, so object_info
    always shows the files present now.
    """

    folder: str

    def resolve(self, paths: Any) -> list[str]:
        if paths is None:
            return []
        if self.folder == "input":
            return paths.list_input_images()
        return paths.list_models(self.folder)


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a node.

    ``type`` is an IO type name: a primitive (INT, FLOAT, STRING, BOOLEAN, COMBO) for widget
    values, or any other string (MODEL, IMAGE, ``*`` …) for a socket that must be linked.
    ``options`` for a COMBO may be a callable so that file lists are read when needed.
    """

    name: str
    type: str
    default: Any = None
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    round: float | bool | None = None
    options: Sequence[str] | Callable[[], Sequence[str]] | FileList | None = None
    multiline: bool = False
    tooltip: str | None = None
    optional: bool = False
    lazy: bool = False
    force_input: bool = False
    control_after_generate: bool = False
    image_upload: bool = False
    display: str | None = None
    dynamic_prompts: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    dynamic: "tuple[DynamicOption, ...] | AutogrowTemplate | None" = None

    @property
    def is_widget(self) -> bool:
        return (self.type in PRIMITIVE_TYPES or self.type == DYNAMIC_COMBO) and not self.force_input

    def children(self, selected: str | None = None) -> tuple["InputSpec", ...]:
        """The flat inputs a dynamic input stands for, named as the API sends them (``NAME.CHILD``).

        A dynamic combo gives the inputs of option ``selected`` (all options' when None); an
        autogrow input gives one optional copy of its template per slot, the first ``min`` required.
        """
        if isinstance(self.dynamic, AutogrowTemplate):
            t = self.dynamic
            return tuple(replace(t.input, name=f"{self.name}.{n}", optional=self.optional or i >= t.min,
                                 force_input=t.input.is_widget or t.input.force_input)
                         for i, n in enumerate(t.names))
        if self.dynamic:
            out: dict[str, InputSpec] = {}
            for option in self.dynamic:
                if selected is None or option.key == selected:
                    for child in option.inputs:
                        out.setdefault(child.name, replace(child, name=f"{self.name}.{child.name}"))
            return tuple(out.values())
        return ()


    def combo_options(self, paths: Any = None) -> list[str]:
        """The allowed values of a COMBO; ``paths`` (FolderPaths) resolves :class:`FileList` options."""
        if isinstance(self.options, FileList):
            return self.options.resolve(paths)
        opts = self.options() if callable(self.options) else self.options
        return list(opts or [])


@dataclass(frozen=True)
class DynamicOption:
    """One choice of a dynamic combo and the inputs it shows."""

    key: str
    inputs: tuple[InputSpec, ...] = ()


@dataclass(frozen=True)
class AutogrowTemplate:
    """Slots ``PREFIX0 … PREFIX{max-1}`` made from one input; the first ``min`` are required."""

    input: InputSpec
    prefix: str
    min: int = 1
    max: int = 10

    @property
    def names(self) -> list[str]:
        return [f"{self.prefix}{i}" for i in range(self.max)]

@dataclass(frozen=True)
class HiddenSpec:
    name: str
    kind: HiddenKind


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.type


# --- constructors: short, readable declarations -------------------------------------------

def Int(name: str, default: int = 0, *, min: int | None = None, max: int | None = None, step: int = 1,
        control_after_generate: bool = False, display: str | None = None, tooltip: str | None = None,
        optional: bool = False, lazy: bool = False, force_input: bool = False, **extra: Any) -> InputSpec:
    return InputSpec(name, "INT", default=default, min=min, max=max, step=step,
                     control_after_generate=control_after_generate, display=display, tooltip=tooltip,
                     optional=optional, lazy=lazy, force_input=force_input, extra=extra)


def Seed(name: str = "seed", default: int = 0, *, tooltip: str | None = None, **kw: Any) -> InputSpec:
    """A seed widget: INT over the full 64-bit range with ComfyUI's control_after_generate."""
    return Int(name, default, min=0, max=MAX_SEED, control_after_generate=True,
               tooltip=tooltip or "The random seed used for creating the noise.", **kw)


def Float(name: str, default: float = 0.0, *, min: float | None = None, max: float | None = None,
          step: float = 0.01, round: float | bool | None = None, display: str | None = None,
          tooltip: str | None = None, optional: bool = False, lazy: bool = False, force_input: bool = False,
          **extra: Any) -> InputSpec:
    return InputSpec(name, "FLOAT", default=default, min=min, max=max, step=step, round=round, display=display,
                     tooltip=tooltip, optional=optional, lazy=lazy, force_input=force_input, extra=extra)


def String(name: str, default: str = "", *, multiline: bool = False, dynamic_prompts: bool | None = None,
           tooltip: str | None = None, optional: bool = False, lazy: bool = False, force_input: bool = False,
           **extra: Any) -> InputSpec:
    return InputSpec(name, "STRING", default=default, multiline=multiline, dynamic_prompts=dynamic_prompts,
                     tooltip=tooltip, optional=optional, lazy=lazy, force_input=force_input, extra=extra)


def Boolean(name: str, default: bool = False, *, tooltip: str | None = None, optional: bool = False,
            lazy: bool = False, force_input: bool = False, **extra: Any) -> InputSpec:
    return InputSpec(name, "BOOLEAN", default=default, tooltip=tooltip, optional=optional, lazy=lazy,
                     force_input=force_input, extra=extra)


def Combo(name: str, options: Sequence[str] | Callable[[], Sequence[str]] | FileList, default: str | None = None, *,
          tooltip: str | None = None, optional: bool = False, lazy: bool = False, image_upload: bool = False,
          control_after_generate: bool = False, **extra: Any) -> InputSpec:
    return InputSpec(name, "COMBO", default=default, options=options, tooltip=tooltip, optional=optional,
                     lazy=lazy, image_upload=image_upload, control_after_generate=control_after_generate,
                     extra=extra)


def DynamicCombo(name: str, options: Sequence[DynamicOption], *, tooltip: str | None = None, optional: bool = False,
                 **extra: Any) -> InputSpec:
    """ComfyUI's ``DynamicCombo``: the chosen option's inputs arrive as ``NAME.CHILD`` (see :func:`gather`)."""
    keys = tuple(o.key for o in options)
    return InputSpec(name, DYNAMIC_COMBO, default=keys[0], options=keys, tooltip=tooltip, optional=optional,
                     extra=extra, dynamic=tuple(options))


def Autogrow(name: str, template: AutogrowTemplate, *, tooltip: str | None = None, optional: bool = False,
             **extra: Any) -> InputSpec:
    """ComfyUI's ``Autogrow``: linked slots ``NAME.PREFIX0``, ``NAME.PREFIX1`` … (see :func:`gather`)."""
    return InputSpec(name, AUTOGROW, tooltip=tooltip, optional=optional, extra=extra, dynamic=template)


def gather(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The values of dynamic input ``name`` from a node's flat inputs, as ComfyUI passes them nested:
    ``{"NAME": chosen key, "CHILD": value …}`` for a dynamic combo, ``{"PREFIX0": value …}`` for autogrow."""
    out = {name: inputs[name]} if name in inputs else {}
    dotted = name + "."
    out.update({k[len(dotted):]: v for k, v in inputs.items() if k.startswith(dotted) and v is not None})
    return out


def Socket(name: str, type: str, *, tooltip: str | None = None, optional: bool = False, lazy: bool = False,
           **extra: Any) -> InputSpec:
    """A linked input of a non-primitive IO type (MODEL, IMAGE, LATENT, ``*`` …)."""
    return InputSpec(name, type, tooltip=tooltip, optional=optional, lazy=lazy, extra=extra)


def Hidden(name: str, kind: HiddenKind) -> HiddenSpec:
    return HiddenSpec(name, kind)


def Output(type: str, name: str | None = None, *, is_list: bool = False, tooltip: str | None = None) -> OutputSpec:
    return OutputSpec(type, name, is_list, tooltip)


# --- results --------------------------------------------------------------------------------

@dataclass
class NodeResult:
    """What ``execute`` may return instead of a bare tuple: outputs plus UI data.

    ``ui`` is shown on the canvas and stored in history, e.g. ``{"images": [{filename, subfolder, type}]}``;
    every value must be a list so per-call results can be concatenated.

    ``expand`` (ComfyUI's node expansion) is a sub-graph in API format (``{id: {class_type, inputs}}``)
    that the executor runs in place of this node: an output given as a link ``[id, index]`` to one
    of its nodes takes that node's output.  Inputs may also link to the prompt's own nodes.
    """

    outputs: tuple = ()
    ui: dict[str, list] | None = None
    expand: dict[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class ExecutionBlocker:
    """An output value that silently skips every consumer (ComfyUI's ExecutionBlocker).

    With a message, the first consumer that meets it reports an error and the prompt goes on.
    """

    message: str | None = None


# --- the node base class ---------------------------------------------------------------------

class Node:
    """Base class of every node.  Subclasses declare class attributes and ``execute``.

    ``execute(self, ctx, **inputs)`` may be a plain or an ``async`` method and returns a tuple
    with one value per output, or a :class:`NodeResult`.  Optional hooks:

    * ``check_lazy_status(self, ctx, **inputs) -> list[str]``: names of lazy inputs still needed
      (inputs not computed yet are ``None``).
    * ``validate_inputs(cls, **literal_inputs) -> bool | str`` (classmethod): extra checks at queue
      time; a string is the message shown to the user.
    * ``fingerprint(cls, **literal_inputs) -> Any`` (classmethod): data that changes when the node's
      external input changes (e.g. a file's hash); it is folded into the cache key.
    """

    NODE_ID: ClassVar[str] = ""  # class_type; defaults to the class name
    DISPLAY_NAME: ClassVar[str | None] = None
    CATEGORY: ClassVar[str] = "utils"
    DESCRIPTION: ClassVar[str | None] = None  # defaults to the class docstring's first paragraph
    INPUTS: ClassVar[Sequence[InputSpec]] = ()
    HIDDEN: ClassVar[Sequence[HiddenSpec]] = ()
    OUTPUTS: ClassVar[Sequence[OutputSpec]] = ()
    OUTPUT_NODE: ClassVar[bool] = False
    INPUT_IS_LIST: ClassVar[bool] = False
    CACHE: ClassVar[CachePolicy] = CachePolicy.PURE
    RESOURCE: ClassVar[Resource] = Resource.CPU
    VERSION: ClassVar[str] = "1"
    DEPRECATED: ClassVar[bool] = False
    EXPERIMENTAL: ClassVar[bool] = False

    def execute(self, ctx: "NodeContext", **inputs: Any) -> tuple | NodeResult:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class NodeDefinition:
    """The runtime's resolved view of a node class (built once at registration)."""

    class_type: str
    node_class: type
    display_name: str
    category: str
    description: str
    inputs: tuple[InputSpec, ...]
    hidden: tuple[HiddenSpec, ...]
    outputs: tuple[OutputSpec, ...]
    output_node: bool
    input_is_list: bool
    cache: CachePolicy
    resource: Resource
    version: str
    python_module: str
    deprecated: bool = False
    experimental: bool = False
    is_async: bool = False
    has_lazy_check: bool = False
    has_custom_validation: bool = False
    has_fingerprint: bool = False
    uses_unique_id: bool = False
    input_map: Mapping[str, InputSpec] = field(default_factory=dict)

    @property
    def output_types(self) -> tuple[str, ...]:
        return tuple(o.type for o in self.outputs)


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    return inspect.cleandoc(doc).split("\n\n", 1)[0].replace("\n", " ").strip()


def define(node_class: type[Node], python_module: str = "nodes") -> NodeDefinition:
    """Resolve a :class:`Node` subclass into its :class:`NodeDefinition` (validating the declaration)."""
    class_type = node_class.NODE_ID or node_class.__name__
    inputs = tuple(node_class.INPUTS)
    names = [i.name for i in inputs] + [h.name for h in node_class.HIDDEN]
    if len(set(names)) != len(names):
        raise TypeError(f"node {class_type}: duplicate input names in {names}")
    for spec in inputs:
        if spec.type in ("COMBO", DYNAMIC_COMBO) and spec.options is None:
            raise TypeError(f"node {class_type}: combo input {spec.name!r} has no options")
    execute = getattr(node_class, "execute", None)
    if execute is None or execute is Node.execute:
        raise TypeError(f"node {class_type}: no execute method")
    description = node_class.DESCRIPTION if node_class.DESCRIPTION is not None else _first_paragraph(node_class.__doc__)
    return NodeDefinition(
        class_type=class_type,
        node_class=node_class,
        display_name=node_class.DISPLAY_NAME or class_type,
        category=node_class.CATEGORY,
        description=description,
        inputs=inputs,
        hidden=tuple(node_class.HIDDEN),
        outputs=tuple(node_class.OUTPUTS),
        output_node=node_class.OUTPUT_NODE,
        input_is_list=node_class.INPUT_IS_LIST,
        cache=node_class.CACHE,
        resource=node_class.RESOURCE,
        version=node_class.VERSION,
        python_module=python_module,
        deprecated=node_class.DEPRECATED,
        experimental=node_class.EXPERIMENTAL,
        is_async=inspect.iscoroutinefunction(execute),
        has_lazy_check=callable(getattr(node_class, "check_lazy_status", None)),
        has_custom_validation=callable(getattr(node_class, "validate_inputs", None)),
        has_fingerprint=callable(getattr(node_class, "fingerprint", None)),
        uses_unique_id=any(h.kind is HiddenKind.UNIQUE_ID for h in node_class.HIDDEN),
        input_map={**{i.name: i for i in inputs}, **{c.name: c for i in inputs for c in i.children()}},
    )
