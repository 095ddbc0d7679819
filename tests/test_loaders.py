"""Loading model files as users have them: detection, config inference, loader nodes, clear errors."""
from __future__ import annotations

import shutil

import pytest
import torch

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from graph_runtime.schema import define
from models.tools import tiny_models as tm
from nodes import conditioning as C
from nodes import loaders as L
from nodes import upscale as U
from nodes.diffusion import configs, families, model_files, single_file
from nodes.diffusion.types import ModelFamily


def make_ctx(base, models: ModelManager | None = None, device: str = "cpu") -> NodeContext:
    return NodeContext(node_id="1", class_type="X", prompt_id="p", paths=FolderPaths(base),
                       models=models or ModelManager(), options=RuntimeOptions(device=device))


@pytest.fixture(scope="module")
def built():
    return {"sd15": tm.build_sd15(), "sdxl": tm.build_sdxl(), "dev": tm.build_flux(True)}


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


DETECTION = [
    ("checkpoints/tiny-sd15.safetensors", "checkpoint", ModelFamily.SD15, {"clip_l"}),
    ("checkpoints/tiny-sdxl.safetensors", "checkpoint", ModelFamily.SDXL, {"clip_l", "clip_g"}),
    ("checkpoints/tiny-flux-dev.safetensors", "checkpoint", ModelFamily.FLUX_DEV, {"clip_l", "t5xxl"}),
    ("checkpoints/tiny-flux-schnell.safetensors", "checkpoint", ModelFamily.FLUX_SCHNELL, {"clip_l", "t5xxl"}),
    ("diffusion_models/tiny-flux-dev.safetensors", "diffusion_model", ModelFamily.FLUX_DEV, set()),
    ("diffusers/tiny-sd15/unet/diffusion_pytorch_model.safetensors", "diffusion_model", ModelFamily.SD15, set()),
    ("vae/tiny-sd-vae.safetensors", "vae", ModelFamily.SD15, set()),
    ("vae/tiny-flux-ae.safetensors", "vae", ModelFamily.FLUX_DEV, set()),
    ("text_encoders/tiny-clip-l.safetensors", "text_encoder", None, {"clip_l"}),
    ("text_encoders/tiny-clip-g.safetensors", "text_encoder", None, {"clip_g"}),
    ("text_encoders/tiny-t5xxl.safetensors", "text_encoder", None, {"t5xxl"}),
    ("loras/tiny-sd15-lora.safetensors", "lora", None, set()),
    ("loras/tiny-sdxl-lora.safetensors", "lora", None, set()),
    ("embeddings/tiny-sd15-embedding.safetensors", "embedding", None, set()),
    ("upscale_models/tiny-esrgan-x4.safetensors", "upscale_model", None, set()),
]


@pytest.mark.parametrize("rel,kind,family,encoders", DETECTION, ids=[d[0] for d in DETECTION])
def test_detection(tiny_models_dir, rel, kind, family, encoders):
    shapes, _ = model_files.inspect(tiny_models_dir / rel)
    d = families.detect(shapes)
    assert (d.kind, d.family) == (kind, family)
    assert {e.kind for e in d.encoders} == encoders


