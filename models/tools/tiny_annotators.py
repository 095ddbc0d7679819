"""Random-weight annotator checkpoints for the controlnet-aux detectors, under their real file names.

Why: the preprocessor nodes load detectors with ``Detector.from_pretrained(models/annotators)``,
which reads ``models/annotators/<file>`` and builds the real network.  The loaders accept only
the full architectures (strict ``load_state_dict``), so these files are full-size networks with
random weights — a test then runs the real loading and inference code offline.  They are large
(HED 59 MB … Zoe 1.4 GB in float32), so they are written on demand, only for the detectors asked
for, and stored as float16 (the loaders copy them into float32 parameters) to halve disk and time.

Weights are drawn quickly from one seeded generator per file (no per-layer init): ``N(0, 1/fan_in)``
for weights, zeros for biases, unit variance / zero mean for batch-norm statistics — enough to run.

CLI: ``python -m models.tools.tiny_annotators --dir models/annotators [hed pidinet …]``.
"""
from __future__ import annotations

import argparse
import functools
import math
import types
from pathlib import Path
from typing import Callable, Iterable

import torch

from nodes.preprocessors import ANNOTATOR_WEIGHTS

SEED = 4321


def _meta_build(factory: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a network without initialising its weights (meta tensors), falling back to CPU."""
    try:
        with torch.device("meta"):
            return factory()
    except Exception:  # noqa: BLE001 - some constructors compute with real tensors; build them normally
        return factory()


def random_state(module: torch.nn.Module, seed: int, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A seeded random state dict with the module's names and shapes (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, ref in module.state_dict().items():
        shape = tuple(ref.shape)
        if not ref.dtype.is_floating_point:
            out[name] = torch.zeros(shape, dtype=ref.dtype)
        elif name.endswith("running_var"):
            out[name] = torch.ones(shape, dtype=dtype)
        elif name.endswith("running_mean") or name.endswith("bias"):
            out[name] = torch.zeros(shape, dtype=dtype)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            out[name] = (torch.randn(shape, generator=g) / math.sqrt(fan_in)).to(dtype)
        else:  # norm scales, embeddings of one dimension, …
            out[name] = (1.0 + 0.02 * torch.randn(shape, generator=g)).to(dtype)
    return out


# --- one builder per detector: {file name: object torch.save writes} -------------------------

def _hed(seed: int) -> dict:
    from controlnet_aux.hed import ControlNetHED_Apache2

    return {"ControlNetHED.pth": random_state(_meta_build(ControlNetHED_Apache2), seed)}


def _pidinet(seed: int) -> dict:
    from controlnet_aux.pidi.model import pidinet

    sd = random_state(_meta_build(pidinet), seed)
    return {"table5_pidinet.pth": {"state_dict": {"module." + k: v for k, v in sd.items()}}}


def _mlsd(seed: int) -> dict:
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return {"mlsd_large_512_fp32.pth": random_state(_meta_build(MobileV2_MLSD_Large), seed)}


def _lineart(seed: int) -> dict:
    from controlnet_aux.lineart import Generator

    net = _meta_build(lambda: Generator(3, 1, 3))
    return {"sk_model.pth": random_state(net, seed), "sk_model2.pth": random_state(net, seed + 1)}


def _lineart_anime(seed: int) -> dict:
    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    net = _meta_build(lambda: UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False))
    return {"netG.pth": random_state(net, seed)}


def _openpose(seed: int) -> dict:
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    def drop_first(sd: dict) -> dict:  # the files name layers without the stage prefix (util.transfer)
        return {".".join(k.split(".")[1:]): v for k, v in sd.items()}

    return {"body_pose_model.pth": drop_first(random_state(_meta_build(bodypose_model), seed)),
            "hand_pose_model.pth": drop_first(random_state(_meta_build(handpose_model), seed + 1)),
            "facenet.pth": random_state(_meta_build(FaceNet), seed + 2)}


def _midas(seed: int) -> dict:
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    net = _meta_build(lambda: DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True))
    return {"dpt_hybrid-midas-501f0c75.pt": random_state(net, seed)}


def _zoe(seed: int) -> dict:
    from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth
    from controlnet_aux.zoe.zoedepth.utils.config import get_config

    net = _meta_build(lambda: ZoeDepth.build_from_config(get_config("zoedepth", "infer")))
    return {"ZoeD_M12_N.pt": {"model": random_state(net, seed)}}


def _normalbae(seed: int) -> dict:
    from controlnet_aux.normalbae.nets.NNET import NNET

    args = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet", sampling_ratio=0.4,
                                 importance_ratio=0.7)
    return {"scannet.pt": {"model": random_state(_meta_build(lambda: NNET(args)), seed)}}


BUILDERS: dict[str, Callable[[int], dict]] = {
    "hed": _hed, "pidinet": _pidinet, "mlsd": _mlsd, "lineart": _lineart, "lineart_anime": _lineart_anime,
    "openpose": _openpose, "midas": _midas, "zoe": _zoe, "normalbae": _normalbae,
}
assert set(BUILDERS) == set(ANNOTATOR_WEIGHTS), "every weight-needing detector has a builder"


def write_annotators(directory: Path, names: Iterable[str] | None = None, seed: int = SEED) -> list[Path]:
    """Write the annotator files of ``names`` (default: all) into ``directory``; returns the paths.

    Files already present are kept (so a session fixture can call this repeatedly).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    order = list(BUILDERS)
    for name in (names if names is not None else order):
        if name not in BUILDERS:
            raise KeyError(f"unknown annotator {name!r}; known: {', '.join(order)}")
        paths = [directory / f for f in ANNOTATOR_WEIGHTS[name][2]]
        if all(p.is_file() for p in paths):
            written += paths
            continue
        for file_name, payload in BUILDERS[name](seed + 10 * order.index(name)).items():
            torch.save(payload, directory / file_name)
            written.append(directory / file_name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tiny-annotators", description="Write random-weight annotator files.")
    parser.add_argument("--dir", default="models/annotators")
    parser.add_argument("names", nargs="*", help=f"detectors to write (default: all of {', '.join(BUILDERS)})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for path in write_annotators(Path(args.dir), args.names or None):
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
