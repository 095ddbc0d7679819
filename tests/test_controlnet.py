"""ControlNet nodes and hooks: loading every layout, ComfyUI semantics, clear errors.

Runs on the tiny ControlNets that ``write_tiny_models`` writes (``tiny_paths``) and the matching
in-memory tiny models of ``tests/sampling_fixtures.py`` (same seeds, so the UNet a ControlNet was
copied from is the one it meets), on CPU, 64×64 pixels, 4 steps.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from graph_runtime.schema import define
from nodes import controlnet as N
from nodes.diffusion import controlnet_keys as K
from nodes.diffusion.controlnet import load_controlnet
from nodes.diffusion.controlnet_hook import ControlNetHook, batch_to, fit_hint
from nodes.diffusion.loading import LoadError, Placement
from nodes.diffusion.types import CondEntry, ModelFamily
from nodes.latent import EmptySD3LatentImage
from nodes.sampling import KSampler
from tests import sampling_fixtures as fx
from tests.test_controlnet_parity import control_image

CORE_DEFS = json.loads((Path(__file__).parent / "data" / "workflows" / "core_node_defs.json").read_text())
CPU = Placement(torch.device("cpu"))


def _ctx(paths: FolderPaths, class_type: str = "X") -> NodeContext:
    return NodeContext(node_id="1", class_type=class_type, prompt_id="p", paths=paths, models=ModelManager(),
                       options=RuntimeOptions(device="cpu", dtype="fp32"))


def _load(paths, name: str):
    return N.ControlNetLoader().execute(_ctx(paths), control_net_name=name)[0]


def _ks(paths, model, pos, neg, *, steps: int = 4, cfg: float = 5.0, latent=None, seed: int = 3) -> torch.Tensor:
    latent = latent if latent is not None else {"samples": torch.zeros(1, 4, 8, 8)}
    return KSampler().execute(_ctx(paths, "KSampler"), model=model, seed=seed, steps=steps, cfg=cfg,
                              sampler_name="euler", scheduler="normal", positive=pos, negative=neg,
                              latent_image=latent, denoise=1.0)[0]["samples"]


def _record_calls(cn) -> list[float]:
    """Make the ControlNet module record the timestep of every call."""
    seen: list[float] = []
    forward = cn.module.forward

    def recording(*args, **kwargs):
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        seen.append(float(t.flatten()[0]))
        return forward(*args, **kwargs)

    cn.module.forward = recording
    return seen


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------
# node declarations

@pytest.mark.parametrize("node", [N.ControlNetLoader, N.DiffControlNetLoader, N.ControlNetApply,
                                  N.ControlNetApplyAdvanced, N.ControlNetApplySD3, N.InstructPixToPixConditioning])
def test_node_declarations_match_comfyui(node):
    from graph_runtime.node_info import node_info

    ours = node_info(define(node))
    core = CORE_DEFS[node.__name__]
    for key in ("input", "input_order", "output", "output_name", "category", "display_name"):
        assert ours[key] == core[key], key
    assert ours.get("deprecated", False) == core.get("deprecated", False)


# --------------------------------------------------------------------------------------------
# loading

def test_every_tiny_layout_loads_to_the_builders_weights(tiny_paths):
    from models.tools import tiny_controlnets as tc

    sd15 = tc.build_sd15_controlnet()
    for name in ("tiny-sd15-controlnet.safetensors", "tiny-sd15-controlnet-diffusers",
                 "tiny-sd15-controlnet-diffusers/diffusion_pytorch_model.safetensors"):
        cn = _load(tiny_paths, name)
        assert (cn.kind, cn.family, cn.hint_space) == ("unet", ModelFamily.SD15, "pixels"), name
        assert _state_equal(cn.module, sd15), name
    xl = _load(tiny_paths, "tiny-sdxl-controlnet.safetensors")
    assert (xl.family, xl.layout) == (ModelFamily.SDXL, "ldm") and _state_equal(xl.module, tc.build_sdxl_controlnet())
    instantx = _load(tiny_paths, "tiny-flux-controlnet.safetensors")
    assert (instantx.kind, instantx.hint_space, instantx.blocks_repeat) == ("flux", "latent", False)
    assert _state_equal(instantx.module, tc.build_flux_controlnet())
    xlabs = _load(tiny_paths, "tiny-flux-controlnet-xlabs.safetensors")
    assert (xlabs.layout, xlabs.hint_space, xlabs.blocks_repeat) == ("flux_xlabs", "pixels_signed", True)
    assert _state_equal(xlabs.module, tc.build_flux_xlabs_controlnet())


def test_original_layout_files_have_the_original_keys(tiny_models_dir):
    from nodes.diffusion.model_files import inspect

    shapes, _ = inspect(tiny_models_dir / "controlnet" / "tiny-sd15-controlnet.safetensors")
    assert all(k.startswith("control_model.") for k in shapes)
    for key in ("control_model.input_hint_block.0.weight", "control_model.zero_convs.0.0.weight",
                "control_model.middle_block_out.0.weight", "control_model.input_blocks.1.1.proj_in.weight",
                "control_model.time_embed.0.weight"):
        assert key in shapes, key
    xlabs, _ = inspect(tiny_models_dir / "controlnet" / "tiny-flux-controlnet-xlabs.safetensors")
    for key in ("double_blocks.0.img_attn.qkv.weight", "controlnet_blocks.1.weight", "pos_embed_input.weight",
                "input_hint_block.14.weight", "img_in.weight"):
        assert key in xlabs, key


def test_prefixless_and_diffusers_single_files_load(tiny_paths, tmp_path):
    from safetensors.torch import save_file

    from models.tools import tiny_controlnets as tc

    ref = tc.build_sd15_controlnet()
    orig = {k[len(K.LDM_PREFIX):]: v.contiguous() for k, v in K.sd_controlnet_to_original(ref).items()}
    save_file(orig, str(tmp_path / "no_prefix.safetensors"))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "diffusers_single.safetensors"))
    for name in ("no_prefix.safetensors", "diffusers_single.safetensors"):
        cn = load_controlnet(tmp_path / name, CPU)
        assert cn.family == ModelFamily.SD15 and _state_equal(cn.module, ref), name


def test_diff_controlnet_needs_the_model(tiny_paths):
    from models.tools import tiny_controlnets as tc

    name = "tiny-sd15-controlnet-diff.safetensors"
    with pytest.raises(NodeError, match="DiffControlNetLoader"):
        _load(tiny_paths, name)
    cn = N.DiffControlNetLoader().execute(_ctx(tiny_paths), model=fx.sd15().model, control_net_name=name)[0]
    assert _state_equal(cn.module, tc.build_sd15_controlnet())
    # a plain ControlNet through DiffControlNetLoader is simply loaded
    plain = N.DiffControlNetLoader().execute(_ctx(tiny_paths), model=fx.sd15().model,
                                             control_net_name="tiny-sd15-controlnet.safetensors")[0]
    assert _state_equal(plain.module, cn.module)


def test_diff_loader_refuses_a_controlnet_of_another_family(tiny_paths):
    with pytest.raises(NodeError, match=r"SD1\.5 ControlNet but the model is FLUX"):
        N.DiffControlNetLoader().execute(_ctx(tiny_paths), model=fx.flux(True).model,
                                         control_net_name="tiny-sd15-controlnet.safetensors")


def test_unsupported_and_broken_files_give_clear_errors(tiny_paths, tmp_path):
    from safetensors.torch import save_file

    cases = {
        "control-lora.safetensors": ({"lora_controlnet": torch.zeros(1), "input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
                                     "Control-LoRA"),
        "t2i.safetensors": ({"adapter.body.0.block1.weight": torch.zeros(2, 2, 3, 3)}, "T2I-Adapter"),
        "not_a_controlnet.safetensors": ({"foo.weight": torch.zeros(2)}, "not a ControlNet"),
        "union.safetensors": ({"task_embedding": torch.zeros(8, 4), "controlnet_cond_embedding.conv_in.weight":
                               torch.zeros(16, 3, 3, 3)}, "ControlNet-Union"),
    }
    for name, (sd, message) in cases.items():
        save_file(sd, str(tmp_path / name))
        with pytest.raises(LoadError, match=message):
            load_controlnet(tmp_path / name, CPU)
    with pytest.raises(NodeError, match="control_net_name"):
        _load(tiny_paths, "missing.safetensors")
    folder = tmp_path / "folder_without_config"
    folder.mkdir()
    with pytest.raises(LoadError, match="config.json"):
        load_controlnet(folder, CPU)
    # a known layout with tensors the architecture does not have is refused, not loaded without them
    extra = {k: v.contiguous() for k, v in load_controlnet(
        tiny_paths.model_path("controlnet", "tiny-sd15-controlnet.safetensors"), CPU).module.state_dict().items()}
    extra["controlnet_mode_embedder.weight"] = torch.zeros(4, 8)
    save_file(extra, str(tmp_path / "variant.safetensors"))
    with pytest.raises(LoadError, match="variant that is not supported"):
        load_controlnet(tmp_path / "variant.safetensors", CPU)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((tiny_paths.model_path("controlnet", "tiny-sd15-controlnet.safetensors")).read_bytes()[:5000])
    with pytest.raises(LoadError):
        load_controlnet(truncated, CPU)


def _plain(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def test_full_size_configs_are_inferred_from_shapes():
    """The one shape-based inference reads full-size layouts too (meta tensors: no memory, no weights)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, FluxControlNetModel

    sd15_cfg = dict(cross_attention_dim=768, attention_head_dim=8)
    sdxl_cfg = dict(block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D"), cross_attention_dim=2048, transformer_layers_per_block=(1, 2, 10),
                    attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
                    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    for family, cfg in ((ModelFamily.SD15, sd15_cfg), (ModelFamily.SDXL, sdxl_cfg)):
        with init_empty_weights():
            full = ControlNetModel(**cfg)
        original = {k[len(K.LDM_PREFIX):]: v for k, v in K.sd_controlnet_to_original(full).items()}
        shapes = {k: tuple(v.shape) for k, v in original.items()}
        assert K.sd_controlnet_family(shapes)[0] == family
        inferred = K.infer_sd_controlnet_config(original, family)
        for key in ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types",
                    "conditioning_embedding_out_channels", "use_linear_projection"):
            assert _plain(inferred[key]) == _plain(full.config[key]), key
        assert list(inferred["transformer_layers_per_block"] if family.is_sdxl else [1]) == \
            list(cfg.get("transformer_layers_per_block", [1]))
        with init_empty_weights():
            rebuilt = ControlNetModel.from_config(inferred)
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == \
            {k: tuple(v.shape) for k, v in full.state_dict().items()}
    # FLUX: InstantX (5 double + 10 single blocks) and XLabs (2 double blocks, pixel hint encoder)
    for kwargs in (dict(num_layers=5, num_single_layers=10, guidance_embeds=True),
                   dict(num_layers=2, num_single_layers=0, guidance_embeds=True, conditioning_embedding_channels=16,
                        patch_size=2)):
        with init_empty_weights():
            full = FluxControlNetModel(**kwargs)
        sd = full.state_dict()
        if "conditioning_embedding_channels" in kwargs:
            sd = K.xlabs_to_diffusers(K.xlabs_from_diffusers(sd))
        inferred = K.infer_flux_controlnet_config(sd)
        for key in ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads", "in_channels",
                    "joint_attention_dim", "pooled_projection_dim", "guidance_embeds", "patch_size",
                    "conditioning_embedding_channels"):
            assert inferred[key] == full.config[key], key
        assert tuple(inferred["axes_dims_rope"]) == tuple(full.config["axes_dims_rope"])


