"""``server.py run FILE --remote URL`` and ``server.py queue … --remote URL`` against a live server,
as separate processes: outputs byte-identical to ``/view``, the local run's exit codes, tokens."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterable

import pytest

from tests.stub_nodes import pack
from tests.web_harness import LiveServer, make_runtime
from web.auth import TOKENS_FILE, AuthSettings

REPO = Path(__file__).resolve().parent.parent
TOKEN = "remote-cli-token-0123456789"


@pytest.fixture
def server(tmp_path: Path, calls: list[str]) -> Iterable[LiveServer]:
    runtime = make_runtime(tmp_path / "base")
    runtime.paths.user_dir.mkdir(parents=True, exist_ok=True)
    (runtime.paths.user_dir / TOKENS_FILE).write_text(json.dumps({TOKEN: "cli"}))
    auth = AuthSettings.configure(runtime.paths.user_dir, required=True)
    live = LiveServer(runtime, probe_torch=False, auth=auth).start()
    yield live
    live.stop()


def cli(*args: str, cwd: Path, token: str | None = TOKEN, timeout: float = 120) -> subprocess.CompletedProcess:
    extra = ["--token", token] if token else []
    return subprocess.run([sys.executable, str(REPO / "server.py"), *args, *extra], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def workflow(color: int) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 2, "color": color}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "remote/test"}}}


def test_remote_run_downloads_outputs_identical_to_view(server: LiveServer, tmp_path: Path) -> None:
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(workflow(0x123456)))
    out = tmp_path / "downloads"
    proc = cli("run", str(wf), "--remote", server.url, "--output-dir", str(out), "--set", "1.color=65280",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = [Path(line) for line in proc.stdout.split()]
    assert [f.relative_to(out).as_posix() for f in files] == ["remote/test_00001_.png", "remote/test_00002_.png"]
    for f in files:
        view = server.get(f"/view?filename={f.name}&subfolder=remote&type=output",
                          headers={"Authorization": f"Bearer {TOKEN}"})
        assert view.status == 200 and f.read_bytes() == view.body
        assert f.read_bytes() == (server.paths.output_dir / "remote" / f.name).read_bytes()
    (entry,) = server.get("/history", headers={"Authorization": f"Bearer {TOKEN}"}).json().values()
    assert entry["prompt"][2]["1"]["inputs"]["color"] == 65280  # --set applied before queueing
    assert "node" in proc.stderr  # progress went to the terminal


def test_remote_run_exit_codes(server: LiveServer, tmp_path: Path) -> None:
    invalid = tmp_path / "invalid.json"
    bad = workflow(0)
    bad["1"]["inputs"]["width"] = -5
    invalid.write_text(json.dumps(bad))
    proc = cli("run", str(invalid), "--remote", server.url, cwd=tmp_path)
    assert proc.returncode == 2 and "width" in proc.stderr and "node 1 (EmptyImage)" in proc.stderr

    failing = tmp_path / "failing.json"
    failing.write_text(json.dumps({
        "c": {"class_type": "StubConst", "inputs": {"value": 1}},
        "f": {"class_type": "StubFail", "inputs": {"value": ["c", 0], "message": "out of paper"}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["f", 0]}}}))
    proc = cli("run", str(failing), "--remote", server.url, cwd=tmp_path)
    assert proc.returncode == 1 and "node f (StubFail) failed" in proc.stderr and "out of paper" in proc.stderr

    good = tmp_path / "good.json"
    good.write_text(json.dumps(workflow(1)))
    proc = cli("run", str(good), "--remote", server.url, cwd=tmp_path, token="wrong-token-0123456789")
    assert proc.returncode == 2 and "refused the token" in proc.stderr
    proc = cli("run", str(good), "--remote", "http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2 and "cannot reach" in proc.stderr
    proc = cli("run", str(tmp_path / "missing.json"), "--remote", server.url, cwd=tmp_path)
    assert proc.returncode == 2 and "not found" in proc.stderr


def test_remote_run_is_interrupted_by_the_server(server: LiveServer, tmp_path: Path) -> None:
    """``queue interrupt`` from a second terminal ends the run with exit code 130."""
    wf = tmp_path / "waiting.json"
    wf.write_text(json.dumps({
        "c": {"class_type": "StubConst", "inputs": {"value": 1}},
        "w": {"class_type": "StubWait", "inputs": {"value": ["c", 0], "gate": "remote-interrupt"}},
        "o": {"class_type": "StubOutput", "inputs": {"value": ["w", 0]}}}))
    runner = subprocess.Popen([sys.executable, str(REPO / "server.py"), "run", str(wf), "--remote", server.url,
                               "--token", TOKEN], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        import time

        deadline = time.monotonic() + 60
        while server.runtime.running_prompt_id() is None:  # wait until the prompt runs
            assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
            time.sleep(0.01)  # poll interval
        listed = cli("queue", "list", "--remote", server.url, cwd=tmp_path)
        assert listed.returncode == 0 and listed.stdout.startswith("running\t")
        assert cli("queue", "interrupt", "--remote", server.url, cwd=tmp_path).returncode == 0
        _, err = runner.communicate(timeout=60)
        assert runner.returncode == 130 and "interrupted" in err
    finally:
        pack.GATES.setdefault("remote-interrupt", __import__("threading").Event()).set()
        if runner.poll() is None:
            runner.kill()


def test_queue_list_and_clear(server: LiveServer, tmp_path: Path) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    blocker = {"c": {"class_type": "StubConst", "inputs": {"value": 1}},
               "w": {"class_type": "StubWait", "inputs": {"value": ["c", 0], "gate": "remote-clear"}},
               "o": {"class_type": "StubOutput", "inputs": {"value": ["w", 0]}}}
    try:
        running = server.post("/prompt", {"prompt": blocker}, headers=headers).json()["prompt_id"]
        waiting = [server.post("/prompt", {"prompt": workflow(i)}, headers=headers).json()["prompt_id"]
                   for i in range(2)]
        listed = cli("queue", "list", "--remote", server.url, "--json", cwd=tmp_path)
        queue = json.loads(listed.stdout)
        assert {item[1] for item in queue["queue_pending"]} >= set(waiting)
        assert {item[1] for item in queue["queue_running"] + queue["queue_pending"]} == {running, *waiting}
        cleared = cli("queue", "clear", "--remote", server.url, cwd=tmp_path)
        assert cleared.returncode == 0
        assert server.get("/queue", headers=headers).json()["queue_pending"] == []
        assert cli("queue", "list", "--remote", server.url, cwd=tmp_path, token=None).returncode == 2
    finally:
        pack.GATES.setdefault("remote-clear", __import__("threading").Event()).set()
