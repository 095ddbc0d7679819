"""ModelManager and ModelHandle: sharing, LRU eviction under a budget, pinning, offload, records.

Pure bookkeeping (no torch): values are byte arrays, and a fake device probe plays the accelerator.
The tests that measure real memory live in tests/test_memory.py.
"""
from __future__ import annotations

import gc
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.model_manager import (CPU, ModelHandle, ModelManager, ModelMemoryError, Resident, VramMode,
                                         as_ref, manager_for, model_handles_in)


class Blob:
    """A stand-in model: ``size`` bytes, living on ``device``."""

    def __init__(self, name: str, size: int, device: str = CPU) -> None:
        self.name, self.size, self.device = name, size, device

    def size_bytes(self) -> int:
        return self.size


class BlobOps:
    def size_bytes(self, value: Blob) -> int:
        return value.size

    def device_of(self, value: Blob) -> str:
        return value.device

    def move(self, value: Blob, device: str) -> None:
        value.device = device


class FakeMemory:
    """A device probe: 'cuda:0' has ``gpu_total`` bytes minus what Blobs on it hold; RAM is plenty."""

    def __init__(self, manager_ref=None, gpu_total: int | None = None) -> None:
        self.gpu_total = gpu_total
        self.manager = manager_ref
        self.released = 0

    def free_bytes(self, device: str) -> int | None:
        if device == CPU:
            return 1 << 40
        if self.gpu_total is None:
            return None
        return self.gpu_total - self.manager().held_bytes(device)

    def release_cached(self) -> None:
        self.released += 1


def gpu_manager(total: int, **kw) -> ModelManager:
    mem = FakeMemory(gpu_total=total)
    mm = ModelManager(memory=mem, **kw)
    mem.manager = weakref.ref(mm)
    return mm


def blob_handle(mm: ModelManager, name: str, size: int, device: str = CPU, counter: dict | None = None) -> ModelHandle:
    def load() -> Blob:
        if counter is not None:
            counter[name] = counter.get(name, 0) + 1
        return Blob(name, size, device)

    return mm.handle(("blob", name), load, ops=BlobOps(), device=device, sources=[f"/models/{name}.safetensors"],
                     label=name, estimate_bytes=size)


def test_same_key_is_one_handle_and_one_copy():
    mm = ModelManager()
    loads = {}
    a = blob_handle(mm, "a", 10, counter=loads)
    b = blob_handle(mm, "a", 10, counter=loads)
    assert a is b
    assert a.get() is b.get() and loads == {"a": 1} and mm.loads == 1


def test_handle_metadata_without_loading():
    mm = ModelManager()
    h = blob_handle(mm, "a", 123)
    assert not h.loaded and h.device is None and h.size_bytes == 123  # the estimate
    h.get()
    assert h.loaded and h.device == CPU and h.size_bytes == 123
    assert h.describe()["files"] == ["/models/a.safetensors"]


def test_lru_eviction_under_a_budget_and_reload_on_use():
    mm = ModelManager(budget_bytes=25)
    loads = {}
    a, b, c = (blob_handle(mm, n, 10, counter=loads) for n in "abc")
    a.get(), b.get()
    a.get()  # a is now the most recent
    c.get()  # 30 > 25: b (least recently used) goes
    assert a.loaded and not b.loaded and c.loaded
    assert mm.held_bytes() == 20
    assert b.get().name == "b" and loads["b"] == 2  # the handle reloads what was evicted
    assert not a.loaded  # ... evicting the then least recent


def test_evicted_value_is_really_released():
    mm = ModelManager(budget_bytes=15)
    a, b = blob_handle(mm, "a", 10), blob_handle(mm, "b", 10)
    alive = weakref.ref(a.get())
    b.get()
    gc.collect()
    assert alive() is None, "the manager must hold the only reference to a model"


def test_outputs_holding_handles_do_not_pin_memory():
    mm = ModelManager()
    h = blob_handle(mm, "a", 10)
    cached_output = [[Resident(1), h]]  # what the output cache keeps
    alive = weakref.ref(h.get())
    assert mm.unload_all() == 1
    gc.collect()
    assert alive() is None and cached_output[0][1] is h and not h.loaded