# --------------------------------------------------------------------------------------------
# applying

def test_strength_zero_is_exactly_no_controlnet(tiny_paths):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    cn = _load(tiny_paths, "tiny-sd15-controlnet.safetensors")
    calls = _record_calls(cn)
    p0, n0 = N.ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                                 image=control_image(), strength=0.0)
    assert p0 is pos and n0 is neg  # ComfyUI returns the conditioning untouched
    assert N.ControlNetApply().execute(_ctx(tiny_paths), conditioning=pos, control_net=cn, image=control_image(),
                                       strength=0.0)[0] is pos
    base = _ks(tiny_paths, tiny.model, pos, neg)
    # a hook at strength 0 (e.g. built by hand) never runs the ControlNet and changes nothing
    hook = ControlNetHook(cn, torch.rand(1, 3, 64, 64), strength=0.0)
    out = _ks(tiny_paths, tiny.model, [pos[0].with_options(control=hook)], [neg[0].with_options(control=hook)])
    assert torch.equal(out, base) and calls == []
    p1, n1 = N.ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                                 image=control_image(), strength=1.0)
    assert (_ks(tiny_paths, tiny.model, p1, n1) - base).abs().max() > 1e-3
    assert len(calls) == 4  # one batched [uncond, cond] ControlNet call per step


