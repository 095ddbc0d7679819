"""Users, settings and user files over real HTTP, including traversal attempts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.web_harness import LiveServer, http, make_runtime, web_server  # noqa: F401


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_users_single_user_mode(web_server: LiveServer, prefix: str) -> None:
    assert web_server.get(prefix + "/users").json() == {"storage": "server", "migrated": True}
    # the default user's folders exist from the start: the frontend's boot listings get 200 []
    assert web_server.get(prefix + "/userdata?dir=workflows&recurse=true&split=false&full_info=true").json() == []
    assert web_server.get(prefix + "/userdata?dir=subgraphs&recurse=true&split=false&full_info=true").json() == []


def test_frontend_boot_slots_read_as_empty_until_written(web_server: LiveServer) -> None:
    css = web_server.get("/api/userdata/user.css")
    assert css.status == 200 and css.body == b"" and css.headers["Content-Type"].startswith("text/css")
    assert web_server.get("/user.css").body == b""
    assert web_server.get("/api/userdata/comfy.templates.json").json() == []
    assert web_server.get("/api/userdata/workflows%2F.index.json").json() == {"favorites": []}
    assert web_server.post("/api/userdata/user.css", raw=b"body { color: red }").status == 200
    assert web_server.get("/api/userdata/user.css").body == b"body { color: red }"
    assert web_server.get("/user.css").body == b"body { color: red }"
    assert web_server.post("/api/userdata/comfy.templates.json", raw=b'[{"name": "t"}]').status == 200
    assert web_server.get("/api/userdata/comfy.templates.json").json() == [{"name": "t"}]
    assert web_server.get("/api/userdata/other.json").status == 404


def test_settings_defaults_persist_and_per_setting(web_server: LiveServer) -> None:
    settings_file = web_server.paths.user_dir / "default" / "comfy.settings.json"
    assert web_server.get("/api/settings").json() == {"Comfy.TutorialCompleted": True,
                                                      "Comfy.Notification.ShowVersionUpdates": False}
    assert web_server.get("/api/settings/Comfy.Unknown").json() is None
    assert web_server.post("/api/settings", {"Comfy.ColorPalette": "light", "Comfy.Locale": "en"}).status == 200
    assert web_server.post("/api/settings/Comfy.InstalledVersion", "1.58.1").status == 200
    assert web_server.post("/settings/Comfy.TutorialCompleted", False).status == 200
    stored = json.loads(settings_file.read_text())
    assert stored == {"Comfy.ColorPalette": "light", "Comfy.Locale": "en", "Comfy.InstalledVersion": "1.58.1",
                      "Comfy.TutorialCompleted": False}
    assert web_server.get("/settings").json() == {"Comfy.Notification.ShowVersionUpdates": False, **stored}
    assert web_server.get("/api/settings/Comfy.ColorPalette").json() == "light"
    for bad in (b"{oops", b"[1]", b'"text"'):
        assert web_server.post("/api/settings", raw=bad).status == 400
    assert web_server.post("/api/settings/x", raw=b"{not json").status == 400
    assert json.loads(settings_file.read_text()) == stored


def test_multi_user_mode(tmp_path: Path) -> None:
    server = LiveServer(make_runtime(tmp_path / "base"), probe_torch=False, multi_user=True).start()
    try:
        assert server.get("/users").json() == {"storage": "server", "users": {}}
        user_id = server.post("/users", {"username": "Ada L."}).json()
        assert user_id.startswith("Ada-L-_")
        assert server.post("/users", {"username": "Ada L."}).json() == {"error": "Duplicate username."}
        assert server.post("/users", {"name": "x"}).status == 400
        assert server.get("/users").json()["users"] == {user_id: "Ada L."}
        assert server.get("/api/settings").status == 401  # no Comfy-User
        assert server.get("/api/settings", headers={"Comfy-User": "../default"}).status == 401
        assert server.post("/api/settings", {"a": 1}, headers={"Comfy-User": user_id}).status == 200
        assert server.get("/api/settings", headers={"Comfy-User": user_id}).json()["a"] == 1
        assert (tmp_path / "base" / "user" / user_id / "comfy.settings.json").is_file()
        assert server.get("/api/userdata?dir=workflows").status == 403
    finally:
        server.stop()


def test_userdata_write_read_list_move_delete(web_server: LiveServer) -> None:
    root = web_server.paths.user_dir / "default"
    assert web_server.get("/api/userdata?dir=nothing-here").status == 404
    workflow = {"nodes": [], "links": [], "version": 0.4}
    reply = web_server.post("/api/userdata/workflows%2Fmy%20flow.json?overwrite=true&full_info=true",
                            raw=json.dumps(workflow).encode())
    assert reply.status == 200
    info = reply.json()
    assert info["path"] == "workflows/my flow.json" and info["size"] > 0 and isinstance(info["modified"], float)
    assert json.loads((root / "workflows" / "my flow.json").read_text()) == workflow
    plain = web_server.post("/userdata/workflows%2Fsub%2Fb.json", raw=b"{}")
    assert plain.json() == "workflows/sub/b.json"
    assert web_server.post("/userdata/workflows%2Fsub%2Fb.json?overwrite=false", raw=b"{}").status == 409
    assert web_server.get("/api/userdata/workflows%2Fmy%20flow.json").json() == workflow
    assert web_server.get("/api/userdata/workflows%252Fmy%2520flow.json").json() == workflow  # double-encoded
    listing = web_server.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
    assert sorted(e["path"] for e in listing) == ["my flow.json", "sub/b.json"]
    assert web_server.get("/userdata?dir=workflows").json() == ["my flow.json"]
    assert web_server.get("/userdata?dir=workflows&recurse=true&split=true").json() == [
        ["my flow.json", "my flow.json"], ["sub/b.json", "sub", "b.json"]]
    v2 = web_server.get("/api/v2/userdata?path=workflows").json()
    assert [(e["name"], e["type"]) for e in v2] == [("sub", "directory"), ("b.json", "file"), ("my flow.json", "file")]
    assert v2[1]["path"] == "workflows/sub/b.json"
    moved = web_server.post("/api/userdata/workflows%2Fmy%20flow.json/move/workflows%2Frenamed.json?full_info=true")
    assert moved.status == 200 and moved.json()["path"] == "workflows/renamed.json"
    assert web_server.post("/api/userdata/workflows%2Fsub%2Fb.json/move/workflows%2Frenamed.json?overwrite=false"
                           ).status == 409
    assert web_server.post("/api/userdata/workflows%2Fgone.json/move/workflows%2Fx.json").status == 404
    assert web_server.delete("/api/userdata/workflows%2Frenamed.json").status == 204
    assert web_server.delete("/api/userdata/workflows%2Frenamed.json").status == 404
    assert web_server.get("/api/userdata/workflows%2Frenamed.json").status == 404
    assert web_server.get("/api/userdata").status == 400
    assert web_server.get("/api/v2/userdata?path=nope").status == 404


@pytest.mark.parametrize("name", [
    "..%2Fjobs.sqlite3", "%2E%2E%2Fjobs.sqlite3", "%252E%252E%252Fjobs.sqlite3", "workflows%2F..%2F..%2Fjobs.sqlite3",
    "%2Fetc%2Fpasswd", "%252Fetc%252Fpasswd", "..", "%2E%2E",
])
def test_userdata_refuses_escapes(web_server: LiveServer, name: str) -> None:
    secret = web_server.paths.base / "secret.txt"
    secret.write_text("top secret")
    for reply in (web_server.get(f"/api/userdata/{name}"),
                  web_server.post(f"/api/userdata/{name}", raw=b"pwned"),
                  web_server.delete(f"/api/userdata/{name}"),
                  web_server.post(f"/api/userdata/{name}/move/x.json"),
                  web_server.post(f"/api/userdata/x.json/move/{name}")):
        assert reply.status in (400, 403, 404), (name, reply.status)
        assert b"top secret" not in reply.body and b"SQLite" not in reply.body
    assert (web_server.paths.user_dir / "jobs.sqlite3").read_bytes()[:6] == b"SQLite"
    assert not Path("/etc/passwd").read_text().startswith("pwned")


@pytest.mark.parametrize("query", ["dir=..", "dir=%2E%2E", "dir=/etc", "dir=workflows%2F..%2F.."])
def test_userdata_listing_refuses_escapes(web_server: LiveServer, query: str) -> None:
    assert web_server.get(f"/api/userdata?{query}").status == 403
    assert web_server.get(f"/api/v2/userdata?path={query[4:]}").status == 400


def test_userdata_write_refuses_absolute_and_parent_paths_in_raw_url(web_server: LiveServer) -> None:
    import http.client

    for path in ("/api/userdata/../../secret.txt", "/api/userdata/%2e%2e/secret.txt"):
        conn = http.client.HTTPConnection("127.0.0.1", web_server.port, timeout=10)
        conn.request("POST", path, body=b"pwned")
        resp = conn.getresponse()
        resp.read()
        assert resp.status in (400, 403, 404, 405)  # 405: normalised onto a static path
        conn.close()
    assert not (web_server.paths.base / "secret.txt").exists()
    assert not (web_server.paths.user_dir / "secret.txt").exists()
