"""Every ComfyUI example PNG runs from the PNG through ``server.py run`` on the tiny models.

The workflows run in-process through the same function the ``run`` command calls (importing
torch and diffusers once for the whole corpus instead of once per file); ``test_cli.py`` covers
the process boundary.  Sizes and steps are scaled down and model names mapped by
``tests/compat_corpus.py`` through ``--set`` overrides only.
"""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from graph_runtime.cli import EXIT_OK, run_workflow
from graph_runtime.context import RuntimeOptions
from graph_runtime.paths import FolderPaths
from graph_runtime.registry import build_registry
from nodes import PACKS
from tests.compat_corpus import WHERE, copy_corpus_png, corpus_workflows, needs_corpus, tiny_overrides

WORKFLOWS = corpus_workflows()


@pytest.fixture(scope="module")
def full_registry():
    registry = build_registry(PACKS)
    assert registry.failures == [], [f.traceback for f in registry.failures]
    return registry


@needs_corpus
def test_the_corpus_is_there():
    assert len(WORKFLOWS) >= 24, WHERE


@needs_corpus
@pytest.mark.parametrize("png", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_runs_on_tiny_models(png: Path, tiny_base_dir: Path, full_registry, tmp_path):
    paths = FolderPaths(tiny_base_dir)
    overrides = tiny_overrides(png, paths.input_dir)
    local_png = copy_corpus_png(png, tmp_path)
    out, err = io.StringIO(), io.StringIO()
    code = run_workflow(local_png, paths, RuntimeOptions(device="cpu"), overrides=overrides,
                        registry=full_registry, progress=False, out=out, err=err)
    assert code == EXIT_OK, err.getvalue()
    written = [Path(line) for line in out.getvalue().split()]
    assert written, "the workflow saved no image"
    for file in written:
        image = Image.open(file)
        assert image.size[0] >= 16 and image.size[1] >= 16
        assert "prompt" in image.text  # the workflow travels with the picture