def test_detection_of_full_size_shapes():
    """The family rules hold for real-size shapes (only shapes matter for detection)."""
    def unet(ctx: int, adm: int | None) -> dict:
        s = {"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3), "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
             "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, ctx)}
        if adm:
            s["model.diffusion_model.label_emb.0.0.weight"] = (1280, adm)
        return s
    assert families.detect(unet(768, None)).family is ModelFamily.SD15
    assert families.detect(unet(2048, 2816)).family is ModelFamily.SDXL
    assert families.detect(unet(1280, 2560)).family is ModelFamily.SDXL_REFINER
    sd2 = families.detect(unet(1024, None))
    assert sd2.family is None and "2.x" in sd2.unsupported
    cn = families.detect({"control_model.input_hint_block.0.weight": (16, 3, 3, 3)})
    assert cn.kind == "controlnet"


def _norm(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def test_config_inference_matches_builders(tiny_models_dir, built):
    ckpt = model_files.load(tiny_models_dir / "checkpoints/tiny-sdxl.safetensors")
    unet = model_files.strip_prefix(ckpt, "model.diffusion_model.")
    cfg = configs.infer_sd_unet_config(unet, ModelFamily.SDXL)
    ref = built["sdxl"]["unet"].config
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "cross_attention_dim",
                "transformer_layers_per_block", "attention_head_dim", "projection_class_embeddings_input_dim",
                "use_linear_projection", "addition_time_embed_dim"):
        assert _norm(cfg[key]) == _norm(ref[key]), key
    bfl = model_files.load(tiny_models_dir / "diffusion_models/tiny-flux-dev.safetensors")
    fcfg = configs.infer_flux_config(bfl)
    fref = built["dev"]["transformer"].config
    for key in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                "pooled_projection_dim", "guidance_embeds", "in_channels"):
        assert fcfg[key] == fref[key], key
    assert tuple(fcfg["axes_dims_rope"]) == tuple(fref["axes_dims_rope"])
    assert configs.flux_rope_axes(128) == (16, 56, 56)  # the real FLUX.1 head width


def test_single_file_builders_reproduce_weights(tiny_models_dir, built):
    ckpt = model_files.load(tiny_models_dir / "checkpoints/tiny-sd15.safetensors")
    unet = single_file.build_sd_unet(model_files.strip_prefix(ckpt, "model.diffusion_model."), ModelFamily.SD15, "f")
    _equal_state(unet, built["sd15"]["unet"])
    vae = single_file.build_vae(model_files.strip_prefix(ckpt, "first_stage_model."), "f", 0.18215, None)
    _equal_state(vae, built["sd15"]["vae"])
    te = single_file.build_encoder(ckpt, "clip_l", "cond_stage_model.transformer.", "hf", "f")
    _equal_state(te, built["sd15"]["text_encoder"])
    t5 = single_file.build_t5(model_files.load(tiny_models_dir / "text_encoders/tiny-t5xxl.safetensors"), "f")
    _equal_state(t5, built["dev"]["text_encoder_2"])


@pytest.mark.parametrize("ckpt,family,latent", [
    ("tiny-sd15.safetensors", ModelFamily.SD15, 4), ("tiny-sdxl.safetensors", ModelFamily.SDXL, 4),
    ("tiny-flux-dev.safetensors", ModelFamily.FLUX_DEV, 16), ("tiny-flux-schnell.safetensors", ModelFamily.FLUX_SCHNELL, 16),
])
def test_checkpoint_loader(tiny_base_dir, ckpt, family, latent):
    ctx = make_ctx(tiny_base_dir)
    model, clip, vae = L.CheckpointLoaderSimple().execute(ctx, ckpt)
    assert model.family is family and clip.family is family
    assert vae.latent_channels == latent and vae.downscale == 8
    assert (model.latent_scale, model.latent_shift) == configs.VAE_LATENT_FORMAT[family]
    assert ctx.info["device"] == "cpu" and ctx.info["dtype"] == "float32"
    if family.is_flux:
        assert model.prediction_type == "flow"
        assert model.scheduler_config["use_dynamic_shifting"] is (family is ModelFamily.FLUX_DEV)
        assert model.denoiser.config.guidance_embeds is (family is ModelFamily.FLUX_DEV)
    else:
        assert model.scheduler_config["beta_schedule"] == "scaled_linear" and model.prediction_type == "epsilon"
    cond = C.CLIPTextEncode().execute(ctx, "a photo of a cat", clip)[0]
    assert cond[0].options["pooled_output"] is not None


def test_checkpoint_cached_once(tiny_base_dir):
    mm = ModelManager()
    a = L.CheckpointLoaderSimple().execute(make_ctx(tiny_base_dir, mm), "tiny-sd15.safetensors")
    b = L.CheckpointLoaderSimple().execute(make_ctx(tiny_base_dir, mm), "tiny-sd15.safetensors")
    # three parts (denoiser, text encoders, VAE), each loaded once and shared by both loader runs
    assert a[0].denoiser is b[0].denoiser and a[0].weights is b[0].weights and mm.loads == 3


