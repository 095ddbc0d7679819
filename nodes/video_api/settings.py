"""Provider keys, base URLs and engine knobs: from the environment or ``<user dir>/secrets.yaml``.

Names are each provider SDK's own (``RUNWAYML_API_SECRET``, ``LUMAAI_API_KEY``, ``GEMINI_API_KEY``
or ``GOOGLE_API_KEY``, ``KLING_ACCESS_KEY`` + ``KLING_SECRET_KEY``, ``FAL_KEY``, ``OPENAI_API_KEY``;
base URLs ``RUNWAYML_BASE_URL`` …), so a studio's existing environment works unchanged.  The
environment wins over the file.  ``secrets.yaml`` is a flat mapping with the same names::

    RUNWAYML_API_SECRET: key_…
    KLING_ACCESS_KEY: …
    KLING_SECRET_KEY: …
    OPENAI_BASE_URL: https://proxy.example/v1

Keys never travel through the graph: nodes carry no key input, so keys cannot reach a prompt,
the history, PNG/MP4 metadata or ``object_info``.  A key is held as a :class:`Secret` whose
``repr``/``str`` show only the variable name, so a stray log line or f-string prints
``<RUNWAYML_API_SECRET>`` and not the key.

Engine knobs (same sources): ``GENESIS_VIDEO_POLL_INTERVAL`` (seconds, overrides every
provider's poll interval), ``GENESIS_VIDEO_DEADLINE`` (seconds, overall limit per remote job),
``GENESIS_VIDEO_RETRY_BASE`` (seconds, first backoff step).  They exist for operators behind a
fast proxy and for tests that scale the provider's timings down.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

log = logging.getLogger(__name__)

SECRETS_FILE = "secrets.yaml"


class Secret:
    """A credential: the value is only reachable through :meth:`reveal`."""

    __slots__ = ("name", "_value")

    def __init__(self, name: str, value: str) -> None:
        self.name = name
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"<{self.name}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other.name == self.name and other._value == self._value

    def __hash__(self) -> int:
        return hash((self.name, self._value))


@dataclass(frozen=True)
class SettingsSource:
    """Where settings are read: the process environment, then the user's secrets file."""

    environ: Mapping[str, str]
    file_values: Mapping[str, Any]
    file_path: Path | None = None

    @classmethod
    def load(cls, user_dir: Path | None, environ: Mapping[str, str] | None = None) -> "SettingsSource":
        env = os.environ if environ is None else environ
        path = (Path(user_dir) / SECRETS_FILE) if user_dir is not None else None
        values: Mapping[str, Any] = {}
        if path is not None and path.is_file():
            try:
                loaded = yaml.safe_load(path.read_text()) or {}
            except (OSError, yaml.YAMLError) as exc:
                # The file holds keys: say which file is broken, never echo its content.
                log.warning("cannot read %s (%s); ignoring it", path, type(exc).__name__)
                loaded = {}
            if isinstance(loaded, dict):
                values = {str(k): v for k, v in loaded.items() if v is not None}
            else:
                log.warning("%s must be a mapping of NAME: value; ignoring it", path)
        return cls(env, values, path)

    def get(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or not str(value).strip():
            value = self.file_values.get(name)
        if value is None:
            return None
        text = str(value).strip()
        return text or None

    def secret(self, *names: str) -> Secret | None:
        """The first of ``names`` that is set, as a :class:`Secret`."""
        for name in names:
            value = self.get(name)
            if value:
                return Secret(name, value)
        return None

    def number(self, name: str) -> float | None:
        value = self.get(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            log.warning("%s=%r is not a number; ignored", name, value)
            return None
        return number if number > 0 else None

    def where(self) -> str:
        """How to tell a user where settings go (for error messages)."""
        if self.file_path is not None:
            return f"set it in the environment or in {self.file_path}"
        return "set it in the environment"
