"""``server.py serve`` as a real process on a free port, for tests that kill, restart or scale it.

Shared by the durability tests (kill -9 and restart) and the Ray tests (``RayServer`` adds the
cluster flags); state lives in other processes, so waiting is polling with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tests.web_harness import free_port, http

REPO = Path(__file__).resolve().parent.parent


def poll(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Wait until ``check()`` is truthy (state held by other processes), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.02)  # poll interval
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_for_file_prompt(path: Path, tag: int) -> dict:
    """A prompt of the test gate pack's ``WaitForFile`` node: it runs until ``path`` exists."""
    return {"1": {"class_type": "WaitForFile", "inputs": {"path": str(path), "tag": tag}}}


class ServerProcess:
    """``server.py serve --cpu --no-tiny-models`` on ``base`` (plus ``extra`` arguments and ``env``)."""

    def __init__(self, base: Path, *extra: str, env: dict[str, str] | None = None,
                 answer_timeout: float = 30.0, stop_timeout: float = 30.0) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / f"server-{self.port}.log"
        self.stop_timeout = stop_timeout
        variables = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
                         **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "server.py"), "serve", "--base-directory", str(base), "--port",
             str(self.port), "--no-tiny-models", "--cpu", *extra],
            cwd=REPO, env=variables, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        try:
            poll(self._answers, "the server to answer", timeout=answer_timeout)
        except BaseException:  # never leave a half-started server behind
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            return http("GET", self.url + "/object_info/WaitForFile", timeout=2).status == 200
        except OSError:
            return False

    def queue(self, prompt: dict) -> str:
        reply = http("POST", self.url + "/prompt", {"prompt": prompt})
        assert reply.status == 200, reply.text
        return reply.json()["prompt_id"]

    def queue_state(self) -> tuple[list[str], list[str]]:
        q = http("GET", self.url + "/queue").json()
        return ([i[1] for i in q["queue_running"]],
                [i[1] for i in sorted(q["queue_pending"], key=lambda item: item[0])])

    def history(self) -> dict:
        return http("GET", self.url + "/history").json()

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(self.stop_timeout)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