def test_split_loaders(tiny_base_dir, built):
    ctx = make_ctx(tiny_base_dir)
    model = L.UNETLoader().execute(ctx, "tiny-flux-dev.safetensors", "default")[0]
    assert model.family is ModelFamily.FLUX_DEV
    _equal_state(model.denoiser, built["dev"]["transformer"])
    ae = L.VAELoader().execute(ctx, "tiny-flux-ae.safetensors")[0]
    assert (ae.latent_channels, ae.scaling_factor, ae.shift_factor) == (16, 0.3611, 0.1159)
    sdvae = L.VAELoader().execute(ctx, "tiny-sd-vae.safetensors")[0]
    assert sdvae.latent_channels == 4
    # either order works for DualCLIPLoader
    for names in (("tiny-t5xxl.safetensors", "tiny-clip-l.safetensors"), ("tiny-clip-l.safetensors", "tiny-t5xxl.safetensors")):
        clip = L.DualCLIPLoader().execute(ctx, *names, "flux")[0]
        assert set(clip.encoders) == {"clip_l", "t5xxl"} and clip.family is ModelFamily.FLUX_DEV
    xl = L.DualCLIPLoader().execute(ctx, "tiny-clip-l.safetensors", "tiny-clip-g.safetensors", "sdxl")[0]
    assert set(xl.encoders) == {"clip_l", "clip_g"}
    assert xl.tokenizers["clip_g"].pad_token_id == 0
    one = L.CLIPLoader().execute(ctx, "tiny-clip-l.safetensors", "stable_diffusion")[0]
    assert one.family is ModelFamily.SD15


def test_split_flux_encodes_like_checkpoint(tiny_base_dir):
    ctx = make_ctx(tiny_base_dir)
    _, ck_clip, _ = L.CheckpointLoaderSimple().execute(ctx, "tiny-flux-dev.safetensors")
    split = L.DualCLIPLoader().execute(ctx, "tiny-clip-l.safetensors", "tiny-t5xxl.safetensors", "flux")[0]
    a = C.CLIPTextEncode().execute(ctx, "a red fox", ck_clip)[0][0]
    b = C.CLIPTextEncode().execute(ctx, "a red fox", split)[0][0]
    assert torch.equal(a.embeds, b.embeds)
    assert torch.equal(a.options["pooled_output"], b.options["pooled_output"])


def test_unet_loader_fp8_storage(tiny_base_dir):
    ctx = make_ctx(tiny_base_dir)
    model = L.UNETLoader().execute(ctx, "tiny-flux-dev.safetensors", "fp8_e4m3fn")[0]
    assert model.denoiser.x_embedder.weight.dtype == torch.float8_e4m3fn
    assert ctx.info["weight_dtype"] == "fp8_e4m3fn"
    x = torch.randn(1, 16, 64)  # (tokens, packed channels): the layer upcasts its weight at compute time
    assert model.denoiser.x_embedder(x).dtype == torch.float32


def test_diffusers_loader(tiny_base_dir, built):
    ctx = make_ctx(tiny_base_dir)
    model, clip, vae = L.DiffusersLoader().execute(ctx, "tiny-sd15")
    assert model.family is ModelFamily.SD15 and vae.latent_channels == 4
    _equal_state(model.denoiser, built["sd15"]["unet"])
    ck = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    a = C.CLIPTextEncode().execute(ctx, "a cat", clip)[0][0].embeds
    b = C.CLIPTextEncode().execute(ctx, "a cat", ck[1])[0][0].embeds
    assert torch.equal(a, b)


