"""Bad input is a 400, never a 500: a seeded property-based fuzz of the routes that take bodies.

For each route, thousands of mutated requests (hypothesis, fixed seed, no example database)
go to a live server over one keep-alive connection.  Each must answer 2xx or 4xx; afterwards
the server still serves and nothing queued is lost.  On a failure hypothesis shrinks the
request to a minimal one and prints it.

The server runs without its worker, so accepted prompts stay queued (nothing executes: a
random valid prompt could ask for a 16384² image) and "nothing queued is lost" is exact.

``GENESIS_FUZZ_EXAMPLES`` sets the number of requests per route (default 2000).
"""
from __future__ import annotations

import http.client
import json
import os
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from graph_runtime.jobs import JobStatus
from tests.web_harness import LiveServer, make_runtime, multipart
from web.bodies import QueueBody

EXAMPLES = int(os.environ.get("GENESIS_FUZZ_EXAMPLES", "2000"))
SEED = 20251130
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large, HealthCheck.large_base_example])


class Client:
    """One keep-alive HTTP connection (thousands of requests in seconds)."""

    def __init__(self, server: LiveServer) -> None:
        self.port = server.port
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.reconnect()
                return response.status, data
            except (http.client.HTTPException, ConnectionError):
                if attempt:
                    raise
                self.reconnect()
        raise AssertionError("unreachable")

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterable[tuple[LiveServer, Client]]:
    server = LiveServer(make_runtime(tmp_path / "base"), probe_torch=False, manage_runtime=False).start()
    client = Client(server)
    yield server, client
    client.close()
    server.stop()
    server.runtime.store.close()


def assert_served(status: int, body: bytes, what: Any) -> None:
    assert 200 <= status < 500, f"{status} for {what!r}: {body[:500]!r}"


def still_serving(server: LiveServer, client: Client) -> None:
    assert client.request("GET", "/health")[0] == 200
    status, body = client.request("GET", "/prompt")
    assert status == 200 and "exec_info" in json.loads(body)


# -- strategies ------------------------------------------------------------------------------------

SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
NODE_IDS = st.sampled_from(["0", "1", "2", "out", "c", "missing", "", "../x"]) | st.text(max_size=4)
CLASS_TYPES = st.sampled_from(["EmptyImage", "ImageInvert", "SaveImage", "PreviewImage", "StubConst", "StubAdd",
                               "StubOutput", "StubSum", "StubLazySwitch", "LoadImage", "Nope"]) | JSON
SLOTS = st.integers(min_value=-3, max_value=6) | st.floats(allow_nan=True) | st.integers(min_value=2 ** 40) | JSON
LINKS = st.lists(NODE_IDS | JSON, min_size=0, max_size=3) | st.tuples(NODE_IDS, SLOTS).map(list)


def base_prompt() -> dict[str, Any]:
    return {"0": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "1": {"class_type": "ImageInvert", "inputs": {"image": ["0", 0]}},
            "c": {"class_type": "StubConst", "inputs": {"value": 3}},
            "2": {"class_type": "StubAdd", "inputs": {"a": ["c", 0], "b": ["c", 0]}},
            "out": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "fuzz"}},
            "show": {"class_type": "StubOutput", "inputs": {"value": ["2", 0]}}}


