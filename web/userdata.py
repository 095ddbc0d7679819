"""Per-user files: ``users.json``, ``comfy.settings.json`` and saved workflows.

Layout (ComfyUI's): ``<user_dir>/<user>/comfy.settings.json``, ``<user_dir>/<user>/workflows/…``.
Single-user mode (the default) always uses the user ``default``; with ``multi_user`` the
``Comfy-User`` request header picks a user created through ``POST /users``.

Every relative path a client sends goes through :func:`graph_runtime.paths.safe_join`, so
no request can read or write outside its user's directory.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

from graph_runtime.paths import PathEscapeError, safe_join

log = logging.getLogger(__name__)

DEFAULT_USER = "default"
SETTINGS_FILE = "comfy.settings.json"
USERS_FILE = "users.json"

DEFAULT_SETTINGS: dict[str, Any] = {
    # A user without settings is "new" to the frontend, which then opens the template browser
    # over an empty canvas.  Marking the tutorial as done makes it load the default workflow
    # instead — ours, installed by the ``genesis.default_workflow`` frontend extension.
    "Comfy.TutorialCompleted": True,
    # The frontend would ask api.comfy.org for ComfyUI release notes (and log a network error
    # offline); ComfyUI's releases say nothing about this server.
    "Comfy.Notification.ShowVersionUpdates": False,
}
"""Values a user gets until they change them (stored settings win)."""

USER_DIRECTORIES = ("workflows", "subgraphs")
"""Created with each user, so the frontend's boot-time listings find them (no 404 noise)."""

EMPTY_SLOTS: dict[str, tuple[bytes, str]] = {
    "user.css": (b"", "text/css"),
    "comfy.templates.json": (b"[]", "application/json"),
    "workflows/.index.json": (b'{"favorites": []}', "application/json"),
}
"""Files the frontend reads at boot; until the user saves one, they read as empty."""

_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


class UnknownUser(LookupError):
    """The request names a user that does not exist (multi-user mode)."""


class FileExists(FileExistsError):
    """The target exists and the client asked not to overwrite it."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_info(path: Path, root: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": st.st_size, "modified": st.st_mtime,
            "created": st.st_ctime}


class UserStore:
    def __init__(self, root: Path, *, multi_user: bool = False,
                 default_settings: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.multi_user = multi_user
        self.default_settings = dict(DEFAULT_SETTINGS if default_settings is None else default_settings)

    # -- users ---------------------------------------------------------------------------------
    def _users(self) -> dict[str, str]:
        path = self.root / USERS_FILE
        try:
            data = json.loads(path.read_text())
            return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def users_info(self) -> dict[str, Any]:
        if self.multi_user:
            return {"storage": "server", "users": self._users()}
        return {"storage": "server", "migrated": (self.root / DEFAULT_USER).is_dir()}

    def create_user(self, username: str) -> str:
        users = self._users()
        if username in users.values():
            raise FileExists("Duplicate username.")
        user_id = re.sub(r"[^a-zA-Z0-9-_]+", "-", username) + "_" + uuid.uuid4().hex
        users[user_id] = username
        atomic_write(self.root / USERS_FILE, json.dumps(users, indent=4).encode())
        self.ensure_user(user_id)
        return user_id

    def user_for(self, header: str | None) -> str:
        """The user a request acts as (``Comfy-User`` header in multi-user mode)."""
        if not self.multi_user:
            return DEFAULT_USER
        user = (header or "").strip()
        if not user or not _USER_ID.match(user) or user not in self._users():
            raise UnknownUser(user)
        return user

    def user_dir(self, user: str) -> Path:
        return safe_join(self.root, user)

    def ensure_user(self, user: str) -> Path:
        """Create the user's directory and the folders the frontend lists at boot."""
        root = self.user_dir(user)
        for name in USER_DIRECTORIES:
            (root / name).mkdir(parents=True, exist_ok=True)
        return root

    # -- settings ------------------------------------------------------------------------------
    def _settings_path(self, user: str) -> Path:
        return self.user_dir(user) / SETTINGS_FILE

    def stored_settings(self, user: str) -> dict[str, Any]:
        try:
            data = json.loads(self._settings_path(user).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def settings(self, user: str) -> dict[str, Any]:
        return {**self.default_settings, **self.stored_settings(user)}

    def update_settings(self, user: str, values: dict[str, Any]) -> None:
        merged = {**self.stored_settings(user), **values}
        atomic_write(self._settings_path(user), json.dumps(merged, indent=4).encode())

    # -- files ---------------------------------------------------------------------------------
    def resolve(self, user: str, relative: str) -> Path:
        """A path inside the user's directory (raises :class:`PathEscapeError` otherwise)."""
        if not relative or not relative.strip():
            raise PathEscapeError("empty path")
        root = self.user_dir(user)
        target = safe_join(root, relative)
        if target == root.resolve():
            raise PathEscapeError("the user directory itself is not a file")
        return target

    def list_files(self, user: str, directory: str, *, recurse: bool, full_info: bool,
                   split: bool) -> list[Any]:
        """``GET /userdata?dir=``: the files (not directories) under ``directory``."""
        base = safe_join(self.user_dir(user), directory)
        if not base.is_dir():
            raise FileNotFoundError(directory)
        found: list[Path] = []
        if recurse:
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                found += [Path(dirpath, f) for f in sorted(filenames)]
        else:
            found = sorted(p for p in base.iterdir() if p.is_file())
        results: list[Any] = []
        for path in found:
            rel = path.relative_to(base).as_posix()
            if full_info:
                info = file_info(path, base)
                results.append(info)
            elif split:
                results.append([rel, *rel.split("/")])
            else:
                results.append(rel)
        return results

    def list_v2(self, user: str, relative: str) -> list[dict[str, Any]]:
        """``GET /v2/userdata?path=``: files and directories, recursively, directories first."""
        root = self.user_dir(user)
        base = safe_join(root, relative) if relative else root.resolve()
        if not root.exists():
            return []
        if not base.exists():
            raise FileNotFoundError(relative)
        if not base.is_dir():
            raise NotADirectoryError(relative)
        entries: list[dict[str, Any]] = []
        root_resolved = root.resolve()
        for dirpath, dirnames, filenames in os.walk(base):
            for d in dirnames:
                p = Path(dirpath, d)
                entries.append({"name": d, "path": p.relative_to(root_resolved).as_posix(), "type": "directory"})
            for f in filenames:
                p = Path(dirpath, f)
                st = p.stat()
                entries.append({"name": f, "path": p.relative_to(root_resolved).as_posix(), "type": "file",
                                "size": st.st_size, "modified": st.st_mtime})
        entries.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return entries

    def write(self, user: str, relative: str, data: bytes, *, overwrite: bool) -> Path:
        path = self.resolve(user, relative)
        if path.exists() and not overwrite:
            raise FileExists(relative)
        if path.is_dir():
            raise IsADirectoryError(relative)
        atomic_write(path, data)
        return path

    def move(self, user: str, source: str, dest: str, *, overwrite: bool) -> Path:
        src = self.resolve(user, source)
        dst = self.resolve(user, dest)
        if not src.is_file():
            raise FileNotFoundError(source)
        if dst.exists() and not overwrite:
            raise FileExists(dest)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
        return dst
