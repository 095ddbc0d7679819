"""ComfyUI's video API nodes, calling the providers directly with the user's own keys.

Class names, inputs (names, order, combos, defaults) and outputs follow ComfyUI's
``comfy_api_nodes`` (``nodes_runway.py``, ``nodes_luma.py``, ``nodes_veo2.py``, ``nodes_kling.py``,
``nodes_pika.py``, ``nodes_sora.py``), so a workflow saved in ComfyUI with these nodes loads and
runs here.  Differences: no comfy.org account inputs (keys come from the server's environment or
``user/secrets.yaml``, see :mod:`nodes.video_api.settings`), images go to the provider inline,
and every input a provider would refuse is checked before anything is sent — literal inputs and
missing keys at queue time (a validation error naming the input or the variable), image sizes
right before the submit.

All nodes are network-bound (``Resource.NETWORK``): the runtime runs them on its network lane so a
prompt waiting minutes for a provider never holds the GPU queue.  The seed only decides when a
node runs again (providers' results are not reproducible), as in ComfyUI.
"""
from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from graph_runtime.context import Interrupted, NodeContext, NodeError
from graph_runtime.schema import (Boolean, CachePolicy, Combo, Float, Int, Node, Output, Resource, Socket, String)
from nodes.video.types import VIDEO, Video
from nodes.video_api import images as img
from nodes.video_api.engine import JobOutcome, VideoJobEngine
from nodes.video_api.errors import MissingKeyError
from nodes.video_api.protocol import HttpRequest, ProviderAdapter
from nodes.video_api.providers import fal, kling, luma, runway, sora, veo
from nodes.video_api.settings import SettingsSource

LUMA_CONCEPTS = "LUMA_CONCEPTS"
SEED_TOOLTIP = "Seed to determine if node should re-run; actual results are nondeterministic regardless of seed."


