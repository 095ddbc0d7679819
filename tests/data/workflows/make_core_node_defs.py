"""Regenerates ``core_node_defs.json``: ComfyUI ``/object_info`` entries for the core node classes
the example PNGs (``shared/compat/comfyui-examples``) and the workflow tests use.

Facts (input names and order, types, defaults, min/max, ``control_after_generate`` on seeds,
``image_upload``) follow ``shared/reference/comfyui-api.md`` §5.3 and ComfyUI's ``nodes.py`` /
``comfy_extras``.  Model file combos are empty lists (no files on disk); sampler and scheduler
lists are those of the reference snapshot.  V3 nodes use the ``["COMBO", {"options": ...}]`` combo
form, V1 nodes the ``[[...], {...}]`` form, so both parsing paths are exercised.

Run: ``python tests/data/workflows/make_core_node_defs.py``
"""
import json
from pathlib import Path
MAXRES = 16384
SEED_MAX = 18446744073709551615
SAMPLERS = "euler, euler_cfg_pp, euler_ancestral, euler_ancestral_cfg_pp, heun, heunpp2, dpm_2, dpm_2_ancestral, lms, dpm_fast, dpm_adaptive, dpmpp_2s_ancestral, dpmpp_2s_ancestral_cfg_pp, dpmpp_sde, dpmpp_sde_gpu, dpmpp_2m, dpmpp_2m_cfg_pp, dpmpp_2m_sde, dpmpp_2m_sde_gpu, dpmpp_2m_sde_heun, dpmpp_2m_sde_heun_gpu, dpmpp_3m_sde, dpmpp_3m_sde_gpu, ddpm, lcm, ipndm, ipndm_v, deis, res_multistep, res_multistep_cfg_pp, res_multistep_ancestral, res_multistep_ancestral_cfg_pp, gradient_estimation, gradient_estimation_cfg_pp, er_sde, seeds_2, seeds_3, sa_solver, sa_solver_pece, ddim, uni_pc, uni_pc_bh2".split(", ")
SCHEDULERS = "simple, sgm_uniform, karras, exponential, ddim_uniform, beta, normal, linear_quadratic, kl_optimal".split(", ")

def I(default, lo, hi, step=None, **kw):
    o = {"default": default, "min": lo, "max": hi}
    if step is not None: o["step"] = step
    o.update(kw); return ["INT", o]
def F(default, lo, hi, step=None, **kw):
    o = {"default": default, "min": lo, "max": hi}
    if step is not None: o["step"] = step
    o.update(kw); return ["FLOAT", o]
def S(**kw): return ["STRING", kw] if kw else ["STRING"]
def C(options, **kw): return [list(options), kw] if kw else [list(options)]
def V3C(options, **kw): return ["COMBO", {"options": list(options), "multiselect": False, **kw}]
def T(t): return [t]
SEED = I(0, 0, SEED_MAX, control_after_generate=True)
HIDDEN_SAVE = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}

defs = {}
def node(name, display, category, required, outputs, optional=None, hidden=None, output_names=None,
         module="nodes", output_node=False, description="", **flags):
    inp = {"required": dict(required)}
    order = {"required": [k for k, _ in required]}
    if optional:
        inp["optional"] = dict(optional); order["optional"] = [k for k, _ in optional]
    if hidden:
        inp["hidden"] = dict(hidden); order["hidden"] = list(hidden)
    d = {"input": inp, "input_order": order, "output": list(outputs),
         "output_is_list": [False] * len(outputs), "output_name": list(output_names or outputs),
         "name": name, "display_name": display, "description": description,
         "python_module": module, "category": category, "output_node": output_node}
    d.update(flags)
    defs[name] = d

# loaders
node("CheckpointLoaderSimple", "Load Checkpoint", "loaders", [("ckpt_name", C([]))], ["MODEL", "CLIP", "VAE"])
node("LoraLoader", "Load LoRA", "loaders",
     [("model", T("MODEL")), ("clip", T("CLIP")), ("lora_name", C([])),
      ("strength_model", F(1.0, -100.0, 100.0, 0.01)), ("strength_clip", F(1.0, -100.0, 100.0, 0.01))], ["MODEL", "CLIP"])
node("LoraLoaderModelOnly", "LoraLoaderModelOnly", "loaders",
     [("model", T("MODEL")), ("lora_name", C([])), ("strength_model", F(1.0, -100.0, 100.0, 0.01))], ["MODEL"])
node("VAELoader", "Load VAE", "loaders", [("vae_name", C(["pixel_space"]))], ["VAE"])
node("ControlNetLoader", "Load ControlNet Model", "loaders", [("control_net_name", C([]))], ["CONTROL_NET"])
node("DiffControlNetLoader", "Load ControlNet Model (diff)", "loaders",
     [("model", T("MODEL")), ("control_net_name", C([]))], ["CONTROL_NET"])
