"""The official ComfyUI frontend (comfyui-frontend-package 1.58.1) in Debian's chromium, driven by
Playwright against a live server on the tiny models: it boots cleanly on OUR default workflow,
Run produces the image in the output node, a saved workflow is listed after a reload, and
LoadImage uploads work.  Screenshots go to artifacts/ (gitignored).

Needs ``apt-get install -y chromium`` (never ``playwright install``).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable

import pytest
from PIL import Image

from graph_runtime.paths import FolderPaths
from graph_runtime.service import Runtime
from server import default_registry
from tests.conftest_models import link_models
from tests.web_harness import LiveServer

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
DEFAULT_TYPES = {"CheckpointLoaderSimple", "CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage"}
BOOT_TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():  # pragma: no cover - the setup script installs it
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterable[LiveServer]:
    base = tmp_path_factory.mktemp("browser") / "base"
    link_models(tiny_models_dir, base / "models")
    paths = FolderPaths(base)
    paths.ensure_dirs()
    live = LiveServer(Runtime(paths, registry=default_registry(paths)), probe_torch=False).start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def browser() -> Iterable[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class Page:
    """A fresh browser context (a new user: empty localStorage) with console bookkeeping."""

    def __init__(self, browser: Any, server: LiveServer) -> None:
        self.context = browser.new_context(viewport={"width": 1600, "height": 1000})
        self.page = self.context.new_page()
        self.server = server
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror {e}"))

    def open(self) -> None:
        self.page.goto(self.server.url + "/")
        self.wait_for_graph()

    def wait_for_graph(self) -> None:
        self.page.wait_for_function("() => window.app?.graph?.nodes?.length > 0", timeout=BOOT_TIMEOUT_MS)

    def nodes(self) -> list[dict[str, Any]]:
        return self.page.evaluate("""() => window.app.graph.nodes.map(n => ({id: n.id, type: n.type,
            widgets: (n.widgets || []).map(w => [w.name, w.value])}))""")

    def assert_clean(self) -> None:
        assert self.errors == []
        dialogs = self.page.locator(".p-dialog:visible, .p-toast-message-error:visible")
        assert dialogs.count() == 0, dialogs.all_inner_texts()

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path))
        return path

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, server: LiveServer) -> Iterable[Page]:
    p = Page(browser, server)
    yield p
    p.close()


def test_boots_cleanly_on_our_default_workflow_and_runs_it(page: Page, server: LiveServer) -> None:
    page.open()
    nodes = {n["type"]: n for n in page.nodes()}
    assert set(nodes) == DEFAULT_TYPES and len(page.nodes()) == 7
    assert nodes["CheckpointLoaderSimple"]["widgets"] == [["ckpt_name", "tiny-sd15.safetensors"]]
    assert [w[1] for w in nodes["EmptyLatentImage"]["widgets"]] == [64, 64, 1]
    page.page.wait_for_timeout(500)  # let late boot requests land before judging the console
    page.assert_clean()
    page.shot("browser_boot.png")

    with page.page.expect_response(lambda r: "/api/view?" in r.url and "type=output" in r.url,
                                   timeout=60_000) as view:
        page.page.get_by_role("button", name="Run", exact=True).click()
        page.page.wait_for_function(
            "() => window.app.graph.nodes.find(n => n.type === 'SaveImage')?.imgs?.length > 0", timeout=60_000)
    assert view.value.status == 200 and view.value.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(view.value.body()))
    assert image.size == (64, 64)
    history = server.get("/history").json()
    assert len(history) == 1
    entry = next(iter(history.values()))
    assert entry["status"]["status_str"] == "success"
    filename = entry["outputs"]["9"]["images"][0]["filename"]
    assert (server.paths.output_dir / filename).is_file()
    assert json.loads(Image.open(server.paths.output_dir / filename).info["workflow"])["nodes"]  # UI workflow kept
    jobs = server.get("/api/jobs?status=completed,failed,cancelled&limit=64&offset=0").json()["jobs"]
    assert jobs[0]["preview_output"]["filename"] == filename
    page.assert_clean()
    page.shot("browser_run.png")
    # the history panel (read from /api/jobs) lists the output too
    page.page.get_by_role("button", name="Assets").first.click()
    page.page.locator(f"img[src*='filename={filename}']").first.wait_for(state="visible", timeout=10_000)
    page.assert_clean()
    page.shot("browser_assets.png")


def test_saved_workflow_is_listed_after_reload(page: Page, server: LiveServer) -> None:
    page.open()
    page.page.mouse.click(800, 750)  # focus the canvas
    page.page.keyboard.press("Control+s")
    box = page.page.get_by_role("dialog").get_by_role("textbox")
    box.fill("my saved flow")
    with page.page.expect_response(lambda r: "/api/userdata/workflows%2Fmy%20saved%20flow.json" in r.url
                                   and r.request.method == "POST"):
        box.press("Enter")
    saved = server.paths.user_dir / "default" / "workflows" / "my saved flow.json"
    assert {n["type"] for n in json.loads(saved.read_text())["nodes"]} == DEFAULT_TYPES
    page.page.reload()
    page.wait_for_graph()
    page.page.get_by_role("button", name="Workflows").first.click()
    page.page.get_by_text("my saved flow").first.wait_for(state="visible", timeout=10_000)
    page.assert_clean()
    page.shot("browser_saved_workflow.png")


def test_load_image_upload(page: Page, server: LiveServer) -> None:
    page.open()
    node_id = page.page.evaluate("""() => { const node = window.LiteGraph.createNode('LoadImage');
        node.pos = [100, 560]; window.app.graph.add(node); window.app.canvas.setDirty(true, true); return node.id }""")
    page.page.wait_for_function(  # the canvas has drawn the node (widget positions are known)
        f"() => window.app.graph.getNodeById({node_id}).widgets.find(w => w.name === 'upload').y > 0")
    def upload_button() -> tuple[float, float]:
        return page.page.evaluate(f"""() => {{ const node = window.app.graph.getNodeById({node_id});
            const w = node.widgets.find(w => w.name === 'upload');
            const rect = window.app.canvas.canvas.getBoundingClientRect();
            const p = window.app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2, node.pos[1] + w.y + 10]);
            return [rect.left + p[0], rect.top + p[1]] }}""")

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (250, 20, 20)).save(buf, format="PNG")
    page.page.mouse.click(800, 750)  # focus the canvas first, as a user would
    chooser = None
    for _ in range(6):  # a click that lands while the canvas is still settling is ignored by litegraph
        x, y = upload_button()  # recomputed: the canvas may have moved since the last try
        try:
            with page.page.expect_file_chooser(timeout=5_000) as chooser:
                page.page.mouse.click(x, y)  # the node's "choose file to upload" button
            break
        except Exception:  # playwright TimeoutError
            chooser = None
    assert chooser is not None, "clicking 'choose file to upload' opened no file chooser"
    with page.page.expect_response(lambda r: "/api/upload/image" in r.url) as upload:
        chooser.value.set_files(files=[{"name": "red dot.png", "mimeType": "image/png", "buffer": buf.getvalue()}])
    assert upload.value.status == 200 and upload.value.json()["name"] == "red dot.png"
    page.page.wait_for_function(
        f"() => window.app.graph.getNodeById({node_id}).widgets[0].value === 'red dot.png'", timeout=10_000)
    stored = server.paths.input_dir / "red dot.png"
    assert Image.open(stored).getpixel((8, 8)) == (250, 20, 20)
    info = server.get("/object_info/LoadImage").json()["LoadImage"]
    assert "red dot.png" in info["input"]["required"]["image"][0]
    page.assert_clean()
    page.shot("browser_upload.png")


# -- a newcomer's first minute -------------------------------------------------------------------

@pytest.fixture
def first_start(tiny_models_dir: Path, tmp_path: Path) -> Iterable[tuple[LiveServer, Any, Any]]:
    """A first start: no model at all; the demo models are "written" (linked from the session's
    tiny set) only when the test opens the ``writer`` gate."""
    import threading

    from web.app import DEFAULT_WORKFLOW
    from web.first_start import MODELS_CHANGED, DemoModels
    from web.state import STATE

    paths = FolderPaths(tmp_path / "first-start")
    paths.ensure_dirs()
    runtime = Runtime(paths, registry=default_registry(paths))
    gate = threading.Event()

    def writer(target: Path) -> None:
        assert gate.wait(120)
        link_models(tiny_models_dir, target)

    live = LiveServer(runtime, probe_torch=False)
    hub = live.app[STATE].hub
    demo = DemoModels(runtime, writer=writer, workflow=DEFAULT_WORKFLOW,
                      on_arrival=lambda: hub.send_threadsafe(MODELS_CHANGED, {}))
    assert demo.needed()
    demo.announce()
    live.start()
    demo.start()
    yield live, demo, gate
    gate.set()
    live.stop()


def test_the_first_run_works_whenever_it_is_pressed(browser: Any, first_start: tuple[LiveServer, Any, Any]) -> None:
    """Run pressed the moment the canvas shows, while the demo models are still being written."""
    import time

    server, demo, gate = first_start
    page = Page(browser, server)
    try:
        page.open()
        shown = time.perf_counter()
        assert not (server.paths.models_dir / "checkpoints" / "tiny-sd15.safetensors").exists()
        nodes = {n["type"]: n for n in page.nodes()}
        assert nodes["CheckpointLoaderSimple"]["widgets"] == [["ckpt_name", "tiny-sd15.safetensors"]]
        with page.page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as q:
            # exact: "Cancel current run" also matches "Run", and is there (disabled) before the Run button
            page.page.get_by_role("button", name="Run", exact=True).click()
        pressed = time.perf_counter() - shown
        assert q.value.status == 200, q.value.text()  # accepted: the model is announced
        page.assert_clean()  # no "tiny-sd15.safetensors is missing", no error toast
        assert server.get("/queue").json()["queue_pending"], "held until the models are written"
        # the VAE list of a new node is still empty: the canvas only knows the announced checkpoint
        before = page.page.evaluate("() => LiteGraph.createNode('VAELoader').widgets[0].options.values")
        assert "tiny-sd-vae.safetensors" not in before

        gate.set()  # the demo models land
        page.page.wait_for_function(
            "() => window.app.graph.nodes.find(n => n.type === 'SaveImage')?.imgs?.length > 0", timeout=120_000)
        done = time.perf_counter() - shown
        (entry,) = server.get("/history").json().values()
        assert entry["status"]["status_str"] == "success"
        assert demo.ready.is_set() and server.paths.announced == {}
        # the canvas refreshed its model lists when the models arrived (no reload)
        page.page.wait_for_function(
            "() => LiteGraph.createNode('VAELoader').widgets[0].options.values.includes('tiny-sd-vae.safetensors')",
            timeout=20_000)
        page.assert_clean()
        page.shot("browser_first_run.png")
        print(f"\nfirst minute: Run pressed {pressed:.2f} s after the canvas showed; image {done:.1f} s after")
    finally:
        page.close()


# -- off loopback: the browser logs in once with ?token= -----------------------------------------

def test_the_frontend_works_with_a_token_in_the_url(browser: Any, tiny_models_dir: Path, tmp_path: Path) -> None:
    import json as _json

    from web.auth import COOKIE_NAME, TOKENS_FILE, AuthSettings

    base = tmp_path / "auth-base"
    link_models(tiny_models_dir, base / "models")
    paths = FolderPaths(base)
    paths.ensure_dirs()
    token = "browser-token-0123456789abcdef"
    (paths.user_dir / TOKENS_FILE).write_text(_json.dumps({token: "ada"}))
    auth = AuthSettings.configure(paths.user_dir, required=True, multi_user=True)
    server = LiveServer(Runtime(paths, registry=default_registry(paths)), probe_torch=False, auth=auth).start()
    page = Page(browser, server)
    try:
        refused = page.page.goto(server.url + "/")
        assert refused.status == 401  # no token, no canvas
        page.page.goto(f"{server.url}/?token={token}")
        assert "token=" not in page.page.url  # the redirect took it out of the address bar
        cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE_NAME)
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]
        page.wait_for_graph()
        page.errors.clear()  # the refused first load logged its 401
        with page.page.expect_response(lambda r: "/api/view?" in r.url and "type=output" in r.url,
                                       timeout=60_000) as view:
            page.page.get_by_role("button", name="Run", exact=True).click()
            page.page.wait_for_function(
                "() => window.app.graph.nodes.find(n => n.type === 'SaveImage')?.imgs?.length > 0", timeout=60_000)
        assert view.value.status == 200 and view.value.headers["content-type"] == "image/png"
        (job,) = server.runtime.store.list_jobs().jobs
        assert job.owner == "ada" and job.status.value == "succeeded"  # the token's user owns the job
        page.assert_clean()
        page.shot("browser_token_login.png")
    finally:
        page.close()
        server.stop()


def test_run_twice_with_randomized_seed_then_new_text(page: Page, server: LiveServer) -> None:
    """The most common interaction: Run, Run again (the seed widget randomizes), edit the text, Run."""
    page.open()
    before = set(server.get("/history").json())

    def prompt_ids() -> set[str]:
        queue = server.get("/queue").json()
        queued = {item[1] for item in queue["queue_running"] + queue["queue_pending"]}
        return queued | set(server.get("/history").json())

    def run_once() -> dict[str, Any]:
        known = prompt_ids()
        # exact: while a prompt runs, a "Cancel current run" button matches "Run" too
        page.page.get_by_role("button", name="Run", exact=True).first.click()
        new: set[str] = set()
        for _ in range(300):  # up to 30 s: the prompt the click queued shows in the queue or history
            new = prompt_ids() - known
            if new:
                break
            page.page.wait_for_timeout(100)
        assert len(new) == 1, "Run queued no prompt"
        entry = server.wait_history(new.pop(), timeout=180)
        assert entry["status"]["status_str"] == "success", entry["status"]
        return entry

    def sampler_seed(entry: dict[str, Any]) -> int:
        prompt = entry["prompt"][2]
        return next(n["inputs"]["seed"] for n in prompt.values() if n["class_type"] == "KSampler")

    first = run_once()
    second = run_once()
    assert sampler_seed(first) != sampler_seed(second)  # "randomize" after the first Run
    page.page.evaluate("""() => { const node = window.app.graph.nodes.find(
        n => n.type === 'CLIPTextEncode' && n.widgets[0].value.length > 0);
        node.widgets[0].value = 'a lighthouse at dusk, oil painting'; window.app.graph.setDirtyCanvas(true, true) }""")
    third = run_once()
    texts = {n["inputs"]["text"] for n in third["prompt"][2].values() if n["class_type"] == "CLIPTextEncode"}
    assert "a lighthouse at dusk, oil painting" in texts
    files = [img["filename"] for entry in (first, second, third) for out in entry["outputs"].values()
             for img in out.get("images", [])]
    assert len(files) == 3 and len(set(files)) == 3
    assert all((server.paths.output_dir / f).is_file() for f in files)
    assert len(set(server.get("/history").json()) - before) == 3
    page.page.wait_for_function(
        f"() => (window.app.graph.nodes.find(n => n.type === 'SaveImage')?.images || [])"
        f".some(i => i.filename === '{files[-1]}')", timeout=30_000)
    page.assert_clean()
    page.shot("browser_run_twice.png")


def test_official_text_generate_template_runs_from_the_canvas(page: Page, server: LiveServer) -> None:
    """ComfyUI's Qwen3 text-generation template (CLIPLoader → TextGenerate → PreviewAny) opened in the real
    frontend on the tiny Qwen3 file: the frontend builds the ``sampling_mode`` widgets from our dynamic-combo
    object_info, Run sends them as ``sampling_mode.*`` and the generated text comes back to PreviewAny."""
    templates = pytest.importorskip("comfyui_workflow_templates_json")
    workflow = json.loads((Path(templates.__file__).parent / "templates" / "llm_qwen3_text_gen.json").read_text())
    for node in workflow["nodes"]:
        if node["type"] == "CLIPLoader":
            node["widgets_values"][0] = "tiny-qwen3-te.safetensors"
        if node["type"] == "TextGenerate":
            node["widgets_values"][1] = 8  # max_length
    page.open()
    page.page.evaluate("(w) => window.app.loadGraphData(w)", workflow)
    page.page.wait_for_function("() => window.app.graph.nodes.some(n => n.type === 'TextGenerate')")
    widgets = dict(next(n["widgets"] for n in page.nodes() if n["type"] == "TextGenerate"))
    assert widgets["sampling_mode"] == "on" and widgets["max_length"] == 8
    assert widgets["sampling_mode.top_k"] == 64 and widgets["sampling_mode.temperature"] == 0.7
    # history as the page's user sees it: the runs holding a TextGenerate
    runs = ("async () => Object.values(await (await fetch('/history')).json())"
            ".filter(v => Object.values(v.prompt[2]).some(n => n.class_type === 'TextGenerate'))")
    before = page.page.evaluate(f"async () => (await ({runs})()).length")
    page.page.get_by_role("button", name="Run", exact=True).first.click()
    # the generated text arrives on the canvas: PreviewAny shows it in its widget
    page.page.wait_for_function("() => window.app.graph.nodes.find(n => n.type === 'PreviewAny')?.widgets"
                                "?.some(w => typeof w.value === 'string' && w.value.length > 0)", timeout=60_000)
    assert page.page.evaluate(f"async () => (await ({runs})()).length") == before + 1
    entry = page.page.evaluate(f"async () => (await ({runs})()).pop()")
    assert entry["status"]["status_str"] == "success", entry["status"]
    sent = entry["prompt"][2]
    generate = next(v for v in sent.values() if v["class_type"] == "TextGenerate")["inputs"]
    assert generate["sampling_mode"] == "on" and generate["sampling_mode.top_k"] == 64
    preview = next(k for k, v in sent.items() if v["class_type"] == "PreviewAny")
    assert isinstance(entry["outputs"][preview]["text"][0], str) and entry["outputs"][preview]["text"][0]
    page.assert_clean()
    page.shot("browser_text_generate.png")