class NodeReporter:
    """The engine's view of a node: progress bar, status text, interrupt flag."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx

    def progress(self, percent: float) -> None:
        try:
            self.ctx.progress(percent, 100.0)
        except Interrupted:
            pass  # the engine notices the interrupt itself and cancels the remote job first

    def text(self, message: str) -> None:
        self.ctx.progress_text(message)  # drawn on the node by the frontend (binary frame type 3)

    def interrupted(self) -> bool:
        return self.ctx.interrupted


def _check_prompt(node: str, name: str, text: str | None, *, min_length: int = 0, max_length: int | None = None,
                  utf16: bool = False) -> None:
    if text is None:  # linked: checked when the node runs
        return
    length = runway.utf16_length(text) if utf16 else len(text)
    if len(text.strip()) < min_length:
        raise NodeError(f"{node}: '{name}' needs at least {min_length} character(s)", input_name=name)
    if max_length is not None and length > max_length:
        raise NodeError(f"{node}: '{name}' is {length} characters long; the provider accepts at most {max_length}",
                        input_name=name)


class VideoApiNode(Node):
    """Shared flow of every provider node: check, build the request, run the engine, make a VIDEO."""

    ABSTRACT = True
    RESOURCE = Resource.NETWORK
    CACHE = CachePolicy.SEEDED
    OUTPUTS = (Output(VIDEO),)
    ADAPTER: ClassVar[type[ProviderAdapter]]

    # -- per node class ---------------------------------------------------------------------------
    @classmethod
    def make_adapter(cls, source: SettingsSource) -> ProviderAdapter:
        return cls.ADAPTER(source)

    @classmethod
    def check_literals(cls, **inputs: Any) -> None:
        """Raise NodeError(input_name=…) for values the provider would refuse (None = linked)."""

    def build_request(self, adapter: Any, **inputs: Any) -> HttpRequest:  # pragma: no cover - abstract
        raise NotImplementedError

    def results(self, video: Video, outcome: JobOutcome) -> tuple:
        return (video,)

    # -- shared -----------------------------------------------------------------------------------
    @classmethod
    def _check_ranges(cls, inputs: dict[str, Any]) -> None:
        """Built-in range checks (validation skips them for nodes with their own ``validate_inputs``)."""
        for spec in cls.INPUTS:
            value = inputs.get(spec.name)
            if value is None or spec.type not in ("INT", "FLOAT"):
                continue
            if spec.min is not None and value < spec.min or spec.max is not None and value > spec.max:
                raise NodeError(f"{cls.__name__}: '{spec.name}' is {value}; allowed {spec.min} to {spec.max}",
                                input_name=spec.name)

    @classmethod
    def validate_inputs(cls, paths: Any = None, **inputs: Any) -> bool | str:
        adapter = cls.make_adapter(SettingsSource.load(paths.user_dir if paths is not None else None))
        problem = adapter.missing_key_message()
        if problem:
            raise MissingKeyError(problem, provider=adapter.title)
        cls._check_ranges(inputs)
        cls.check_literals(**inputs)
        return True

    async def execute(self, ctx: NodeContext, **inputs: Any) -> tuple:
        source = await asyncio.to_thread(SettingsSource.load, ctx.paths.user_dir)  # file I/O: off the loop
        adapter = self.make_adapter(source)
        problem = adapter.missing_key_message()
        if problem:
            raise MissingKeyError(problem, provider=adapter.title)
        literal = {s.name: inputs.get(s.name) for s in self.INPUTS if s.is_widget}
        self._check_ranges(literal)
        self.check_literals(**literal)

        async def submit() -> HttpRequest:  # only called when there is no job to resume
            return await asyncio.to_thread(self.build_request, adapter, **inputs)

        journal = getattr(ctx, "remote_jobs", None)
        outcome = await VideoJobEngine(adapter).run(submit, journal=journal, reporter=NodeReporter(ctx))
        ctx.record(provider=adapter.name, remote_job_id=outcome.remote_id, resumed=outcome.resumed,
                   polls=outcome.polls, retries=outcome.retries, remote_seconds=round(outcome.seconds, 3))
        video = await asyncio.to_thread(Video.from_bytes, outcome.data)  # probing is CPU work: off the lane
        return self.results(video, outcome)


# -- Runway ---------------------------------------------------------------------------------------

class _RunwayNode(VideoApiNode):
    ABSTRACT = True
    NETWORK_KEY = "runway"  # one in-flight limit per provider account
    CATEGORY = "api node/video/Runway"
    ADAPTER = runway.RunwayAdapter
    MODEL: ClassVar[str] = "gen4_turbo"

    @classmethod
    def check_literals(cls, prompt: str | None = None, **_: Any) -> None:
        _check_prompt(cls.__name__, "prompt", prompt, min_length=1, max_length=runway.MAX_PROMPT, utf16=True)

    def _frame(self, image: Any, name: str) -> str:
        frame = img.first_image(image, name, type(self).__name__)
        img.check_image(frame, node=type(self).__name__, input_name=name, max_side=7999, min_aspect=0.5,
                        max_aspect=2.0)
        return img.data_uri(frame, max_bytes=runway.MAX_DATA_URI_BYTES * 3 // 4)

    def build_request(self, adapter: runway.RunwayAdapter, *, prompt: str, start_frame: Any, duration: int,
                      ratio: str, seed: int, end_frame: Any = None, **_: Any) -> HttpRequest:
        frames = [(self._frame(start_frame, "start_frame"), "first")]
        if end_frame is not None:
            frames.append((self._frame(end_frame, "end_frame"), "last"))
        return adapter.image_to_video(model=self.MODEL, prompt=prompt, images=frames, ratio=ratio,
                                      duration=duration, seed=seed)


def _runway_inputs(ratios: tuple[str, ...], end_frame: bool = False) -> tuple:
    frames = (Socket("start_frame", "IMAGE", tooltip="Start frame to be used for the video"),)
    if end_frame:
        frames += (Socket("end_frame", "IMAGE", tooltip="End frame to be used for the video. Supported for "
                          "gen3a_turbo only."),)
    return (String("prompt", "", multiline=True, tooltip="Text prompt for the generation"),
            *frames,
            Combo("duration", runway.DURATIONS, runway.DURATIONS[0]),
            Combo("ratio", ratios, ratios[0]),
            Int("seed", 0, min=0, max=runway.MAX_SEED, control_after_generate=True, display="number",
                tooltip="Random seed for generation"))


class RunwayImageToVideoNodeGen3a(_RunwayNode):
    """Generate a video from a single starting frame using Gen3a Turbo model."""

    DISPLAY_NAME = "Runway Image to Video (Gen3a Turbo)"
    MODEL = "gen3a_turbo"
    INPUTS = _runway_inputs(runway.GEN3A_RATIOS)


class RunwayImageToVideoNodeGen4(_RunwayNode):
    """Generate a video from a single starting frame using Gen4 Turbo model."""

    DISPLAY_NAME = "Runway Image to Video (Gen4 Turbo)"
    MODEL = "gen4_turbo"
    INPUTS = _runway_inputs(runway.GEN4_RATIOS)


class RunwayFirstLastFrameNode(_RunwayNode):
    """Upload first and last keyframes, draft a prompt, and generate a video (Gen3a Turbo)."""

    DISPLAY_NAME = "Runway First-Last-Frame to Video"
    MODEL = "gen3a_turbo"
    INPUTS = _runway_inputs(runway.GEN3A_RATIOS, end_frame=True)


# -- Luma -----------------------------------------------------------------------------------------

LUMA_CONCEPT_NAMES = (
    "truck_left", "pan_right", "pedestal_down", "low_angle", "pedestal_up", "selfie", "pan_left", "roll_right",
    "zoom_in", "over_the_shoulder", "orbit_right", "orbit_left", "static", "tiny_planet", "high_angle", "bolt_cam",
    "dolly_zoom", "overhead", "zoom_out", "handheld", "roll_left", "pov", "aerial_drone", "push_in", "crane_down",
    "truck_right", "tilt_down", "elevator_doors", "tilt_up", "ground_level", "pull_out", "aerial", "crane_up",
    "eye_level")


class LumaConceptsNode(Node):
    """Holds one or more Camera Concepts for use with Luma Text to Video and Luma Image to Video nodes."""

    DISPLAY_NAME = "Luma Concepts"
    CATEGORY = "api node/video/Luma"
    INPUTS = tuple(Combo(f"concept{i}", ("None",) + LUMA_CONCEPT_NAMES, "None") for i in range(1, 5)) + (
        Socket("luma_concepts", LUMA_CONCEPTS, optional=True,
               tooltip="Optional Camera Concepts to add to the ones chosen here."),)
    OUTPUTS = (Output(LUMA_CONCEPTS, "luma_concepts"),)

    def execute(self, ctx: NodeContext, concept1: str, concept2: str, concept3: str, concept4: str,
                luma_concepts: list[str] | None = None) -> tuple:
        chosen = [c for c in (concept1, concept2, concept3, concept4) if c != "None"]
        return (list(luma_concepts or []) + chosen,)


class _LumaNode(VideoApiNode):
    ABSTRACT = True
    NETWORK_KEY = "luma"  # one in-flight limit per provider account
    CATEGORY = "api node/video/Luma"
    ADAPTER = luma.LumaAdapter

    @classmethod
    def check_literals(cls, prompt: str | None = None, **_: Any) -> None:
        _check_prompt(cls.__name__, "prompt", prompt, min_length=luma.MIN_PROMPT, max_length=luma.MAX_PROMPT)


def _luma_common(aspect: bool) -> tuple:
    head = (String("prompt", "", multiline=True, tooltip="Prompt for the video generation"),
            Combo("model", luma.MODELS, luma.MODELS[0]))
    if aspect:
        head += (Combo("aspect_ratio", luma.ASPECT_RATIOS, "16:9"),)
    return head + (Combo("resolution", luma.RESOLUTIONS, "540p"),
                   Combo("duration", luma.DURATIONS, luma.DURATIONS[0]),
                   Boolean("loop", False),
                   Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=SEED_TOOLTIP))


class LumaVideoNode(_LumaNode):
    """Generates videos synchronously based on prompt and output_size."""

    DISPLAY_NAME = "Luma Text to Video"
    INPUTS = _luma_common(aspect=True) + (
        Socket(LUMA_CONCEPTS.lower(), LUMA_CONCEPTS, optional=True,
               tooltip="Optional Camera Concepts to dictate camera motion via the Luma Concepts node."),)

    def build_request(self, adapter: luma.LumaAdapter, *, prompt: str, model: str, aspect_ratio: str,
                      resolution: str, duration: str, loop: bool, luma_concepts: list[str] | None = None,
                      **_: Any) -> HttpRequest:
        return adapter.generate(prompt=prompt, model=model, aspect_ratio=aspect_ratio, resolution=resolution,
                                duration=duration, loop=loop, concepts=luma_concepts)


class LumaImageToVideoNode(_LumaNode):
    """Generates videos synchronously based on prompt, input images, and output_size."""

    DISPLAY_NAME = "Luma Image to Video"
    INPUTS = _luma_common(aspect=False) + (
        Socket("first_image", "IMAGE", optional=True, tooltip="First frame of generated video."),
        Socket("last_image", "IMAGE", optional=True, tooltip="Last frame of generated video."),
        Socket(LUMA_CONCEPTS.lower(), LUMA_CONCEPTS, optional=True,
               tooltip="Optional Camera Concepts to dictate camera motion via the Luma Concepts node."))

    def build_request(self, adapter: luma.LumaAdapter, *, prompt: str, model: str, resolution: str, duration: str,
                      loop: bool, first_image: Any = None, last_image: Any = None,
                      luma_concepts: list[str] | None = None, **_: Any) -> HttpRequest:
        if first_image is None and last_image is None:
            raise NodeError("LumaImageToVideoNode: connect first_image, last_image or both", input_name="first_image")
        frames = {}
        for name, image in (("first_image", first_image), ("last_image", last_image)):
            if image is not None:
                frame = img.first_image(image, name, "LumaImageToVideoNode")
                img.check_image(frame, node="LumaImageToVideoNode", input_name=name, max_side=8192)
                frames[name] = img.data_uri(frame, max_bytes=10 << 20)
        return adapter.generate(prompt=prompt, model=model, aspect_ratio="16:9", resolution=resolution,
                                duration=duration, loop=loop, frame0=frames.get("first_image"),
                                frame1=frames.get("last_image"), concepts=luma_concepts)


# -- Google Veo (Gemini API) ------------------------------------------------------------------------

def _veo_inputs(duration: int, min_duration: int, models: tuple[str, ...], default_model: str,
                audio: bool) -> tuple:
    inputs = (String("prompt", "", multiline=True, tooltip="Text description of the video"),
              Combo("aspect_ratio", veo.ASPECT_RATIOS, "16:9", tooltip="Aspect ratio of the output video"),
              String("negative_prompt", "", multiline=True, optional=True,
                     tooltip="Negative text prompt to guide what to avoid in the video"),
              Int("duration_seconds", duration, min=min_duration, max=8, display="number", optional=True,
                  tooltip="Duration of the output video in seconds"),
              Boolean("enhance_prompt", True, optional=True, tooltip="Whether to enhance the prompt with AI assistance"),
              Combo("person_generation", ("ALLOW", "BLOCK"), "ALLOW", optional=True,
                    tooltip="Whether to allow generating people in the video"),
              Int("seed", 0, min=0, max=0xFFFFFFFF, control_after_generate=True, display="number", optional=True,
                  tooltip="Seed for video generation (0 for random); the Gemini API has no seed, it only decides "
                          "when the node runs again"),
              Socket("image", "IMAGE", optional=True, tooltip="Optional reference image to guide video generation"),
              Combo("model", models, default_model, optional=True, tooltip="Veo model to use for video generation"))
    if audio:
        inputs += (Boolean("generate_audio", False, optional=True,
                           tooltip="Generate audio for the video (Veo 3 on the Gemini API always does)"),)
    return inputs


class VeoVideoGenerationNode(VideoApiNode):
    """Generates videos from text prompts using Google's Veo 2 API."""

    NETWORK_KEY = "veo"
    DISPLAY_NAME = "Google Veo 2 Video Generation"
    CATEGORY = "api node/video/Veo"
    ADAPTER = veo.VeoAdapter
    INPUTS = _veo_inputs(5, 5, ("veo-2.0-generate-001",), "veo-2.0-generate-001", audio=False)

    @classmethod
    def check_literals(cls, prompt: str | None = None, model: str | None = None, **_: Any) -> None:
        _check_prompt(cls.__name__, "prompt", prompt, min_length=1)

    def build_request(self, adapter: veo.VeoAdapter, *, prompt: str, aspect_ratio: str = "16:9",
                      negative_prompt: str = "", duration_seconds: int | None = None, enhance_prompt: bool = True,
                      person_generation: str = "ALLOW", image: Any = None, model: str | None = None,
                      **_: Any) -> HttpRequest:
        default_model = next(s.default for s in self.INPUTS if s.name == "model")
        default_duration = next(s.default for s in self.INPUTS if s.name == "duration_seconds")
        encoded = None
        if image is not None:
            frame = img.first_image(image, "image", type(self).__name__)
            img.check_image(frame, node=type(self).__name__, input_name="image", min_side=64)
            encoded = img.base64_image(frame, max_bytes=15 << 20)
        return adapter.generate(model=model or default_model, prompt=prompt, aspect_ratio=aspect_ratio,
                                duration_seconds=duration_seconds or default_duration, negative_prompt=negative_prompt,
                                enhance_prompt=enhance_prompt, person_generation=person_generation, image=encoded)


