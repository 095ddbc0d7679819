"""CheckpointSave & co.: files our loaders read back to the same picture, written atomically with SHA-256."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from nodes import conditioning as C
from nodes import loaders as L
from nodes import sampling as S
from nodes.diffusion import model_files
from nodes.model_save import CheckpointSave, CLIPSave, ModelSave, VAESave
from nodes.quantize.nodes import QuantizeModel

REPO = Path(__file__).resolve().parent.parent


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ctx(tiny_base_dir):
    paths = FolderPaths(tiny_base_dir)
    return NodeContext(node_id="9", class_type="CheckpointSave", prompt_id="p", paths=paths, models=ModelManager(),
                       options=RuntimeOptions(device="cpu"))


def _install(ctx, saved: Path) -> str:
    """Move a saved checkpoint (and its tokenizer folder) into models/checkpoints, as a user would."""
    target = ctx.paths.model_dirs("checkpoints")[0]
    shutil.copy2(saved, target / saved.name)
    tok = saved.parent / f"{saved.stem}_tokenizer"
    if tok.is_dir():
        shutil.copytree(tok, target / tok.name)
    return saved.name


def _latent(ctx, model, clip, family_flux: bool):
    pos = C.CLIPTextEncode().execute(ctx, "a lighthouse at dusk", clip)[0]
    lat = {"samples": torch.zeros(1, 16 if family_flux else 4, 8, 8)}
    return pos[0].embeds, S.KSampler().execute(ctx, model, 3, 2, 2.0, "euler", "normal", pos, pos, lat, 1.0)[0]["samples"]


@pytest.mark.parametrize("ckpt", ["tiny-sd15.safetensors", "tiny-sdxl.safetensors", "tiny-flux-dev.safetensors"])
@pytest.mark.parametrize("method", ["none", "fp8_e4m3fn"])
def test_checkpoint_save_round_trips_to_the_same_picture(ctx, ckpt, method):
    model, clip, vae = L.CheckpointLoaderSimple().execute(ctx, ckpt)
    if method != "none":
        model = QuantizeModel().execute(ctx, model, method)[0]
    result = CheckpointSave().execute(ctx, model, clip, vae, "checkpoints/roundtrip", prompt={"1": {}})
    info = result.ui["models"][0]
    saved = ctx.paths.output_dir / "checkpoints" / info["filename"]
    # SHA-256: the sidecar (sha256sum format) and the UI match the bytes on disk
    assert info["sha256"] == _sha(saved)
    assert (saved.parent / (saved.name + ".sha256")).read_text() == f"{_sha(saved)}  {saved.name}\n"
    shapes, meta = model_files.inspect(saved)
    sources = json.loads(meta["genesis.sources"])
    assert sources == {ckpt: _sha(ctx.paths.model_path("checkpoints", ckpt))}
    if method == "fp8_e4m3fn":  # saved as such
        header = json.loads(saved.read_bytes()[8:8 + int.from_bytes(saved.read_bytes()[:8], "little")])
        dtypes = {v["dtype"] for k, v in header.items() if k.startswith("model.diffusion_model.")}
        assert "F8_E4M3" in dtypes
        assert saved.stat().st_size < ctx.paths.model_path("checkpoints", ckpt).stat().st_size
    m2, c2, v2 = L.CheckpointLoaderSimple().execute(ctx, _install(ctx, saved))
    flux = model.family.is_flux
    e1, x1 = _latent(ctx, model, clip, flux)
    e2, x2 = _latent(ctx, m2, c2, flux)
    assert torch.equal(e1, e2) and torch.equal(x1, x2)


def test_split_saves_load_with_their_loaders(ctx):
    model, clip, vae = L.CheckpointLoaderSimple().execute(ctx, "tiny-flux-dev.safetensors")
    unet = ModelSave().execute(ctx, model, "diffusion_models/mine").ui["models"][0]["filename"]
    files = [m["filename"] for m in CLIPSave().execute(ctx, clip, "clip/mine").ui["models"]]
    ae = VAESave().execute(ctx, vae, "vae/mine").ui["models"][0]["filename"]
    out = ctx.paths.output_dir
    shutil.copy2(out / "diffusion_models" / unet, ctx.paths.model_dirs("diffusion_models")[0] / unet)
    for f in files:
        shutil.copy2(out / "clip" / f, ctx.paths.model_dirs("text_encoders")[0] / f)
        tok = out / "clip" / f"{Path(f).stem}_tokenizer"
        if tok.is_dir():
            shutil.copytree(tok, ctx.paths.model_dirs("text_encoders")[0] / tok.name)
    shutil.copy2(out / "vae" / ae, ctx.paths.model_dirs("vae")[0] / ae)
    m2 = L.UNETLoader().execute(ctx, unet, "default")[0]
    c2 = L.DualCLIPLoader().execute(ctx, files[0], files[1], "flux")[0]
    v2 = L.VAELoader().execute(ctx, ae)[0]
    assert torch.equal(_latent(ctx, model, clip, True)[1], _latent(ctx, m2, c2, True)[1])
    assert (v2.latent_channels, v2.scaling_factor, v2.shift_factor) == (vae.latent_channels, vae.scaling_factor,
                                                                        vae.shift_factor)


def test_lora_merge_is_saved_baked_in(ctx):
    model, clip, vae = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    pm, pc = L.LoraLoader().execute(ctx, model, clip, "tiny-sd15-lora.safetensors", 0.8, 0.8)
    saved = ctx.paths.output_dir / "checkpoints" / CheckpointSave().execute(
        ctx, pm, pc, vae, "checkpoints/merged").ui["models"][0]["filename"]
    m2, c2, _ = L.CheckpointLoaderSimple().execute(ctx, _install(ctx, saved))
    e1, x1 = _latent(ctx, pm, pc, False)
    e2, x2 = _latent(ctx, m2, c2, False)
    assert torch.allclose(e1, e2, atol=1e-5) and torch.allclose(x1, x2, atol=1e-4)
    assert not torch.allclose(x1, _latent(ctx, model, clip, False)[1], atol=1e-4)  # the LoRA did change it


def test_nf4_models_are_refused_with_the_fix(ctx):
    model, clip, vae = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    q = QuantizeModel().execute(ctx, model, "bnb_nf4")[0]
    with pytest.raises(NodeError, match="full-precision") as err:
        CheckpointSave().execute(ctx, q, clip, vae, "checkpoints/nf4")
    assert err.value.input_name == "model"


WRITER = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {repo!r})
    import safetensors.torch
    from nodes.diffusion.atomic_write import save_safetensors_atomic
    gen = torch.Generator().manual_seed(int(sys.argv[2]))
    tensors = {{f"w{{i}}": torch.randn(256, 1024, generator=gen) for i in range(int(sys.argv[3]))}}
    if sys.argv[4] == "stall":
        # the real serialisation, but only its first half reaches the file before the process
        # stops; the test then kills it, so the kill lands in the middle of the write every time
        def half_write(tensors, filename, metadata=None):
            data = safetensors.torch.save(tensors, metadata=metadata)
            with open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            print("writing", flush=True)
            time.sleep(600)
        safetensors.torch.save_file = half_write
    save_safetensors_atomic(__import__("pathlib").Path(sys.argv[1]), tensors, {{"n": sys.argv[3]}})
    print("done", flush=True)
""")


