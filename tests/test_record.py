"""The reproducibility record: the saved PNG (a ``genesis`` text chunk beside ``prompt`` and
``workflow``) and the history entry carry versions, device, attention backend and every model file
the prompt used with its dtype and SHA-256 — equal to hashlib over the file, hashed once."""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
from pathlib import Path

from PIL import Image

from graph_runtime import file_hashes
from graph_runtime.context import RuntimeOptions
from graph_runtime.paths import FolderPaths
from graph_runtime.service import Runtime
from server import default_registry

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = json.loads((REPO / "workflows" / "default_sd15.json").read_text())


def test_png_and_history_carry_the_record(tiny_base_dir: Path, monkeypatch) -> None:
    hashed: list[str] = []
    real = file_hashes.sha256_of_file
    monkeypatch.setattr(file_hashes, "sha256_of_file", lambda path: hashed.append(Path(path).name) or real(path))
    paths = FolderPaths(tiny_base_dir)
    runtime = Runtime(paths, RuntimeOptions(device="cpu"), registry=default_registry(paths))
    runtime.start()
    try:
        ids = []
        for seed in (1, 2):  # Run, then Run again with a new seed (the loader and the text encodes are cached)
            workflow = json.loads(json.dumps(WORKFLOW))
            sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
            sampler["widgets_values"][0], sampler["widgets_values"][2] = seed, 2
            result = runtime.submit(workflow)
            assert result.ok, result.error
            ids.append(result.prompt_id)
        assert runtime.wait_idle(300)
        jobs = [runtime.store.get(pid) for pid in ids]
    finally:
        runtime.stop()

    checkpoint = tiny_base_dir / "models" / "checkpoints" / "tiny-sd15.safetensors"
    expected = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    for job in jobs:
        assert job.status.value == "succeeded", job.messages[-1]
        record = job.history_entry()["genesis"]["record"]
        image = job.outputs["9"]["images"][0]
        png = Image.open(runtime.paths.output_dir / image["subfolder"] / image["filename"])
        assert {"prompt", "workflow", "genesis"} <= set(png.text)
        chunk = json.loads(png.text["genesis"])
        for name in ("genesis", "torch", "diffusers", "transformers"):
            assert record[name] == chunk[name] == importlib.metadata.version(name)
        assert record["device"] == chunk["device"] and record["device"]["type"] == "cpu" and record["device"]["name"]
        assert record["attention"]["backend"] and record["options"]["device"] == "cpu"
        files = {f["file"]: f["sha256"] for m in record["models"] for f in m["files"]}
        assert files["tiny-sd15.safetensors"] == expected
        assert {f["file"]: f["sha256"] for m in chunk["models"] for f in m["files"]} == files
        assert all(m["dtype"] and m["device"] == "cpu" for m in record["models"])
        assert {m["label"] for m in record["models"]} == {m["label"] for m in chunk["models"]}
        assert not any(f.startswith("/") for f in files)  # no server paths in pictures
    # the second run loaded nothing (its models were cached), yet its record names the same models
    first, second = (job.history_entry()["genesis"]["record"]["models"] for job in jobs)
    assert sorted(m["label"] for m in first) == sorted(m["label"] for m in second)
    assert len(first) >= 3  # denoiser, text encoder, VAE
    # every file hashed once across both runs (then remembered by path, size and mtime)
    assert hashed.count("tiny-sd15.safetensors") == 1 and len(hashed) == len(set(hashed))
    assert "tiny-sd15.safetensors" in (runtime.paths.user_dir / "model_hashes.json").read_text()
