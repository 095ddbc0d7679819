"""FileHashes: digests equal hashlib's, are computed once per file version, and survive a restart."""
from __future__ import annotations

import hashlib
import os

from graph_runtime import file_hashes
from graph_runtime.file_hashes import FileHashes


def test_digest_equals_hashlib_and_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    f = tmp_path / "m.safetensors"
    f.write_bytes(os.urandom(3 << 20))
    reads = []
    real = file_hashes.sha256_of_file
    monkeypatch.setattr(file_hashes, "sha256_of_file", lambda p: reads.append(p) or real(p))
    hashes = FileHashes(tmp_path / "user" / "hashes.json")
    assert hashes.cached(f) is None
    assert hashes.sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    assert hashes.sha256(f) == hashes.cached(f) and len(reads) == 1
    f.write_bytes(b"changed")
    assert hashes.cached(f) is None
    assert hashes.sha256(f) == hashlib.sha256(b"changed").hexdigest() and len(reads) == 2
    # a new process finds the digest without reading the file
    again = FileHashes(tmp_path / "user" / "hashes.json")
    assert again.cached(f) == hashlib.sha256(b"changed").hexdigest()


def test_directory_digest_depends_on_content(tmp_path):
    d = tmp_path / "folder"
    (d / "sub").mkdir(parents=True)
    (d / "a.json").write_text("{}")
    (d / "sub" / "b.bin").write_bytes(b"x")
    hashes = FileHashes()
    first = hashes.sha256(d)
    assert first == hashes.sha256(d)
    (d / "sub" / "b.bin").write_bytes(b"y")
    assert hashes.sha256(d) != first
