"""An unchanged third-party ComfyUI client (tests/data/comfy_ws_client.py, written the way
ComfyUI's websocket API example works) runs a workflow against a live server."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.web_harness import LiveServer, chain, web_server  # noqa: F401

CLIENT = Path(__file__).parent / "data" / "comfy_ws_client.py"


def test_third_party_client_runs_a_workflow(web_server: LiveServer, tmp_path: Path) -> None:
    prompt = chain(1, color=0x102030, size=8, output="SaveImage")
    prompt_file = tmp_path / "prompt.json"
    prompt_file.write_text(json.dumps(prompt))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = subprocess.run([sys.executable, str(CLIENT), f"127.0.0.1:{web_server.port}", str(prompt_file),
                             str(out_dir)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert list(summary["images"]) == ["out"] and len(summary["images"]["out"]) == 1
    image = Image.open(summary["images"]["out"][0])
    assert image.size == (8, 8)
    assert image.convert("RGB").getpixel((3, 3)) == (0xFF - 0x10, 0xFF - 0x20, 0xFF - 0x30)  # inverted
    # the saved PNG carries the prompt, as ComfyUI's do
    assert json.loads(image.info["prompt"])["0"]["class_type"] == "EmptyImage"
    entry = web_server.get(f"/history/{summary['prompt_id']}").json()[summary["prompt_id"]]
    assert entry["status"]["status_str"] == "success"
