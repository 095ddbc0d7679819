"""Server facts, catalogues, static files and cross-cutting HTTP behaviour over real HTTP:
system_stats, features, extensions, i18n, object_info, models, view_metadata, internal
routes, the frontend and template files, the /api twins and the cross-origin guard."""
from __future__ import annotations

import json
import struct
import sys
from typing import Iterable

import pytest

from tests.web_harness import LiveServer, WsClient, http, make_runtime
from web.state import STATE

PACK_INIT = '''
class DemoNode:
    CATEGORY = "demo"
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}}

    def run(self, value):
        return (value,)


NODE_CLASS_MAPPINGS = {"DemoNode": DemoNode}
WEB_DIRECTORY = "./js"
'''


def safetensors_bytes(metadata: dict[str, str]) -> bytes:
    header = json.dumps({"__metadata__": metadata, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})
    raw = header.encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterable[LiveServer]:
    base = tmp_path_factory.mktemp("system") / "base"
    pack = base / "custom_nodes" / "demo_pack"
    (pack / "js" / "sub").mkdir(parents=True)
    (pack / "__init__.py").write_text(PACK_INIT)
    (pack / "js" / "demo.js").write_text("export const demo = 1;\n")
    (pack / "js" / "sub" / "more.js").write_text("export const more = 2;\n")
    (pack / "locales" / "fr").mkdir(parents=True)
    (pack / "locales" / "fr" / "main.json").write_text(json.dumps({"hello": "bonjour"}))
    (pack / "locales" / "fr" / "nodeDefs.json").write_text(json.dumps({"DemoNode": {"display_name": "Démo"}}))
    (pack / "example_workflows").mkdir()
    (pack / "example_workflows" / "demo flow.json").write_text(json.dumps({"nodes": [], "links": []}))
    (base / "models" / "checkpoints" / "sub").mkdir(parents=True)
    (base / "models" / "checkpoints" / "sub" / "m.safetensors").write_bytes(safetensors_bytes({"modelspec.title": "M"}))
    (base / "models" / "checkpoints" / "plain.safetensors").write_bytes(safetensors_bytes({}))
    (base / "models" / "checkpoints" / "notes.txt").write_text("ignored")
    (base / "models" / "embeddings").mkdir(parents=True)
    (base / "models" / "embeddings" / "nice.pt").write_bytes(b"x")
    from tests.web_harness import make_registry

    registry = make_registry()
    registry.load_custom_nodes([base / "custom_nodes"])
    live = LiveServer(make_runtime(base, registry), probe_torch=False).start()
    yield live
    live.stop()


ROUTES_WITH_API_TWIN = ["/users", "/settings", "/i18n", "/system_stats", "/extensions", "/object_info",
                        "/object_info/EmptyImage", "/embeddings", "/features", "/prompt", "/queue", "/history",
                        "/jobs", "/models", "/models/checkpoints", "/experiment/models",
                        "/experiment/models/checkpoints", "/userdata?dir=.", "/v2/userdata",
                        "/global_subgraphs", "/workflow_templates",
                        "/view_metadata/checkpoints?filename=sub/m.safetensors"]


@pytest.mark.parametrize("route", ROUTES_WITH_API_TWIN)
def test_every_route_answers_with_and_without_api_prefix(server: LiveServer, route: str) -> None:
    bare, api = server.get(route), server.get("/api" + route)
    assert bare.status == api.status
    assert bare.status in (200, 404) and bare.headers["Content-Type"].startswith("application/json")
    if route not in ("/system_stats",):  # RAM figures change between two calls
        assert json.loads(bare.body) == json.loads(api.body)


def test_internal_routes_have_no_api_twin(server: LiveServer) -> None:
    assert server.get("/internal/folder_paths").status == 200
    assert server.get("/api/internal/folder_paths").status == 404


def test_system_stats(server: LiveServer) -> None:
    stats = server.get("/api/system_stats").json()
    system = stats["system"]
    for key in ("os", "python_version", "embedded_python", "comfyui_version", "pytorch_version", "argv",
                "ram_total", "ram_free", "required_frontend_version"):
        assert key in system
    assert isinstance(system["argv"], list) and system["python_version"].startswith(sys.version.split()[0])
    assert system["ram_total"] >= system["ram_free"] > 0
    assert system["required_frontend_version"] == "1.58.1"
    import importlib.metadata

    assert system["pytorch_version"] == importlib.metadata.version("torch")
    device = stats["devices"][0]
    assert {"name", "type", "index", "vram_total", "vram_free", "torch_vram_total", "torch_vram_free"} <= set(device)
    assert isinstance(device["index"], int)


