"""Text encoding: diffusers parity for plain prompts, ComfyUI emphasis, embeddings, long prompts; conditioning nodes."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from graph_runtime.context import NodeContext, NodeError, RuntimeOptions
from graph_runtime.model_manager import ModelManager
from graph_runtime.paths import FolderPaths
from models.tools import tiny_models as tm
from nodes import conditioning as C
from nodes import loaders as L
from nodes.diffusion.text_encode import CHUNK_TOKENS, encode_prompt, parse_prompt_weights
from nodes.diffusion.types import CondEntry, ModelFamily, TextEncoders


def make_ctx(base) -> NodeContext:
    return NodeContext(node_id="1", class_type="X", prompt_id="p", paths=FolderPaths(base), models=ModelManager(),
                       options=RuntimeOptions(device="cpu"))


@pytest.mark.parametrize("text,expected", [
    ("a photo of a cat", [("a photo of a cat", 1.0)]),
    ("a (red:1.5) cat", [("a ", 1.0), ("red", 1.5), (" cat", 1.0)]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("(cat)", [("cat", pytest.approx(1.1))]),
    ("((cat:0.5))", [("cat", 0.5)]),  # an explicit weight replaces the nesting factor
    ("(a (b:2.0) c:0.5)", [("a ", 0.5), ("b", 2.0), (" c", 0.5)]),
    ("[cat]", [("[cat]", 1.0)]),  # square brackets are plain text in ComfyUI
    ("\\(cat\\)", [("(cat)", 1.0)]),
    ("smile :) (x:1.2", [("smile :) (x:1.2", 1.0)]),
    ("(12:00 o'clock)", [("12:00 o'clock", pytest.approx(1.1))]),
])
def test_parse_prompt_weights(text, expected):
    assert parse_prompt_weights(text) == expected


@pytest.fixture(scope="module")
def sd15():
    c = tm.build_sd15()
    return c, TextEncoders(ModelFamily.SD15, {"clip_l": c["text_encoder"]}, {"clip_l": c["tokenizer"]})


@pytest.fixture(scope="module")
def sdxl():
    c = tm.build_sdxl()
    return c, TextEncoders(ModelFamily.SDXL, {"clip_l": c["text_encoder"], "clip_g": c["text_encoder_2"]},
                           {"clip_l": c["tokenizer"], "clip_g": c["tokenizer_2"]})


@pytest.fixture(scope="module")
def flux():
    c = tm.build_flux(True)
    return c, TextEncoders(ModelFamily.FLUX_DEV, {"clip_l": c["text_encoder"], "t5xxl": c["text_encoder_2"]},
                           {"clip_l": c["tokenizer"], "t5xxl": c["tokenizer_2"]})


PROMPTS = ["a photo of a cat", "", "masterpiece, best quality, a castle on a hill at sunset"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_sd15_matches_pipeline(sd15, prompt):
    from diffusers import StableDiffusionPipeline

    c, clip = sd15
    pipe = StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():
        ref, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
    z, opts = encode_prompt(clip, prompt)
    assert torch.equal(ref, z)
    assert opts["pooled_output"].shape == (1, tm.CLIP_L_HIDDEN)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_sdxl_matches_pipeline(sdxl, prompt):
    from diffusers import StableDiffusionXLPipeline

    c, clip = sdxl
    pipe = StableDiffusionXLPipeline(**c)
    with torch.no_grad():
        pe, _, pooled, _ = pipe.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    z, opts = encode_prompt(clip, prompt)
    assert torch.equal(pe, z) and torch.equal(pooled, opts["pooled_output"])


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_flux_matches_pipeline(flux, prompt):
    from diffusers import FluxPipeline

    c, clip = flux
    pipe = FluxPipeline(**c)
    with torch.no_grad():
        pe, pooled, _ = pipe.encode_prompt(prompt, None, device="cpu")
    z, opts = encode_prompt(clip, prompt)
    assert z.shape == (1, 512, tm.T5_D_MODEL)
    assert torch.equal(pe, z) and torch.equal(pooled, opts["pooled_output"])


def test_flux_separate_t5_prompt(flux):
    _, clip = flux
    a, oa = encode_prompt(clip, "a cat", t5_text="a dog")
    b, ob = encode_prompt(clip, "a dog")
    assert torch.equal(a, b) and not torch.equal(oa["pooled_output"], ob["pooled_output"])


def test_emphasis_scales_only_weighted_tokens(sd15):
    _, clip = sd15
    plain, _ = encode_prompt(clip, "a photo of a cat")
    empty, _ = encode_prompt(clip, "")
    weighted, _ = encode_prompt(clip, "a (photo:1.5) of a cat")
    # token 2 is "photo" (after BOS and "a"); every other position is unchanged
    others = [i for i in range(77) if i != 2]
    assert torch.equal(weighted[:, others], plain[:, others])
    expected = (plain[:, 2] - empty[:, 2]) * 1.5 + empty[:, 2]
    assert torch.allclose(weighted[:, 2], expected, atol=1e-6)


def test_long_prompt_is_chunked(sd15):
    _, clip = sd15
    words = " ".join(["cat"] * 100)
    z, opts = encode_prompt(clip, words)
    assert z.shape == (1, 154, tm.CLIP_L_HIDDEN)
    first, _ = encode_prompt(clip, " ".join(["cat"] * CHUNK_TOKENS))
    assert torch.equal(z[:, :77], first)


def test_clip_skip(sd15):
    _, clip = sd15
    last, _ = encode_prompt(clip, "a cat")
    skip, _ = encode_prompt(replace(clip, clip_skip=-2), "a cat")
    enc = clip.encoders["clip_l"]
    ids = clip.tokenizers["clip_l"]("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = enc(ids, output_hidden_states=True).hidden_states
        expected = enc.final_layer_norm(hidden[-2])
    assert torch.equal(skip, expected) and not torch.equal(skip, last)


def test_embedding_tokens(tiny_base_dir, tiny_models_dir):
    """``embedding:name`` puts the file's vectors in place of tokens, exactly as a token with that embedding would."""
    from safetensors.torch import load_file

    ctx = make_ctx(tiny_base_dir)
    model, clip, _ = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    vectors = load_file(tiny_models_dir / "embeddings/tiny-sd15-embedding.safetensors")["emb_params"]
    got = C.CLIPTextEncode().execute(ctx, "a embedding:tiny-sd15-embedding cat", clip)[0][0].embeds
    # reference: a copy of the encoder whose vocabulary rows 1000/1001 are the embedding vectors
    enc = copy.deepcopy(clip.encoders["clip_l"])
    with torch.no_grad():
        enc.get_input_embeddings().weight[1000:1002] = vectors
    tok = clip.tokenizers["clip_l"]
    ids = [tok.bos_token_id, *tok("a", add_special_tokens=False).input_ids, 1000, 1001,
           *tok("cat", add_special_tokens=False).input_ids, tok.eos_token_id]
    ids += [tok.pad_token_id] * (77 - len(ids))
    with torch.no_grad():
        expected = enc(torch.tensor([ids])).last_hidden_state
    assert torch.equal(got, expected)
    # with extension, too; a missing embedding is ignored (as ComfyUI does)
    same = C.CLIPTextEncode().execute(ctx, "a embedding:tiny-sd15-embedding.safetensors cat", clip)[0][0].embeds
    assert torch.equal(same, got)
    missing = C.CLIPTextEncode().execute(ctx, "a embedding:nothing-here cat", clip)[0][0].embeds
    assert torch.equal(missing, C.CLIPTextEncode().execute(ctx, "a cat", clip)[0][0].embeds)