def test_a_node_pins_what_it_uses():
    mm = ModelManager(budget_bytes=15)
    a, b = blob_handle(mm, "a", 10), blob_handle(mm, "b", 10)
    with mm.node_scope("3") as scope:
        a.get()
        assert mm.unload_all() == 0  # in use by the running node
        b.get()  # over budget, but a is pinned: b stays too (soft limit after a load)
        assert a.loaded and b.loaded and set(scope.used) == {a.key, b.key}
    c = blob_handle(mm, "c", 10)
    c.get()
    assert mm.held_bytes() <= 15 + 10 and c.loaded


def test_free_for_retry_keeps_only_the_nodes_models():
    mm = gpu_manager(100)
    a, b, c = (blob_handle(mm, n, 30, "cuda:0") for n in "abc")
    a.get(), b.get()
    with mm.node_scope("5"):
        c.get()
        freed = mm.free_for_retry()
        assert freed == 60 and c.loaded and not a.loaded and not b.loaded
    assert mm.memory.released >= 1


def test_accelerator_models_are_offloaded_before_evicted():
    mm = gpu_manager(50)
    a, b = blob_handle(mm, "a", 30, "cuda:0"), blob_handle(mm, "b", 30, "cuda:0")
    a.get()
    b.get()  # room for b: a moves to RAM
    assert a.loaded and a.device == CPU and b.device == "cuda:0" and mm.offloads == 1
    a.get()  # used again: back to the GPU, b goes to RAM
    assert a.device == "cuda:0" and b.device == CPU


def test_highvram_evicts_instead_of_offloading():
    mm = gpu_manager(50, mode=VramMode.HIGH)
    a, b = blob_handle(mm, "a", 30, "cuda:0"), blob_handle(mm, "b", 30, "cuda:0")
    a.get(), b.get()
    assert not a.loaded and b.device == "cuda:0" and mm.offloads == 0


def test_reserve_vram_is_left_free():
    mm = gpu_manager(100, reserve_bytes=50)
    a, b = blob_handle(mm, "a", 30, "cuda:0"), blob_handle(mm, "b", 30, "cuda:0")
    a.get(), b.get()
    assert a.device == CPU  # 60 > 100 - 50


def test_no_room_error_says_what_was_needed_and_what_is_loaded():
    mm = gpu_manager(50)
    a = blob_handle(mm, "a", 30, "cuda:0")
    big = blob_handle(mm, "huge", 80, "cuda:0")
    with mm.node_scope("1"):
        a.get()
        with pytest.raises(ModelMemoryError) as err:
            big.get()
    msg = str(err.value)
    assert "cuda:0" in msg and "a (" in msg and "in use" in msg and "--lowvram" in msg


def test_disable_smart_memory_offloads_after_each_node():
    mm = gpu_manager(100, smart_memory=False)
    a = blob_handle(mm, "a", 30, "cuda:0")
    with mm.node_scope("1"):
        assert a.get().device == "cuda:0"
    assert a.loaded and a.device == CPU


def test_prompt_record_lists_used_models_with_sha256(tmp_path):
    from graph_runtime.file_hashes import FileHashes, sha256_of_file

    f = tmp_path / "m.safetensors"
    f.write_bytes(b"weights")
    mm = ModelManager(hashes=FileHashes())
    h = mm.handle(("m",), lambda: Blob("m", 5), ops=BlobOps(), sources=[f], label="m", dtype="float16")
    other = blob_handle(mm, "other", 5)
    other.get()
    mm.begin_prompt()
    h.get()
    rows = mm.prompt_models()
    assert [r["label"] for r in rows] == ["m"]
    assert rows[0]["dtype"] == "float16" and rows[0]["sha256"] == {str(f): sha256_of_file(f)}