def test_upscaler_scales_by_four(tiny_base_dir):
    ctx = make_ctx(tiny_base_dir)
    model = U.UpscaleModelLoader().execute(ctx, "tiny-esrgan-x4.safetensors")[0]
    img = torch.rand(2, 12, 20, 3)
    out = U.ImageUpscaleWithModel().execute(ctx, model, img)[0]
    assert out.shape == (2, 48, 80, 3)
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_upscaler_tiles_match_whole_image_away_from_seams(tiny_base_dir):
    ctx = make_ctx(tiny_base_dir)
    model = U.UpscaleModelLoader().execute(ctx, "tiny-esrgan-x4.safetensors")[0].get()  # UPSCALE_MODEL is a handle
    x = torch.rand(1, 3, 40, 40)
    with torch.inference_mode():
        whole = model(x)
        tiled = U.upscale_tensor(model, x, tile=24, overlap=8)
    assert tiled.shape == whole.shape
    # far from tile borders both see the same receptive field
    assert torch.allclose(tiled[..., :40, :40], whole[..., :40, :40], atol=1e-4)


# --- errors ----------------------------------------------------------------------------------

def _copy(tiny_base_dir, src: str, folder: str, name: str):
    dst = tiny_base_dir / "models" / folder / name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_base_dir / "models" / src, dst)
    return dst


def test_truncated_checkpoint_is_a_clear_error(tiny_base_dir):
    data = (tiny_base_dir / "models/checkpoints/tiny-sd15.safetensors").read_bytes()
    (tiny_base_dir / "models/checkpoints/broken.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(NodeError) as err:
        L.CheckpointLoaderSimple().execute(make_ctx(tiny_base_dir), "broken.safetensors")
    assert err.value.input_name == "ckpt_name"
    assert "broken.safetensors" in str(err.value) and "truncated" in str(err.value)


def test_garbage_file_is_a_clear_error(tiny_base_dir):
    (tiny_base_dir / "models/vae/page.safetensors").write_bytes(b"<html>404 not found</html>" * 10)
    with pytest.raises(NodeError) as err:
        L.VAELoader().execute(make_ctx(tiny_base_dir), "page.safetensors")
    assert err.value.input_name == "vae_name" and "page.safetensors" in str(err.value)


@pytest.mark.parametrize("node,src,folder,inputs,input_name,expect", [
    (L.CheckpointLoaderSimple, "vae/tiny-sd-vae.safetensors", "checkpoints", {}, "ckpt_name", "VAELoader"),
    (L.CheckpointLoaderSimple, "loras/tiny-sd15-lora.safetensors", "checkpoints", {}, "ckpt_name", "LoraLoader"),
    (L.UNETLoader, "text_encoders/tiny-clip-l.safetensors", "diffusion_models", {"weight_dtype": "default"}, "unet_name",
     "CLIPLoader"),
    (L.VAELoader, "upscale_models/tiny-esrgan-x4.safetensors", "vae", {}, "vae_name", "UpscaleModelLoader"),
])
def test_wrong_family_file(tiny_base_dir, node, src, folder, inputs, input_name, expect):
    _copy(tiny_base_dir, src, folder, "misplaced.safetensors")
    with pytest.raises(NodeError) as err:
        node().execute(make_ctx(tiny_base_dir), **{input_name: "misplaced.safetensors"}, **inputs)
    assert err.value.input_name == input_name
    assert "misplaced.safetensors" in str(err.value) and expect in str(err.value)


def test_controlnet_file_points_to_controlnet_loader(tiny_base_dir):
    from safetensors.torch import save_file

    save_file({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3)},
              str(tiny_base_dir / "models/checkpoints/cn.safetensors"))
    with pytest.raises(NodeError, match="ControlNetLoader"):
        L.CheckpointLoaderSimple().execute(make_ctx(tiny_base_dir), "cn.safetensors")


def test_wrong_encoder_for_dual_clip_type(tiny_base_dir):
    with pytest.raises(NodeError) as err:
        L.DualCLIPLoader().execute(make_ctx(tiny_base_dir), "tiny-t5xxl.safetensors", "tiny-clip-l.safetensors", "sdxl")
    assert "T5" in str(err.value)
    with pytest.raises(NodeError) as err:
        L.CLIPLoader().execute(make_ctx(tiny_base_dir), "tiny-clip-l.safetensors", "wan")
    assert err.value.input_name == "type"


