"""The video API nodes end to end through the runtime, against the fake providers on 127.0.0.1:
every node writes a playable MP4, faults are survived, keys are checked and never leak, inputs a
provider would refuse are refused first, and ComfyUI's own Runway template runs."""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import av
import pytest
import yaml

from graph_runtime.events import Progress, ProgressText
from graph_runtime.registry import build_registry
from graph_runtime.service import Runtime
from nodes.video import codec
from tests.fake_providers import FAKES, Outcome, settings_for

KEY_NAMES = ("RUNWAYML_API_SECRET", "LUMAAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "KLING_ACCESS_KEY",
             "KLING_SECRET_KEY", "FAL_KEY", "OPENAI_API_KEY", "RUNWAYML_BASE_URL", "LUMAAI_BASE_URL",
             "GEMINI_BASE_URL", "KLING_BASE_URL", "FAL_BASE_URL", "OPENAI_BASE_URL", "GENESIS_VIDEO_POLL_INTERVAL",
             "GENESIS_VIDEO_RETRY_BASE", "GENESIS_VIDEO_DEADLINE")
FAST = {"GENESIS_VIDEO_POLL_INTERVAL": 0.03, "GENESIS_VIDEO_RETRY_BASE": 0.02}
PACKS = ["nodes.primitives", "nodes.image", "nodes.video.nodes", "nodes.video_api.nodes"]


@pytest.fixture
def fakes():
    started = {name: cls(audio=name == "veo").start() for name, cls in FAKES.items()}
    yield started
    for fake in started.values():
        fake.stop()


def write_secrets(paths, fakes, **overrides) -> dict:
    values: dict = dict(FAST)
    for fake in fakes.values():
        values.update(settings_for(fake))
    values.update(overrides)
    values = {k: v for k, v in values.items() if v is not None}
    (paths.user_dir / "secrets.yaml").write_text(yaml.safe_dump(values))
    return values


@pytest.fixture
def clean_env(monkeypatch):
    for name in KEY_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class Events:
    def __init__(self) -> None:
        self.items: list = []
        self.lock = threading.Lock()

    def __call__(self, event, client_id) -> None:
        with self.lock:
            self.items.append(event)


@pytest.fixture
def runtime(base_dir, fakes, clean_env):
    write_secrets(base_dir, fakes)
    rt = Runtime(base_dir, registry=build_registry(packs=PACKS))
    rt.events = Events()
    rt.add_listener(rt.events)
    rt.start()
    yield rt
    for fake in fakes.values():
        fake.release()
    rt.stop()


def image(width: int = 384, height: int = 320, color: int = 0x336699) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}}


def video_prompt(node: str, inputs: dict, **extra_nodes) -> dict:
    prompt = {"img": image(), "gen": {"class_type": node, "inputs": inputs},
              "save": {"class_type": "SaveVideo", "inputs": {"video": ["gen", 0], "filename_prefix": f"video/{node}",
                                                            "format": "auto", "codec": "auto"}}}
    prompt.update(extra_nodes)
    return prompt


