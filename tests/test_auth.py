"""Tokens off loopback: every route and the WebSocket refuse a caller without a valid token, the
browser logs in once with ``?token=`` (an HttpOnly cookie), ``/health`` and ``/ready`` stay open,
``--multi-user`` isolates queue, history and user data, and a server started off loopback with no
token creates one (0600) and prints the login URL."""
from __future__ import annotations

import json
import os
import re
import stat
import time
import urllib.request
from pathlib import Path
from typing import Iterable

import pytest

from tests.web_harness import LiveServer, chain, http, make_runtime
from web.auth import COOKIE_NAME, GENERATED_TOKEN_FILE, TOKENS_FILE, AuthSettings

ALICE, BOB, ADMIN = "alice-token-0123456789", "bob-token-0123456789ab", "admin-token-0123456789"
OPEN = {"/health", "/api/health", "/ready", "/api/ready"}


def write_tokens(user_dir: Path) -> None:
    user_dir.mkdir(parents=True, exist_ok=True)
    (user_dir / TOKENS_FILE).write_text(json.dumps({ALICE: "alice", BOB: "bob",
                                                    ADMIN: {"user": "root", "admin": True}}))


def serve(tmp_path: Path, *, multi_user: bool = True, manage_runtime: bool = True, **auth_kw) -> LiveServer:
    runtime = make_runtime(tmp_path / "base")
    write_tokens(runtime.paths.user_dir)
    auth = AuthSettings.configure(runtime.paths.user_dir, required=True, multi_user=multi_user, **auth_kw)
    return LiveServer(runtime, probe_torch=False, auth=auth, manage_runtime=manage_runtime).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterable[LiveServer]:
    live = serve(tmp_path)
    yield live
    live.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def concrete_routes(server: LiveServer) -> list[tuple[str, str]]:
    """(method, path) for every registered route, placeholders filled with a plausible value."""
    found = []
    for route in server.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if path is None or route.method == "HEAD":
            continue
        path = re.sub(r"\{[^}/]+\}", "x", path)
        if info.get("prefix"):  # the static frontend
            path = path.rstrip("/") + "/index.html"
        found.append((route.method, path))
    return sorted(set(found))


def test_every_route_and_the_websocket_need_a_good_token(server: LiveServer) -> None:
    routes = concrete_routes(server)
    assert len(routes) > 80 and ("POST", "/api/run") in routes and ("GET", "/metrics") in routes
    for method, path in routes:
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        without = http(method, server.url + path, raw=body)
        bad = http(method, server.url + path, raw=body, headers=bearer("not-a-token-at-all-xxxxx"))
        good = http(method, server.url + path, raw=body, headers=bearer(ALICE))
        if path in OPEN:
            assert without.status == 200 and bad.status == 200, path
        else:
            assert without.status == 401 and bad.status == 401, (method, path, without.status, bad.status)
            # no hint whether a user exists: one body for a missing and a wrong token
            assert without.body == bad.body and without.headers["WWW-Authenticate"] == 'Bearer realm="genesis"'
            assert json.loads(without.body)["error"]["type"] == "unauthorized"
        assert good.status not in (401, 403, 500), (method, path, good.status, good.body[:200])

    import websocket

    for headers in ([], ["Authorization: Bearer wrong-token-0123456789"]):
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(server.ws_url, header=headers, timeout=10)
        assert refused.value.status_code == 401
    ws = websocket.create_connection(server.ws_url, header=[f"Authorization: Bearer {ALICE}"], timeout=10)
    assert json.loads(ws.recv())["type"] == "status"
    ws.close()
    ws = websocket.create_connection(f"{server.ws_url}?token={BOB}&clientId=me", timeout=10)
    assert json.loads(ws.recv())["data"]["sid"] == "me"
    ws.close()


