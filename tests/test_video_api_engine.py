"""The video-API engine against the fake providers on 127.0.0.1: retries and backoff, deadlines,
expired links, interrupts and cancel, resume from the remote-job journal, idempotent submits."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.context import Interrupted
from graph_runtime.jobs.remote import RemoteJobStore
from nodes.video import codec
from nodes.video_api import images as img
from nodes.video_api.engine import VideoJobEngine
from nodes.video_api.errors import (AuthError, ContentRejectedError, InvalidRequestError, OutOfCreditsError,
                                    ProviderTimeoutError, RateLimitedError)
from nodes.video_api.providers.fal import FalAdapter
from nodes.video_api.providers.kling import KlingAdapter
from nodes.video_api.providers.runway import RunwayAdapter
from nodes.video_api.providers.sora import SoraAdapter
from nodes.video_api.retry import RetryPolicy, parse_retry_after
from nodes.video_api.settings import SettingsSource
from tests.fake_providers import FakeFal, FakeKling, FakeOpenAI, FakeRunway, Outcome, settings_for

FAST = {"GENESIS_VIDEO_POLL_INTERVAL": "0.03", "GENESIS_VIDEO_RETRY_BASE": "0.02"}


def source(fake, **extra) -> SettingsSource:
    return SettingsSource({**settings_for(fake), **FAST, **extra}, {})


def runway_request(adapter: RunwayAdapter):
    frame = torch.rand(64, 96, 3)
    return adapter.image_to_video(model="gen4_turbo", prompt="a cat", images=[(img.data_uri(frame), "first")],
                                  ratio="1280:720", duration=5, seed=3)


class Flag:
    """A reporter recording progress and text, with an interrupt flag tests can raise."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.percents: list[float] = []
        self.texts: list[str] = []

    def progress(self, percent: float) -> None:
        self.percents.append(percent)

    def text(self, message: str) -> None:
        self.texts.append(message)

    def interrupted(self) -> bool:
        return self.stop.is_set()


@pytest.fixture
def runway():
    with FakeRunway() as fake:
        yield fake


def run(coro):
    return asyncio.run(coro)


def test_happy_path_reports_states_progress_and_returns_the_served_video(runway):
    adapter = RunwayAdapter(source(runway))
    flag = Flag()
    outcome = run(VideoJobEngine(adapter).run(runway_request(adapter), reporter=flag))
    assert outcome.data == runway.video and runway.submit_count == 1
    info = codec.verify_playable(outcome.data)
    assert (info.width, info.height, info.frame_count) == (48, 32, 10)
    assert any("queued" in t for t in flag.texts) and any("running" in t and "%" in t for t in flag.texts)
    assert flag.texts[-1] == "Runway: done" and flag.percents[-1] == 100.0
    assert flag.percents == sorted(flag.percents)
    api_calls = [r for r in runway.recorded() if r.endpoint != "download"]
    assert all(r.headers["Authorization"] == f"Bearer {runway.key}" for r in api_calls)
    assert all(r.headers["X-Runway-Version"] == "2024-11-06" for r in api_calls)
    download = [r for r in runway.recorded() if r.endpoint == "download"]
    assert len(download) == 1 and "Authorization" not in download[0].headers  # CDN links get no key


@pytest.mark.parametrize("header", [{"Retry-After": "0.3"}, {"retry-after-ms": "300"}])
def test_429_waits_as_long_as_the_server_says_and_submits_once(runway, header):
    adapter = RunwayAdapter(source(runway))
    runway.fail_next("submit", 429, headers=header, body={"error": "Too many requests"})
    runway.fail_next("status", 429, headers=header)
    run(VideoJobEngine(adapter).run(runway_request(adapter)))
    assert runway.submit_count == 1
    log = runway.recorded()
    submits = [i for i, r in enumerate(log) if r.endpoint == "submit"]
    assert len(submits) == 2  # the refused one and the accepted one
    stamps = [r for r in log]
    assert len(stamps) >= 4