def test_missing_t5_tokenizer(tmp_path, tiny_models_dir):
    base = tmp_path / "bare"
    paths = FolderPaths(base)
    paths.ensure_dirs()
    (base / "models/text_encoders").mkdir(parents=True, exist_ok=True)
    (base / "models/checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tiny_models_dir / "text_encoders/tiny-t5xxl.safetensors", base / "models/text_encoders/t5.safetensors")
    shutil.copyfile(tiny_models_dir / "text_encoders/tiny-clip-l.safetensors", base / "models/text_encoders/l.safetensors")
    shutil.copyfile(tiny_models_dir / "checkpoints/tiny-flux-dev.safetensors", base / "models/checkpoints/f.safetensors")
    ctx = make_ctx(base)
    with pytest.raises(NodeError) as err:
        L.DualCLIPLoader().execute(ctx, "l.safetensors", "t5.safetensors", "flux")
    assert err.value.input_name == "clip_name2"
    assert "t5xxl_tokenizer" in str(err.value) and "t5.safetensors" in str(err.value)
    with pytest.raises(NodeError) as err:
        L.CheckpointLoaderSimple().execute(ctx, "f.safetensors")
    assert err.value.input_name == "ckpt_name" and "t5xxl_tokenizer" in str(err.value)
    # putting the tokenizer where the message says fixes it
    shutil.copytree(tiny_models_dir / "text_encoders/tiny-t5xxl_tokenizer", base / "models/text_encoders/t5xxl_tokenizer")
    clip = L.DualCLIPLoader().execute(make_ctx(base), "l.safetensors", "t5.safetensors", "flux")[0]
    assert "t5xxl" in clip.tokenizers


def test_missing_file(tiny_base_dir):
    with pytest.raises(NodeError) as err:
        L.CheckpointLoaderSimple().execute(make_ctx(tiny_base_dir), "nope.safetensors")
    assert err.value.input_name == "ckpt_name" and "nope.safetensors" in str(err.value)


def test_nodes_declare_comfyui_interfaces():
    defs = {cls.__name__: define(cls) for cls in (
        L.CheckpointLoaderSimple, L.UNETLoader, L.CLIPLoader, L.DualCLIPLoader, L.VAELoader, L.DiffusersLoader,
        L.LoraLoader, L.LoraLoaderModelOnly, L.CLIPSetLastLayer, U.UpscaleModelLoader, U.ImageUpscaleWithModel)}
    assert defs["CheckpointLoaderSimple"].output_types == ("MODEL", "CLIP", "VAE")
    assert [i.name for i in defs["LoraLoader"].inputs] == ["model", "clip", "lora_name", "strength_model", "strength_clip"]
    assert defs["UNETLoader"].input_map["weight_dtype"].options == L.WEIGHT_DTYPES
    assert defs["DualCLIPLoader"].input_map["type"].options[:3] == ("sdxl", "sd3", "flux")
    assert defs["CLIPSetLastLayer"].input_map["stop_at_clip_layer"].min == -24
    assert defs["ImageUpscaleWithModel"].output_types == ("IMAGE",)


# --- full-size shapes (meta tensors: no memory, no download) ----------------------------------

def _meta_state(module_factory) -> dict:
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = module_factory()
    return module.state_dict()


def test_full_size_sd_configs_are_inferred():
    """Real SD1.5 / SDXL UNet shapes give the published diffusers configs (heads included)."""
    from diffusers import UNet2DConditionModel

    from nodes.diffusion import keymaps

    real = {
        ModelFamily.SD15: dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, layers_per_block=2,
                               attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
        ModelFamily.SDXL: dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, layers_per_block=2,
                               attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10),
                               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                               up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                               use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                               projection_class_embeddings_input_dim=2816),
    }
    for family, cfg in real.items():
        sd = _meta_state(lambda: UNet2DConditionModel(**cfg))
        names = keymaps.unet_diffusers_to_ldm(sd.keys(), {**cfg, "layers_per_block": 2})
        assert len(names) == len(sd)
        ldm = {names[k]: v for k, v in sd.items()}
        assert families.detect({"model.diffusion_model." + k: tuple(v.shape) for k, v in ldm.items()}).family is family
        inferred = configs.infer_sd_unet_config(ldm, family)
        for key, value in cfg.items():
            assert _norm(inferred[key]) == _norm(value), (family, key)