def test_clip_text_encode_node_records_and_errors(tiny_base_dir):
    ctx = make_ctx(tiny_base_dir)
    with pytest.raises(NodeError) as err:
        C.CLIPTextEncode().execute(ctx, "a cat", None)
    assert err.value.input_name == "clip"
    _, clip, _ = L.CheckpointLoaderSimple().execute(ctx, "tiny-sdxl.safetensors")
    cond = C.CLIPTextEncode().execute(ctx, "a cat", clip)[0]
    assert cond[0].embeds.shape == (1, 77, tm.CLIP_L_HIDDEN + tm.CLIP_G_HIDDEN)
    assert cond[0].options["pooled_output"].shape == (1, tm.CLIP_G_HIDDEN)
    assert ctx.info["device"] == "cpu"


def test_clip_set_last_layer_changes_sd15_encoding(tiny_base_dir):
    ctx = make_ctx(tiny_base_dir)
    _, clip, _ = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    skipped = L.CLIPSetLastLayer().execute(ctx, clip, -2)[0]
    assert skipped.clip_skip == -2 and clip.clip_skip == -1
    a = C.CLIPTextEncode().execute(ctx, "a cat", clip)[0][0].embeds
    b = C.CLIPTextEncode().execute(ctx, "a cat", skipped)[0][0].embeds
    assert not torch.equal(a, b)


def test_flux_nodes(tiny_base_dir):
    ctx = make_ctx(tiny_base_dir)
    _, clip, _ = L.CheckpointLoaderSimple().execute(ctx, "tiny-flux-dev.safetensors")
    cond = C.CLIPTextEncodeFlux().execute(ctx, clip, "a cat", "a cat on a mat", 2.5)[0]
    assert cond[0].options["guidance"] == 2.5
    g = C.FluxGuidance().execute(ctx, cond, 7.0)[0]
    assert g[0].options["guidance"] == 7.0 and cond[0].options["guidance"] == 2.5
    assert g[0].embeds is cond[0].embeds
    _, sd_clip, _ = L.CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    with pytest.raises(NodeError):
        C.CLIPTextEncodeFlux().execute(ctx, sd_clip, "a", "b", 3.5)


def _cond():
    return [CondEntry(torch.ones(1, 77, 8), {"pooled_output": torch.ones(1, 8), "guidance": 3.5})]


def test_zero_out_combine_area_range():
    ctx = None
    z = C.ConditioningZeroOut().execute(ctx, _cond())[0]
    assert torch.count_nonzero(z[0].embeds) == 0 and torch.count_nonzero(z[0].options["pooled_output"]) == 0
    assert z[0].options["guidance"] == 3.5
    a, b = _cond(), _cond()
    assert C.ConditioningCombine().execute(ctx, a, b)[0] == a + b
    area = C.ConditioningSetArea().execute(ctx, a, 256, 128, 64, 32, 0.8)[0]
    assert area[0].options["area"] == (16, 32, 4, 8) and area[0].options["strength"] == 0.8
    assert "area" not in a[0].options
    rng = C.ConditioningSetTimestepRange().execute(ctx, a, 0.2, 0.7)[0]
    assert (rng[0].options["start_percent"], rng[0].options["end_percent"]) == (0.2, 0.7)
