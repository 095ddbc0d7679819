"""``bench/text_generation.py`` still runs end to end on the tiny Qwen2 (one run, a few tokens): raw
transformers, the executor and a live HTTP server produce the same text (the bench asserts it), prompt
lookup gives identical tokens, the second call reuses the system prompt's KV cache, and every table is
printed.  Not a test of speed: the ratios are whatever this machine gives."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("text_generation_bench", ROOT / "bench" / "text_generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(out: str, title: str) -> list[list[str]]:
    """The data rows of the table under ``title``, cut at the columns its dashed rule marks."""
    lines = out.split(title, 1)[1].split("\n\n", 1)[0].strip("\n").splitlines()
    rule = lines[2]
    spans, start = [], 0
    for part in rule.split("  "):
        spans.append((start, start + len(part)))
        start += len(part) + 2
    return [[line[a:b].strip() for a, b in spans] for line in lines[3:]]


def test_tiny_mode_prints_every_table_with_the_three_paths(tiny_models_dir: Path, capsys) -> None:
    bench = _load_bench()
    before = {t.name for t in threading.enumerate()}
    assert bench.main(["--models", "tiny", "--runs", "1", "--max-new-tokens", "4",
                       "--models-dir", str(tiny_models_dir)]) == 0
    out = capsys.readouterr().out
    speed = rows(out, "LLMNarrate vs raw generate")
    assert [r[1] for r in speed] == ["raw", "executor", "http", "raw TTFT (s)"]
    assert all(r[0] == "tiny-qwen2" and float(r[3]) > 0 for r in speed)
    lookup = rows(out, "Prompt-lookup decoding")
    assert lookup[1][1] == "prompt lookup (10)" and lookup[1][4] == "identical"
    (prefix,) = rows(out, "Prefix KV reuse")
    assert int(prefix[1]) > 300 and int(prefix[2]) >= int(prefix[1])  # the whole system prompt was reused
    assert float(prefix[5]) > 0 and float(prefix[6]) > 0
    assert "not run (--gpu-nf4)" in out
    assert "bench-http" not in {t.name for t in threading.enumerate()} - before  # the server was stopped