def test_start_end_percent_restrict_the_steps(tiny_paths):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    runs = {}
    for window in ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0), (0.4, 0.6)):
        cn = _load(tiny_paths, "tiny-sd15-controlnet.safetensors")
        calls = _record_calls(cn)
        p, n = N.ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                                   image=control_image(), strength=1.0, start_percent=window[0],
                                                   end_percent=window[1])
        runs[window] = (_ks(tiny_paths, tiny.model, p, n), calls)
    all_steps = runs[(0.0, 1.0)][1]
    assert len(all_steps) == 4
    for (start, end), (_, calls) in runs.items():
        expected = [t for t in all_steps if start - 1e-6 <= 1 - t / 999 <= end + 1e-6]
        assert calls == expected, (start, end)
    assert len(runs[(0.0, 0.5)][1]) == 2 and len(runs[(0.5, 1.0)][1]) == 2 and runs[(0.4, 0.6)][1] == []
    base = _ks(tiny_paths, tiny.model, pos, neg)
    assert torch.equal(runs[(0.4, 0.6)][0], base)  # a window without steps is no ControlNet
    full, early, late = runs[(0.0, 1.0)][0], runs[(0.0, 0.5)][0], runs[(0.5, 1.0)][0]
    for a, b in ((full, early), (full, late), (early, late), (early, base), (late, base)):
        assert (a - b).abs().max() > 1e-4


