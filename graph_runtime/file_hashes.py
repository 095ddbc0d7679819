"""SHA-256 of model and output files, computed once per file version and remembered.

Hashing a multi-GB checkpoint takes seconds, so a digest is cached by (resolved path, size,
mtime_ns): a file that has not changed is never read twice, across prompts and (with a
``store_path``) across restarts.  A file rewritten in place gets a new size or mtime and is hashed
again.  Directories (diffusers / transformers folders) hash to the SHA-256 of a manifest of their
files' relative paths and digests, so a folder is identified by its content like a single file.

Thread-safe; every call that may read a file is blocking, so async code calls it through
``asyncio.to_thread`` (``cached`` never touches the file's bytes and is cheap enough for the loop).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


def sha256_of_file(path: Path) -> str:
    """The hex SHA-256 of a file's bytes (streamed, constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class FileHashes:
    """A cache of file digests keyed by (resolved path, size, mtime_ns), optionally persisted as JSON."""

    def __init__(self, store_path: Path | None = None) -> None:
        self.store_path = store_path
        self._lock = threading.Lock()
        self._digests: dict[str, tuple[int, int, str]] = {}
        self._dirty = False
        if store_path is not None and store_path.exists():
            try:
                raw = json.loads(store_path.read_text())
                self._digests = {k: (int(v[0]), int(v[1]), str(v[2])) for k, v in raw.items()}
            except (OSError, ValueError, TypeError, IndexError):
                log.warning("ignoring unreadable hash cache %s", store_path)

    @staticmethod
    def _key(path: Path) -> tuple[str, int, int]:
        resolved = Path(path).resolve()
        st = resolved.stat()
        return str(resolved), st.st_size, st.st_mtime_ns

    def cached(self, path: Path) -> str | None:
        """The digest if this exact file version was hashed before, else None (never reads the file)."""
        try:
            key, size, mtime = self._key(path)
        except OSError:
            return None
        if Path(key).is_dir():
            return None
        with self._lock:
            entry = self._digests.get(key)
        return entry[2] if entry is not None and entry[0] == size and entry[1] == mtime else None

    def sha256(self, path: Path) -> str:
        """The hex SHA-256 of a file (or a directory manifest), hashing only when the file changed."""
        path = Path(path)
        if path.is_dir():
            return self._directory_digest(path)
        key, size, mtime = self._key(path)
        found = self.cached(path)
        if found is not None:
            return found
        digest = sha256_of_file(Path(key))
        with self._lock:
            self._digests[key] = (size, mtime, digest)
            self._dirty = True
        self.save()
        return digest

    def remember(self, path: Path, digest: str) -> None:
        """Record a digest computed while writing a file (so saving never re-reads what it wrote)."""
        key, size, mtime = self._key(path)
        with self._lock:
            self._digests[key] = (size, mtime, digest)
            self._dirty = True
        self.save()

    def _directory_digest(self, root: Path) -> str:
        lines = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                full = Path(dirpath) / name
                lines.append(f"{self.sha256(full)}  {full.relative_to(root).as_posix()}")
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def save(self) -> None:
        """Write the cache atomically (temporary file + rename) when it changed."""
        if self.store_path is None:
            return
        with self._lock:
            if not self._dirty:
                return
            data = json.dumps({k: list(v) for k, v in self._digests.items()})
            self._dirty = False
        try:
            self.store_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.store_path.parent, prefix=".hashes-")
            with os.fdopen(fd, "w") as f:
                f.write(data)
            os.replace(tmp, self.store_path)
        except OSError:
            log.warning("could not write hash cache %s", self.store_path, exc_info=True)
