"""kill -9 of a real server while a video job polls: after the restart the same remote job is
polled again — never submitted twice — and the nodes upstream of the video node do not run again.

The server is a subprocess (``server.py serve``); the fake Runway runs in the test process, so it
outlives the kill and counts every submit.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from nodes.video import codec
from tests.fake_providers import FakeRunway, settings_for
from tests.test_durability import PACK, ServerProcess, poll

COUNTER = Path(__file__).parent / "data" / "custom_nodes" / "genesis_test_counter.py"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    shutil.copy(PACK, base / "custom_nodes" / PACK.name)  # ServerProcess waits for its node
    shutil.copy(COUNTER, base / "custom_nodes" / COUNTER.name)
    return base


def remote_rows(base: Path) -> list[tuple]:
    with sqlite3.connect(base / "user" / "jobs.sqlite3") as conn:
        return conn.execute("SELECT prompt_id, node_id, state, remote_id FROM remote_jobs").fetchall()


def test_kill_9_while_polling_resumes_the_same_remote_job(base: Path) -> None:
    log = base / "upstream-runs.txt"
    with FakeRunway() as fake:
        fake.hold_jobs = True
        (base / "user").mkdir(parents=True, exist_ok=True)
        (base / "user" / "secrets.yaml").write_text(yaml.safe_dump(
            {**settings_for(fake), "GENESIS_VIDEO_POLL_INTERVAL": 0.05}))
        prompt = {"src": {"class_type": "CountingImage", "inputs": {"log": str(log), "size": 96}},
                  "gen": {"class_type": "RunwayImageToVideoNodeGen4", "inputs": {
                      "prompt": "a slow pan", "start_frame": ["src", 0], "duration": 5, "ratio": "960:960",
                      "seed": 11}},
                  "save": {"class_type": "SaveVideo", "inputs": {"video": ["gen", 0], "filename_prefix": "video/k9",
                                                                "format": "auto", "codec": "auto"}}}
        server = ServerProcess(base)
        servers = [server]
        try:
            prompt_id = server.queue(prompt)
            fake.wait_until(lambda: fake.count("status") >= 2, "the first server to poll", timeout=60)
            (job_id,) = fake.jobs
            assert remote_rows(base) == [(prompt_id, "gen", "submitted", job_id)]  # committed before polling

            server.kill9()
            polls_before = fake.count("status")
            server = ServerProcess(base)
            servers.append(server)
            fake.wait_until(lambda: fake.count("status") > polls_before, "the restarted server to poll", timeout=60)
            assert server.queue_state()[0] == [prompt_id]  # shown as running while it waits
            fake.release()
            poll(lambda: prompt_id in server.history(), "the video prompt to finish", timeout=60)
            entry = server.history()[prompt_id]
            assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
            assert fake.submit_count == 1 and fake.count("submit") == 1  # never submitted twice
            assert log.read_text() == "ran\n"  # the upstream node ran once, before the kill
            assert entry["meta"]["gen"]["execution"]["resumed"] is True
            ui = entry["outputs"]["save"]["images"][0]
            info = codec.verify_playable(base / "output" / ui["subfolder"] / ui["filename"])
            assert (info.width, info.height, info.frame_count) == (*fake.size, fake.frames)
            assert remote_rows(base) == []  # forgotten with the finished prompt
            assert server.stop() == 0
        finally:
            for s in servers:
                s.stop()
