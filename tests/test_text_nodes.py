"""Core string nodes against naive references (hypothesis), SaveText and PreviewAny through the executor."""
from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.executor import Executor
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import build_registry
from nodes.text import strings
from tests.lm_fixtures import make_ctx

TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(a=TEXT, b=TEXT, delimiter=st.text(max_size=3), find=st.text(min_size=1, max_size=3), replace=TEXT)
def test_concatenate_replace_contains_compare_match_naive(a, b, delimiter, find, replace) -> None:
    c = make_ctx(None)
    assert strings.StringConcatenate().execute(c, a, b, delimiter) == (a + delimiter + b,)
    naive = ""
    i = 0
    while i < len(a):  # replace left to right, non-overlapping
        if a.startswith(find, i):
            naive += replace
            i += len(find)
        else:
            naive += a[i]
            i += 1
    assert strings.StringReplace().execute(c, a, find, replace) == (naive,)
    assert strings.StringContains().execute(c, a, find, True) == (any(a[k:k + len(find)] == find
                                                                      for k in range(len(a))),)
    assert strings.StringCompare().execute(c, a, b, "Starts With", True) == (a[:len(b)] == b,)
    assert strings.StringCompare().execute(c, a, b, "Equal", False) == (a.lower() == b.lower(),)
    assert strings.StringLength().execute(c, a) == (len(a),)
    escaped = re.escape(find)
    assert strings.RegexMatch().execute(c, a, escaped, False) == (find in a,)
    assert strings.RegexReplace().execute(c, a, escaped, replace.replace("\\", "\\\\"), False) == (naive,)


def test_regex_extract_modes_and_bad_patterns_name_the_input() -> None:
    c = make_ctx(None)
    s = "cat=1 dog=22 bird=333"
    assert strings.RegexExtract().execute(c, s, r"(\w+)=(\d+)", "First Match") == ("cat=1",)
    assert strings.RegexExtract().execute(c, s, r"(\w+)=(\d+)", "All Matches") == ("cat=1\ndog=22\nbird=333",)
    assert strings.RegexExtract().execute(c, s, r"(\w+)=(\d+)", "First Group", group_index=2) == ("1",)
    assert strings.RegexExtract().execute(c, s, r"(\w+)=(\d+)", "All Groups", group_index=1) == ("cat\ndog\nbird",)
    assert strings.CaseConverter().execute(c, "hello world", "Title Case") == ("Hello World",)
    assert strings.StringTrim().execute(c, "  x  ", "Left") == ("x  ",)
    assert strings.StringSubstring().execute(c, "abcdef", 1, -1) == ("bcde",)
    try:
        strings.RegexMatch().execute(c, "x", "(", True)
    except Exception as exc:  # NodeError
        assert getattr(exc, "input_name", None) == "regex_pattern" and "invalid regular expression" in str(exc)
    else:
        raise AssertionError("a bad pattern must raise")


def test_save_text_and_preview_any_through_the_executor_run_twice(tmp_path) -> None:
    paths = FolderPaths(tmp_path / "base")
    paths.ensure_dirs()
    executor = Executor(build_registry(["nodes.primitives", "nodes.text.strings", "nodes.text.display"]), paths)
    prompt = {"1": {"class_type": "StringConcatenate", "inputs": {"string_a": "Hello", "string_b": "world",
                                                                    "delimiter": ", "}},
              "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "notes/caption",
                                                         "format": "txt"}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    report = executor.execute("a", prompt, ["2", "3"])
    assert report.ok and report.outputs["2"] == {"text": ["Hello, world"]}
    assert report.outputs["3"] == {"text": ["Hello, world"]}
    prompt["1"]["inputs"]["string_b"] = "again"
    assert executor.execute("b", prompt, ["2"]).ok
    files = sorted((paths.output_dir / "notes").glob("caption_*_.txt"))
    assert [f.name for f in files] == ["caption_00001_.txt", "caption_00002_.txt"]
    assert [f.read_text() for f in files] == ["Hello, world", "Hello, again"]
    preview = executor.execute("c", {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
                                     "3": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}, ["3"])
    assert preview.outputs["3"] == {"text": ["5"]}