class Veo3VideoGenerationNode(VeoVideoGenerationNode):
    """Generates videos from text prompts using Google's Veo 3 API."""

    DISPLAY_NAME = "Google Veo 3 Video Generation"
    INPUTS = _veo_inputs(8, 8, tuple(veo.MODELS), "veo-3.0-generate-001", audio=True)


# -- Kling ----------------------------------------------------------------------------------------

MODE_TEXT2VIDEO = {
    "standard mode / 5s duration / kling-v1": ("std", "5", "kling-v1"),
    "standard mode / 10s duration / kling-v1": ("std", "10", "kling-v1"),
    "pro mode / 5s duration / kling-v1": ("pro", "5", "kling-v1"),
    "pro mode / 10s duration / kling-v1": ("pro", "10", "kling-v1"),
    "standard mode / 5s duration / kling-v1-6": ("std", "5", "kling-v1-6"),
    "standard mode / 10s duration / kling-v1-6": ("std", "10", "kling-v1-6"),
    "pro mode / 5s duration / kling-v2-master": ("pro", "5", "kling-v2-master"),
    "pro mode / 10s duration / kling-v2-master": ("pro", "10", "kling-v2-master"),
    "standard mode / 5s duration / kling-v2-master": ("std", "5", "kling-v2-master"),
    "standard mode / 10s duration / kling-v2-master": ("std", "10", "kling-v2-master"),
    "pro mode / 5s duration / kling-v2-1-master": ("pro", "5", "kling-v2-1-master"),
    "pro mode / 10s duration / kling-v2-1-master": ("pro", "10", "kling-v2-1-master"),
    "pro mode / 5s duration / kling-v2-5-turbo": ("pro", "5", "kling-v2-5-turbo"),
    "pro mode / 10s duration / kling-v2-5-turbo": ("pro", "10", "kling-v2-5-turbo"),
}
KLING_STD_UNSUPPORTED = frozenset({"kling-v2-5-turbo"})  # std mode is refused for these models