def test_a_loaded_model_is_hashed_once_and_its_record_names_the_files_it_loaded(tmp_path, monkeypatch):
    """Prompt after prompt, the record of a loaded model neither hashes nor stats its files again;
    it names the files as they were when loaded, until the model is evicted and loaded anew."""
    from graph_runtime.file_hashes import FileHashes, sha256_of_file

    f = tmp_path / "m.safetensors"
    f.write_bytes(b"weights v1")
    hashes = FileHashes()
    mm = ModelManager(hashes=hashes)
    h = mm.handle(("m",), lambda: Blob("m", 5), ops=BlobOps(), sources=[f], label="m", dtype="float16")
    first = sha256_of_file(f)
    calls = []
    real = hashes.sha256
    monkeypatch.setattr(hashes, "sha256", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        mm.begin_prompt()
        h.get()
        assert mm.prompt_models()[0]["sha256"] == {str(f): first}
    assert len(calls) == 1
    f.write_bytes(b"weights v2 (the file changed on disk; the loaded model did not)")
    mm.begin_prompt()
    h.get()
    assert mm.prompt_models()[0]["sha256"] == {str(f): first}
    assert mm.evict(h)
    mm.begin_prompt()
    h.get()  # loaded again: from the new file
    assert mm.prompt_models()[0]["sha256"] == {str(f): sha256_of_file(f)} != {str(f): first}


def test_prompts_in_flight_at_once_keep_their_own_model_records():
    """A video prompt parks (its thread waits) while an image prompt runs on another thread; when
    the video prompt resumes and finishes, its record still names what it used before parking —
    and neither record names the other prompt's models.  Node work runs in asyncio tasks and
    ``asyncio.to_thread`` calls, which must see their prompt's record."""
    import asyncio
    import threading

    mm = ModelManager()
    a, b, c = blob_handle(mm, "a", 1), blob_handle(mm, "b", 1), blob_handle(mm, "c", 1)
    parked, resume = threading.Event(), threading.Event()
    records: dict[str, list[str]] = {}

    def video_prompt() -> None:
        mm.begin_prompt()
        asyncio.run(asyncio.to_thread(a.get))  # a node before the network node
        parked.set()
        resume.wait(10)
        c.get()  # SaveVideo-like node after resuming
        records["video"] = [r["label"] for r in mm.prompt_models(with_sha256=False)]

    def image_prompt() -> None:
        used = mm.begin_prompt()

        async def node() -> None:
            b.get()

        asyncio.run(node())
        records["image"] = [r["label"] for r in mm.prompt_models(with_sha256=False)]
        mm.note_prompt_use([a], used)  # e.g. a cached loader's output, noted from another thread
        records["image+cached"] = [r["label"] for r in mm.prompt_models(with_sha256=False, record=used)]

    video = threading.Thread(target=video_prompt)
    video.start()
    assert parked.wait(10)
    image = threading.Thread(target=image_prompt)
    image.start()
    image.join(10)
    resume.set()
    video.join(10)
    assert records == {"video": ["a", "c"], "image": ["b"], "image+cached": ["b", "a"]}


def test_handles_are_found_in_node_inputs():
    mm = ModelManager()
    h1, h2 = blob_handle(mm, "a", 1), blob_handle(mm, "b", 1)

    class Cond:
        def model_handles(self):
            return (h2,)

    assert model_handles_in([{"x": h1}, (Cond(),), "text", 3]) == [h1, h2]
    assert as_ref(h1) is h1 and as_ref(5).get() == 5


def test_manager_for_reads_the_memory_flags():
    from graph_runtime.context import RuntimeOptions

    mm = manager_for(RuntimeOptions(vram_mode="lowvram", reserve_vram_bytes=1 << 30, smart_memory=False))
    assert mm.mode is VramMode.LOW and mm.reserve_bytes == 1 << 30 and not mm.smart_memory
    assert manager_for(RuntimeOptions(device="cpu")).mode is VramMode.CPU


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(10, 60), ops=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 30)), max_size=25))
def test_lru_matches_a_naive_reference(budget, ops):
    """Differential: the manager's residents equal a naive LRU list after every get (no pins)."""
    mm = ModelManager(budget_bytes=budget)
    sizes: dict[int, int] = {}
    ref: list[int] = []  # least recent first
    for name, size in ops:
        size = sizes.setdefault(name, size)
        blob_handle(mm, str(name), size).get()
        if name in ref:
            ref.remove(name)
        ref.append(name)
        while sum(sizes[n] for n in ref) > budget and len(ref) > 1:
            ref.pop(0)
        assert [k[1] for k in mm.keys()] == [str(n) for n in ref]


