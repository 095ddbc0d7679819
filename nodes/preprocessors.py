"""Control-image preprocessors: ComfyUI's core ``Canny`` and the comfyui_controlnet_aux nodes on controlnet-aux.

Names, inputs (order, defaults, ranges) and display names follow ComfyUI (``Canny``) and
Fannovel16's comfyui_controlnet_aux (``HEDPreprocessor``, ``M-LSDPreprocessor``, …), so shared
workflows load.  Every aux node takes ``resolution`` (the detection size) and returns an IMAGE
whose shorter side is ``resolution`` with the input's aspect ratio.

Detectors that need network weights read them from the ``annotators`` model folder
(``models/annotators/<file>``, the file names of the lllyasviel/Annotators repository); nothing is
ever downloaded — a missing file is a NodeError naming the files and where they go.  Canny,
content shuffle, standard lineart and MediaPipe face mesh (with ``mediapipe==0.10.14``) need no
weights.  controlnet-aux, torch and cv2 are imported inside ``execute``: importing controlnet-aux
takes seconds and the server must start fast.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

from graph_runtime.context import NodeContext, NodeError
from graph_runtime.schema import MAX_RESOLUTION, Combo, Float, Int, Node, Output, Resource, Socket

# detector key -> (controlnet-aux module, class, weight files under models/annotators/)
ANNOTATOR_WEIGHTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "hed": ("controlnet_aux.hed", "HEDdetector", ("ControlNetHED.pth",)),
    "pidinet": ("controlnet_aux.pidi", "PidiNetDetector", ("table5_pidinet.pth",)),
    "mlsd": ("controlnet_aux.mlsd", "MLSDdetector", ("mlsd_large_512_fp32.pth",)),
    "lineart": ("controlnet_aux.lineart", "LineartDetector", ("sk_model.pth", "sk_model2.pth")),
    "lineart_anime": ("controlnet_aux.lineart_anime", "LineartAnimeDetector", ("netG.pth",)),
    "openpose": ("controlnet_aux.open_pose", "OpenposeDetector",
                 ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")),
    "midas": ("controlnet_aux.midas", "MidasDetector", ("dpt_hybrid-midas-501f0c75.pt",)),
    "zoe": ("controlnet_aux.zoe", "ZoeDetector", ("ZoeD_M12_N.pt",)),
    "normalbae": ("controlnet_aux.normalbae", "NormalBaeDetector", ("scannet.pt",)),
}
WEIGHTS_SOURCE = "lllyasviel/Annotators"

LINES = "ControlNet Preprocessors/Line Extractors"
DEPTH = "ControlNet Preprocessors/Normal and Depth Estimators"
POSES = "ControlNet Preprocessors/Faces and Poses Estimators"
T2I = "ControlNet Preprocessors/T2IAdapter-only"
ENABLE = ("enable", "disable")


def _resolution() -> Any:
    return Int("resolution", 512, min=64, max=MAX_RESOLUTION, step=64, optional=True)


def _image() -> Any:
    return Socket("image", "IMAGE")


class _AuxPreprocessor:
    """Shared execute of the controlnet-aux nodes (a mixin: only the concrete classes are nodes).

    Subclasses set ``ANNOTATOR`` (a key of :data:`ANNOTATOR_WEIGHTS`) or ``DETECTOR`` (module, class)
    for weight-free detectors, and map their inputs to detector keywords in :meth:`options`.
    """

    ANNOTATOR: ClassVar[str | None] = None
    DETECTOR: ClassVar[tuple[str, str] | None] = None
    OUTPUTS = (Output("IMAGE"),)

    def options(self, **inputs: Any) -> dict[str, Any]:
        return {}

    def pick(self) -> Callable[[Any], Any] | None:
        return None

    def detector(self, ctx: NodeContext) -> Any:
        import importlib

        if self.ANNOTATOR is None:
            module, cls = self.DETECTOR
            return getattr(importlib.import_module(module), cls)()
        return load_annotator(ctx, self.ANNOTATOR, self._node_id())

    @classmethod
    def _node_id(cls) -> str:
        return getattr(cls, "NODE_ID", "") or cls.__name__

    def run(self, ctx: NodeContext, detector: Any, image: Any, resolution: int, **inputs: Any):
        from nodes.diffusion.controlnet_preprocess import run_detector

        return run_detector(detector, image, int(resolution), pick=self.pick(), **self.options(**inputs))

    def execute(self, ctx: NodeContext, image, resolution: int = 512, **inputs: Any):
        detector = self.detector(ctx)
        try:
            out = self.run(ctx, detector, image, resolution, **inputs)
        except NodeError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise NodeError(f"{self._node_id()} failed on this image: {exc}", input_name="image") from exc
        ctx.record(resolution=int(resolution), output_size=f"{out.shape[2]}x{out.shape[1]}")
        return (out,)


def load_annotator(ctx: NodeContext, key: str, node_id: str) -> Any:
    """A detector built from the annotator weights in ``models/annotators`` (cached per device)."""
    from nodes.diffusion.controlnet_preprocess import (AnnotatorSpec, MissingAnnotatorWeights, find_weights,
                                                       load_annotator as build)
    from nodes.diffusion.loading import resolve_device
    from nodes.diffusion.model_files import file_key

    module, cls, files = ANNOTATOR_WEIGHTS[key]
    spec = AnnotatorSpec(module, cls, files, WEIGHTS_SOURCE)
    try:
        folder = find_weights(spec, ctx.paths.model_dirs("annotators"), node_id)
    except MissingAnnotatorWeights as exc:
        raise NodeError(str(exc)) from exc
    device = resolve_device(ctx.options.device)
    cache_key = ("annotator", key, *[k for f in files for k in file_key(folder / f)], str(device))

    def loader():
        try:
            return _Resident(build(spec, folder, device))
        except Exception as exc:  # noqa: BLE001 - torch.load / load_state_dict raise many kinds for bad files
            raise NodeError(f"{node_id}: the annotator weights {', '.join(files)} in {folder} could not be loaded "
                            f"({type(exc).__name__}: {exc}); replace them with the files from {WEIGHTS_SOURCE}") \
                from exc

    ctx.record(annotator=", ".join(files), device=str(device))
    return ctx.models.get(cache_key, loader).detector


class _Resident:
    """A detector in the model cache, with its size (the torch modules it holds)."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    def size_bytes(self) -> int:
        import torch

        seen, total = set(), 0
        for value in vars(self.detector).values():
            modules = [value] if isinstance(value, torch.nn.Module) else \
                [v for v in vars(value).values() if isinstance(v, torch.nn.Module)] if hasattr(value, "__dict__") else []
            for m in modules:
                for p in m.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        total += p.numel() * p.element_size()
        return total