def test_features_extensions_i18n(server: LiveServer) -> None:
    assert server.get("/api/features").json() == {"supports_preview_metadata": True, "max_upload_size": 100 << 20}
    extensions = server.get("/api/extensions").json()
    assert sorted(extensions) == ["/extensions/demo_pack/demo.js", "/extensions/demo_pack/sub/more.js",
                                  "/extensions/genesis/default_workflow.js",
                                  "/extensions/genesis/refresh_models.js"]
    for url in extensions:
        reply = server.get(url)
        assert reply.status == 200 and reply.headers["Content-Type"] in ("application/javascript", "text/javascript")
        assert reply.headers["Cache-Control"] == "no-cache"
    assert server.get("/extensions/demo_pack/../../../etc/passwd").status in (403, 404)
    assert server.get("/extensions/demo_pack/%2e%2e%2f__init__.py").status in (403, 404)
    assert server.get("/extensions/core/groupNode.js").status == 200  # the frontend's own shims
    assert server.get("/api/i18n").json() == {"fr": {"hello": "bonjour", "nodeDefs": {"DemoNode": {"display_name": "Démo"}}}}


def test_object_info(server: LiveServer) -> None:
    info = server.get("/api/object_info").json()
    assert {"EmptyImage", "ImageInvert", "SaveImage", "PreviewImage", "LoadImage", "DemoNode"} <= set(info)
    for name, node in info.items():
        for key in ("input", "output", "name", "display_name", "description", "category", "output_node",
                    "python_module"):
            assert key in node, (name, key)
        assert node["name"] == name and isinstance(node["display_name"], str)
    assert info["DemoNode"]["python_module"] == "custom_nodes.demo_pack"
    one = server.get("/object_info/SaveImage").json()
    assert list(one) == ["SaveImage"] and one["SaveImage"] == info["SaveImage"]
    assert server.get("/object_info/NoSuchNode").json() == {}


def test_models_and_embeddings(server: LiveServer) -> None:
    assert server.get("/embeddings").json() == ["nice"]
    folders = server.get("/models").json()
    assert "checkpoints" in folders and "loras" in folders
    assert server.get("/models/checkpoints").json() == ["plain.safetensors", "sub/m.safetensors"]
    assert server.get("/models/nope").status == 404
    experiment = server.get("/api/experiment/models").json()
    names = [e["name"] for e in experiment]
    assert "checkpoints" in names and "configs" not in names and "custom_nodes" not in names
    files = server.get("/api/experiment/models/checkpoints").json()
    assert [(f["name"], f["pathIndex"]) for f in files] == [("plain.safetensors", 0), ("sub/m.safetensors", 0)]
    assert files[0]["size"] > 0
    assert server.get("/api/experiment/models/nope").status == 404
    from PIL import Image

    Image.new("RGB", (8, 8), (1, 2, 3)).save(server.paths.models_dir / "checkpoints" / "sub" / "m.preview.png")
    preview = server.get("/api/experiment/models/preview/checkpoints/0/sub/m.safetensors")
    assert preview.status == 200 and preview.headers["Content-Type"] == "image/webp"
    assert server.get("/api/experiment/models/preview/checkpoints/0/plain.safetensors").status == 404
    assert server.get("/api/experiment/models/preview/checkpoints/7/plain.safetensors").status == 404
    assert server.get("/api/experiment/models/preview/checkpoints/0/..%2F..%2F..%2Fsecret").status in (403, 404)
    assert server.get("/view_metadata/checkpoints?filename=sub/m.safetensors").json() == {"modelspec.title": "M"}
    for query in ("checkpoints?filename=plain.safetensors", "checkpoints?filename=missing.safetensors",
                  "checkpoints?filename=notes.txt", "nope?filename=m.safetensors",
                  "checkpoints?filename=../../../user/default/comfy.settings.json",
                  "checkpoints?filename=..%2F..%2Fx.safetensors"):
        assert server.get("/view_metadata/" + query).status == 404, query


