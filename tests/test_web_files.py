"""/view and /upload over real HTTP: content types, caching, preview/channel conversions, naming
of uploads, size limit, and refusal of every path that escapes its directory."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.web_harness import LiveServer, http, make_runtime, multipart, web_server  # noqa: F401


def png(color: tuple[int, ...], size: tuple[int, int] = (4, 3), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def upload(server: LiveServer, data: bytes, name: str = "pic.png", path: str = "/upload/image",
           **fields: str) -> object:
    body, ctype = multipart(fields, {"image": (name, data, "image/png")})
    return server.post(path, raw=body, headers={"Content-Type": ctype})


@pytest.fixture
def files(web_server: LiveServer) -> LiveServer:
    paths = web_server.paths
    (paths.output_dir / "sub").mkdir()
    (paths.output_dir / "a.png").write_bytes(png((10, 20, 30)))
    (paths.output_dir / "sub" / "b.png").write_bytes(png((1, 2, 3, 128), mode="RGBA"))
    (paths.temp_dir / "t.png").write_bytes(png((200, 0, 0)))
    (paths.input_dir / "i.png").write_bytes(png((0, 200, 0)))
    (paths.output_dir / "page.html").write_text("<script>alert(1)</script>")
    (paths.base / "secret.txt").write_text("top secret")
    return web_server


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_view_serves_files_with_types_and_cache_headers(files: LiveServer, prefix: str) -> None:
    reply = files.get(prefix + "/view?filename=a.png&type=output&subfolder=")
    assert reply.status == 200 and reply.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(reply.body)).getpixel((0, 0)) == (10, 20, 30)
    assert reply.headers["Cache-Control"] == "public, max-age=86400"
    assert 'filename="a.png"' in reply.headers["Content-Disposition"]
    assert reply.headers.get("ETag") or reply.headers.get("Last-Modified")
    assert files.get(prefix + "/view?filename=a.png").status == 200  # type defaults to output
    assert files.get(prefix + "/view?filename=b.png&subfolder=sub").status == 200
    assert files.get(prefix + "/view?filename=t.png&type=temp").status == 200
    inp = files.get(prefix + "/view?filename=i.png&type=input&rand=0.5")
    assert inp.status == 200 and inp.headers["Cache-Control"] == "no-cache"
    assert files.get(prefix + "/view?filename=i.png%20%5Binput%5D").status == 200  # annotated name
    html = files.get(prefix + "/view?filename=page.html")
    assert html.status == 200 and html.headers["Content-Type"] == "application/octet-stream"


def test_view_conditional_request(files: LiveServer) -> None:
    first = files.get("/view?filename=a.png")
    etag = first.headers.get("ETag")
    assert etag
    again = http("GET", files.url + "/view?filename=a.png", headers={"If-None-Match": etag})
    assert again.status == 304


def test_view_preview_and_channel(files: LiveServer) -> None:
    webp = files.get("/view?filename=a.png&preview=webp;50")
    assert webp.status == 200 and webp.headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(webp.body)).format == "WEBP"
    jpeg = files.get("/view?filename=b.png&subfolder=sub&preview=jpeg;80")
    assert jpeg.headers["Content-Type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.body)).mode == "RGB"
    forced = files.get("/view?filename=b.png&subfolder=sub&preview=jpeg;80&channel=a")
    assert forced.headers["Content-Type"] == "image/webp"
    rgb = Image.open(io.BytesIO(files.get("/view?filename=b.png&subfolder=sub&channel=rgb").body))
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (1, 2, 3)
    alpha = Image.open(io.BytesIO(files.get("/view?filename=b.png&subfolder=sub&channel=a").body))
    assert alpha.mode == "RGBA" and alpha.getpixel((0, 0)) == (0, 0, 0, 128)


@pytest.mark.parametrize("query, status", [
    ("", 404),
    ("filename=missing.png", 404),
    ("filename=a.png&type=bogus", 400),
    ("filename=../secret.txt", 400),
    ("filename=..%2Fsecret.txt", 400),
    ("filename=%2E%2E%2Fsecret.txt", 400),
    ("filename=/etc/passwd", 400),
    ("filename=%2Fetc%2Fpasswd", 400),
    ("filename=secret.txt&subfolder=..", 403),
    ("filename=secret.txt&subfolder=%2E%2E", 403),
    ("filename=passwd&subfolder=/etc", 403),
    ("filename=passwd&subfolder=%2Fetc", 403),
    ("filename=secret.txt&subfolder=sub/../..", 403),
    ("filename=secret.txt%20%5Boutput%5D&subfolder=..", 403),
])
def test_view_refuses_escapes(files: LiveServer, query: str, status: int) -> None:
    reply = files.get("/view?" + query)
    assert reply.status == status
    assert b"top secret" not in reply.body and b"root:" not in reply.body


def test_raw_path_traversal_is_not_served(files: LiveServer) -> None:
    import http.client

    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/templates/../../secret.txt",
                 "/templates/%2e%2e%2f%2e%2e%2fsecret.txt", "/extensions/genesis/..%2f..%2f..%2fapp.py"):
        conn = http.client.HTTPConnection("127.0.0.1", files.port, timeout=10)
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status in (400, 403, 404), (path, resp.status)
        assert b"top secret" not in body and b"create_app" not in body
        conn.close()


def test_upload_image_naming_and_types(web_server: LiveServer) -> None:
    first = upload(web_server, png((1, 1, 1)))
    assert first.status == 200 and first.json() == {"name": "pic.png", "subfolder": "", "type": "input"}
    assert (web_server.paths.input_dir / "pic.png").read_bytes() == png((1, 1, 1))
    same = upload(web_server, png((1, 1, 1)))
    assert same.json()["name"] == "pic.png"  # identical content reuses the file
    other = upload(web_server, png((2, 2, 2)))
    assert other.json()["name"] == "pic (1).png"
    again = upload(web_server, png((3, 3, 3)))
    assert again.json()["name"] == "pic (2).png"
    over = upload(web_server, png((4, 4, 4)), overwrite="true")
    assert over.json()["name"] == "pic.png"
    assert (web_server.paths.input_dir / "pic.png").read_bytes() == png((4, 4, 4))
    sub = upload(web_server, png((5, 5, 5)), "x.png", type="temp", subfolder="clip/space")
    assert sub.json() == {"name": "x.png", "subfolder": "clip/space", "type": "temp"}
    assert (web_server.paths.temp_dir / "clip" / "space" / "x.png").is_file()
    api = upload(web_server, png((6, 6, 6)), "y.png", path="/api/upload/image", type="output")
    assert api.json()["type"] == "output" and (web_server.paths.output_dir / "y.png").is_file()
    listed = web_server.get("/internal/files/input").json()
    assert set(listed) == {"pic.png", "pic (1).png", "pic (2).png"}
    assert web_server.get("/internal/files/bogus").status == 400
    object_info = web_server.get("/object_info/LoadImage").json()
    assert "pic (1).png" in object_info["LoadImage"]["input"]["required"]["image"][0]


@pytest.mark.parametrize("fields, name, status", [
    ({"subfolder": "../.."}, "evil.png", 403),
    ({"subfolder": "/tmp"}, "evil.png", 403),
    ({"subfolder": "%2E%2E"}, "evil.png", 200),  # a literal folder named "%2E%2E" inside input/
    ({}, "../evil.png", 400),
    ({}, "..", 400),
    ({}, "/etc/evil.png", 400),
    ({"type": "models"}, "evil.png", 400),
])
def test_upload_refuses_escapes(web_server: LiveServer, fields: dict, name: str, status: int) -> None:
    reply = upload(web_server, png((9, 9, 9)), name, **fields)
    assert reply.status == status, reply.text
    assert not (web_server.paths.base / "evil.png").exists()
    assert not Path("/tmp/evil.png").exists() and not Path("/etc/evil.png").exists()
    if status == 200:  # form fields are not URL-decoded: this is a folder literally named "%2E%2E"
        assert (web_server.paths.input_dir / "%2E%2E" / "evil.png").is_file()


def test_upload_bad_requests(web_server: LiveServer) -> None:
    assert web_server.post("/upload/image", {"image": "x"}).status == 400  # not multipart
    body, ctype = multipart({"type": "input"}, {})
    assert web_server.post("/upload/image", raw=body, headers={"Content-Type": ctype}).status == 400
    body, ctype = multipart({}, {"image": ("", b"abc", "image/png")})
    assert web_server.post("/upload/image", raw=body, headers={"Content-Type": ctype}).status == 400


def test_upload_size_limit(tmp_path: Path) -> None:
    server = LiveServer(make_runtime(tmp_path / "base"), probe_torch=False, max_upload_bytes=50_000).start()
    try:
        assert upload(server, b"\0" * 40_000, "ok.bin").status == 200
        big = upload(server, b"\0" * 60_000, "big.bin")
        assert big.status == 413
        assert not (server.paths.input_dir / "big.bin").exists()
        features = server.get("/api/features").json()
        assert features["max_upload_size"] == 50_000
        # JSON bodies share the limit
        assert server.post("/prompt", {"prompt": {"x": "y" * 60_000}}).status == 413
    finally:
        server.stop()


def test_upload_mask(files: LiveServer) -> None:
    original = files.paths.input_dir / "orig.png"
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    meta.add_text("prompt", '{"1": {}}')
    Image.new("RGB", (4, 4), (50, 60, 70)).save(original, pnginfo=meta)
    mask = png((0, 0, 0, 77), size=(4, 4), mode="RGBA")
    reply = upload(files, mask, "masked.png", path="/upload/mask",
                   original_ref=json.dumps({"filename": "orig.png", "type": "input", "subfolder": ""}))
    assert reply.status == 200 and reply.json() == {"name": "masked.png", "subfolder": "", "type": "input"}
    result = Image.open(files.paths.input_dir / "masked.png")
    assert result.getpixel((1, 1)) == (50, 60, 70, 77) and result.info["prompt"] == '{"1": {}}'
    missing = upload(files, mask, "m2.png", path="/upload/mask", original_ref=json.dumps({"filename": "nope.png"}))
    assert missing.status == 404
    escape = upload(files, mask, "m3.png", path="/upload/mask",
                    original_ref=json.dumps({"filename": "secret.txt", "subfolder": ".."}))
    assert escape.status == 403
    assert upload(files, mask, "m4.png", path="/upload/mask", original_ref="{bad").status == 400