class _KlingNode(VideoApiNode):
    ABSTRACT = True
    NETWORK_KEY = "kling"  # one in-flight limit per provider account
    CATEGORY = "api node/video/Kling"
    OUTPUTS = (Output(VIDEO), Output("STRING", "video_id"), Output("STRING", "duration"))
    KIND: ClassVar[str] = "text2video"
    MAX_PROMPT: ClassVar[int] = kling.MAX_PROMPT_T2V

    @classmethod
    def make_adapter(cls, source: SettingsSource) -> ProviderAdapter:
        return kling.KlingAdapter(source, cls.KIND)

    @classmethod
    def check_literals(cls, prompt: str | None = None, negative_prompt: str | None = None, **_: Any) -> None:
        _check_prompt(cls.__name__, "prompt", prompt, min_length=1, max_length=cls.MAX_PROMPT)
        _check_prompt(cls.__name__, "negative_prompt", negative_prompt, max_length=cls.MAX_PROMPT)

    def results(self, video: Video, outcome: JobOutcome) -> tuple:
        result = outcome.status.result
        return (video, str(result.get("video_id") or ""), str(result.get("duration") or ""))


class KlingTextToVideoNode(_KlingNode):
    """Kling Text to Video Node"""

    DISPLAY_NAME = "Kling Text to Video"
    INPUTS = (String("prompt", "", multiline=True, tooltip="Positive text prompt"),
              String("negative_prompt", "", multiline=True, tooltip="Negative text prompt"),
              Float("cfg_scale", 1.0, min=0.0, max=1.0),
              Combo("aspect_ratio", kling.ASPECT_RATIOS, "16:9"),
              Combo("mode", tuple(MODE_TEXT2VIDEO), tuple(MODE_TEXT2VIDEO)[4],
                    tooltip="The configuration to use for the video generation following the format: "
                            "mode / duration / model_name."))

    def build_request(self, adapter: kling.KlingAdapter, *, prompt: str, negative_prompt: str, cfg_scale: float,
                      aspect_ratio: str, mode: str, **_: Any) -> HttpRequest:
        model_mode, duration, model_name = MODE_TEXT2VIDEO[mode]
        body: dict[str, Any] = {"model_name": model_name, "prompt": prompt, "cfg_scale": float(cfg_scale),
                                "mode": model_mode, "aspect_ratio": aspect_ratio, "duration": duration}
        if negative_prompt:
            body["negative_prompt"] = negative_prompt
        return adapter.submit(body)