def test_full_size_flux_and_text_encoder_configs_are_inferred():
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from nodes.diffusion import keymaps

    flux_cfg = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                    num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                    axes_dims_rope=(16, 56, 56))
    bfl = keymaps.flux_to_bfl_state_dict(_meta_state(lambda: FluxTransformer2DModel(**flux_cfg)))
    assert families.detect({k: tuple(v.shape) for k, v in bfl.items()}).family is ModelFamily.FLUX_DEV
    inferred = configs.infer_flux_config(bfl)
    for key, value in flux_cfg.items():
        assert _norm(inferred[key]) == _norm(value), key

    clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            projection_dim=768, hidden_act="quick_gelu")
    clip_g = CLIPTextConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                            projection_dim=1280, hidden_act="gelu")
    for kind, cfg, cls in (("clip_l", clip_l, CLIPTextModel), ("clip_g", clip_g, CLIPTextModelWithProjection)):
        from nodes.diffusion.keymaps import hf_clip_canonical

        sd = hf_clip_canonical(_meta_state(lambda: cls(cfg)))
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        assert families.clip_kind(shapes, "", "hf") == kind
        got = configs.infer_clip_config(sd, kind)
        for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "hidden_act"):
            assert got[key] == getattr(cfg, key), (kind, key)
    t5 = T5Config(vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_heads=64, num_layers=24,
                  feed_forward_proj="gated-gelu")
    got = configs.infer_t5_config(_meta_state(lambda: T5EncoderModel(t5)))
    for key in ("vocab_size", "d_model", "d_ff", "d_kv", "num_heads", "num_layers", "relative_attention_num_buckets"):
        assert got[key] == getattr(t5, key), key
    assert got["feed_forward_proj"] == "gated-gelu"


def test_scaled_fp8_weights_are_dequantized(tiny_models_dir, built):
    """ComfyUI's "fp8 scaled" files (weight in fp8 × scale_weight) load as the scaled values."""
    sd = model_files.load(tiny_models_dir / "text_encoders/tiny-t5xxl.safetensors")
    scaled = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2 and ".SelfAttention.q." in k:
            scale = v.abs().max() / 448.0
            scaled[k] = (v / scale).to(torch.float8_e4m3fn)
            scaled[k[:-len(".weight")] + ".scale_weight"] = scale.reshape(1)
        else:
            scaled[k] = v
    scaled["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    t5 = single_file.build_t5(scaled, "t5_scaled.safetensors")
    ref = built["dev"]["text_encoder_2"].state_dict()
    q = "encoder.block.0.layer.0.SelfAttention.q.weight"
    assert torch.allclose(t5.state_dict()[q], ref[q], rtol=0.07, atol=1e-3)


def test_fp8_weights_flag_stores_checkpoint_denoisers_in_fp8(tiny_base_dir):
    ctx = NodeContext(node_id="1", class_type="X", prompt_id="p", paths=FolderPaths(tiny_base_dir),
                      models=ModelManager(), options=RuntimeOptions(device="cpu", fp8_weights=True))
    model = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")[0]
    assert model.quantization == "fp8_e4m3fn"
    assert model.denoiser.conv_in.weight.dtype == torch.float8_e4m3fn
    plain = L.CheckpointLoaderSimple().execute(make_ctx(tiny_base_dir, ctx.models), "tiny-sd15.safetensors")[0]
    assert plain.weights is not model.weights and plain.denoiser.conv_in.weight.dtype == torch.float32