node("UNETLoader", "Load Diffusion Model", "advanced/loaders",
     [("unet_name", C([])), ("weight_dtype", C(["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]))], ["MODEL"])
CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos", "lumina2",
              "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"]
node("CLIPLoader", "Load CLIP", "advanced/loaders", [("clip_name", C([])), ("type", C(CLIP_TYPES))], ["CLIP"],
     optional=[("device", C(["default", "cpu"], advanced=True))])
node("DualCLIPLoader", "DualCLIPLoader", "advanced/loaders",
     [("clip_name1", C([])), ("clip_name2", C([])), ("type", C(["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]))],
     ["CLIP"], optional=[("device", C(["default", "cpu"], advanced=True))])
node("UpscaleModelLoader", "Load Upscale Model", "loaders", [("model_name", C([]))], ["UPSCALE_MODEL"],
     module="comfy_extras.nodes_upscale_model")
node("CheckpointSave", "Save Checkpoint", "advanced/model_merging",
     [("model", T("MODEL")), ("clip", T("CLIP")), ("vae", T("VAE")), ("filename_prefix", S(default="checkpoints/ComfyUI"))],
     [], hidden=HIDDEN_SAVE, module="comfy_extras.nodes_model_merging", output_node=True)
node("ModelMergeSimple", "ModelMergeSimple", "advanced/model_merging",
     [("model1", T("MODEL")), ("model2", T("MODEL")), ("ratio", F(1.0, 0.0, 1.0, 0.01))], ["MODEL"],
     module="comfy_extras.nodes_model_merging")
# conditioning
node("CLIPSetLastLayer", "CLIP Set Last Layer", "conditioning",
     [("clip", T("CLIP")), ("stop_at_clip_layer", I(-1, -24, -1, 1))], ["CLIP"])
node("CLIPTextEncode", "CLIP Text Encode (Prompt)", "conditioning",
     [("text", S(multiline=True, dynamicPrompts=True)), ("clip", T("CLIP"))], ["CONDITIONING"])
node("ConditioningCombine", "Conditioning (Combine)", "conditioning",
     [("conditioning_1", T("CONDITIONING")), ("conditioning_2", T("CONDITIONING"))], ["CONDITIONING"])
node("ConditioningSetArea", "Conditioning (Set Area)", "conditioning",
     [("conditioning", T("CONDITIONING")), ("width", I(64, 64, MAXRES, 8)), ("height", I(64, 64, MAXRES, 8)),
      ("x", I(0, 0, MAXRES, 8)), ("y", I(0, 0, MAXRES, 8)), ("strength", F(1.0, 0.0, 10.0, 0.01))], ["CONDITIONING"])
node("ConditioningZeroOut", "ConditioningZeroOut", "advanced/conditioning",
     [("conditioning", T("CONDITIONING"))], ["CONDITIONING"])
node("ControlNetApply", "Apply ControlNet (OLD)", "conditioning/controlnet",
     [("conditioning", T("CONDITIONING")), ("control_net", T("CONTROL_NET")), ("image", T("IMAGE")),
      ("strength", F(1.0, 0.0, 10.0, 0.01))], ["CONDITIONING"], deprecated=True)
node("ControlNetApplyAdvanced", "Apply ControlNet", "conditioning/controlnet",
     [("positive", T("CONDITIONING")), ("negative", T("CONDITIONING")), ("control_net", T("CONTROL_NET")),
      ("image", T("IMAGE")), ("strength", F(1.0, 0.0, 10.0, 0.01)), ("start_percent", F(0.0, 0.0, 1.0, 0.001)),
      ("end_percent", F(1.0, 0.0, 1.0, 0.001))], ["CONDITIONING", "CONDITIONING"],
     optional=[("vae", T("VAE"))], output_names=["positive", "negative"])
node("ControlNetApplySD3", "Apply Controlnet with VAE", "conditioning/controlnet",
     [("positive", T("CONDITIONING")), ("negative", T("CONDITIONING")), ("control_net", T("CONTROL_NET")),
      ("vae", T("VAE")), ("image", T("IMAGE")), ("strength", F(1.0, 0.0, 10.0, 0.01)),
      ("start_percent", F(0.0, 0.0, 1.0, 0.001)), ("end_percent", F(1.0, 0.0, 1.0, 0.001))],
     ["CONDITIONING", "CONDITIONING"], output_names=["positive", "negative"],
     module="comfy_extras.nodes_controlnet", deprecated=True)
node("InstructPixToPixConditioning", "InstructPixToPixConditioning", "conditioning/instructpix2pix",
     [("positive", T("CONDITIONING")), ("negative", T("CONDITIONING")), ("vae", T("VAE")), ("pixels", T("IMAGE"))],
     ["CONDITIONING", "CONDITIONING", "LATENT"], output_names=["positive", "negative", "latent"],
     module="comfy_extras.nodes_ip2p")
node("FluxGuidance", "FluxGuidance", "advanced/conditioning/flux",
     [("conditioning", T("CONDITIONING")), ("guidance", F(3.5, 0.0, 100.0, 0.1))], ["CONDITIONING"],
     module="comfy_extras.nodes_flux")
node("CLIPTextEncodeFlux", "CLIPTextEncodeFlux", "advanced/conditioning/flux",
     [("clip", T("CLIP")), ("clip_l", S(multiline=True, dynamicPrompts=True)),
      ("t5xxl", S(multiline=True, dynamicPrompts=True)), ("guidance", F(3.5, 0.0, 100.0, 0.1))], ["CONDITIONING"],
     module="comfy_extras.nodes_flux")
# latents
node("EmptyLatentImage", "Empty Latent Image", "latent",
     [("width", I(512, 16, MAXRES, 8)), ("height", I(512, 16, MAXRES, 8)), ("batch_size", I(1, 1, 4096))], ["LATENT"])
node("EmptySD3LatentImage", "EmptySD3LatentImage", "latent/sd3",
     [("width", I(1024, 16, MAXRES, 16)), ("height", I(1024, 16, MAXRES, 16)), ("batch_size", I(1, 1, 4096))], ["LATENT"],
     module="comfy_extras.nodes_sd3")
UPSCALE = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
node("LatentUpscale", "Upscale Latent", "latent",
     [("samples", T("LATENT")), ("upscale_method", C(UPSCALE)), ("width", I(512, 0, MAXRES, 8)),
      ("height", I(512, 0, MAXRES, 8)), ("crop", C(["disabled", "center"]))], ["LATENT"])
node("LatentUpscaleBy", "Upscale Latent By", "latent",
     [("samples", T("LATENT")), ("upscale_method", C(UPSCALE)), ("scale_by", F(1.5, 0.01, 8.0, 0.01))], ["LATENT"])
node("LatentComposite", "Latent Composite", "latent",
     [("samples_to", T("LATENT")), ("samples_from", T("LATENT")), ("x", I(0, 0, MAXRES, 8)),
      ("y", I(0, 0, MAXRES, 8)), ("feather", I(0, 0, MAXRES, 8))], ["LATENT"])
node("VAEDecode", "VAE Decode", "latent", [("samples", T("LATENT")), ("vae", T("VAE"))], ["IMAGE"])
node("VAEEncode", "VAE Encode", "latent", [("pixels", T("IMAGE")), ("vae", T("VAE"))], ["LATENT"])
node("VAEEncodeForInpaint", "VAE Encode (for Inpainting)", "latent/inpaint",
     [("pixels", T("IMAGE")), ("vae", T("VAE")), ("mask", T("MASK")), ("grow_mask_by", I(6, 0, 64, 1))], ["LATENT"])
# sampling
node("KSampler", "KSampler", "sampling",
     [("model", T("MODEL")), ("seed", SEED), ("steps", I(20, 1, 10000)),
      ("cfg", F(8.0, 0.0, 100.0, 0.1, round=0.01)), ("sampler_name", C(SAMPLERS)), ("scheduler", C(SCHEDULERS)),
      ("positive", T("CONDITIONING")), ("negative", T("CONDITIONING")), ("latent_image", T("LATENT")),
      ("denoise", F(1.0, 0.0, 1.0, 0.01))], ["LATENT"])
node("KSamplerAdvanced", "KSampler (Advanced)", "sampling",
     [("model", T("MODEL")), ("add_noise", C(["enable", "disable"])), ("noise_seed", SEED),
      ("steps", I(20, 1, 10000)), ("cfg", F(8.0, 0.0, 100.0, 0.1, round=0.01)), ("sampler_name", C(SAMPLERS)),
      ("scheduler", C(SCHEDULERS)), ("positive", T("CONDITIONING")), ("negative", T("CONDITIONING")),
      ("latent_image", T("LATENT")), ("start_at_step", I(0, 0, 10000)), ("end_at_step", I(10000, 0, 10000)),
      ("return_with_leftover_noise", C(["disable", "enable"]))], ["LATENT"])
CS = "comfy_extras.nodes_custom_sampler"
node("KSamplerSelect", "KSamplerSelect", "sampling/custom_sampling/samplers",
     [("sampler_name", V3C(SAMPLERS))], ["SAMPLER"], module=CS)
node("BasicScheduler", "BasicScheduler", "sampling/custom_sampling/schedulers",
     [("model", T("MODEL")), ("scheduler", V3C(SCHEDULERS)), ("steps", I(20, 1, 10000)),
      ("denoise", F(1.0, 0.0, 1.0, 0.01))], ["SIGMAS"], module=CS)
node("BasicGuider", "BasicGuider", "sampling/custom_sampling/guiders",
     [("model", T("MODEL")), ("conditioning", T("CONDITIONING"))], ["GUIDER"], module=CS)
node("CFGGuider", "CFGGuider", "sampling/custom_sampling/guiders",
     [("model", T("MODEL")), ("positive", T("CONDITIONING")), ("negative", T("CONDITIONING")),
      ("cfg", F(8.0, 0.0, 100.0, 0.1, round=0.01))], ["GUIDER"], module=CS)
node("RandomNoise", "RandomNoise", "sampling/custom_sampling/noise",
     [("noise_seed", I(0, 0, SEED_MAX, control_after_generate=True))], ["NOISE"], module=CS)
node("SamplerCustomAdvanced", "SamplerCustomAdvanced", "sampling/custom_sampling",
     [("noise", T("NOISE")), ("guider", T("GUIDER")), ("sampler", T("SAMPLER")), ("sigmas", T("SIGMAS")),
      ("latent_image", T("LATENT"))], ["LATENT", "LATENT"], output_names=["output", "denoised_output"], module=CS)
node("SamplerCustom", "SamplerCustom", "sampling/custom_sampling",
     [("model", T("MODEL")), ("add_noise", ["BOOLEAN", {"default": True}]), ("noise_seed", SEED),
      ("cfg", F(8.0, 0.0, 100.0, 0.1, round=0.01)), ("positive", T("CONDITIONING")), ("negative", T("CONDITIONING")),
      ("sampler", T("SAMPLER")), ("sigmas", T("SIGMAS")), ("latent_image", T("LATENT"))],
     ["LATENT", "LATENT"], output_names=["output", "denoised_output"], module=CS)
node("ModelSamplingFlux", "ModelSamplingFlux", "advanced/model",
     [("model", T("MODEL")), ("max_shift", F(1.15, 0.0, 100.0, 0.01)), ("base_shift", F(0.5, 0.0, 100.0, 0.01)),
      ("width", I(1024, 16, MAXRES, 8)), ("height", I(1024, 16, MAXRES, 8))], ["MODEL"],
     module="comfy_extras.nodes_model_advanced")
node("ModelSamplingAuraFlow", "ModelSamplingAuraFlow", "advanced/model",
     [("model", T("MODEL")), ("shift", F(1.73, 0.0, 100.0, 0.01))], ["MODEL"],
     module="comfy_extras.nodes_model_advanced")
# images
node("SaveImage", "Save Image", "image", [("images", T("IMAGE")), ("filename_prefix", S(default="ComfyUI"))], [],
     hidden=HIDDEN_SAVE, output_node=True, description="Saves the input images to your ComfyUI output directory.")
node("PreviewImage", "Preview Image", "image", [("images", T("IMAGE"))], [], hidden=HIDDEN_SAVE, output_node=True,
     description="Saves the input images to your ComfyUI output directory.")
node("LoadImage", "Load Image", "image", [("image", C([], image_upload=True))], ["IMAGE", "MASK"])
node("LoadImageMask", "Load Image (as Mask)", "mask",
     [("image", C([], image_upload=True)), ("channel", C(["alpha", "red", "green", "blue"]))], ["MASK"])
node("ImageScale", "Upscale Image", "image/upscaling",
     [("image", T("IMAGE")), ("upscale_method", C(["nearest-exact", "bilinear", "area", "bicubic", "lanczos"])),
      ("width", I(512, 0, MAXRES, 1)), ("height", I(512, 0, MAXRES, 1)), ("crop", C(["disabled", "center"]))], ["IMAGE"])
node("ImagePadForOutpaint", "Pad Image for Outpainting", "image",
     [("image", T("IMAGE")), ("left", I(0, 0, MAXRES, 8)), ("top", I(0, 0, MAXRES, 8)),
      ("right", I(0, 0, MAXRES, 8)), ("bottom", I(0, 0, MAXRES, 8)), ("feathering", I(40, 0, MAXRES, 1))],
     ["IMAGE", "MASK"])
node("ImageUpscaleWithModel", "Upscale Image (using Model)", "image/upscaling",
     [("upscale_model", T("UPSCALE_MODEL")), ("image", T("IMAGE"))], ["IMAGE"], module="comfy_extras.nodes_upscale_model")
node("Canny", "Canny", "image/preprocessors",
     [("image", T("IMAGE")), ("low_threshold", F(0.4, 0.01, 0.99, 0.01)), ("high_threshold", F(0.8, 0.01, 0.99, 0.01))],
     ["IMAGE"], module="comfy_extras.nodes_canny")

out = {k: defs[k] for k in sorted(defs)}
with open(Path(__file__).with_name("core_node_defs.json"), "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print(len(out))