IMG = ["img", 0]
CASES = {
    "RunwayImageToVideoNodeGen4": ("runway", {"prompt": "a cat turns", "start_frame": IMG, "duration": 5,
                                              "ratio": "1280:720", "seed": 1}),
    "RunwayImageToVideoNodeGen3a": ("runway", {"prompt": "a cat turns", "start_frame": IMG, "duration": 10,
                                               "ratio": "1280:768", "seed": 2}),
    "RunwayFirstLastFrameNode": ("runway", {"prompt": "morph", "start_frame": IMG, "end_frame": ["img2", 0],
                                            "duration": 5, "ratio": "768:1280", "seed": 3}),
    "LumaVideoNode": ("luma", {"prompt": "a lighthouse at dusk", "model": "ray-2", "aspect_ratio": "16:9",
                               "resolution": "540p", "duration": "5s", "loop": False, "seed": 0,
                               "luma_concepts": ["concepts", 0]}),
    "LumaImageToVideoNode": ("luma", {"prompt": "the photo comes alive", "model": "ray-1-6", "resolution": "720p",
                                      "duration": "9s", "loop": True, "seed": 0, "first_image": IMG}),
    "VeoVideoGenerationNode": ("veo", {"prompt": "waves", "aspect_ratio": "16:9", "negative_prompt": "people",
                                       "duration_seconds": 6, "image": IMG, "seed": 5}),
    "Veo3VideoGenerationNode": ("veo", {"prompt": "waves", "aspect_ratio": "9:16", "model": "veo-3.1-generate",
                                        "generate_audio": True}),
    "KlingTextToVideoNode": ("kling", {"prompt": "a fox", "negative_prompt": "", "cfg_scale": 0.5,
                                       "aspect_ratio": "1:1", "mode": "pro mode / 10s duration / kling-v2-5-turbo"}),
    "KlingImage2VideoNode": ("kling", {"start_frame": IMG, "prompt": "a fox runs", "negative_prompt": "blur",
                                       "model_name": "kling-v2-5-turbo", "cfg_scale": 0.8, "mode": "std",
                                       "aspect_ratio": "16:9", "duration": "5"}),
    "PikaImageToVideoNode2_2": ("fal", {"image": IMG, "prompt_text": "zoom in", "negative_prompt": "", "seed": 9,
                                        "resolution": "720p", "duration": 5}),
    "PikaTextToVideoNode2_2": ("fal", {"prompt_text": "a dragon", "negative_prompt": "", "seed": 9,
                                       "resolution": "1080p", "duration": 10, "aspect_ratio": 0.5625}),
    "OpenAIVideoSora2": ("openai", {"model": "sora-2", "prompt": "a paper boat", "size": "1280x720",
                                    "duration": 4, "seed": 0}),
}


def run_prompt(rt: Runtime, prompt: dict, status: str = "success", timeout: float = 60) -> dict:
    result = rt.submit(prompt)
    assert result.ok, (result.error, result.node_errors)
    assert rt.wait_idle(timeout)
    entry = rt.store.get(result.prompt_id).history_entry()
    assert entry["status"]["status_str"] == status, entry["status"]["messages"][-1]
    return entry


def saved_file(rt: Runtime, entry: dict) -> Path:
    item = entry["outputs"]["save"]["images"][0]
    assert entry["outputs"]["save"]["animated"] == [True] and item["filename"].endswith(".mp4")
    return rt.paths.output_dir / item["subfolder"] / item["filename"]


@pytest.mark.parametrize("node", sorted(CASES))
def test_each_node_runs_end_to_end_and_saves_the_served_video(runtime, fakes, node):
    provider, inputs = CASES[node]
    fake = fakes[provider]
    extra = {"img2": image(color=0x995511), "concepts": {"class_type": "LumaConceptsNode", "inputs": {
        "concept1": "push_in", "concept2": "None", "concept3": "orbit_left", "concept4": "None"}}}
    entry = run_prompt(runtime, video_prompt(node, inputs, **extra))
    info = codec.verify_playable(saved_file(runtime, entry))
    assert (info.width, info.height) == fake.size and info.frame_count == fake.frames
    assert info.has_audio == (provider == "veo")
    assert fake.submit_count == 1
    meta = entry["meta"]["gen"]["execution"]
    assert meta["remote_job_id"].rsplit("/", 1)[-1] in fake.jobs and meta["resumed"] is False
    texts = [e.text for e in runtime.events.items if isinstance(e, ProgressText) and e.node_id == "gen"]
    assert any("queued" in t or "running" in t for t in texts) and texts[-1].endswith("done")
    percents = [e.value for e in runtime.events.items if isinstance(e, Progress) and e.node == "gen"]
    assert percents and percents[-1] == 100.0
    body = next(iter(fake.jobs.values())).body
    if provider == "kling":  # idempotency key and the std → pro upgrade for turbo
        assert body["external_task_id"].startswith("genesis-") and body["mode"] == "pro"
    if provider == "luma" and node == "LumaVideoNode":
        assert body["concepts"] == [{"key": "push_in"}, {"key": "orbit_left"}]
    if node == "PikaTextToVideoNode2_2":
        assert body["aspect_ratio"] == "9:16"


