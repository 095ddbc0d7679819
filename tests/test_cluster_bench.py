"""``bench/scaleout.py`` still runs: a small run on the session's Ray cluster, both parts.

Not a test of speed (the benchmark prints the ratios): it proves the script works end to end —
pools of 1 and 2 workers drained of every prompt, the dispatcher's cost recorded, and the
affinity comparison run with and without affinity, with every checkpoint load counted.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_bench():
    spec = importlib.util.spec_from_file_location("scaleout", ROOT / "bench" / "scaleout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_small_run_prints_both_tables(ray_cluster, tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "measured.json"
    assert bench.main(["--prompts", "4", "--sleep", "0.05", "--workers", "1,2", "--affinity-prompts", "4",
                       "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| workers | wall (s) | prompts/s | speed-up vs 1 |" in table and "| dispatch | wall (s) |" in table
    measured = json.loads(out.read_text())
    assert [r["workers"] for r in measured["throughput"]] == [1, 2]
    for row in measured["throughput"]:
        assert row["per_s"] > 0 and row["dispatch_ms"] > 0
    assert [r["affinity"] for r in measured["affinity"]] == [True, False]
    for row in measured["affinity"]:
        checkpoints = {c for _, c, _ in row["per_worker"]}
        # both checkpoints were loaded (each at least once), on the bench's two workers
        assert checkpoints == {"tiny-sd15.safetensors", "tiny-sd15-b.safetensors"} and row["loads"] >= 2
        assert {w for w, _, _ in row["per_worker"]} <= {"worker-1", "worker-2"}
    # the session's cluster is still there for the next test
    assert ray_cluster.is_initialized()
