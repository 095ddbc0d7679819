"""Folder listings are cached by directory mtimes: reused while nothing changed, fresh after a change."""
from __future__ import annotations

import os
import time

from graph_runtime.paths import FolderPaths


def _age(path, seconds: float = 5.0) -> None:
    """Move a directory's mtime into the past, as if it had been written long ago."""
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_listing_is_reused_until_its_directory_changes(base_dir: FolderPaths):
    ckpts = base_dir.models_dir / "checkpoints"
    (ckpts / "sub").mkdir()
    (ckpts / "sub" / "a.safetensors").write_bytes(b"x")
    for d in (ckpts, ckpts / "sub"):
        _age(d)
    assert base_dir.list_models("checkpoints") == ["sub/a.safetensors"]
    walks = base_dir.listings.walks
    for _ in range(50):
        assert base_dir.list_models("checkpoints") == ["sub/a.safetensors"]
    assert base_dir.listings.walks == walks  # no walk while nothing changed

    (ckpts / "sub" / "b.safetensors").write_bytes(b"y")  # a change in a sub-directory
    assert base_dir.list_models("checkpoints") == ["sub/a.safetensors", "sub/b.safetensors"]
    (ckpts / "sub" / "a.safetensors").rename(ckpts / "c.ckpt")  # rename across directories
    assert base_dir.list_models("checkpoints") == ["c.ckpt", "sub/b.safetensors"]
    os.unlink(ckpts / "c.ckpt")
    assert base_dir.list_models("checkpoints") == ["sub/b.safetensors"]


def test_a_listing_taken_right_after_a_change_is_not_trusted(base_dir: FolderPaths):
    """Directory mtimes tick coarsely: a file created in the same tick as the walk must not be missed."""
    ckpts = base_dir.models_dir / "checkpoints"
    (ckpts / "a.safetensors").write_bytes(b"x")
    assert base_dir.list_models("checkpoints") == ["a.safetensors"]  # taken within RACY_SECONDS
    stamp = os.stat(ckpts).st_mtime_ns
    (ckpts / "b.safetensors").write_bytes(b"y")
    os.utime(ckpts, ns=(stamp, stamp))  # the worst case: the directory stamp did not move
    assert base_dir.list_models("checkpoints") == ["a.safetensors", "b.safetensors"]


def test_a_root_that_appears_later_is_listed(tmp_path):
    paths = FolderPaths(tmp_path / "base")
    extra = tmp_path / "drive" / "loras"
    paths.add_model_dir("loras", extra)
    assert paths.list_models("loras") == []
    extra.mkdir(parents=True)
    (extra / "style.safetensors").write_bytes(b"x")
    assert paths.list_models("loras") == ["style.safetensors"]


def test_input_images_are_cached_and_refreshed(base_dir: FolderPaths):
    (base_dir.input_dir / "a.png").write_bytes(b"x")
    (base_dir.input_dir / "notes.txt").write_bytes(b"x")
    _age(base_dir.input_dir)
    assert base_dir.list_input_images() == ["a.png"]
    walks = base_dir.listings.walks
    assert base_dir.list_input_images() == ["a.png"] and base_dir.listings.walks == walks
    (base_dir.input_dir / "b.webp").write_bytes(b"x")
    assert base_dir.list_input_images() == ["a.png", "b.webp"]

