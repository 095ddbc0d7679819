"""Pre-quantized files load and run: GGUF (city96/ComfyUI-GGUF layout) and bitsandbytes NF4 checkpoints.

The files are written by the tests from the tiny models in the real layouts (models/tools/tiny_quantized.py).
Tolerances (relative L2 of the 3-step KSampler latent / the CLIP embeddings vs the safetensors model, CPU):
Q8_0 measured 0.0026 (denoiser) and 0.0087 (T5 + CLIP-L embeddings) → 0.01 / 0.03; the NF4 file quantizes
every 2-D transformer weight, embedders and output layers included (QuantizeModel keeps those in full
precision: 0.008), measured 0.067 on the random tiny FLUX → 0.15.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from models.tools import tiny_models as tm
from models.tools.tiny_quantized import write_flux_gguf, write_flux_nf4_checkpoint, write_t5_gguf
from nodes import conditioning as C
from nodes import loaders as L
from nodes import sampling as S
from nodes.quantize.loaders import CheckpointLoaderNF4, CLIPLoaderGGUF, DualCLIPLoaderGGUF, UnetLoaderGGUF


@pytest.fixture
def ctx(tiny_base_dir):
    models = tiny_base_dir / "models"
    flux = tm.build_flux(True)  # the same seeded weights as tiny-flux-dev
    write_flux_gguf(models / "diffusion_models" / "tiny-flux-dev-Q8_0.gguf", flux["transformer"])
    write_t5_gguf(models / "text_encoders" / "tiny-t5xxl-Q8_0.gguf", flux["text_encoder_2"])
    shutil.copytree(models / "text_encoders" / "tiny-t5xxl_tokenizer", models / "text_encoders" / "tiny-t5xxl-Q8_0_tokenizer")
    write_flux_nf4_checkpoint(models / "checkpoints" / "tiny-flux-dev-bnb-nf4.safetensors", flux)
    shutil.copytree(models / "checkpoints" / "tiny-flux-dev_tokenizer", models / "checkpoints" / "tiny-flux-dev-bnb-nf4_tokenizer")
    return NodeContext(node_id="1", class_type="X", prompt_id="p", paths=FolderPaths(tiny_base_dir),
                       models=ModelManager(), options=RuntimeOptions(device="cpu"))


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def latent(ctx, model, pos):
    lat = {"samples": torch.zeros(1, 16, 8, 8)}
    return S.KSampler().execute(ctx, model, 1, 3, 2.0, "euler", "normal", pos, pos, lat, 1.0)[0]["samples"]


def test_gguf_flux_stays_quantized_and_matches(ctx):
    from diffusers.quantizers.gguf.utils import GGUFLinear

    ref = L.UNETLoader().execute(ctx, "tiny-flux-dev.safetensors", "default")[0]
    clip = L.DualCLIPLoader().execute(ctx, "tiny-clip-l.safetensors", "tiny-t5xxl.safetensors", "flux")[0]
    pos = C.CLIPTextEncode().execute(ctx, "a cat", clip)[0]
    g = UnetLoaderGGUF().execute(ctx, "tiny-flux-dev-Q8_0.gguf")[0]
    assert g.quantization == "gguf" and ctx.info["gguf_quantized"] is True
    assert isinstance(g.denoiser.transformer_blocks[0].attn.to_q, GGUFLinear)
    assert g.weights.size_bytes < 0.35 * ref.weights.size_bytes  # Q8_0 Linear weights: 34 bytes per 32
    assert rel(latent(ctx, g, pos), latent(ctx, ref, pos)) < 0.01
    # the plain loader reads GGUF too (dequantized): the same picture
    plain = L.UNETLoader().execute(ctx, "tiny-flux-dev-Q8_0.gguf", "default")[0]
    assert torch.allclose(latent(ctx, plain, pos), latent(ctx, g, pos), atol=1e-5)
    # LoRAs cannot patch GGUF rows
    with pytest.raises(NodeError, match="before"):
        L.LoraLoaderModelOnly().execute(ctx, g, "tiny-sd15-lora.safetensors", 1.0)


def test_gguf_t5_through_the_gguf_clip_loaders(ctx):
    clip = L.DualCLIPLoader().execute(ctx, "tiny-clip-l.safetensors", "tiny-t5xxl.safetensors", "flux")[0]
    gclip = DualCLIPLoaderGGUF().execute(ctx, "tiny-t5xxl-Q8_0.gguf", "tiny-clip-l.safetensors", "flux")[0]
    a = C.CLIPTextEncode().execute(ctx, "a lighthouse", clip)[0][0]
    b = C.CLIPTextEncode().execute(ctx, "a lighthouse", gclip)[0][0]
    assert 0 < rel(b.embeds, a.embeds) < 0.03
    assert torch.equal(a.options["pooled_output"], b.options["pooled_output"])  # CLIP-L is the same file
    one = CLIPLoaderGGUF().execute(ctx, "tiny-clip-l.safetensors", "stable_diffusion")[0]
    assert set(one.encoders) == {"clip_l"}


def test_unet_gguf_refuses_other_files_with_the_right_loader(ctx):
    with pytest.raises(NodeError, match="UNETLoader") as err:
        UnetLoaderGGUF().execute(ctx, "tiny-flux-dev.safetensors")
    assert err.value.input_name == "unet_name"


def test_nf4_checkpoint_loads_and_runs_in_nf4(ctx):
    import bitsandbytes as bnb

    ref_model, ref_clip, ref_vae = L.CheckpointLoaderSimple().execute(ctx, "tiny-flux-dev.safetensors")
    model, clip, vae = CheckpointLoaderNF4().execute(ctx, "tiny-flux-dev-bnb-nf4.safetensors")
    assert model.quantization == "bnb_nf4"
    assert isinstance(model.denoiser.transformer_blocks[0].attn.to_q, bnb.nn.Linear4bit)
    assert model.weights.size_bytes < ref_model.weights.size_bytes
    pos = C.CLIPTextEncode().execute(ctx, "a cat", clip)[0]
    ref_pos = C.CLIPTextEncode().execute(ctx, "a cat", ref_clip)[0]
    assert torch.equal(pos[0].embeds, ref_pos[0].embeds)  # text encoders are stored unquantized
    assert rel(latent(ctx, model, pos), latent(ctx, ref_model, pos)) < 0.15
    img = __import__("nodes.diffusion.vae_ops", fromlist=["decode"]).decode(vae, torch.zeros(1, 16, 8, 8))
    ref_img = __import__("nodes.diffusion.vae_ops", fromlist=["decode"]).decode(ref_vae, torch.zeros(1, 16, 8, 8))
    assert torch.equal(img, ref_img)