def test_two_stacked_controlnets_both_act(tiny_paths):
    from models.tools import tiny_controlnets as tc
    from models.tools.tiny_models import _save

    tiny = fx.sd15()
    other = tc.build_sd_controlnet(tiny.components["unet"], seed=tc.SEED + 100)
    _save(tiny_paths.model_dirs("controlnet")[0] / "tiny-sd15-controlnet-b.safetensors", K.sd_controlnet_to_original(other))
    a = _load(tiny_paths, "tiny-sd15-controlnet.safetensors")
    b = _load(tiny_paths, "tiny-sd15-controlnet-b.safetensors")
    pos, neg = fx.sd_conds(tiny)
    image_a, image_b = control_image(), control_image().flip(2)
    apply = N.ControlNetApplyAdvanced()
    pa, na = apply.execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=a, image=image_a, strength=0.9)
    pab, nab = apply.execute(_ctx(tiny_paths), positive=pa, negative=na, control_net=b, image=image_b, strength=0.7)
    pb, nb = apply.execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=b, image=image_b, strength=0.7)
    hook = pab[0].options["control"]
    assert hook.previous is pa[0].options["control"] and nab[0].options["control"] is hook  # one chain, shared
    out_a, out_b, out_ab = (_ks(tiny_paths, tiny.model, p, n) for p, n in ((pa, na), (pb, nb), (pab, nab)))
    assert (out_ab - out_a).abs().max() > 1e-3 and (out_ab - out_b).abs().max() > 1e-3
    # the chain's residuals are the sum of both ControlNets' residuals
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = torch.cat([neg[0].embeds, pos[0].embeds])
    kw = dict(family=ModelFamily.SD15, sample=x, timestep=torch.tensor(500.0), encoder_hidden_states=emb, percent=0.5)
    both = hook.residuals(**kw)
    first, second = pa[0].options["control"].residuals(**kw), pb[0].options["control"].residuals(**kw)
    assert torch.allclose(both["mid_block_additional_residual"],
                          first["mid_block_additional_residual"] + second["mid_block_additional_residual"])
    for s, f, g in zip(both["down_block_additional_residuals"], first["down_block_additional_residuals"],
                       second["down_block_additional_residuals"]):
        assert torch.allclose(s, f + g)


def test_legacy_apply_controls_the_positive_side_only(tiny_paths):
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    cn = _load(tiny_paths, "tiny-sd15-controlnet.safetensors")
    calls = _record_calls(cn)
    controlled = N.ControlNetApply().execute(_ctx(tiny_paths), conditioning=pos, control_net=cn,
                                             image=control_image(), strength=1.0)[0]
    assert "control" not in pos[0].options and controlled[0].options["control"].previous is None
    out = _ks(tiny_paths, tiny.model, controlled, neg)
    assert len(calls) == 4 and (out - _ks(tiny_paths, tiny.model, pos, neg)).abs().max() > 1e-3