def test_token_in_the_url_becomes_an_http_only_session_cookie(server: LiveServer) -> None:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # type: ignore[override]
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(f"{server.url}/?token={ALICE}&x=1", timeout=10)
        raise AssertionError("expected a redirect")
    except urllib.error.HTTPError as reply:
        assert reply.code == 302 and reply.headers["Location"] == "/?x=1"  # the token leaves the address bar
        cookie = reply.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert ALICE not in cookie  # the cookie is not the token
    value = cookie.split(";")[0]
    assert server.get("/api/settings", headers={"Cookie": value}).status == 200
    assert server.get("/api/settings", headers={"Cookie": f"{COOKIE_NAME}=" + "0" * 64}).status == 401
    assert server.get(f"/api/settings?token={BOB}x").status == 401

    import websocket

    ws = websocket.create_connection(server.ws_url, header=[f"Cookie: {value}"], timeout=10)
    assert json.loads(ws.recv())["type"] == "status"
    ws.close()


def test_health_and_ready_answer_without_a_token(tmp_path: Path) -> None:
    live = serve(tmp_path, manage_runtime=False)  # no worker: not ready
    try:
        assert live.get("/health").json() == {"status": "ok"}
        reply = live.get("/ready")
        assert reply.status == 503 and reply.json()["checks"]["worker"]["ok"] is False
        assert reply.json()["checks"]["database"]["ok"] and reply.json()["checks"]["models"]["ok"]
        live.runtime.start()
        assert live.get("/ready").json() == {"ready": True, "checks": {
            "worker": {"ok": True, "detail": ""}, "database": {"ok": True, "detail": ""},
            "models": {"ok": True, "detail": ""}}}
        assert live.get("/metrics").status == 401
    finally:
        live.stop()
        live.runtime.stop()


def test_metrics_public_opens_metrics_only(tmp_path: Path) -> None:
    live = serve(tmp_path, metrics_public=True)
    try:
        assert live.get("/metrics").status == 200 and live.get("/api/jobs").status == 401
    finally:
        live.stop()


def test_the_origin_check_and_cors_stay_strict(tmp_path: Path) -> None:
    live = serve(tmp_path, cors_origins=("https://app.example",))
    try:
        token = bearer(ALICE)
        evil = live.get("/api/jobs", headers={**token, "Origin": "http://evil.example"})
        assert evil.status == 403  # a valid token does not make a foreign page welcome
        sibling = live.get("/api/jobs", headers={**token, "Origin": "http://127.0.0.1:1"})
        assert sibling.status == 403  # another port of the same host (same-site for cookies)
        listed = live.get("/api/jobs", headers={**token, "Origin": "https://app.example"})
        assert listed.status == 200 and listed.headers["Access-Control-Allow-Origin"] == "https://app.example"
        preflight = http("OPTIONS", live.url + "/api/prompt", headers={"Origin": "https://app.example"})
        assert preflight.status == 204 and "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        assert live.get("/api/jobs", headers={"Origin": "https://app.example"}).status == 401  # still needs a token
    finally:
        live.stop()


# -- multi-user ----------------------------------------------------------------------------------

