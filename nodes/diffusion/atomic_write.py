"""Write a safetensors file so that a crash never leaves a partial file under its name.

Crash model: the process may die (SIGKILL, power loss after fsync) at any instruction.  The
tensors go to a temporary file in the target directory (same filesystem, so the final rename is
atomic), which is fsynced, hashed, and renamed over the final name; then the directory is
fsynced.  So the final name holds either nothing / the previous file, or the complete new one.
A ``NAME.sha256`` sidecar in ``sha256sum`` format (``<hex>  NAME``) is written the same way, after
the file; a crash between the two renames leaves a sidecar that does not match (detectable with
``sha256sum -c``), never a partial model.  Temporary files of a crashed write start with ``.`` and
end with ``.partial``; :func:`clean_partials` removes them.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch

PARTIAL_SUFFIX = ".partial"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_fsync(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_safetensors_atomic(path: Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None,
                            hashes=None) -> str:
    """Write ``tensors`` to ``path`` atomically, with a ``path.sha256`` sidecar; returns the SHA-256."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        digest = _sha256_fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _atomic_text(path.with_name(path.name + ".sha256"), f"{digest}  {path.name}\n")
    _fsync_dir(path.parent)
    if hashes is not None:
        hashes.remember(path, digest)
    return digest


def clean_partials(folder: Path) -> int:
    """Remove temporary files left by writes that crashed; returns how many."""
    count = 0
    for p in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
        p.unlink(missing_ok=True)
        count += 1
    return count