def test_retry_after_is_honoured_in_wall_time(runway):
    adapter = RunwayAdapter(source(runway))
    times: list[float] = []

    class Clocked(VideoJobEngine):
        async def _send_json(self, *a, **kw):
            times.append(time.monotonic())
            return await super()._send_json(*a, **kw)

    runway.fail_next("submit", 429, headers={"Retry-After": "0.4"})
    started = time.monotonic()
    run(Clocked(adapter).run(runway_request(adapter)))
    assert time.monotonic() - started >= 0.4


def test_503_bursts_are_retried_and_400_is_not(runway):
    adapter = RunwayAdapter(source(runway))
    runway.fail_next("status", 503, times=3, body={"error": "shedding load"})
    outcome = run(VideoJobEngine(adapter).run(runway_request(adapter)))
    assert outcome.retries >= 3 and runway.submit_count == 1
    runway.fail_next("submit", 400, body={"error": "promptImage: the image is too small"})
    before = runway.count("submit")
    with pytest.raises(InvalidRequestError, match="promptImage: the image is too small"):
        run(VideoJobEngine(adapter).run(runway_request(adapter)))
    assert runway.count("submit") == before + 1  # not repeated


def test_500_on_submit_is_not_repeated_without_idempotency(runway):
    adapter = RunwayAdapter(source(runway))
    runway.fail_next("submit", 500)
    with pytest.raises(Exception, match="HTTP 500"):
        run(VideoJobEngine(adapter).run(runway_request(adapter)))
    assert runway.count("submit") == 1


def test_rate_limit_that_never_ends_is_a_typed_error(runway):
    adapter = RunwayAdapter(source(runway))
    runway.fail_next("status", 429, times=50, headers={"Retry-After": "0"})
    engine = VideoJobEngine(adapter, retry=RetryPolicy(max_retries=3, base=0.01))
    with pytest.raises(RateLimitedError, match="rate limited"):
        run(engine.run(runway_request(adapter)))


def test_bad_key_is_an_auth_error_naming_the_variable_without_the_key(runway):
    wrong = "key_wrong_but_secret_0123456789"
    adapter = RunwayAdapter(SettingsSource({**settings_for(runway), **FAST, "RUNWAYML_API_SECRET": wrong}, {}))
    with pytest.raises(AuthError) as err:
        run(VideoJobEngine(adapter).run(runway_request(adapter)))
    assert "RUNWAYML_API_SECRET" in str(err.value) and wrong not in str(err.value) and "***" in str(err.value)
    assert runway.submit_count == 0


def test_content_rejection_and_failure_carry_the_providers_reason(runway):
    adapter = RunwayAdapter(source(runway))
    runway.end_next_job(Outcome("reject", "SAFETY.INPUT.IMAGE", "The input image did not pass moderation"))
    with pytest.raises(ContentRejectedError, match="did not pass moderation.*SAFETY.INPUT.IMAGE"):
        run(VideoJobEngine(adapter).run(runway_request(adapter)))
    runway.end_next_job(Outcome("fail", "INTERNAL.BAD_OUTPUT", "An unexpected error occurred"))
    with pytest.raises(Exception, match="failed: An unexpected error occurred"):
        run(VideoJobEngine(adapter).run(runway_request(adapter)))


def test_out_of_credits_is_not_retried():
    with FakeOpenAI() as fake:
        adapter = SoraAdapter(source(fake))
        fake.fail_next("submit", 429, body={"error": {"message": "You exceeded your current quota",
                                                      "type": "insufficient_quota", "code": "insufficient_quota"}})
        with pytest.raises(OutOfCreditsError):
            run(VideoJobEngine(adapter).run(adapter.create(model="sora-2", prompt="x", seconds=4, size="1280x720",
                                                           image=None)))
        assert fake.count("submit") == 1


def test_deadline_raises_a_timeout_with_the_job_id(runway):
    runway.hold_jobs = True
    adapter = RunwayAdapter(source(runway, GENESIS_VIDEO_DEADLINE="0.4"))
    with pytest.raises(ProviderTimeoutError) as err:
        run(VideoJobEngine(adapter).run(runway_request(adapter)))
    job_id = next(iter(runway.jobs))
    assert job_id in str(err.value)


