"""LoRA as weight patches: exact no-ops, real effects, stacking, restoring, key formats."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from nodes import conditioning as C
from nodes import loaders as L
from nodes.diffusion.lora import apply_patches
from nodes.diffusion.types import WeightPatch


def make_ctx(base, mm: ModelManager) -> NodeContext:
    return NodeContext(node_id="1", class_type="X", prompt_id="p", paths=FolderPaths(base), models=mm,
                       options=RuntimeOptions(device="cpu"))


@pytest.fixture
def env(tiny_base_dir):
    mm = ModelManager()
    return tiny_base_dir, mm, (lambda: make_ctx(tiny_base_dir, mm))


def unet_out(model) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    ctx_dim = model.denoiser.config.cross_attention_dim
    ehs = torch.randn(1, 77, ctx_dim, generator=g)
    kwargs = {}
    if model.denoiser.config.addition_embed_type == "text_time":
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 64, generator=g),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad(), apply_patches(model.denoiser, model.patches):
        return model.denoiser(sample, torch.tensor([500]), encoder_hidden_states=ehs, **kwargs).sample


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same_weights(module, snap) -> None:
    for k, v in module.state_dict().items():
        assert torch.equal(v, snap[k]), k


def test_strength_zero_is_exactly_no_lora(env):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")
    m0, c0 = L.LoraLoader().execute(ctx(), model, clip, "tiny-sd15-lora.safetensors", 0.0, 0.0)
    assert m0 is model and c0 is clip
    # a zero-strength patch applied through apply_patches is an exact no-op as well
    zero = L.LoraLoader().execute(ctx(), model, clip, "tiny-sd15-lora.safetensors", 1.0, 1.0)[0]
    zero = replace(zero, patches=(WeightPatch("z", 0.0, zero.patches[0].deltas),))
    assert torch.equal(unet_out(zero), unet_out(model))


def test_lora_changes_output_and_restores_weights(env):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")
    snap = snapshot(model.denoiser)
    plain = unet_out(model)
    patched, _ = L.LoraLoader().execute(ctx(), model, clip, "tiny-sd15-lora.safetensors", 1.0, 0.0)
    assert len(patched.patches) == 1 and patched.denoiser is model.denoiser
    out = unet_out(patched)
    assert (out - plain).abs().max() > 1e-3
    assert_same_weights(model.denoiser, snap)  # restored exactly after use
    assert torch.equal(unet_out(model), plain)


def test_delta_follows_kohya_formula(env, tiny_models_dir):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")
    patched = L.LoraLoaderModelOnly().execute(ctx(), model, "tiny-sd15-lora.safetensors", 0.7)[0]
    lora = load_file(tiny_models_dir / "loras/tiny-sd15-lora.safetensors")
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    up, down, alpha = lora[key + ".lora_up.weight"], lora[key + ".lora_down.weight"], lora[key + ".alpha"].item()
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    w0 = dict(model.denoiser.named_parameters())[name].detach().clone()
    with apply_patches(patched.denoiser, patched.patches):
        w = dict(patched.denoiser.named_parameters())[name].detach().clone()
    expected = w0 + 0.7 * (alpha / down.shape[0]) * (up @ down)
    assert torch.allclose(w, expected, atol=1e-6)


def test_two_stacked_loras_add_up(env):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")
    half, _ = L.LoraLoader().execute(ctx(), model, clip, "tiny-sd15-lora.safetensors", 0.5, 0.0)
    twice, _ = L.LoraLoader().execute(ctx(), half, clip, "tiny-sd15-lora.safetensors", 0.5, 0.0)
    once, _ = L.LoraLoader().execute(ctx(), model, clip, "tiny-sd15-lora.safetensors", 1.0, 0.0)
    assert len(twice.patches) == 2
    assert torch.allclose(unet_out(twice), unet_out(once), atol=1e-5)
    assert not torch.allclose(unet_out(half), unet_out(once), atol=1e-4)


def test_base_model_not_reloaded_across_lora_changes(env):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")
    loads = mm.loads
    outs = []
    for s in (0.3, 0.8, -0.5):
        m, _ = L.LoraLoader().execute(ctx(), model, clip, "tiny-sd15-lora.safetensors", s, s)
        assert m.denoiser is model.denoiser
        outs.append(unet_out(m))
    assert mm.loads == loads + 1  # only the LoRA file itself, once
    again = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")[0]
    assert again.denoiser is model.denoiser and mm.loads == loads + 1
    assert not torch.allclose(outs[0], outs[1])


def test_lora_on_text_encoder(env):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")
    snap = snapshot(clip.encoders["clip_l"])
    plain = C.CLIPTextEncode().execute(ctx(), "a cat", clip)[0][0].embeds
    m, c = L.LoraLoader().execute(ctx(), model, clip, "tiny-sd15-lora.safetensors", 0.0, 1.0)
    assert m is model and len(c.patches) == 1
    patched = C.CLIPTextEncode().execute(ctx(), "a cat", c)[0][0].embeds
    assert (patched - plain).abs().max() > 1e-4
    assert_same_weights(clip.encoders["clip_l"], snap)
    assert torch.equal(C.CLIPTextEncode().execute(ctx(), "a cat", clip)[0][0].embeds, plain)


def test_sdxl_lora_in_sgm_naming_matches_every_module(env, tiny_models_dir):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sdxl.safetensors")
    c = ctx()
    m, cl = L.LoraLoader().execute(c, model, clip, "tiny-sdxl-lora.safetensors", 1.0, 1.0)
    n_modules = len({k.rsplit(".", 2)[0] for k in load_file(tiny_models_dir / "loras/tiny-sdxl-lora.safetensors")
                     if k.endswith(".lora_up.weight")})
    assert c.info["lora_modules"] == n_modules
    assert any(k.startswith("clip_g.") for k in cl.patches[0].deltas)
    # the LoCon conv (3x3 kernel) is patched with a correctly shaped delta
    assert "down_blocks.0.resnets.0.conv1.weight" in m.patches[0].deltas
    assert (unet_out(m) - unet_out(model)).abs().max() > 1e-4


def test_flux_bfl_fused_lora_splits_rows(env):
    base, mm, ctx = env
    model = L.UNETLoader().execute(ctx(), "tiny-flux-dev.safetensors", "default")[0]
    tr = model.denoiser
    hidden = tr.config.num_attention_heads * tr.config.attention_head_dim
    mlp = tr.single_transformer_blocks[0].proj_mlp.weight.shape[0]
    g = torch.Generator().manual_seed(3)
    r = 2
    sd = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.randn(3 * hidden, r, generator=g),
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.randn(r, hidden, generator=g),
        "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(2.0),
        "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.randn(3 * hidden + mlp, r, generator=g),
        "lora_unet_single_blocks_0_linear1.lora_down.weight": torch.randn(r, hidden, generator=g),
        "transformer.single_transformer_blocks.0.proj_out.lora_A.weight": torch.randn(r, hidden + mlp, generator=g),
        "transformer.single_transformer_blocks.0.proj_out.lora_B.weight": torch.randn(hidden, r, generator=g),
    }
    save_file(sd, str(base / "models/loras/flux-test.safetensors"))
    c = ctx()
    patched = L.LoraLoaderModelOnly().execute(c, model, "flux-test.safetensors", 1.0)[0]
    assert c.info["lora_modules"] == 3
    params = dict(tr.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    full = sd["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"] @ sd["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    with apply_patches(tr, patched.patches):
        for i, name in enumerate(("to_q", "to_k", "to_v")):
            key = f"transformer_blocks.0.attn.{name}.weight"
            assert torch.allclose(params[key] - before[key], full[i * hidden:(i + 1) * hidden], atol=1e-5)
        mlp_key = "single_transformer_blocks.0.proj_mlp.weight"
        assert not torch.equal(params[mlp_key], before[mlp_key])
    for n, p in params.items():
        assert torch.equal(p, before[n])


def test_lora_for_another_family_is_refused(env):
    base, mm, ctx = env
    model = L.UNETLoader().execute(ctx(), "tiny-flux-dev.safetensors", "default")[0]
    with pytest.raises(NodeError) as err:
        L.LoraLoaderModelOnly().execute(ctx(), model, "tiny-sd15-lora.safetensors", 1.0)
    assert err.value.input_name == "lora_name" and "tiny-sd15-lora" in str(err.value)


def test_non_lora_file_in_loras(env):
    base, mm, ctx = env
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx(), "tiny-sd15.safetensors")
    (base / "models/loras/vae.safetensors").write_bytes((base / "models/vae/tiny-sd-vae.safetensors").read_bytes())
    with pytest.raises(NodeError, match="VAELoader"):
        L.LoraLoader().execute(ctx(), model, clip, "vae.safetensors", 1.0, 1.0)
