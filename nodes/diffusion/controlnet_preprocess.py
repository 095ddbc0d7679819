"""Control-image preprocessing: ComfyUI's core Canny, and running controlnet-aux detectors offline.

* :func:`canny` is the algorithm of ComfyUI's ``Canny`` node (kornia's ``canny``, re-implemented
  in torch so no extra dependency is needed): grayscale → 5×5 Gaussian blur (σ = 1, reflected
  borders) → Sobel gradients (unnormalised, replicated borders) → non-maximum suppression along
  the gradient direction rounded to 45° → double threshold on the gradient magnitude → hysteresis
  (weak pixels 8-connected to strong ones become strong, until nothing changes).  Runs on any device.
* :func:`run_detector` calls a controlnet-aux detector per image with ``detect_resolution`` and
  resizes its map to the requested resolution (shorter side = ``resolution``, aspect kept), so a
  node's output size never depends on the detector's 64-pixel rounding.
* :func:`load_annotator` builds a detector from local weight files only (``from_pretrained(dir)``
  reads ``dir/<file>``; the hub is never contacted) and caches it.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Canny (ComfyUI core node)

def _gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    k = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _neighbour(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x shifted so that out[y, x] = x[y + dy, x + dx] (zero outside, as kornia's padded convolution)."""
    pad = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return pad[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


@torch.no_grad()
def canny(image: torch.Tensor, low_threshold: float, high_threshold: float, max_hysteresis_steps: int = 10_000
          ) -> torch.Tensor:
    """Canny edges of an IMAGE batch (B, H, W, C) 0..1 → (B, H, W, 3) of 0/1, thresholds on the 0..1 scale."""
    x = image[..., :3].float().movedim(-1, 1)
    if x.shape[1] == 1:
        gray = x
    else:
        gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    k = _gaussian_kernel().to(gray)
    blurred = F.conv2d(F.pad(gray, (2, 2, 0, 0), mode="reflect"), k.view(1, 1, 1, 5))
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="reflect"), k.view(1, 1, 5, 1))
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=gray.device)
    padded = F.pad(blurred, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().contiguous().view(1, 1, 3, 3))
    magnitude = torch.sqrt(gx * gx + gy * gy + 1e-6)
    # non-maximum suppression: keep pixels larger than both neighbours along the gradient (8 directions)
    angle = torch.rad2deg(torch.atan2(gy, gx))
    sector = (torch.round(angle / 45.0) % 8).long()  # 0: +x, 1: +x+y, 2: +y, … (image y points down)
    offsets = [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for s, (dy, dx) in enumerate(offsets):
        forward = _neighbour(magnitude, dy, dx)
        backward = _neighbour(magnitude, -dy, -dx)
        keep |= (sector == s) & (magnitude > forward) & (magnitude > backward)
    magnitude = magnitude * keep
    strong = magnitude > high_threshold
    weak = (magnitude > low_threshold) & ~strong
    # hysteresis: weak pixels join when 8-connected to a strong one, until nothing changes
    edges = strong.float()
    weak_f = weak.float()
    ones = torch.ones(1, 1, 3, 3, device=edges.device)
    for _ in range(max_hysteresis_steps):
        grown = ((F.conv2d(edges, ones, padding=1) > 0).float() * weak_f + edges).clamp(max=1.0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.repeat(1, 3, 1, 1).movedim(1, -1)


# --------------------------------------------------------------------------------------------
# controlnet-aux detectors

class MissingAnnotatorWeights(FileNotFoundError):
    """The weight files a detector needs are not in any annotators folder."""

    def __init__(self, node: str, files: Sequence[str], folders: Sequence[Path], source: str) -> None:
        self.files = tuple(files)
        where = ", ".join(f"models/annotators/{f}" for f in files)
        dirs = ", ".join(str(d) for d in folders) or "models/annotators"
        super().__init__(
            f"{node} needs the annotator weights {', '.join(self.files)}, which are not installed. "
            f"Put {'them' if len(self.files) > 1 else 'it'} in the annotators model folder ({where}; "
            f"searched: {dirs}). The files are published in the Hugging Face repository {source}; "
            f"Genesis never downloads them.")


@dataclass(frozen=True)
class AnnotatorSpec:
    """A weight-needing controlnet-aux detector: where its class lives and which files it reads."""

    module: str                   # e.g. "controlnet_aux.hed"
    cls: str                      # e.g. "HEDdetector"
    files: tuple[str, ...]        # names under models/annotators/
    source: str = "lllyasviel/Annotators"


def find_weights(spec: AnnotatorSpec, folders: Sequence[Path], node: str) -> Path:
    """The first annotators folder holding every file of ``spec``."""
    for folder in folders:
        if all((Path(folder) / f).is_file() for f in spec.files):
            return Path(folder)
    raise MissingAnnotatorWeights(node, spec.files, folders, spec.source)


def load_annotator(spec: AnnotatorSpec, folder: Path, device: torch.device) -> Any:
    """``Detector.from_pretrained(folder)`` (local files only), moved to ``device``."""
    import importlib

    cls = getattr(importlib.import_module(spec.module), spec.cls)
    detector = cls.from_pretrained(str(folder))
    to = getattr(detector, "to", None)
    return to(device) if callable(to) else detector


def target_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) with the shorter side = ``resolution`` and the aspect ratio kept."""
    k = resolution / min(height, width)
    return max(1, int(round(height * k))), max(1, int(round(width * k)))


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    arr = image[..., :3].detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def _hwc3(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return x[:, :, :3]


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


@torch.no_grad()
def run_detector(detector: Callable, image: torch.Tensor, resolution: int, pick: Callable[[Any], Any] | None = None,
                 **kwargs: Any) -> torch.Tensor:
    """Run ``detector`` on each image of an IMAGE batch; → IMAGE of the requested resolution.

    ``pick`` selects the map from detectors that return several results (MiDaS depth + normal).
    """
    import cv2

    if image.ndim == 3:
        image = image[None]
    call = getattr(detector, "__call__", detector)
    extra = dict(kwargs)
    if _accepts(call, "image_resolution"):
        extra["image_resolution"] = resolution
    outs = []
    for pic in _to_uint8(image):
        result = detector(pic, detect_resolution=resolution, output_type="np", **extra)
        if pick is not None:
            result = pick(result)
        detected = _hwc3(result)
        th, tw = target_size(pic.shape[0], pic.shape[1], resolution)
        if detected.shape[:2] != (th, tw):
            shrink = detected.shape[0] * detected.shape[1] > th * tw
            detected = cv2.resize(detected, (tw, th), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        outs.append(torch.from_numpy(detected.astype(np.float32) / 255.0))
    return torch.stack(outs, 0)


def seeded_numpy(seed: int):
    """A context manager running a block with numpy's global RNG seeded (restored afterwards).

    controlnet-aux's content shuffle draws from the global RNG; seeding it makes the node pure.
    """
    import contextlib

    @contextlib.contextmanager
    def _ctx():
        state = np.random.get_state()
        np.random.seed(int(seed) % (2 ** 32))
        try:
            yield
        finally:
            np.random.set_state(state)

    return _ctx()


def mediapipe_available() -> bool:
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        return False
    return hasattr(__import__("mediapipe"), "solutions")


__all__ = ["AnnotatorSpec", "MissingAnnotatorWeights", "canny", "find_weights", "load_annotator", "run_detector",
           "seeded_numpy", "target_size", "mediapipe_available"]
