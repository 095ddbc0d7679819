"""ComfyUI core's string nodes (category ``utils/string``), with their node ids, inputs and defaults."""
from __future__ import annotations

import re

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import Boolean, Combo, Int, Node, Output, String

CATEGORY = "utils/string"


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return (re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0) | \
        (re.DOTALL if dotall else 0)


def _compile(pattern: str, flags: int, input_name: str = "regex_pattern") -> re.Pattern:
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise NodeError(f"{input_name}: invalid regular expression {pattern!r}: {exc}", input_name=input_name) from exc


class StringConcatenate(Node):
    """Joins two strings with a delimiter between them."""

    DISPLAY_NAME = "Concatenate"
    CATEGORY = CATEGORY
    INPUTS = (String("string_a", multiline=True), String("string_b", multiline=True), String("delimiter", ""))
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, string_a: str, string_b: str, delimiter: str = ""):
        return (delimiter.join((string_a, string_b)),)


class StringSubstring(Node):
    """The part of a string from ``start`` to ``end`` (Python slice semantics)."""

    DISPLAY_NAME = "Substring"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), Int("start", 0, min=-(2 ** 31), max=2 ** 31 - 1),
              Int("end", 0, min=-(2 ** 31), max=2 ** 31 - 1))
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, string: str, start: int, end: int):
        return (string[start:end],)


class StringLength(Node):
    """The number of characters of a string."""

    DISPLAY_NAME = "Length"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True),)
    OUTPUTS = (Output("INT", "length"),)

    def execute(self, ctx: NodeContext, string: str):
        return (len(string),)


class CaseConverter(Node):
    """Changes the letter case of a string."""

    DISPLAY_NAME = "Case Converter"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), Combo("mode", ("UPPERCASE", "lowercase", "Capitalize", "Title Case")))
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, string: str, mode: str = "UPPERCASE"):
        convert = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize,
                   "Title Case": str.title}[mode]
        return (convert(string),)


class StringTrim(Node):
    """Removes whitespace from the start, the end or both ends."""

    DISPLAY_NAME = "Trim"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), Combo("mode", ("Both", "Left", "Right")))
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, string: str, mode: str = "Both"):
        return ({"Both": string.strip, "Left": string.lstrip, "Right": string.rstrip}[mode](),)


class StringReplace(Node):
    """Replaces every occurrence of ``find`` with ``replace``."""

    DISPLAY_NAME = "Replace"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), String("find", multiline=True), String("replace", multiline=True))
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, string: str, find: str, replace: str):
        return (string.replace(find, replace) if find else string,)


class StringContains(Node):
    """Whether a string contains a substring."""

    DISPLAY_NAME = "Contains"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), String("substring", multiline=True),
              Boolean("case_sensitive", True))
    OUTPUTS = (Output("BOOLEAN", "contains"),)

    def execute(self, ctx: NodeContext, string: str, substring: str, case_sensitive: bool = True):
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


class StringCompare(Node):
    """Compares two strings: starts with, ends with, or equal."""

    DISPLAY_NAME = "Compare"
    CATEGORY = CATEGORY
    INPUTS = (String("string_a", multiline=True), String("string_b", multiline=True),
              Combo("mode", ("Starts With", "Ends With", "Equal")), Boolean("case_sensitive", True))
    OUTPUTS = (Output("BOOLEAN"),)

    def execute(self, ctx: NodeContext, string_a: str, string_b: str, mode: str = "Starts With",
                case_sensitive: bool = True):
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        result = {"Starts With": string_a.startswith, "Ends With": string_a.endswith,
                  "Equal": string_a.__eq__}[mode](string_b)
        return (bool(result),)


class RegexMatch(Node):
    """Whether a regular expression matches anywhere in the string."""

    DISPLAY_NAME = "Regex Match"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), String("regex_pattern", multiline=True),
              Boolean("case_insensitive", True), Boolean("multiline", False), Boolean("dotall", False))
    OUTPUTS = (Output("BOOLEAN", "matches"),)

    def execute(self, ctx: NodeContext, string: str, regex_pattern: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False):
        pattern = _compile(regex_pattern, _flags(case_insensitive, multiline, dotall))
        return (pattern.search(string) is not None,)


class RegexExtract(Node):
    """Extracts matches or groups of a regular expression (several results are joined by newlines)."""

    DISPLAY_NAME = "Regex Extract"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), String("regex_pattern", multiline=True),
              Combo("mode", ("First Match", "All Matches", "First Group", "All Groups")),
              Boolean("case_insensitive", True), Boolean("multiline", False), Boolean("dotall", False),
              Int("group_index", 1, min=0, max=100))
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, string: str, regex_pattern: str, mode: str = "First Match",
                case_insensitive: bool = True, multiline: bool = False, dotall: bool = False, group_index: int = 1):
        pattern = _compile(regex_pattern, _flags(case_insensitive, multiline, dotall))
        if mode == "First Match":
            m = pattern.search(string)
            return (m.group(0) if m else "",)
        if mode == "All Matches":
            return ("\n".join(m.group(0) for m in pattern.finditer(string)),)
        matches = list(pattern.finditer(string)) if mode == "All Groups" else [m for m in [pattern.search(string)] if m]
        groups = [m.group(group_index) for m in matches if group_index <= (pattern.groups or 0)]
        return ("\n".join(g for g in groups if g is not None),)


class RegexReplace(Node):
    """Replaces matches of a regular expression (``count`` 0 = all)."""

    DISPLAY_NAME = "Regex Replace"
    CATEGORY = CATEGORY
    INPUTS = (String("string", multiline=True), String("regex_pattern", multiline=True),
              String("replace", multiline=True), Boolean("case_insensitive", True, optional=True),
              Boolean("multiline", False, optional=True), Boolean("dotall", False, optional=True),
              Int("count", 0, min=0, max=100, optional=True))
    OUTPUTS = (Output("STRING"),)

    def execute(self, ctx: NodeContext, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False, count: int = 0):
        pattern = _compile(regex_pattern, _flags(case_insensitive, multiline, dotall))
        try:
            return (pattern.sub(replace, string, count=count),)
        except re.error as exc:
            raise NodeError(f"replace: invalid replacement {replace!r}: {exc}", input_name="replace") from exc