def test_expired_and_truncated_downloads_fetch_a_fresh_link(runway):
    adapter = RunwayAdapter(source(runway))
    runway.expire_downloads = 1
    runway.truncate_downloads = 1
    outcome = run(VideoJobEngine(adapter).run(runway_request(adapter)))
    assert outcome.data == runway.video
    assert runway.count("download") == 3 and runway.submit_count == 1


def test_slow_download_reports_bytes(runway):
    runway.download_delay = 0.002
    adapter = RunwayAdapter(source(runway))
    flag = Flag()
    outcome = run(VideoJobEngine(adapter).run(runway_request(adapter), reporter=flag))
    assert outcome.data == runway.video
    assert any(t.startswith("Runway: downloaded") for t in flag.texts)


def test_interrupt_mid_poll_cancels_once_and_returns_promptly(runway):
    runway.hold_jobs = True
    adapter = RunwayAdapter(source(runway))
    flag = Flag()

    async def scenario():
        task = asyncio.ensure_future(VideoJobEngine(adapter).run(runway_request(adapter), reporter=flag))
        await asyncio.to_thread(runway.wait_until, lambda: runway.count("status") >= 2, "polling")
        flag.stop.set()
        started = time.monotonic()
        with pytest.raises(Interrupted):
            await task
        return time.monotonic() - started

    assert run(scenario()) < 2.0
    assert runway.cancel_count == 1 and runway.count("cancel") == 1
    assert any("cancelled job" in t for t in flag.texts)


def test_interrupt_without_a_cancel_endpoint_just_stops():
    with FakeKling() as fake:
        fake.hold_jobs = True
        adapter = KlingAdapter(source(fake), "text2video")
        flag = Flag()

        async def scenario():
            task = asyncio.ensure_future(VideoJobEngine(adapter).run(
                adapter.submit({"model_name": "kling-v1", "prompt": "x", "mode": "std", "duration": "5",
                                "aspect_ratio": "16:9", "cfg_scale": 0.5}), reporter=flag))
            await asyncio.to_thread(fake.wait_until, lambda: fake.count("status") >= 1, "polling")
            flag.stop.set()
            with pytest.raises(Interrupted):
                await task

        run(scenario())
        assert fake.cancel_count == 0
        assert any("no cancel" in t for t in flag.texts)


def test_fal_cancel_and_queue_position():
    with FakeFal(queued_s=10.0) as fake:
        adapter = FalAdapter(source(fake))
        flag = Flag()

        async def scenario():
            task = asyncio.ensure_future(VideoJobEngine(adapter).run(
                adapter.submit("fal-ai/pika/v2.2/text-to-video", {"prompt": "x", "resolution": "720p", "duration": 5,
                                                                  "aspect_ratio": "16:9", "seed": 1}), reporter=flag))
            await asyncio.to_thread(fake.wait_until, lambda: fake.count("status") >= 1, "polling")
            await asyncio.sleep(0.1)
            flag.stop.set()
            with pytest.raises(Interrupted):
                await task

        run(scenario())
        assert fake.cancel_count == 1
        assert any("position 2" in t for t in flag.texts)


# -- durability: the journal -------------------------------------------------------------------------

def test_an_accepted_job_in_the_journal_is_resumed_not_resubmitted(runway, tmp_path):
    adapter = RunwayAdapter(source(runway))
    store = RemoteJobStore(tmp_path / "jobs.sqlite3")
    journal = store.journal("p1", "7")
    job = runway.new_job({"model": "gen4_turbo"})  # the job a previous process submitted
    runway.submit_count = 0
    index = journal.next_call()
    journal.begin(index, "runway")
    journal.accepted(index, job.id, {"id": job.id})
    store.close()

    store = RemoteJobStore(tmp_path / "jobs.sqlite3")  # a new process
    calls = []

    async def never():
        calls.append(1)
        raise AssertionError("must not build a submit")

    outcome = run(VideoJobEngine(adapter).run(never, journal=store.journal("p1", "7")))
    assert outcome.resumed and outcome.remote_id == job.id and outcome.data == runway.video
    assert runway.submit_count == 0 and calls == []
    assert store.get("p1", "7", 0).state == "succeeded"