class KlingImage2VideoNode(_KlingNode):
    """Kling Image to Video Node"""

    DISPLAY_NAME = "Kling Image to Video"
    KIND = "image2video"
    MAX_PROMPT = kling.MAX_PROMPT_I2V
    INPUTS = (Socket("start_frame", "IMAGE", tooltip="The reference image used to generate the video."),
              String("prompt", "", multiline=True, tooltip="Positive text prompt"),
              String("negative_prompt", "", multiline=True, tooltip="Negative text prompt"),
              Combo("model_name", kling.MODELS, "kling-v2-master"),
              Float("cfg_scale", 0.8, min=0.0, max=1.0),
              Combo("mode", kling.MODES, "std"),
              Combo("aspect_ratio", kling.ASPECT_RATIOS, "16:9"),
              Combo("duration", kling.DURATIONS, "5"))

    def build_request(self, adapter: kling.KlingAdapter, *, start_frame: Any, prompt: str, negative_prompt: str,
                      model_name: str, cfg_scale: float, mode: str, aspect_ratio: str, duration: str,
                      **_: Any) -> HttpRequest:
        frame = img.first_image(start_frame, "start_frame", type(self).__name__)
        img.check_image(frame, node=type(self).__name__, input_name="start_frame", min_side=300,
                        min_aspect=1 / 2.5, max_aspect=2.5)
        encoded, _mime = img.base64_image(frame, max_bytes=10 << 20)
        if mode == "std" and model_name in KLING_STD_UNSUPPORTED:
            mode = "pro"  # as ComfyUI does: the model has no standard mode
        body: dict[str, Any] = {"model_name": model_name, "image": encoded, "prompt": prompt,
                                "cfg_scale": float(cfg_scale), "mode": mode, "aspect_ratio": aspect_ratio,
                                "duration": duration}
        if negative_prompt:
            body["negative_prompt"] = negative_prompt
        return adapter.submit(body)


