"""The tiny model builders/writers: real family structure, deterministic, and layouts that round-trip."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from models.tools import tiny_models as tm
from nodes.diffusion import configs, keymaps
from nodes.diffusion.types import ModelFamily


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5])
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_builders_are_deterministic():
    a, b = tm.build_sd15(), tm.build_sd15()
    _same(a["unet"].state_dict(), b["unet"].state_dict())
    fa, fb = tm.build_flux(True), tm.build_flux(True)
    _same(fa["transformer"].state_dict(), fb["transformer"].state_dict())
    assert fa["tokenizer_2"]("a photo of a cat").input_ids == fb["tokenizer_2"]("a photo of a cat").input_ids


def test_families_keep_real_latent_shapes():
    sd = tm.build_sd15()
    img = torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        lat = sd["vae"].encode(img).latent_dist.mean
    assert lat.shape == (1, 4, 8, 8)
    assert sd["tokenizer"]("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    flux = tm.build_flux(True)
    with torch.no_grad():
        lat = flux["vae"].encode(img).latent_dist.mean
    assert lat.shape == (1, 16, 8, 8)
    assert flux["transformer"].config.guidance_embeds is True
    assert tm.build_flux(False)["transformer"].config.guidance_embeds is False
    xl = tm.build_sdxl()
    assert xl["unet"].config.cross_attention_dim == tm.CLIP_L_HIDDEN + tm.CLIP_G_HIDDEN
    assert xl["tokenizer_2"].pad_token_id == 0 and xl["tokenizer"].pad_token_id == 49407


def test_written_set(tiny_models_dir):
    expected = [
        "checkpoints/tiny-sd15.safetensors", "checkpoints/tiny-sdxl.safetensors",
        "checkpoints/tiny-flux-dev.safetensors", "checkpoints/tiny-flux-schnell.safetensors",
        "diffusion_models/tiny-flux-dev.safetensors", "text_encoders/tiny-clip-l.safetensors",
        "text_encoders/tiny-clip-g.safetensors", "text_encoders/tiny-t5xxl.safetensors",
        "text_encoders/tiny-t5xxl_tokenizer/tokenizer.json", "vae/tiny-sd-vae.safetensors",
        "vae/tiny-flux-ae.safetensors", "loras/tiny-sd15-lora.safetensors", "loras/tiny-sdxl-lora.safetensors",
        "embeddings/tiny-sd15-embedding.safetensors", "diffusers/tiny-sd15/model_index.json",
        "upscale_models/tiny-esrgan-x4.safetensors",
    ]
    for rel in expected:
        path = tiny_models_dir / rel
        assert path.is_file(), rel
        assert path.stat().st_size < 40 * 2**20, rel


def test_original_layout_keys(tiny_models_dir):
    sd15 = load_file(tiny_models_dir / "checkpoints/tiny-sd15.safetensors")
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in sd15
    assert "model.diffusion_model.input_blocks.0.0.weight" in sd15
    assert "first_stage_model.decoder.mid.attn_1.q.weight" in sd15
    assert sd15["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4
    xl = load_file(tiny_models_dir / "checkpoints/tiny-sdxl.safetensors")
    assert "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight" in xl
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in xl
    assert "model.diffusion_model.label_emb.0.0.weight" in xl
    dev = load_file(tiny_models_dir / "checkpoints/tiny-flux-dev.safetensors")
    schnell = load_file(tiny_models_dir / "checkpoints/tiny-flux-schnell.safetensors")
    assert "model.diffusion_model.guidance_in.in_layer.weight" in dev
    assert not any("guidance_in" in k for k in schnell)
    assert "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight" in dev
    assert "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight" in dev
    assert "vae.decoder.conv_in.weight" in dev
    lora = load_file(tiny_models_dir / "loras/tiny-sdxl-lora.safetensors")
    assert any(k.startswith("lora_unet_input_blocks_") and k.endswith(".lora_up.weight") for k in lora)
    assert any(k.startswith("lora_te2_") for k in lora)


def test_ldm_layout_round_trips_through_diffusers_converters(tiny_models_dir):
    """Our diffusers→LDM writers are the inverse of diffusers' own LDM→diffusers converters."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    for family, comps, name in ((ModelFamily.SD15, tm.build_sd15(), "tiny-sd15"),
                                (ModelFamily.SDXL, tm.build_sdxl(), "tiny-sdxl")):
        ckpt = load_file(tiny_models_dir / f"checkpoints/{name}.safetensors")
        unet = {k[len("model.diffusion_model."):]: v for k, v in ckpt.items() if k.startswith("model.diffusion_model.")}
        cfg = configs.infer_sd_unet_config(unet, family)
        _same(convert_ldm_unet_checkpoint(ckpt, cfg), comps["unet"].state_dict())
        vae = {k[len("first_stage_model."):]: v for k, v in ckpt.items() if k.startswith("first_stage_model.")}
        _same(convert_ldm_vae_checkpoint(ckpt, configs.infer_vae_config(vae, 0.18215, None)), comps["vae"].state_dict())


def test_flux_and_openclip_layouts_round_trip(tiny_models_dir):
    flux = tm.build_flux(True)
    bfl = load_file(tiny_models_dir / "diffusion_models/tiny-flux-dev.safetensors")
    _same(keymaps.flux_from_bfl_state_dict(bfl), flux["transformer"].state_dict())
    xl = tm.build_sdxl()
    ckpt = load_file(tiny_models_dir / "checkpoints/tiny-sdxl.safetensors")
    og = {k[len("conditioner.embedders.1.model."):]: v for k, v in ckpt.items()
          if k.startswith("conditioner.embedders.1.model.")}
    _same(keymaps.hf_from_openclip(og), keymaps.hf_clip_canonical(xl["text_encoder_2"].state_dict()))


def test_esrgan_is_recognised_by_spandrel(tiny_models_dir):
    import spandrel

    desc = spandrel.ModelLoader().load_from_file(str(tiny_models_dir / "upscale_models/tiny-esrgan-x4.safetensors"))
    assert desc.architecture.id == "ESRGAN" and desc.scale == 4


def test_cli_writes_into_dir(tmp_path):
    assert tm.main(["--dir", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "checkpoints" / "tiny-sd15.safetensors").is_file()