FAULTY = {"runway": "RunwayImageToVideoNodeGen4", "luma": "LumaVideoNode", "veo": "VeoVideoGenerationNode",
          "kling": "KlingTextToVideoNode", "fal": "PikaTextToVideoNode2_2", "openai": "OpenAIVideoSora2"}


@pytest.mark.parametrize("provider", sorted(FAULTY))
def test_429_with_retry_after_503_bursts_and_a_slow_download_still_submit_once(runtime, fakes, provider):
    node = FAULTY[provider]
    fake = fakes[provider]
    fake.fail_next("submit", 429, headers={"Retry-After": "0.1"})
    fake.fail_next("status", 429, headers={"retry-after-ms": "50"})
    fake.fail_next("status", 503, times=3)
    fake.download_delay = 0.001
    entry = run_prompt(runtime, video_prompt(node, CASES[node][1], **{"concepts": {
        "class_type": "LumaConceptsNode", "inputs": {f"concept{i}": "None" for i in range(1, 5)}}}))
    assert codec.verify_playable(saved_file(runtime, entry)).frame_count == fake.frames
    assert fake.submit_count == 1 and fake.count("submit") == 2
    assert entry["meta"]["gen"]["execution"]["retries"] >= 5


@pytest.mark.parametrize("provider", sorted(FAULTY))
def test_content_rejection_is_reported_with_the_providers_reason(runtime, fakes, provider):
    node = FAULTY[provider]
    fakes[provider].end_next_job(Outcome("reject", message="REASON-1234: refused by moderation"))
    entry = run_prompt(runtime, video_prompt(node, CASES[node][1], **{"concepts": {
        "class_type": "LumaConceptsNode", "inputs": {f"concept{i}": "None" for i in range(1, 5)}}}), "error")
    error = entry["status"]["messages"][-1][1]
    assert error["exception_type"].endswith("ContentRejectedError"), error
    assert "REASON-1234" in error["exception_message"] and error["node_id"] == "gen"


def test_interrupt_mid_poll_cancels_the_remote_job_once(runtime, fakes):
    fake = fakes["runway"]
    fake.hold_jobs = True
    result = runtime.submit(video_prompt("RunwayImageToVideoNodeGen4", CASES["RunwayImageToVideoNodeGen4"][1]))
    fake.wait_until(lambda: fake.count("status") >= 2, "polling")
    assert runtime.interrupt(result.prompt_id)
    assert runtime.wait_idle(10)
    assert runtime.store.get(result.prompt_id).status.value == "interrupted"
    assert fake.count("cancel") == 1 and fake.cancel_count == 1


# -- keys -----------------------------------------------------------------------------------------------

MISSING = {"runway": ("RunwayImageToVideoNodeGen4", "RUNWAYML_API_SECRET"), "luma": ("LumaVideoNode", "LUMAAI_API_KEY"),
           "veo": ("Veo3VideoGenerationNode", "GEMINI_API_KEY"), "kling": ("KlingImage2VideoNode", "KLING_SECRET_KEY"),
           "fal": ("PikaImageToVideoNode2_2", "FAL_KEY"), "openai": ("OpenAIVideoSora2", "OPENAI_API_KEY")}


@pytest.mark.parametrize("provider", sorted(MISSING))
def test_a_missing_key_is_a_validation_error_naming_the_variable(base_dir, fakes, clean_env, provider):
    node, variable = MISSING[provider]
    write_secrets(base_dir, fakes, **{variable: None})
    rt = Runtime(base_dir, registry=build_registry(packs=PACKS))
    try:
        result = rt.submit(video_prompt(node, CASES[node][1], **{"concepts": {
            "class_type": "LumaConceptsNode", "inputs": {f"concept{i}": "None" for i in range(1, 5)}}}))
        assert not result.ok
        text = json.dumps(result.node_errors["gen"])
        assert variable in text and "secrets.yaml" in text
        assert fakes[provider].recorded() == []  # nothing was sent
    finally:
        rt.stop()