# --------------------------------------------------------------------------------------------
# ComfyUI core

class Canny(Node):
    """Canny edge detection (ComfyUI's core node): thresholds on the 0..1 gradient scale, same size out."""

    CATEGORY = "image/preprocessors"
    RESOURCE = Resource.GPU
    INPUTS = (Socket("image", "IMAGE"),
              Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01),
              Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01))
    OUTPUTS = (Output("IMAGE"),)

    def execute(self, ctx: NodeContext, image, low_threshold: float = 0.4, high_threshold: float = 0.8):
        from nodes.diffusion.controlnet_preprocess import canny
        from nodes.diffusion.loading import resolve_device

        device = resolve_device(ctx.options.device)
        out = canny(image.to(device), float(low_threshold), float(high_threshold))
        return (out.cpu(),)


# --------------------------------------------------------------------------------------------
# comfyui_controlnet_aux: line extractors

class CannyEdgePreprocessor(_AuxPreprocessor, Node):
    """Canny edges (controlnet-aux, OpenCV thresholds 0..255) at the requested resolution."""

    DISPLAY_NAME = "Canny Edge"
    CATEGORY = LINES
    DETECTOR = ("controlnet_aux.canny", "CannyDetector")
    INPUTS = (_image(), Int("low_threshold", 100, min=0, max=255, step=1, optional=True),
              Int("high_threshold", 200, min=0, max=255, step=1, optional=True), _resolution())

    def options(self, low_threshold: int = 100, high_threshold: int = 200, **_: Any) -> dict[str, Any]:
        return {"low_threshold": int(low_threshold), "high_threshold": int(high_threshold)}


class HEDPreprocessor(_AuxPreprocessor, Node):
    """HED soft edges (needs models/annotators/ControlNetHED.pth)."""

    DISPLAY_NAME = "HED Soft-Edge Lines"
    CATEGORY = LINES
    RESOURCE = Resource.GPU
    ANNOTATOR = "hed"
    INPUTS = (_image(), Combo("safe", ENABLE, "enable", optional=True), _resolution())

    def options(self, safe: str = "enable", **_: Any) -> dict[str, Any]:
        return {"safe": safe == "enable"}