@st.composite
def prompt_bodies(draw: Any, extra_fields: tuple[str, ...] = ()) -> bytes:
    """A valid ``/prompt`` body with a few mutations, or now and then garbage."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.binary(max_size=64))
    if kind == 1:
        return json.dumps(draw(JSON)).encode()
    prompt = base_prompt()
    body: dict[str, Any] = {"prompt": prompt, "client_id": "fuzz"}
    for _ in range(draw(st.integers(1, 4))):
        node_id = draw(st.sampled_from(sorted(prompt)) | NODE_IDS)
        node = prompt.get(node_id)
        action = draw(st.integers(0, 11))
        if action == 0:
            prompt[node_id] = draw(JSON)
        elif action == 1 and isinstance(node, dict):
            node["class_type"] = draw(CLASS_TYPES)
        elif action == 2 and isinstance(node, dict):
            node["inputs"] = draw(JSON)
        elif action == 3 and isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            name = draw(st.sampled_from(sorted(node["inputs"]) or ["x"]) | st.text(max_size=6))
            node["inputs"][name] = draw(LINKS)
        elif action == 4 and isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            name = draw(st.sampled_from(sorted(node["inputs"]) or ["x"]) | st.text(max_size=6))
            node["inputs"][name] = draw(JSON)
        elif action == 5 and isinstance(node, dict):
            node.pop(draw(st.sampled_from(["class_type", "inputs"])), None)
        elif action == 6:
            prompt.pop(node_id, None)
        elif action == 7:
            prompt[draw(NODE_IDS)] = {"class_type": draw(CLASS_TYPES), "inputs": {
                draw(st.text(max_size=6)): draw(LINKS | JSON)}}
        elif action == 8:
            field = draw(st.sampled_from(["client_id", "prompt_id", "number", "front", "extra_data",
                                          "partial_execution_targets", "prompt", *extra_fields]))
            body[field] = draw(JSON)
        elif action == 9:
            body["partial_execution_targets"] = draw(st.lists(NODE_IDS, max_size=3))
        elif action == 10:
            body["extra_data"] = {"webhook": draw(st.text(max_size=20) | st.sampled_from(
                ["http://127.0.0.1:9/hook", "https://example.com/x", "ftp://x", "http://", "http://[::1"]))}
        elif action == 11:
            body["prompt_id"] = draw(st.sampled_from(["dup", "x" * 300, ""]) | st.text(max_size=8))
    for field in extra_fields:
        if draw(st.booleans()):
            body[field] = draw(JSON | st.sampled_from(["http://127.0.0.1:9/hook", "https://a.example/h"]))
    return json.dumps(body).encode()


def accepted_ids(status: int, body: bytes) -> list[str]:
    if status in (200, 202):
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("prompt_id"), str):
            return [data["prompt_id"]]
    return []


def assert_nothing_lost(server: LiveServer, accepted: list[str]) -> None:
    pending = {job.prompt_id for job in server.runtime.store.pending()}
    assert set(accepted) <= pending, set(accepted) - pending
    assert server.runtime.store.count([JobStatus.PENDING]) == len(set(accepted))


# -- the routes ------------------------------------------------------------------------------------

def test_fuzz_post_prompt(live: tuple[LiveServer, Client]) -> None:
    server, client = live
    accepted: list[str] = []

    @FUZZ
    @seed(SEED)
    @given(prompt_bodies())
    def check(body: bytes) -> None:
        status, reply = client.request("POST", "/prompt", body, {"Content-Type": "application/json"})
        assert_served(status, reply, body)
        accepted.extend(accepted_ids(status, reply))

    check()
    still_serving(server, client)
    assert accepted, "no fuzzed body was valid: the generator lost the valid base"
    assert_nothing_lost(server, accepted)


def test_fuzz_post_api_run(live: tuple[LiveServer, Client]) -> None:
    server, client = live
    accepted: list[str] = []

    @FUZZ
    @seed(SEED + 1)
    @given(prompt_bodies(extra_fields=("webhook",)),
           st.sampled_from(["?wait=false", "?wait=false&timeout=0.001", "?wait=0", "?wait=nope", "?timeout=x",
                            "?timeout=0.001", "?timeout=nan"]))
    def check(body: bytes, query: str) -> None:
        status, reply = client.request("POST", "/api/run" + query, body, {"Content-Type": "application/json"})
        assert_served(status, reply, (query, body))
        accepted.extend(accepted_ids(status, reply))

    check()
    still_serving(server, client)
    assert accepted
    assert_nothing_lost(server, accepted)


FIELD_TEXT = st.text(max_size=12) | st.sampled_from(["input", "output", "temp", "../..", "/etc", "a/b", "..",
                                                     "true", "1", "x\x00y"])


@st.composite
def uploads(draw: Any) -> tuple[bytes, str]:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64)), draw(st.sampled_from(
            ["application/json", "multipart/form-data", "multipart/form-data; boundary=x", "text/plain"]))
    fields = {name: draw(FIELD_TEXT) for name in ("type", "subfolder", "overwrite", "original_ref")
              if draw(st.booleans())}
    files = {}
    if draw(st.integers(0, 5)):
        filename = draw(st.text(max_size=12).filter(lambda n: '"' not in n and "\r" not in n and "\n" not in n)
                        | st.sampled_from(["a.png", "../a.png", "x/y.png", ".", "..", " a.png"]))
        content = draw(st.binary(max_size=128) | st.just(TINY_PNG))
        files[draw(st.sampled_from(["image", "file", "mask"]))] = (filename, content, "image/png")
    return multipart(fields, files)


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(buf, format="PNG")
    return buf.getvalue()


TINY_PNG = _tiny_png()


def test_fuzz_upload_image_and_mask(live: tuple[LiveServer, Client]) -> None:
    server, client = live
    (server.paths.output_dir / "orig.png").write_bytes(TINY_PNG)

    @FUZZ
    @seed(SEED + 2)
    @given(uploads(), st.sampled_from(["/upload/image", "/api/upload/image", "/upload/mask"]),
           st.sampled_from(['{"filename": "orig.png"}', '{"filename": "orig.png", "type": "output"}', "", "[1]"]))
    def check(upload: tuple[bytes, str], route: str, ref: str) -> None:
        body, ctype = upload
        if route == "/upload/mask" and b"original_ref" not in body and ctype.startswith("multipart/form-data; b"):
            body = body.replace(b'name="type"', b'name="original_ref"\r\n\r\n' + ref.encode() + b'\r\n--'
                                + ctype.split("boundary=")[1].encode() + b'\r\nContent-Disposition: form-data; '
                                b'name="type"', 1)
        status, reply = client.request("POST", route, body, {"Content-Type": ctype})
        assert_served(status, reply, (route, body[:300]))

    check()
    still_serving(server, client)
    for path in server.paths.base.rglob("*"):  # nothing was written outside the data folders
        assert path.is_relative_to(server.paths.base)


QUERY_VALUES = st.text(max_size=8) | st.sampled_from(["-1", "0", "1", "99999999999999999999", "1e3", "nan", ""])


def test_fuzz_history(live: tuple[LiveServer, Client]) -> None:
    server, client = live
    queued = [server.queue(base_prompt()) for _ in range(3)]
    cleared = []

    @FUZZ
    @seed(SEED + 3)
    @given(st.dictionaries(st.sampled_from(["max_items", "offset", "x"]), QUERY_VALUES, max_size=3),
           JSON | st.builds(dict, clear=JSON, delete=JSON), st.booleans(), NODE_IDS)
    def check(query: dict[str, str], body: Any, get_one: bool, prompt_id: str) -> None:
        status, reply = client.request("GET", "/history?" + urlencode(query))
        assert_served(status, reply, query)
        if get_one:
            status, reply = client.request("GET", "/history/" + quote(prompt_id or "x", safe=""))
            assert_served(status, reply, prompt_id)
        raw = json.dumps(body).encode()
        status, reply = client.request("POST", "/history", raw, {"Content-Type": "application/json"})
        assert_served(status, reply, body)
        cleared.append(status)

    check()
    still_serving(server, client)
    assert_nothing_lost(server, queued)  # history requests never touch the queue


def _clears(raw: bytes) -> bool:
    try:
        parsed = QueueBody.model_validate_json(raw)
    except Exception:
        return False
    return parsed.clear or bool(parsed.delete)


def test_fuzz_queue_and_interrupt(live: tuple[LiveServer, Client]) -> None:
    server, client = live
    queued = [server.queue(base_prompt()) for _ in range(3)]
    removals: list[bytes] = []

    @FUZZ
    @seed(SEED + 4)
    @given(JSON | st.builds(dict, clear=JSON, delete=JSON | st.lists(NODE_IDS)) | st.binary(max_size=32),
           st.sampled_from(["/queue", "/interrupt", "/api/interrupt", "/api/queue"]))
    def check(body: Any, route: str) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if route.endswith("/queue") and isinstance(body, dict) and body.get("clear") not in (None, False, 0, "false"):
            body = {**body, "clear": False}  # keep the queue to check nothing else removes from it
            raw = json.dumps(body).encode()
        status, reply = client.request("POST", route, raw, {"Content-Type": "application/json"})
        assert_served(status, reply, (route, raw))
        if route.endswith("/queue") and status == 200 and _clears(raw):
            removals.append(raw)
        status, reply = client.request("GET", route if route.endswith("queue") else "/queue")
        assert_served(status, reply, route)

    check()
    still_serving(server, client)
    if not removals:  # random ids never name the queued prompts
        assert_nothing_lost(server, queued)


USER_FILES = st.text(max_size=10) | st.sampled_from(["workflows%2Fa.json", "..%2F..%2Fx", "%2e%2e%2fx", "a.json",
                                                      "workflows%2F", "%00", "comfy.settings.json", "x%252F..%252Fy"])


def test_fuzz_user_data(live: tuple[LiveServer, Client]) -> None:
    server, client = live
    queued = [server.queue(base_prompt())]
    user_root = server.paths.user_dir.resolve()

    @FUZZ
    @seed(SEED + 5)
    @given(st.integers(0, 8), USER_FILES, USER_FILES, st.dictionaries(
        st.sampled_from(["dir", "recurse", "full_info", "split", "overwrite", "path"]), QUERY_VALUES | USER_FILES,
        max_size=4), JSON, st.binary(max_size=48))
    def check(action: int, name: str, dest: str, query: dict[str, str], value: Any, raw: bytes) -> None:
        file = quote(name, safe="%") or "x"
        q = "?" + urlencode(query)
        requests = {
            0: ("GET", "/userdata" + q, None),
            1: ("GET", "/v2/userdata" + q, None),
            2: ("GET", f"/userdata/{file}", None),
            3: ("POST", f"/userdata/{file}{q}", raw),
            4: ("DELETE", f"/userdata/{file}", None),
            5: ("POST", f"/userdata/{file}/move/{quote(dest, safe='%') or 'y'}{q}", None),
            6: ("POST", "/settings", json.dumps(value).encode()),
            7: ("POST", f"/settings/{file}", raw if raw else json.dumps(value).encode()),
            8: ("POST", "/users", json.dumps(value).encode()),
        }
        method, path, body = requests[action]
        status, reply = client.request(method, path, body, {"Content-Type": "application/json"})
        assert_served(status, reply, (method, path, body))
        for settings_path in ("/settings", f"/settings/{file}"):
            assert_served(*client.request("GET", settings_path), settings_path)

    check()
    still_serving(server, client)
    for path in server.paths.base.rglob("*"):
        if path.is_file() and "user" in path.relative_to(server.paths.base).parts[:1]:
            assert path.resolve().is_relative_to(user_root)
    assert_nothing_lost(server, queued)