def test_each_user_sees_only_their_queue_history_and_user_data(tmp_path: Path) -> None:
    live = serve(tmp_path, manage_runtime=False)
    try:
        a_pending = live.post("/prompt", {"prompt": chain(1, 1)}, headers=bearer(ALICE)).json()["prompt_id"]
        b_pending = live.post("/prompt", {"prompt": chain(1, 2)}, headers=bearer(BOB)).json()["prompt_id"]

        def pending(token: str) -> list[str]:
            return [item[1] for item in live.get("/queue", headers=bearer(token)).json()["queue_pending"]]

        assert pending(ALICE) == [a_pending] and pending(BOB) == [b_pending]
        assert {j["id"] for j in live.get("/api/jobs", headers=bearer(BOB)).json()["jobs"]} == {b_pending}
        assert live.get(f"/api/jobs/{a_pending}", headers=bearer(BOB)).status == 404
        assert live.get(f"/history/{a_pending}", headers=bearer(BOB)).status == 404
        # bob cannot remove alice's work
        assert live.post("/queue", {"delete": [a_pending]}, headers=bearer(BOB)).status == 200
        assert live.post("/queue", {"clear": True}, headers=bearer(BOB)).status == 200
        assert live.post(f"/api/jobs/{a_pending}/cancel", headers=bearer(BOB)).status == 404
        assert pending(ALICE) == [a_pending] and pending(BOB) == []
        # an admin token acts as the user it names in Comfy-User; for others the header is ignored
        assert pending(ADMIN) == []
        assert live.get("/queue", headers={**bearer(ADMIN), "Comfy-User": "alice"}).json()["queue_pending"][0][1] \
            == a_pending
        assert live.get("/queue", headers={**bearer(BOB), "Comfy-User": "alice"}).json()["queue_pending"] == []

        # history: run the queue, then each sees their own entries only
        live.runtime.start()
        b_done = live.post("/prompt", {"prompt": chain(1, 3)}, headers=bearer(BOB)).json()["prompt_id"]
        assert live.runtime.wait_idle(20)
        assert set(live.get("/history", headers=bearer(ALICE)).json()) == {a_pending}
        assert set(live.get("/history", headers=bearer(BOB)).json()) == {b_done}
        assert live.get(f"/history/{b_done}", headers=bearer(BOB)).status == 200
        assert live.post("/history", {"clear": True}, headers=bearer(ALICE)).status == 200
        assert live.get("/history", headers=bearer(ALICE)).json() == {}
        assert set(live.get("/history", headers=bearer(BOB)).json()) == {b_done}

        # user data and settings
        saved = live.post("/api/userdata/workflows%2Fmine.json", raw=b'{"nodes": []}', headers=bearer(ALICE))
        assert saved.status == 200 and saved.json() == "workflows/mine.json"
        assert live.get("/api/userdata?dir=workflows", headers=bearer(ALICE)).json() == ["mine.json"]
        assert live.get("/api/userdata?dir=workflows", headers=bearer(BOB)).json() == []
        assert live.get("/api/userdata/workflows%2Fmine.json", headers=bearer(BOB)).status == 404
        assert live.post("/api/settings/Comfy.ColorPalette", raw=b'"light"', headers=bearer(ALICE)).status == 200
        assert live.get("/api/settings/Comfy.ColorPalette", headers=bearer(ALICE)).json() == "light"
        assert live.get("/api/settings/Comfy.ColorPalette", headers=bearer(BOB)).json() is None
        assert (live.paths.user_dir / "alice" / "workflows" / "mine.json").is_file()
        # the frontend goes straight in: the token already names the user
        assert "users" not in live.get("/api/users", headers=bearer(BOB)).json()
        assert live.post("/api/users", {"username": "mallory"}, headers=bearer(BOB)).status == 403
    finally:
        live.stop()
        live.runtime.stop()


# -- server.py serve off loopback ----------------------------------------------------------------

def _wait_for_login_url(proc, log: Path) -> None:
    """Until the server has printed its login URL (it exits: fail with its log)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "?token=" not in log.read_text():
        assert proc.poll() is None, log.read_text()
        time.sleep(0.02)  # poll interval
    assert "?token=" in log.read_text(), log.read_text()


@pytest.mark.slow
def test_serving_off_loopback_creates_a_private_token_and_prints_the_login_url(tmp_path: Path) -> None:
    from tests.test_web_serve import launch, stop

    base = tmp_path / "base"
    proc, port, log, _ = launch(base, "--listen", "0.0.0.0", "--no-tiny-models")
    try:
        _wait_for_login_url(proc, log)
        token_file = base / "user" / GENERATED_TOKEN_FILE
        token = token_file.read_text().strip()
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600 and len(token) >= 32
        assert f"http://127.0.0.1:{port}/?token={token}" in log.read_text()
        url = f"http://127.0.0.1:{port}"
        assert http("GET", url + "/health").status == 200
        assert http("GET", url + "/api/object_info").status == 401
        assert http("GET", url + "/api/object_info", headers=bearer(token)).status == 200
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # a restart keeps the token (bookmarked login URLs keep working)
    proc, port, log, _ = launch(base, "--listen", "0.0.0.0", "--no-tiny-models")
    try:
        _wait_for_login_url(proc, log)
        assert f"?token={token}" in log.read_text()
        assert stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_bad_tokens_file_stops_the_server_instead_of_running_open(tmp_path: Path) -> None:
    from web.auth import TokenFileError

    user_dir = tmp_path / "user"
    user_dir.mkdir()
    for content in ("[1, 2]", '{"short": "alice"}', json.dumps({"x" * 20: "al ice"}), "{not json"):
        (user_dir / TOKENS_FILE).write_text(content)
        with pytest.raises(TokenFileError):
            AuthSettings.configure(user_dir, required=True)