def test_working_memory_is_reserved_before_a_node_runs():
    mm = gpu_manager(100)
    a, b = blob_handle(mm, "a", 40, "cuda:0"), blob_handle(mm, "b", 40, "cuda:0")
    a.get(), b.get()

    class Model:
        def model_handles(self):
            return (b,)

        def working_memory(self, inputs):
            return "cuda:0", 50 if "latent" in inputs else 0

    with mm.prepare_for("7", inputs={"model": Model(), "latent": {"samples": None}}) as scope:
        assert scope.working_bytes == 50
        assert a.device == CPU and b.device == "cuda:0"  # a made room; b (the node's model) stayed
    # an impossible reservation does not fail the node
    with mm.prepare_for("8", working_bytes=10_000, device="cuda:0"):
        pass


def test_a_prompt_record_lists_the_loaded_files_with_dtype_device_and_sha256(tiny_base_dir):
    """What issue 12's reproducibility record reads: the models a prompt used since begin_prompt()."""
    from graph_runtime.context import NodeContext, RuntimeOptions
    from graph_runtime.file_hashes import FileHashes, sha256_of_file
    from graph_runtime.paths import FolderPaths
    from nodes.conditioning import CLIPTextEncode
    from nodes.loaders import CheckpointLoaderSimple

    mm = ModelManager(hashes=FileHashes())
    ctx = NodeContext(node_id="1", class_type="X", prompt_id="p", paths=FolderPaths(tiny_base_dir), models=mm,
                      options=RuntimeOptions(device="cpu"))
    _m, clip, _v = CheckpointLoaderSimple().execute(ctx, "tiny-sd15.safetensors")
    mm.begin_prompt()  # Runtime.run_job calls this before each prompt
    CLIPTextEncode().execute(ctx, "x", clip)  # this prompt uses only the text encoders
    rows = mm.prompt_models()
    ckpt = ctx.paths.model_path("checkpoints", "tiny-sd15.safetensors")
    assert [r["label"] for r in rows] == ["tiny-sd15.safetensors (text encoders)"]
    assert rows[0]["sha256"] == {str(ckpt): sha256_of_file(ckpt)}
    assert (rows[0]["device"], rows[0]["dtype"]) == ("cpu", "float32")


class StreamingOps(BlobOps):
    def __init__(self) -> None:
        self.streamed: list[str] = []

    def stream(self, value: Blob, device: str) -> bool:
        self.streamed.append(value.name)
        return True


def test_lowvram_streams_a_model_that_does_not_fit_and_novram_streams_all():
    for mode, expect in ((VramMode.LOW, ["big"]), (VramMode.NO, ["small", "big"])):
        mm = gpu_manager(100, mode=mode)
        ops = StreamingOps()
        small = mm.handle(("small",), lambda: Blob("small", 30), ops=ops, device="cuda:0", label="small")
        big = mm.handle(("big",), lambda: Blob("big", 300), ops=ops, device="cuda:0", label="big")
        small.get()
        with mm.node_scope("1"):
            big.get()
        assert ops.streamed == expect, mode
        assert big.device == CPU  # its weights live in RAM
    mm = gpu_manager(100, mode=VramMode.NORMAL)
    big = mm.handle(("big",), lambda: Blob("big", 300), ops=StreamingOps(), device="cuda:0", label="big")
    with pytest.raises(ModelMemoryError):
        big.get()


def test_loaders_may_build_on_the_cpu_and_the_manager_places_the_model():
    mm = gpu_manager(100)
    h = mm.handle(("m",), lambda: Blob("m", 30, CPU), ops=BlobOps(), device="cuda:0", label="m")
    assert h.get().device == "cuda:0" and h.device == "cuda:0"