def test_a_submit_cut_off_mid_flight_is_found_by_external_task_id(tmp_path):
    with FakeKling() as fake:
        adapter = KlingAdapter(source(fake), "text2video")
        store = RemoteJobStore(tmp_path / "jobs.sqlite3")
        journal = store.journal("p9", "3")
        key = journal.idempotency_key(0)
        fake.new_job({"prompt": "x"}).extra.update(kind="text2video", external=key)  # it did reach Kling
        journal.begin(0, "kling")  # ... but the process died before recording the answer
        submits = fake.submit_count
        outcome = run(VideoJobEngine(adapter).run(adapter.submit({"prompt": "x"}), journal=store.journal("p9", "3")))
        assert outcome.data == fake.video
        assert fake.submit_count == submits  # found by external_task_id, not submitted again
        assert fake.count("submit") == 0


def test_openai_submit_repeated_after_a_lost_answer_makes_one_job(tmp_path):
    with FakeOpenAI() as fake:
        adapter = SoraAdapter(source(fake))
        store = RemoteJobStore(":memory:")
        fake.fail_next("submit", 502)  # the gateway failed: did the job start? the key makes it safe
        outcome = run(VideoJobEngine(adapter).run(
            adapter.create(model="sora-2", prompt="x", seconds=4, size="1280x720", image=None),
            journal=store.journal("p", "n")))
        assert outcome.data == fake.video
        keys = {r.headers.get("Idempotency-Key") for r in fake.recorded() if r.endpoint == "submit"}
        assert keys == {"genesis-p-n-0"} and fake.count("submit") == 2 and fake.submit_count == 1


def test_remote_job_store_semantics(tmp_path):
    store = RemoteJobStore(tmp_path / "j.sqlite3")
    first = store.begin("a", "1", 0, "runway", "k0")
    assert first.state == "submitting" and not first.accepted
    again = store.begin("a", "1", 0, "runway", "other")  # an existing row is returned, not replaced
    assert again.idempotency_key == "k0"
    store.accepted("a", "1", 0, "r-1", {"id": "r-1"})
    store.begin("b", "2", 0, "luma", "k1")
    store.close()
    store = RemoteJobStore(tmp_path / "j.sqlite3")
    row = store.get("a", "1", 0)
    assert row.accepted and row.remote_id == "r-1" and row.handle == {"id": "r-1"} and row.submitted_at
    assert [r.prompt_id for r in store.for_prompt("a")] == ["a"]
    assert store.prune(["a"]) == 1 and store.get("b", "2", 0) is None
    store.ended("a", "1", 0, "succeeded")
    assert store.get("a", "1", 0).state == "succeeded"
    assert store.forget("a") == 1 and store.for_prompt("a") == []
    with pytest.raises(KeyError):
        store.accepted("zz", "1", 0, "x", {})


# -- pure helpers --------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(seconds=st.floats(0, 10_000, allow_nan=False), ms=st.integers(0, 10_000_000))
def test_retry_after_forms(seconds, ms):
    assert parse_retry_after({"Retry-After": repr(seconds)}) == pytest.approx(seconds)
    assert parse_retry_after({"retry-after-ms": str(ms), "Retry-After": "99"}) == pytest.approx(ms / 1000)
    now = 1_700_000_000.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 120))
    assert parse_retry_after({"retry-after": date}, now=lambda: now) == pytest.approx(120, abs=1)
    assert parse_retry_after({}) is None and parse_retry_after({"Retry-After": "soon"}) is None


@settings(max_examples=100, deadline=None)
@given(attempt=st.integers(0, 20), r=st.floats(0, 1), after=st.none() | st.floats(0, 1000))
def test_backoff_is_bounded_jittered_and_obeys_the_server(attempt, r, after):
    policy = RetryPolicy(base=1.0, cap=30.0, jitter=0.5, max_retry_after=120.0)
    delay = policy.delay(attempt, after, lambda: r)
    if after is not None:
        assert delay == min(after, 120.0)
    else:
        step = min(30.0, 2.0 ** attempt)
        assert step * 0.5 - 1e-9 <= delay <= step
