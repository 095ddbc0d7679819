"""Output files of remote prompts (shipped by workers, landed under free names) and what a prompt
needs from a worker (model ids, network-bound prompts) — no Ray needed."""
from __future__ import annotations

import threading
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from graph_runtime.cluster.messages import ShippedFile
from graph_runtime.cluster.outputs import OutputLanding, OutputShipper
from graph_runtime.cluster.placement import model_ids_of_files, prompt_model_ids, runs_in_server
from graph_runtime.paths import FolderPaths
from tests.cluster_support import make_registry, sd15_prompt


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_workers_saving_the_same_name_land_as_two_files(base_dir: FolderPaths):
    landing = OutputLanding(base_dir)
    (base_dir.output_dir / "ComfyUI_00001_.png").write_bytes(b"old")  # already in the server's folder
    for worker, data in (("w1", b"one"), ("w2", b"two")):
        landing.land(worker, (ShippedFile("output", "", "ComfyUI_00001_.png", data),))
    ui = {"images": [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]}
    landed = {w: landing.rewrite(w, ui)["images"][0]["filename"] for w in ("w1", "w2")}
    assert files_in(base_dir.output_dir) == {"ComfyUI_00001_.png": b"old", landed["w1"]: b"one", landed["w2"]: b"two"}
    assert sorted(landed.values()) == ["ComfyUI_00002_.png", "ComfyUI_00003_.png"]
    # a replayed cached output names the file again without bytes: it maps to where it landed
    landing.land("w1", (ShippedFile("output", "", "ComfyUI_00001_.png", None),))
    assert landing.rewrite("w1", ui)["images"][0]["filename"] == landed["w1"]
    # entries of other kinds and unknown files are left alone
    other = {"images": [{"filename": "x.png", "subfolder": "", "type": "input"}], "text": ["hi"]}
    assert landing.rewrite("w1", other) == other


def test_subfolders_temp_files_and_escapes(base_dir: FolderPaths):
    landing = OutputLanding(base_dir)
    landing.land("w", (ShippedFile("output", "day/one", "a_00001_.png", b"a"), ShippedFile("temp", "", "p.png", b"p"),
                       ShippedFile("output", "../../evil", "x.png", b"x"), ShippedFile("output", "", "../x.png", b"x")))
    assert files_in(base_dir.output_dir) == {"day/one/a_00001_.png": b"a"}
    assert files_in(base_dir.temp_dir) == {"p.png": b"p"}
    assert not (base_dir.base.parent / "evil").exists() and not (base_dir.base / "x.png").exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["w1", "w2", "w3"]), st.sampled_from(["a_00001_.png", "a_00002_.png",
                                                                                  "b.png", "c_7_.webp"]),
                          st.binary(min_size=1, max_size=8)), max_size=25))
def test_landing_never_overwrites_and_names_the_latest_file(tmp_path_factory, shipments):
    paths = FolderPaths(tmp_path_factory.mktemp("land") / "base")
    paths.ensure_dirs()
    landing = OutputLanding(paths)
    latest: dict[tuple[str, str], bytes] = {}  # the naive model: what each worker's name should show now
    for worker, name, data in shipments:
        landing.land(worker, (ShippedFile("output", "", name, data),))
        latest[(worker, name)] = data
    on_disk = files_in(paths.output_dir)
    assert sorted(on_disk.values()) == sorted(data for _, _, data in shipments)  # every file kept, none overwritten
    for (worker, name), data in latest.items():
        shown = landing.rewrite(worker, {"images": [{"filename": name, "subfolder": "", "type": "output"}]})
        assert on_disk[shown["images"][0]["filename"]] == data


def test_concurrent_landings_from_many_threads_are_all_kept(base_dir: FolderPaths):
    landing = OutputLanding(base_dir)

    def ship(worker: str) -> None:
        for i in range(10):
            landing.land(worker, (ShippedFile("output", "", "ComfyUI_00001_.png", f"{worker}-{i}".encode()),))

    threads = [threading.Thread(target=ship, args=(f"w{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    contents = sorted(files_in(base_dir.output_dir).values())
    assert contents == sorted(f"w{k}-{i}".encode() for k in range(6) for i in range(10))


def test_the_shipper_sends_each_staged_file_once(base_dir: FolderPaths):
    (base_dir.output_dir / "sub").mkdir()
    (base_dir.output_dir / "sub" / "x_00001_.png").write_bytes(b"png")
    ui = {"images": [{"filename": "x_00001_.png", "subfolder": "sub", "type": "output"}], "value": [3]}
    shipper = OutputShipper(base_dir)
    assert shipper.ship(ui) == (ShippedFile("output", "sub", "x_00001_.png", b"png"),)
    assert not (base_dir.output_dir / "sub" / "x_00001_.png").exists()
    assert shipper.ship(ui) == (ShippedFile("output", "sub", "x_00001_.png", None),)
    assert shipper.ship({"images": [{"filename": "../../etc/passwd", "subfolder": "", "type": "output"}]})[0].data is None


def test_model_ids_of_a_prompt_and_of_loaded_files(tiny_paths: FolderPaths):
    registry = make_registry()
    prompt = sd15_prompt(registry, tiny_paths, "tiny-sd15.safetensors", seed=1)
    assert prompt_model_ids(prompt, registry) == {"checkpoints/tiny-sd15.safetensors"}
    files = [str(tiny_paths.model_path("checkpoints", "tiny-sd15.safetensors")),
             str(tiny_paths.models_dir / "diffusers" / "tiny-sd15" / "unet" / "model.safetensors"),
             str(tiny_paths.models_dir / "clip" / "x.safetensors"), "/elsewhere/model.safetensors"]
    assert model_ids_of_files(tiny_paths, files) == {"checkpoints/tiny-sd15.safetensors", "diffusers/tiny-sd15",
                                                     "text_encoders/x.safetensors"}
    assert not runs_in_server(prompt, registry)


def test_network_bound_prompts_run_in_the_server_unless_they_need_a_gpu(tiny_paths: FolderPaths):
    registry = make_registry()
    remote = {"1": {"class_type": "RemoteRender", "inputs": {"tag": 1}}}
    assert runs_in_server(remote, registry)
    assert not runs_in_server({"1": {"class_type": "Sleep", "inputs": {"seconds": 0, "tag": 1}}}, registry)
    mixed = {**sd15_prompt(registry, tiny_paths, "tiny-sd15.safetensors", seed=1), "99": remote["1"]}
    assert not runs_in_server(mixed, registry)