# -- Pika 2.2 (through fal.ai) ----------------------------------------------------------------------

def _pika_base_inputs() -> tuple:
    return (String("prompt_text", "", multiline=True),
            String("negative_prompt", "", multiline=True),
            Int("seed", 0, min=0, max=0xFFFFFFFF, control_after_generate=True),
            Combo("resolution", fal.PIKA_RESOLUTIONS, "1080p"),
            Combo("duration", fal.PIKA_DURATIONS, 5))


class _PikaNode(VideoApiNode):
    ABSTRACT = True
    NETWORK_KEY = "fal"  # one in-flight limit per provider account
    CATEGORY = "api node/video/Pika"
    ADAPTER = fal.FalAdapter

    @classmethod
    def check_literals(cls, prompt_text: str | None = None, aspect_ratio: float | None = None, **_: Any) -> None:
        _check_prompt(cls.__name__, "prompt_text", prompt_text, min_length=1)
        if aspect_ratio is not None and fal.nearest_pika_ratio(float(aspect_ratio)) is None:
            names = ", ".join(f"{k} ({v:.3f})" for k, v in fal.PIKA_ASPECT_RATIOS.items())
            raise NodeError(f"{cls.__name__}: aspect_ratio {aspect_ratio:.3f} is not one Pika on fal supports; "
                            f"use one of {names}", input_name="aspect_ratio")

    @staticmethod
    def _arguments(prompt_text: str, negative_prompt: str, seed: int, resolution: str, duration: int) -> dict:
        args: dict[str, Any] = {"prompt": prompt_text, "seed": int(seed), "resolution": resolution,
                                "duration": int(duration)}
        if negative_prompt:
            args["negative_prompt"] = negative_prompt
        return args