class FakeScribblePreprocessor(_AuxPreprocessor, Node):
    """Scribble-like lines from HED (needs models/annotators/ControlNetHED.pth)."""

    DISPLAY_NAME = "Fake Scribble Lines (aka scribble_hed)"
    CATEGORY = LINES
    RESOURCE = Resource.GPU
    ANNOTATOR = "hed"
    INPUTS = (_image(), Combo("safe", ENABLE, "enable", optional=True), _resolution())

    def options(self, safe: str = "enable", **_: Any) -> dict[str, Any]:
        return {"safe": safe == "enable", "scribble": True}


class PiDiNetPreprocessor(_AuxPreprocessor, Node):
    """PiDiNet soft edges (needs models/annotators/table5_pidinet.pth)."""

    DISPLAY_NAME = "PiDiNet Soft-Edge Lines"
    CATEGORY = LINES
    RESOURCE = Resource.GPU
    ANNOTATOR = "pidinet"
    INPUTS = (_image(), Combo("safe", ENABLE, "enable", optional=True), _resolution())

    def options(self, safe: str = "enable", **_: Any) -> dict[str, Any]:
        return {"safe": safe == "enable"}


class MLSDPreprocessor(_AuxPreprocessor, Node):
    """M-LSD straight lines (needs models/annotators/mlsd_large_512_fp32.pth)."""

    NODE_ID = "M-LSDPreprocessor"
    DISPLAY_NAME = "M-LSD Lines"
    CATEGORY = LINES
    RESOURCE = Resource.GPU
    ANNOTATOR = "mlsd"
    INPUTS = (_image(), Float("score_threshold", 0.1, min=0.01, max=2.0, step=0.01, optional=True),
              Float("dist_threshold", 0.1, min=0.01, max=20.0, step=0.01, optional=True), _resolution())

    def options(self, score_threshold: float = 0.1, dist_threshold: float = 0.1, **_: Any) -> dict[str, Any]:
        return {"thr_v": float(score_threshold), "thr_d": float(dist_threshold)}


class LineArtPreprocessor(_AuxPreprocessor, Node):
    """Realistic line art (needs models/annotators/sk_model.pth and sk_model2.pth)."""

    DISPLAY_NAME = "Realistic Lineart"
    CATEGORY = LINES
    RESOURCE = Resource.GPU
    ANNOTATOR = "lineart"
    INPUTS = (_image(), Combo("coarse", ("disable", "enable"), "disable", optional=True), _resolution())

    def options(self, coarse: str = "disable", **_: Any) -> dict[str, Any]:
        return {"coarse": coarse == "enable"}


class AnimeLineArtPreprocessor(_AuxPreprocessor, Node):
    """Anime line art (needs models/annotators/netG.pth)."""

    DISPLAY_NAME = "Anime Lineart"
    CATEGORY = LINES
    RESOURCE = Resource.GPU
    ANNOTATOR = "lineart_anime"
    INPUTS = (_image(), _resolution())


class LineartStandardPreprocessor(_AuxPreprocessor, Node):
    """Standard line art from a Gaussian difference (no weights needed)."""

    DISPLAY_NAME = "Standard Lineart"
    CATEGORY = LINES
    DETECTOR = ("controlnet_aux.lineart_standard", "LineartStandardDetector")
    INPUTS = (_image(), Float("guassian_sigma", 6.0, min=0.0, max=100.0, optional=True),
              Int("intensity_threshold", 8, min=0, max=16, optional=True), _resolution())

    def options(self, guassian_sigma: float = 6.0, intensity_threshold: int = 8, **_: Any) -> dict[str, Any]:
        return {"guassian_sigma": float(guassian_sigma), "intensity_threshold": int(intensity_threshold)}


# --------------------------------------------------------------------------------------------
# depth and normals

_A_DEFAULT = math.pi * 2.0


class MiDaSDepthMapPreprocessor(_AuxPreprocessor, Node):
    """MiDaS depth map (needs models/annotators/dpt_hybrid-midas-501f0c75.pt)."""

    NODE_ID = "MiDaS-DepthMapPreprocessor"
    DISPLAY_NAME = "MiDaS Depth Map"
    CATEGORY = DEPTH
    RESOURCE = Resource.GPU
    ANNOTATOR = "midas"
    INPUTS = (_image(), Float("a", _A_DEFAULT, min=0.0, max=math.pi * 5.0, step=0.05, optional=True),
              Float("bg_threshold", 0.1, min=0.0, max=1.0, step=0.05, optional=True), _resolution())

    def options(self, a: float = _A_DEFAULT, bg_threshold: float = 0.1, **_: Any) -> dict[str, Any]:
        return {"a": float(a), "bg_th": float(bg_threshold)}


