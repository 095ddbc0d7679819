"""``python server.py run``: exit codes, printed files, errors, PNG round trip — as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def workflow(color: int = 0x336699) -> dict:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 2, "color": color}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cli/test"}},
    }


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "server.py"), "run", "--quiet", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_run_succeeds_prints_written_files_and_embeds_the_prompt(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow()))
    out_dir = tmp_path / "out"
    proc = run_cli(str(wf), "--base-directory", str(tmp_path / "base"), "--output-dir", str(out_dir),
                   "--set", "1.color=16777215", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = [Path(line) for line in proc.stdout.split()]
    assert [f.name for f in files] == ["test_00001_.png", "test_00002_.png"]
    assert all(f.parent == out_dir / "cli" and f.exists() for f in files)
    img = Image.open(files[0])
    assert img.size == (16, 8) and img.getpixel((0, 0)) == (0, 0, 0)  # white inverted by --set
    embedded = json.loads(img.text["prompt"])
    assert embedded["1"]["inputs"]["color"] == 0xFFFFFF


def test_saved_png_runs_again_from_its_embedded_workflow(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow(0x000000)))
    base = tmp_path / "base"
    first = run_cli(str(wf), "--base-directory", str(base), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    png = Path(first.stdout.split()[0])
    second = run_cli(str(png), "--base-directory", str(base), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    again = Path(second.stdout.split()[0])
    assert again != png and again.name == "test_00003_.png"
    assert Image.open(again).tobytes() == Image.open(png).tobytes()


def test_invalid_input_exits_2_naming_node_input_and_limit(tmp_path):
    wf = tmp_path / "wf.json"
    bad = workflow()
    bad["1"]["inputs"]["width"] = 0
    wf.write_text(json.dumps(bad))
    proc = run_cli(str(wf), "--base-directory", str(tmp_path / "base"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "node 1 (EmptyImage), input 'width'" in proc.stderr and "smaller than min of 1" in proc.stderr


def test_unknown_override_target_exits_2(tmp_path):
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow()))
    proc = run_cli(str(wf), "--set", "42.seed=1", "--base-directory", str(tmp_path / "base"), cwd=tmp_path)
    assert proc.returncode == 2 and "no node '42'" in proc.stderr


def test_node_failure_exits_1_with_the_error(tmp_path):
    base = tmp_path / "base"
    (base / "input").mkdir(parents=True)
    (base / "input" / "broken.png").write_bytes(b"not a png")
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"1": {"class_type": "LoadImage", "inputs": {"image": "broken.png"}},
                              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}))
    proc = run_cli(str(wf), "--base-directory", str(base), cwd=tmp_path)
    assert proc.returncode == 1
    assert "node 1 (LoadImage) failed" in proc.stderr and "broken.png" in proc.stderr


def test_missing_file_exits_2(tmp_path):
    proc = run_cli(str(tmp_path / "nope.json"), cwd=tmp_path)
    assert proc.returncode == 2 and "not found" in proc.stderr
