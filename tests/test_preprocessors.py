"""Preprocessor nodes: ComfyUI's Canny and the controlnet-aux nodes on a real picture, offline.

Weight-needing detectors load random-weight checkpoints written under their real file names
(``models/tools/tiny_annotators.py``), once per session, only for the detectors tested here.  The
big ones (OpenPose 243 MB, MiDaS 235 MB, BAE 139 MB, Zoe 658 MB; Zoe alone runs ~25 s per image
on one CPU thread) run end to end only with ``GENESIS_FULL_ANNOTATORS=1``; their missing-weights
errors are always tested.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.node_info import node_info
from graph_runtime.paths import FolderPaths
from graph_runtime.schema import define
from nodes import preprocessors as P

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ANNOTATORS = ("hed", "pidinet", "mlsd", "lineart", "lineart_anime")
FULL = os.environ.get("GENESIS_FULL_ANNOTATORS") == "1"

WEIGHT_FREE = [P.CannyEdgePreprocessor, P.LineartStandardPreprocessor, P.ShufflePreprocessor]
WITH_WEIGHTS = [P.HEDPreprocessor, P.FakeScribblePreprocessor, P.PiDiNetPreprocessor, P.MLSDPreprocessor,
                P.LineArtPreprocessor, P.AnimeLineArtPreprocessor]
BIG = [P.OpenposePreprocessor, P.MiDaSDepthMapPreprocessor, P.MiDaSNormalMapPreprocessor, P.BAENormalMapPreprocessor,
       P.ZoeDepthMapPreprocessor]


def astronaut(h: int = 128, w: int = 96) -> torch.Tensor:
    """skimage's astronaut, downscaled to (1, h, w, 3) — a real photo (face, suit, flag, rocket)."""
    from PIL import Image
    from skimage import data

    pic = Image.fromarray(data.astronaut()).resize((h, h), Image.BICUBIC).crop(((h - w) // 2, 0, (h - w) // 2 + w, h))
    return torch.from_numpy(np.asarray(pic, dtype=np.float32) / 255.0)[None]


@pytest.fixture(scope="session")
def annotators_dir(tmp_path_factory) -> Path:
    from models.tools.tiny_annotators import write_annotators

    folder = tmp_path_factory.mktemp("annotators")
    write_annotators(folder, DEFAULT_ANNOTATORS + (("openpose", "midas", "normalbae", "zoe") if FULL else ()))
    return folder


def _ctx(tmp_path: Path, annotators: Path | None = None) -> NodeContext:
    paths = FolderPaths(tmp_path / "base")
    paths.ensure_dirs()
    if annotators is not None:
        paths.add_model_dir("annotators", annotators, first=True)
    return NodeContext(node_id="1", class_type="X", prompt_id="p", paths=paths, models=ModelManager(),
                       options=RuntimeOptions(device="cpu"))


def _node_id(cls) -> str:
    return define(cls).class_type


# --------------------------------------------------------------------------------------------
# declarations (facts from ComfyUI and comfyui_controlnet_aux)

def test_core_canny_declaration_matches_comfyui():
    import json

    core = json.loads((REPO / "tests" / "data" / "workflows" / "core_node_defs.json").read_text())["Canny"]
    ours = node_info(define(P.Canny))
    for key in ("input", "input_order", "output", "category", "display_name"):
        assert ours[key] == core[key], key


@pytest.mark.parametrize("cls,class_type,inputs", [
    (P.HEDPreprocessor, "HEDPreprocessor", ["safe", "resolution"]),
    (P.PiDiNetPreprocessor, "PiDiNetPreprocessor", ["safe", "resolution"]),
    (P.MLSDPreprocessor, "M-LSDPreprocessor", ["score_threshold", "dist_threshold", "resolution"]),
    (P.LineArtPreprocessor, "LineArtPreprocessor", ["coarse", "resolution"]),
    (P.AnimeLineArtPreprocessor, "AnimeLineArtPreprocessor", ["resolution"]),
    (P.OpenposePreprocessor, "OpenposePreprocessor", ["detect_hand", "detect_body", "detect_face", "resolution"]),
    (P.MiDaSDepthMapPreprocessor, "MiDaS-DepthMapPreprocessor", ["a", "bg_threshold", "resolution"]),
    (P.MiDaSNormalMapPreprocessor, "MiDaS-NormalMapPreprocessor", ["a", "bg_threshold", "resolution"]),
    (P.ZoeDepthMapPreprocessor, "Zoe-DepthMapPreprocessor", ["resolution"]),
    (P.BAENormalMapPreprocessor, "BAE-NormalMapPreprocessor", ["resolution"]),
    (P.ShufflePreprocessor, "ShufflePreprocessor", ["resolution", "seed"]),
    (P.MediaPipeFaceMeshPreprocessor, "MediaPipe-FaceMeshPreprocessor", ["max_faces", "min_confidence", "resolution"]),
    (P.CannyEdgePreprocessor, "CannyEdgePreprocessor", ["low_threshold", "high_threshold", "resolution"]),
])
def test_aux_declarations_follow_comfyui_controlnet_aux(cls, class_type, inputs):
    info = node_info(define(cls))
    assert info["name"] == class_type
    assert info["input_order"] == {"required": ["image"], "optional": inputs}
    assert info["input"]["optional"]["resolution"] == ["INT", {"default": 512, "min": 64, "max": 16384, "step": 64}]
    assert info["output"] == ["IMAGE"]


def test_node_modules_import_no_heavy_library():
    code = ("import sys, nodes.preprocessors, nodes.controlnet; "
            "print(sorted(m for m in ('torch', 'controlnet_aux', 'cv2', 'diffusers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# core Canny

def test_canny_keeps_the_size_and_finds_a_squares_outline(tmp_path):
    square = torch.zeros(1, 40, 48, 3)
    square[:, 10:30, 12:36] = 1.0
    edges = P.Canny().execute(_ctx(tmp_path), image=square, low_threshold=0.4, high_threshold=0.8)[0]
    assert edges.shape == (1, 40, 48, 3) and set(torch.unique(edges).tolist()) == {0.0, 1.0}
    e = edges[0, ..., 0] > 0
    assert torch.equal(edges[..., 0], edges[..., 2])
    # every side of the square has an edge within one pixel of it; the inside and far outside are empty
    assert e[9:11, 14:34].any(0).all() and e[29:31, 14:34].any(0).all()
    assert e[12:28, 11:13].any(1).all() and e[12:28, 35:37].any(1).all()
    assert not e[13:27, 15:33].any() and not e[:6].any() and not e[:, :8].any()
    assert not P.Canny().execute(_ctx(tmp_path), image=torch.full((1, 32, 32, 3), 0.5), low_threshold=0.1,
                                 high_threshold=0.2)[0].any()


def test_canny_thresholds_on_a_real_picture(tmp_path):
    image = astronaut(128, 128)
    counts = []
    for low, high in ((0.05, 0.1), (0.2, 0.3), (0.4, 0.8)):
        out = P.Canny().execute(_ctx(tmp_path), image=image, low_threshold=low, high_threshold=high)[0]
        counts.append(int(out[..., 0].sum()))
    assert counts[0] > counts[1] > counts[2] > 50  # higher thresholds keep fewer (but some) edges


# --------------------------------------------------------------------------------------------
# aux nodes on a real picture

@pytest.mark.parametrize("cls", WEIGHT_FREE + WITH_WEIGHTS, ids=_node_id)
@pytest.mark.parametrize("resolution", [64, 128])
def test_preprocessor_gives_the_requested_resolution(cls, resolution, tmp_path, annotators_dir):
    image = torch.cat([astronaut(), astronaut().flip(2)])  # a batch of two 128×96 pictures
    out = cls().execute(_ctx(tmp_path, annotators_dir), image=image, resolution=resolution)[0]
    # shorter side = resolution, aspect ratio kept (96:128)
    assert out.shape == (2, round(resolution * 128 / 96), resolution, 3)
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 1
    assert out.std() > 0.01, "a constant map"


@pytest.mark.parametrize("cls", WITH_WEIGHTS, ids=_node_id)
def test_weighted_preprocessors_are_deterministic(cls, tmp_path, annotators_dir):
    ctx = _ctx(tmp_path, annotators_dir)
    a = cls().execute(ctx, image=astronaut(), resolution=64)[0]
    b = cls().execute(ctx, image=astronaut(), resolution=64)[0]
    assert torch.equal(a, b)
    assert ctx.models.loads == 1  # the detector is loaded once and reused


@pytest.mark.parametrize("cls", WITH_WEIGHTS + BIG, ids=_node_id)
def test_missing_annotator_weights_name_the_files(cls, tmp_path):
    module, _, files = P.ANNOTATOR_WEIGHTS[cls.ANNOTATOR]
    with pytest.raises(NodeError) as err:
        cls().execute(_ctx(tmp_path), image=astronaut(), resolution=64)
    message = str(err.value)
    assert _node_id(cls) in message and "lllyasviel/Annotators" in message and "never downloads" in message
    for f in files:
        assert f"models/annotators/{f}" in message


def test_partial_and_broken_weights(tmp_path, annotators_dir):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "sk_model.pth").write_bytes((annotators_dir / "sk_model.pth").read_bytes())
    with pytest.raises(NodeError, match="sk_model2.pth"):
        P.LineArtPreprocessor().execute(_ctx(tmp_path, folder), image=astronaut(), resolution=64)
    (folder / "ControlNetHED.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(NodeError, match="could not be loaded"):
        P.HEDPreprocessor().execute(_ctx(tmp_path, folder), image=astronaut(), resolution=64)


def test_options_reach_the_detector(tmp_path, annotators_dir):
    ctx = _ctx(tmp_path, annotators_dir)
    image = astronaut()
    coarse = P.LineArtPreprocessor().execute(ctx, image=image, coarse="enable", resolution=64)[0]
    fine = P.LineArtPreprocessor().execute(ctx, image=image, coarse="disable", resolution=64)[0]
    assert not torch.equal(coarse, fine)
    scribble = P.FakeScribblePreprocessor().execute(ctx, image=image, resolution=64)[0]
    hed = P.HEDPreprocessor().execute(ctx, image=image, resolution=64)[0]
    assert not torch.equal(scribble, hed)
    low = P.CannyEdgePreprocessor().execute(ctx, image=image, low_threshold=10, high_threshold=30, resolution=128)[0]
    high = P.CannyEdgePreprocessor().execute(ctx, image=image, low_threshold=200, high_threshold=250,
                                             resolution=128)[0]
    assert low.sum() > high.sum()


def test_shuffle_is_reproducible_by_seed(tmp_path):
    ctx = _ctx(tmp_path)
    state = np.random.get_state()[1].copy()
    a = P.ShufflePreprocessor().execute(ctx, image=astronaut(), resolution=64, seed=1)[0]
    b = P.ShufflePreprocessor().execute(ctx, image=astronaut(), resolution=64, seed=1)[0]
    c = P.ShufflePreprocessor().execute(ctx, image=astronaut(), resolution=64, seed=2)[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert np.array_equal(np.random.get_state()[1], state)  # the global numpy RNG is left alone


def test_mediapipe_face_mesh(tmp_path, monkeypatch):
    from nodes.diffusion import controlnet_preprocess as CP

    if not CP.mediapipe_available():
        pytest.skip("mediapipe==0.10.14 is not installed")
    from PIL import Image
    from skimage import data

    image = torch.from_numpy(np.asarray(Image.fromarray(data.astronaut()), dtype=np.float32) / 255.0)[None]
    out = P.MediaPipeFaceMeshPreprocessor().execute(_ctx(tmp_path), image=image, resolution=512)[0]
    assert out.shape == (1, 512, 512, 3)
    assert out.max() > 0.5, "the astronaut's face mesh is drawn"
    monkeypatch.setattr(CP, "mediapipe_available", lambda: False)
    with pytest.raises(NodeError, match=r"mediapipe==0\.10\.14"):
        P.MediaPipeFaceMeshPreprocessor().execute(_ctx(tmp_path), image=image, resolution=512)


@pytest.mark.skipif(not FULL, reason="full-size random annotators (1.3 GB, ~1 min): set GENESIS_FULL_ANNOTATORS=1")
@pytest.mark.parametrize("cls", BIG, ids=_node_id)
def test_big_annotators_run_end_to_end(cls, tmp_path, annotators_dir):
    out = cls().execute(_ctx(tmp_path, annotators_dir), image=astronaut(), resolution=64)[0]
    assert out.shape == (1, round(64 * 128 / 96), 64, 3) and torch.isfinite(out).all()


def test_target_size_rule():
    from nodes.diffusion.controlnet_preprocess import target_size

    assert target_size(512, 512, 64) == (64, 64)
    assert target_size(480, 640, 512) == (512, 683)
    assert target_size(1000, 10, 64) == (6400, 64)