def test_internal_routes(server: LiveServer) -> None:
    import logging

    logging.getLogger("genesis.test").warning("a line for the terminal panel")
    text = server.get("/internal/logs").json()
    assert "a line for the terminal panel" in text
    raw = server.get("/internal/logs/raw").json()
    assert raw["entries"][-1]["m"].strip().endswith("a line for the terminal panel")
    assert set(raw["size"]) == {"cols", "rows"}
    folders = server.get("/internal/folder_paths").json()
    assert folders["checkpoints"] == [str(server.paths.models_dir / "checkpoints")]
    assert server.get("/internal/files/output").json() == []


def test_logs_subscription_over_websocket(server: LiveServer) -> None:
    import logging

    client = WsClient(server.ws_url)
    assert http("PATCH", server.url + "/internal/logs/subscribe", {"clientId": client.sid, "enabled": True}).status == 200
    assert http("PATCH", server.url + "/internal/logs/subscribe", {"enabled": True}).status == 400
    logging.getLogger("genesis.test").warning("streamed line")
    message = client.read_until(lambda m: m["type"] == "logs")
    assert "streamed line" in message["data"]["entries"][0]["m"]
    client.close()


def test_templates_and_workflow_templates(server: LiveServer) -> None:
    index = server.get("/templates/index.json")
    assert index.status == 200 and index.headers["Content-Type"].startswith("application/json")
    assert index.headers["Cache-Control"] == "no-cache"
    categories = index.json()
    first = categories[0]["templates"][0]["name"]
    assert server.get(f"/templates/{first}.json").json()["nodes"]
    thumb = server.get(f"/templates/{first}-1.webp")  # served from a media bundle
    assert thumb.status == 200 and thumb.headers["Content-Type"] == "image/webp"
    assert server.get("/templates/../../etc/passwd").status in (403, 404)
    assert server.get("/templates/%2e%2e%2f%2e%2e%2fsetup.py").status in (403, 404)
    assert server.get("/templates/nope.json").status == 404
    modules = server.get("/api/workflow_templates").json()
    assert modules == {"genesis": ["default_sd15", "smollm2_narrate"], "demo_pack": ["demo flow"]}
    narration = server.get("/api/workflow_templates/genesis/smollm2_narrate.json").json()
    assert {"LLMLoader", "LLMNarrate"} <= {n["type"] for n in narration["nodes"]}
    ours = server.get("/api/workflow_templates/genesis/default_sd15.json").json()
    assert {n["type"] for n in ours["nodes"]} == {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage",
                                                  "KSampler", "VAEDecode", "SaveImage"}
    assert server.get("/api/workflow_templates/demo_pack/demo%20flow.json").json() == {"nodes": [], "links": []}
    assert server.get("/api/workflow_templates/genesis/..%2F..%2Fserver.py").status in (403, 404)
    assert server.get("/api/workflow_templates/nope/x.json").status == 404


def test_frontend_index_and_assets(server: LiveServer) -> None:
    index = server.get("/")
    assert index.status == 200 and b"./assets/index-" in index.body
    assert index.headers["Cache-Control"] == "no-cache" and index.headers["Pragma"] == "no-cache"
    asset = next(p.name for p in (server.app[STATE].frontend_root / "assets").iterdir()
                 if p.name.startswith("index-") and p.suffix == ".js")
    reply = server.get(f"/assets/{asset}")
    assert reply.status == 200 and reply.headers["Cache-Control"] == "no-cache"
    assert server.get("/api/does-not-exist").status == 404


def test_origin_guard(server: LiveServer) -> None:
    body = json.dumps({"prompt": {}}).encode()
    same = http("POST", server.url + "/prompt", raw=body,
                headers={"Origin": server.url, "Content-Type": "application/json"})
    assert same.status == 400  # reached the handler (empty prompt)
    evil = http("POST", server.url + "/prompt", raw=body,
                headers={"Origin": "http://evil.example", "Content-Type": "application/json"})
    assert evil.status == 403
    assert http("GET", server.url + "/api/settings", headers={"Origin": "http://127.0.0.1:1"}).status == 403
    assert http("GET", server.url + "/api/settings").status == 200  # no Origin: scripts and curl


def test_cold_object_info_is_fast(server: LiveServer) -> None:
    import time

    server.get("/object_info")
    start = time.perf_counter()
    for _ in range(10):
        assert server.get("/object_info").status == 200
    assert (time.perf_counter() - start) / 10 < 0.05