class MiDaSNormalMapPreprocessor(MiDaSDepthMapPreprocessor):
    """MiDaS normal map (needs models/annotators/dpt_hybrid-midas-501f0c75.pt)."""

    NODE_ID = "MiDaS-NormalMapPreprocessor"
    DISPLAY_NAME = "MiDaS Normal Map"

    def options(self, a: float = _A_DEFAULT, bg_threshold: float = 0.1, **_: Any) -> dict[str, Any]:
        return {"a": float(a), "bg_th": float(bg_threshold), "depth_and_normal": True}

    def pick(self):
        return lambda result: result[1]


class ZoeDepthMapPreprocessor(_AuxPreprocessor, Node):
    """ZoeDepth depth map (needs models/annotators/ZoeD_M12_N.pt)."""

    NODE_ID = "Zoe-DepthMapPreprocessor"
    DISPLAY_NAME = "Zoe Depth Map"
    CATEGORY = DEPTH
    RESOURCE = Resource.GPU
    ANNOTATOR = "zoe"
    INPUTS = (_image(), _resolution())


class BAENormalMapPreprocessor(_AuxPreprocessor, Node):
    """BAE surface normals (needs models/annotators/scannet.pt)."""

    NODE_ID = "BAE-NormalMapPreprocessor"
    DISPLAY_NAME = "BAE Normal Map"
    CATEGORY = DEPTH
    RESOURCE = Resource.GPU
    ANNOTATOR = "normalbae"
    INPUTS = (_image(), _resolution())


# --------------------------------------------------------------------------------------------
# poses and faces

class OpenposePreprocessor(_AuxPreprocessor, Node):
    """OpenPose body/hand/face keypoints (needs body_pose_model.pth, hand_pose_model.pth, facenet.pth)."""

    DISPLAY_NAME = "OpenPose Pose"
    CATEGORY = POSES
    RESOURCE = Resource.GPU
    ANNOTATOR = "openpose"
    INPUTS = (_image(), Combo("detect_hand", ENABLE, "enable", optional=True),
              Combo("detect_body", ENABLE, "enable", optional=True),
              Combo("detect_face", ENABLE, "enable", optional=True), _resolution())

    def options(self, detect_hand: str = "enable", detect_body: str = "enable", detect_face: str = "enable",
                **_: Any) -> dict[str, Any]:
        return {"include_hand": detect_hand == "enable", "include_body": detect_body == "enable",
                "include_face": detect_face == "enable"}


class MediaPipeFaceMeshPreprocessor(_AuxPreprocessor, Node):
    """MediaPipe face mesh (no weights; needs the mediapipe package, version 0.10.14)."""

    NODE_ID = "MediaPipe-FaceMeshPreprocessor"
    DISPLAY_NAME = "MediaPipe Face Mesh"
    CATEGORY = POSES
    DETECTOR = ("controlnet_aux.mediapipe_face", "MediapipeFaceDetector")
    INPUTS = (_image(), Int("max_faces", 10, min=1, max=50, step=1, optional=True),
              Float("min_confidence", 0.5, min=0.01, max=1.0, step=0.01, optional=True), _resolution())

    def detector(self, ctx: NodeContext) -> Any:
        from nodes.diffusion.controlnet_preprocess import mediapipe_available

        if not mediapipe_available():
            raise NodeError("MediaPipe-FaceMeshPreprocessor needs the mediapipe package with its bundled face "
                            "models: pip install mediapipe==0.10.14 (newer versions dropped mp.solutions)")
        return super().detector(ctx)

    def options(self, max_faces: int = 10, min_confidence: float = 0.5, **_: Any) -> dict[str, Any]:
        return {"max_faces": int(max_faces), "min_confidence": float(min_confidence)}


# --------------------------------------------------------------------------------------------
# T2I-Adapter style

class ShufflePreprocessor(_AuxPreprocessor, Node):
    """Content shuffle (no weights); the seed makes the random warp reproducible."""

    DISPLAY_NAME = "Content Shuffle"
    CATEGORY = T2I
    DETECTOR = ("controlnet_aux.shuffle", "ContentShuffleDetector")
    INPUTS = (_image(), _resolution(), Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True))

    def run(self, ctx: NodeContext, detector: Any, image: Any, resolution: int, seed: int = 0, **inputs: Any):
        from nodes.diffusion.controlnet_preprocess import seeded_numpy

        with seeded_numpy(seed):
            return super().run(ctx, detector, image, resolution, **inputs)
