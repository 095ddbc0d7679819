"""The network lane through the runtime: a prompt waiting on a provider never holds the GPU queue,
at most N remote jobs run per provider (the rest wait in order), a parked prompt shows as running
and can be interrupted."""
from __future__ import annotations

import pytest
import yaml

from graph_runtime.context import RuntimeOptions
from graph_runtime.jobs import JobStatus
from graph_runtime.registry import build_registry
from graph_runtime.service import Runtime
from tests.fake_providers import FakeRunway, settings_for

PACKS = ["nodes.primitives", "nodes.image", "nodes.video.nodes", "nodes.video_api.nodes"]


@pytest.fixture
def fake():
    with FakeRunway() as fake:
        fake.hold_jobs = True
        yield fake


@pytest.fixture
def runtime(base_dir, fake, monkeypatch):  # noqa: D103 - two remote jobs per provider
    for name in ("RUNWAYML_API_SECRET", "RUNWAYML_BASE_URL", "GENESIS_VIDEO_POLL_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    (base_dir.user_dir / "secrets.yaml").write_text(yaml.safe_dump(
        {**settings_for(fake), "GENESIS_VIDEO_POLL_INTERVAL": 0.03}))
    rt = Runtime(base_dir, RuntimeOptions(network_concurrency=2), registry=build_registry(packs=PACKS))
    rt.start()
    yield rt
    fake.release()
    rt.stop()


def video(i: int) -> dict:
    return {"img": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": i}},
            "gen": {"class_type": "RunwayImageToVideoNodeGen4", "inputs": {
                "prompt": f"clip {i}", "start_frame": ["img", 0], "duration": 5, "ratio": "960:960", "seed": i}},
            "save": {"class_type": "SaveVideo", "inputs": {"video": ["gen", 0], "filename_prefix": "video/lane",
                                                          "format": "auto", "codec": "auto"}}}


def picture(i: int) -> dict:
    return {"img": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": i}},
            "inv": {"class_type": "ImageInvert", "inputs": {"image": ["img", 0]}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["inv", 0], "filename_prefix": "lane"}}}


def status(rt: Runtime, pid: str) -> JobStatus:
    return rt.store.get(pid).status


def test_an_image_prompt_queued_after_a_video_finishes_first(runtime, fake):
    video_id = runtime.submit(video(1)).prompt_id
    fake.wait_until(lambda: fake.count("status") >= 1, "the video job to be polled")
    image_id = runtime.submit(picture(1)).prompt_id
    # the image prompt runs while the video prompt waits on the provider
    assert _wait(lambda: status(runtime, image_id) is JobStatus.SUCCEEDED), status(runtime, image_id)
    assert status(runtime, video_id) is JobStatus.RUNNING  # parked, still shown as running
    assert [j.prompt_id for j in runtime.store.running()] == [video_id]
    fake.release()
    assert runtime.wait_idle(20)
    assert status(runtime, video_id) is JobStatus.SUCCEEDED
    assert runtime.store.get(image_id).finished_at < runtime.store.get(video_id).finished_at


def test_at_most_n_remote_jobs_per_provider_the_rest_wait_in_order(runtime, fake):
    ids = [runtime.submit(video(i)).prompt_id for i in range(5)]
    fake.wait_until(lambda: fake.submit_count >= 2, "two submits")
    assert _wait(lambda: all(status(runtime, p) is JobStatus.RUNNING for p in ids))  # all claimed
    assert fake.submit_count == 2  # the others wait for a slot
    picture_id = runtime.submit(picture(7)).prompt_id
    assert _wait(lambda: status(runtime, picture_id) is JobStatus.SUCCEEDED)
    fake.hold_jobs = False
    fake.release()
    assert runtime.wait_idle(30)
    assert all(status(runtime, p) is JobStatus.SUCCEEDED for p in ids)
    # slots are handed out in arrival order; jobs that start together may reach the provider in any order
    prompts = [job.body["promptText"] for job in fake.jobs.values()]
    assert set(prompts[:2]) == {"clip 0", "clip 1"} and set(prompts[2:4]) == {"clip 2", "clip 3"}
    assert prompts[4] == "clip 4" and fake.submit_count == 5


def test_interrupting_a_parked_prompt_cancels_its_remote_job(runtime, fake):
    video_id = runtime.submit(video(3)).prompt_id
    fake.wait_until(lambda: fake.count("status") >= 2, "polling")
    assert runtime.interrupt(video_id)
    assert runtime.wait_idle(10)
    assert status(runtime, video_id) is JobStatus.INTERRUPTED
    assert fake.cancel_count == 1


def _wait(check, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)  # poll interval
    return False


def test_stopping_the_server_detaches_a_parked_prompt_and_the_next_start_resumes_it(base_dir, fake, monkeypatch):
    for name in ("RUNWAYML_API_SECRET", "RUNWAYML_BASE_URL", "GENESIS_VIDEO_POLL_INTERVAL"):
        monkeypatch.delenv(name, raising=False)
    (base_dir.user_dir / "secrets.yaml").write_text(yaml.safe_dump(
        {**settings_for(fake), "GENESIS_VIDEO_POLL_INTERVAL": 0.03}))
    rt = Runtime(base_dir, registry=build_registry(packs=PACKS))
    rt.start()
    video_id = rt.submit(video(5)).prompt_id
    fake.wait_until(lambda: fake.count("status") >= 2, "polling")
    rt.stop()  # a deploy: the paid job is neither cancelled nor forgotten
    assert fake.cancel_count == 0
    rt = Runtime(base_dir, registry=build_registry(packs=PACKS))
    rt.start()
    try:
        polls = fake.count("status")
        fake.wait_until(lambda: fake.count("status") > polls, "polling again")
        fake.release()
        assert rt.wait_idle(20)
        entry = rt.store.get(video_id).history_entry()
        assert entry["status"]["status_str"] == "success"
        assert entry["meta"]["gen"]["execution"]["resumed"] is True and fake.submit_count == 1
    finally:
        rt.stop()