def _writer(tmp_path: Path, target: Path, seed: int, count: int, stall: bool = False) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(target), str(seed), str(count),
                             "stall" if stall else "complete"], stdout=subprocess.PIPE, text=True, env=env)


def _kill_mid_write(proc: subprocess.Popen, folder: Path) -> None:
    """SIGKILL the writer while half of the file is on disk under its temporary name."""
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert [p for p in folder.glob(".*.partial") if p.stat().st_size > 0], "no partial file while writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_killed_save_leaves_no_partial_file_under_the_final_name(tmp_path):
    from nodes.diffusion.atomic_write import clean_partials

    target = tmp_path / "out" / "big.safetensors"
    target.parent.mkdir()
    # first write killed: nothing under the final name
    _kill_mid_write(_writer(tmp_path, target, 1, 24, stall=True), target.parent)
    assert not target.exists() and not (target.parent / "big.safetensors.sha256").exists()
    assert clean_partials(target.parent) >= 1
    # a complete write: the sidecar and the bytes agree, the metadata is there
    done = _writer(tmp_path, target, 2, 40)
    assert done.stdout.read().split() == ["done"] and done.wait() == 0
    old_sha = _sha(target)
    assert (target.parent / "big.safetensors.sha256").read_text().split() == [old_sha, "big.safetensors"]
    assert model_files.inspect(target)[1]["n"] == "40"
    # an overwrite killed midway: the old complete file is still there, untouched
    _kill_mid_write(_writer(tmp_path, target, 3, 24, stall=True), target.parent)
    assert _sha(target) == old_sha
    assert len(model_files.load(target)) == 40


def test_lora_save_extracts_the_difference_of_two_models(ctx):
    from nodes.model_save import LoraSave, ModelMergeSubtract

    base, clip, _ = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    tuned = L.LoraLoaderModelOnly().execute(ctx, base, "tiny-sd15-lora.safetensors", 1.0)[0]
    diff = ModelMergeSubtract().execute(ctx, tuned, base, 1.0)[0]
    info = LoraSave().execute(ctx, "loras/extracted", 4, "standard", True, diff, None).ui["models"][0]
    saved = ctx.paths.output_dir / "loras" / info["filename"]
    assert info["sha256"] == _sha(saved)
    shutil.copy2(saved, ctx.paths.model_dirs("loras")[0] / saved.name)
    again = L.LoraLoaderModelOnly().execute(ctx, base, saved.name, 1.0)[0]
    # the tiny LoRA has rank 4: a rank-4 SVD gives it back up to float rounding
    e, x_tuned = _latent(ctx, tuned, clip, False)
    _, x_again = _latent(ctx, again, clip, False)
    _, x_base = _latent(ctx, base, clip, False)
    assert torch.allclose(x_again, x_tuned, atol=1e-4) and not torch.allclose(x_base, x_tuned, atol=1e-3)
    # rank 1 keeps only part of it: between the base and the tuned model
    small = LoraSave().execute(ctx, "loras/extracted_r1", 1, "standard", False, diff, None).ui["models"][0]
    shutil.copy2(ctx.paths.output_dir / "loras" / small["filename"], ctx.paths.model_dirs("loras")[0] / small["filename"])
    x_r1 = _latent(ctx, L.LoraLoaderModelOnly().execute(ctx, base, small["filename"], 1.0)[0], clip, False)[1]
    assert (x_r1 - x_tuned).norm() < (x_base - x_tuned).norm()