class PikaImageToVideoNode2_2(_PikaNode):
    """Sends an image and prompt to the Pika API v2.2 to generate a video."""

    DISPLAY_NAME = "Pika Image to Video"
    INPUTS = (Socket("image", "IMAGE", tooltip="The image to convert to video"),) + _pika_base_inputs()

    def build_request(self, adapter: fal.FalAdapter, *, image: Any, prompt_text: str, negative_prompt: str, seed: int,
                      resolution: str, duration: int, **_: Any) -> HttpRequest:
        frame = img.first_image(image, "image", type(self).__name__)
        img.check_image(frame, node=type(self).__name__, input_name="image", min_side=64, min_aspect=0.4,
                        max_aspect=2.5)
        args = self._arguments(prompt_text, negative_prompt, seed, resolution, duration)
        args["image_url"] = img.data_uri(frame, max_bytes=10 << 20)
        return adapter.submit(fal.PIKA_I2V, args)


class PikaTextToVideoNode2_2(_PikaNode):
    """Sends a text prompt to the Pika API v2.2 to generate a video."""

    DISPLAY_NAME = "Pika Text to Video"
    INPUTS = _pika_base_inputs() + (
        Float("aspect_ratio", 1.7777777777777777, min=0.4, max=2.5, step=0.001, tooltip="Aspect ratio (width / height)"),)

    def build_request(self, adapter: fal.FalAdapter, *, prompt_text: str, negative_prompt: str, seed: int,
                      resolution: str, duration: int, aspect_ratio: float, **_: Any) -> HttpRequest:
        args = self._arguments(prompt_text, negative_prompt, seed, resolution, duration)
        args["aspect_ratio"] = fal.nearest_pika_ratio(float(aspect_ratio))
        return adapter.submit(fal.PIKA_T2V, args)


# -- OpenAI Sora ----------------------------------------------------------------------------------

class OpenAIVideoSora2(VideoApiNode):
    """OpenAI video and audio generation (Sora 2)."""

    NETWORK_KEY = "openai"
    DISPLAY_NAME = "OpenAI Sora - Video"
    CATEGORY = "api node/video/Sora"
    ADAPTER = sora.SoraAdapter
    INPUTS = (Combo("model", sora.MODELS, "sora-2"),
              String("prompt", "", multiline=True, tooltip="Guiding text; may be empty if an input image is present."),
              Combo("size", sora.SIZES, "1280x720"),
              Combo("duration", sora.DURATIONS, 8),
              Socket("image", "IMAGE", optional=True),
              Int("seed", 0, min=0, max=2147483647, control_after_generate=True, display="number", optional=True,
                  tooltip=SEED_TOOLTIP))

    @classmethod
    def check_literals(cls, model: str | None = None, size: str | None = None, **_: Any) -> None:
        if model == "sora-2" and size is not None and size not in sora.SORA2_SIZES:
            raise NodeError(f"OpenAIVideoSora2: size {size} needs sora-2-pro; sora-2 makes "
                            f"{' or '.join(sora.SORA2_SIZES)}", input_name="size")

    def build_request(self, adapter: sora.SoraAdapter, *, model: str, prompt: str, size: str, duration: int,
                      image: Any = None, **_: Any) -> HttpRequest:
        encoded = None
        if image is not None:
            frame = img.first_image(image, "image", "OpenAIVideoSora2")
            width, height = (int(x) for x in size.split("x"))
            img.check_image(frame, node="OpenAIVideoSora2", input_name="image", exact_size=(width, height))
            encoded = img.encode_image(frame)
        elif not prompt.strip():
            raise NodeError("OpenAIVideoSora2: write a prompt or connect an image", input_name="prompt")
        return adapter.create(model=model, prompt=prompt, seconds=duration, size=size, image=encoded)