def test_environment_wins_over_the_file_and_google_api_key_is_accepted(base_dir, fakes, clean_env):
    write_secrets(base_dir, fakes, GEMINI_API_KEY=None)
    clean_env.setenv("GOOGLE_API_KEY", fakes["veo"].key)
    clean_env.setenv("RUNWAYML_API_SECRET", "key_from_the_environment_is_wrong_0123")
    rt = Runtime(base_dir, registry=build_registry(packs=PACKS))
    rt.start()
    try:
        run_prompt(rt, video_prompt("Veo3VideoGenerationNode", CASES["Veo3VideoGenerationNode"][1]))
        entry = run_prompt(rt, video_prompt("RunwayImageToVideoNodeGen4", CASES["RunwayImageToVideoNodeGen4"][1]),
                           "error")
        message = entry["status"]["messages"][-1][1]["exception_message"]
        assert "RUNWAYML_API_SECRET" in message and "key_from_the_environment_is_wrong" not in message
        assert "refused the API key" in message
    finally:
        rt.stop()


def test_keys_appear_only_in_the_providers_auth_headers(runtime, fakes, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = {fake.key for fake in fakes.values()} | {fakes["kling"].access_key}
    for node in ("RunwayImageToVideoNodeGen4", "KlingImage2VideoNode", "OpenAIVideoSora2", "Veo3VideoGenerationNode",
                 "PikaImageToVideoNode2_2", "LumaImageToVideoNode"):
        run_prompt(runtime, video_prompt(node, CASES[node][1]))
    # one that fails: the fake echoes the wrong key back, the error text must not carry it
    wrong = "key_this_one_is_wrong_and_secret_987654321"
    (runtime.paths.user_dir / "secrets.yaml").write_text(
        (runtime.paths.user_dir / "secrets.yaml").read_text().replace(fakes["openai"].key, wrong))
    run_prompt(runtime, video_prompt("OpenAIVideoSora2", {**CASES["OpenAIVideoSora2"][1], "seed": 77}), "error")
    secrets.add(wrong)
    stored = [json.dumps(job.history_entry()) for job in runtime.store.history().jobs]
    events = [json.dumps(e.data(), default=str) for e in runtime.events.items]
    logs = [record.getMessage() for record in caplog.records]
    object_info = json.dumps(runtime.object_info())
    containers = []
    for path in runtime.paths.output_dir.rglob("*.mp4"):
        with av.open(str(path)) as c:
            containers.append(json.dumps(dict(c.metadata)))
    for secret in secrets:
        for text in stored + events + logs + [object_info] + containers:
            assert secret not in text
    auth_headers = {"authorization", "x-goog-api-key"}
    for fake in fakes.values():
        for request in fake.recorded():
            assert not any(s in request.path for s in secrets)
            assert not any(s.encode() in request.body for s in secrets)
            for name, value in request.headers.items():
                if name.lower() not in auth_headers:
                    assert not any(s in value for s in secrets), (fake.name, name)


# -- inputs a provider would refuse -------------------------------------------------------------------

@pytest.mark.parametrize("node, change, input_name", [
    ("OpenAIVideoSora2", {"size": "1792x1024"}, "size"),  # sora-2 makes 720p sizes only
    ("PikaTextToVideoNode2_2", {"aspect_ratio": 1.2}, "aspect_ratio"),
    ("RunwayImageToVideoNodeGen4", {"prompt": "x" * 1001}, "prompt"),
    ("RunwayImageToVideoNodeGen4", {"prompt": "  "}, "prompt"),
    ("RunwayImageToVideoNodeGen4", {"ratio": "1280:768"}, "ratio"),  # a Gen3a ratio on Gen4
    ("RunwayImageToVideoNodeGen3a", {"duration": 8}, "duration"),
    ("Veo3VideoGenerationNode", {"duration_seconds": 5}, "duration_seconds"),
    ("KlingImage2VideoNode", {"prompt": "y" * 501}, "prompt"),
    ("LumaVideoNode", {"prompt": "ab"}, "prompt"),
])
def test_invalid_combinations_are_validation_errors_naming_the_input(runtime, fakes, node, change, input_name):
    inputs = {**CASES[node][1], **change}
    result = runtime.submit(video_prompt(node, inputs, **{"concepts": {
        "class_type": "LumaConceptsNode", "inputs": {f"concept{i}": "None" for i in range(1, 5)}}}))
    assert not result.ok
    errors = result.node_errors["gen"]["errors"]
    assert any(e["extra_info"].get("input_name") == input_name for e in errors), errors
    assert all(f.recorded() == [] for f in fakes.values())


@pytest.mark.parametrize("node, size, input_name", [
    ("KlingImage2VideoNode", (200, 200), "start_frame"),  # Kling needs 300 px
    ("RunwayImageToVideoNodeGen4", (600, 200), "start_frame"),  # aspect 3.0 > 2.0
    ("OpenAIVideoSora2", (640, 360), "image"),  # Sora needs the output size exactly
])
def test_images_the_provider_would_refuse_fail_before_anything_is_sent(runtime, fakes, node, size, input_name):
    provider, inputs = CASES[node]
    if node == "OpenAIVideoSora2":
        inputs = {**inputs, "image": IMG}
    prompt = video_prompt(node, inputs)
    prompt["img"] = image(*size)
    entry = run_prompt(runtime, prompt, "error")
    error = entry["status"]["messages"][-1][1]
    assert input_name in error["exception_message"] and fakes[provider].count("submit") == 0


def test_sora_takes_an_image_of_exactly_the_output_size(runtime, fakes):
    prompt = video_prompt("OpenAIVideoSora2", {**CASES["OpenAIVideoSora2"][1], "image": IMG, "prompt": ""})
    prompt["img"] = image(1280, 720)
    run_prompt(runtime, prompt)
    assert next(iter(fakes["openai"].jobs.values())).body["has_reference"] is True


# -- a workflow saved in ComfyUI ------------------------------------------------------------------

def test_comfyui_runway_template_runs_against_the_fake(runtime, fakes):
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    path = Path(templates.__file__).parent / "templates" / "api_runway_gen4_turbo_image_to_video.json"
    if not path.is_file():
        pytest.skip("the Runway template is not in this templates release")
    workflow = json.loads(path.read_text())
    from PIL import Image

    loader = next(n for n in workflow["nodes"] if n["type"] == "LoadImage")
    Image.new("RGB", (1280, 720), (40, 90, 160)).save(runtime.paths.input_dir / loader["widgets_values"][0])
    result = runtime.submit(workflow)
    assert result.ok, (result.error, result.node_errors)
    assert runtime.wait_idle(60)
    entry = runtime.store.get(result.prompt_id).history_entry()
    assert entry["status"]["status_str"] == "success", entry["status"]["messages"][-1]
    (ui,) = entry["outputs"].values()
    saved = runtime.paths.output_dir / ui["images"][0]["subfolder"] / ui["images"][0]["filename"]
    assert ui["images"][0]["subfolder"] == "video" and codec.verify_playable(saved).frame_count == fakes["runway"].frames
    body = next(iter(fakes["runway"].jobs.values())).body
    assert body["model"] == "gen4_turbo" and body["ratio"] == "1280:720" and body["duration"] == 5
    assert body["promptText"].startswith("A man sits alone")
    with av.open(str(saved)) as c:
        assert "workflow" in c.metadata and "prompt" in c.metadata


def test_no_key_in_object_info_and_nodes_have_comfyui_names(runtime):
    info = runtime.object_info()
    for name in CASES:
        assert info[name]["output"][0] == "VIDEO"
        assert info[name]["category"].startswith("api node/video/")
    gen4 = info["RunwayImageToVideoNodeGen4"]["input"]["required"]
    assert list(gen4) == ["prompt", "start_frame", "duration", "ratio", "seed"]
    assert gen4["duration"][0] == [5, 10] and gen4["seed"][1]["control_after_generate"] is True
    assert info["KlingImage2VideoNode"]["output_name"] == ["VIDEO", "video_id", "duration"]
    assert os.environ.get("RUNWAYML_API_SECRET") is None