def test_controlnet_of_another_family_fails_at_sampling(tiny_paths):
    sdxl = fx.sdxl()
    pos, neg = fx.sd_conds(sdxl)
    cn = _load(tiny_paths, "tiny-sd15-controlnet.safetensors")
    p, n = N.ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                               image=control_image(), strength=1.0)
    with pytest.raises(NodeError, match=r"tiny-sd15-controlnet\.safetensors is a SD1\.5 ControlNet but the model is SDXL"):
        _ks(tiny_paths, sdxl.model, p, n)
    flux = fx.flux(True)
    with pytest.raises(NodeError, match="but the model is FLUX"):
        cond = [c.with_options(control=p[0].options["control"]) for c in fx.flux_conds(flux)]
        latent = EmptySD3LatentImage().execute(_ctx(tiny_paths), width=64, height=64, batch_size=1)[0]
        KSampler().execute(_ctx(tiny_paths, "KSampler"), model=flux.model, seed=0, steps=2, cfg=1.0,
                           sampler_name="euler", scheduler="simple", positive=cond, negative=cond,
                           latent_image=latent, denoise=1.0)


def test_instantx_flux_controlnet_needs_a_vae(tiny_paths):
    flux = fx.flux(True)
    cond = fx.flux_conds(flux)
    cn = _load(tiny_paths, "tiny-flux-controlnet.safetensors")
    with pytest.raises(NodeError, match="connect the model's VAE") as err:
        N.ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=cond, negative=cond, control_net=cn,
                                            image=control_image(), strength=1.0)
    assert err.value.input_name == "vae"
    p, n = N.ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=cond, negative=cond, control_net=cn,
                                               image=control_image(), strength=1.0, vae=flux.vae)
    latent = EmptySD3LatentImage().execute(_ctx(tiny_paths), width=64, height=48, batch_size=2)[0]
    out = KSampler().execute(_ctx(tiny_paths, "KSampler"), model=flux.model, seed=0, steps=2, cfg=1.0,
                             sampler_name="euler", scheduler="simple", positive=p, negative=n, latent_image=latent,
                             denoise=1.0)[0]["samples"]
    assert out.shape == (2, 16, 6, 8) and torch.isfinite(out).all()


def test_hints_of_another_size_and_batches_are_fitted(tiny_paths):
    hint = torch.arange(2 * 3 * 40 * 80, dtype=torch.float32).reshape(2, 3, 40, 80)
    fitted = fit_hint(hint, 32, 32)  # center-cropped to 40×40, then resized
    assert fitted.shape == (2, 3, 32, 32)
    assert torch.equal(fit_hint(hint[..., 20:60], 40, 40), hint[..., 20:60])
    assert torch.equal(fitted, fit_hint(hint[..., 20:60], 32, 32))
    assert torch.equal(batch_to(hint, 4), torch.cat([hint, hint]))
    # a 64×64 control image on a 96×64 SD latent with a batch of 2, through the sampler
    tiny = fx.sd15()
    pos, neg = fx.sd_conds(tiny)
    cn = _load(tiny_paths, "tiny-sd15-controlnet.safetensors")
    p, n = N.ControlNetApplyAdvanced().execute(_ctx(tiny_paths), positive=pos, negative=neg, control_net=cn,
                                               image=control_image(), strength=1.0)
    out = _ks(tiny_paths, tiny.model, p, n, steps=2, latent={"samples": torch.zeros(2, 4, 8, 12)})
    assert out.shape == (2, 4, 8, 12) and torch.isfinite(out).all()


def test_instruct_pix_to_pix_conditioning(tiny_paths):
    flux = fx.flux(True)
    cond = fx.flux_conds(flux)
    pixels = control_image(68)[:, :, :66]  # cropped to a multiple of 8 (64×64), as ComfyUI does
    pos, neg, latent = N.InstructPixToPixConditioning().execute(_ctx(tiny_paths), positive=cond, negative=cond,
                                                                vae=flux.vae, pixels=pixels)
    concat = pos[0].options["concat_latent_image"]
    assert concat.shape == (1, 16, 8, 8) and neg[0].options["concat_latent_image"] is concat
    assert latent["samples"].shape == concat.shape and not latent["samples"].any()
    assert "concat_latent_image" not in cond[0].options
