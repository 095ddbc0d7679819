"""Where models, inputs, outputs and user data live (ComfyUI's folder conventions).

One :class:`FolderPaths` object per server or CLI run, built from ``--base-directory`` and
``extra_model_paths.yaml``; it is passed around explicitly (no module-level state) so tests can
run several runtimes side by side.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import yaml

from graph_runtime.listings import ListingCache

log = logging.getLogger(__name__)

MODEL_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft", ".gguf"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

# folder name -> default sub-directories of <base>/models (the first is where new files go)
MODEL_FOLDERS: dict[str, tuple[str, ...]] = {
    "checkpoints": ("checkpoints",),
    "configs": ("configs",),
    "loras": ("loras",),
    "vae": ("vae",),
    "text_encoders": ("text_encoders", "clip"),
    "diffusion_models": ("diffusion_models", "unet"),
    "clip_vision": ("clip_vision",),
    "style_models": ("style_models",),
    "embeddings": ("embeddings",),
    "diffusers": ("diffusers",),
    "vae_approx": ("vae_approx",),
    "controlnet": ("controlnet", "t2i_adapter"),
    "gligen": ("gligen",),
    "upscale_models": ("upscale_models",),
    "hypernetworks": ("hypernetworks",),
    "photomaker": ("photomaker",),
    "model_patches": ("model_patches",),
    "annotators": ("annotators",),
    "vlm": ("vlm",),
    "llm": ("llm",),
}
FOLDER_ALIASES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}
# folders whose entries are directories (diffusers / transformers layouts), not single files
DIRECTORY_FOLDERS = frozenset({"diffusers", "vlm", "llm", "annotators"})


class PathEscapeError(ValueError):
    """A user-supplied relative path tried to leave its directory."""


def safe_join(root: Path, relative: str, *, resolve_links: bool = True) -> Path:
    """Join ``relative`` under ``root``, refusing absolute paths and ``..`` escapes.

    With ``resolve_links`` (user-supplied names: uploads, /view) a symlink that leads outside the
    root is refused too; model folders pass False so symlinks into a shared model drive work.
    """
    if not isinstance(relative, str) or "\x00" in relative:
        raise PathEscapeError("invalid path")
    rel = relative.replace("\\", "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise PathEscapeError(f"absolute paths are not allowed: {relative!r}")
    if not resolve_links:
        root_abs = Path(os.path.abspath(root))
        target = Path(os.path.normpath(root_abs / rel))
        if target != root_abs and root_abs not in target.parents:
            raise PathEscapeError(f"path escapes its directory: {relative!r}")
        return target
    root_resolved = root.resolve()
    target = (root_resolved / rel).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        raise PathEscapeError(f"path escapes its directory: {relative!r}")
    return target


@dataclass
class FolderPaths:
    """The directories of one runtime instance."""

    base: Path
    models_dir: Path = field(init=False)
    input_dir: Path = field(init=False)
    output_dir: Path = field(init=False)
    temp_dir: Path = field(init=False)
    user_dir: Path = field(init=False)
    custom_nodes_dirs: list[Path] = field(init=False)
    folders: dict[str, list[Path]] = field(init=False)
    listings: ListingCache = field(init=False, repr=False, compare=False)
    """Listings cached by directory mtimes, shared by object_info and validation."""
    announced: dict[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    """Model names being written right now (listed before they exist; see :meth:`announce`)."""

    def __post_init__(self) -> None:
        self.listings = ListingCache()
        self.announced = {}
        self.base = Path(self.base).resolve()
        self.models_dir = self.base / "models"
        self.input_dir = self.base / "input"
        self.output_dir = self.base / "output"
        self.temp_dir = self.base / "temp"
        self.user_dir = self.base / "user"
        self.custom_nodes_dirs = [self.base / "custom_nodes"]
        self.folders = {name: [self.models_dir / d for d in dirs] for name, dirs in MODEL_FOLDERS.items()}

    # -- configuration ---------------------------------------------------------------------
    def ensure_dirs(self) -> None:
        for d in (self.input_dir, self.output_dir, self.temp_dir, self.user_dir):
            d.mkdir(parents=True, exist_ok=True)
        for name, dirs in self.folders.items():
            if name in MODEL_FOLDERS:
                dirs[0].mkdir(parents=True, exist_ok=True)

    def add_model_dir(self, folder: str, path: Path, *, first: bool = False) -> None:
        folder = FOLDER_ALIASES.get(folder, folder)
        dirs = self.folders.setdefault(folder, [])
        if path in dirs:
            return
        dirs.insert(0, path) if first else dirs.append(path)

    def load_extra_model_paths(self, yaml_path: Path) -> None:
        """Apply a ComfyUI ``extra_model_paths.yaml`` (sections with base_path and folder entries)."""
        data = yaml.safe_load(Path(yaml_path).read_text()) or {}
        for section, entries in data.items():
            if not isinstance(entries, dict):
                continue
            base = entries.get("base_path")
            base_path = Path(os.path.expandvars(os.path.expanduser(base))) if base else Path(yaml_path).parent
            if not base_path.is_absolute():
                base_path = Path(yaml_path).parent / base_path
            is_default = bool(entries.get("is_default"))
            for key, value in entries.items():
                if key in ("base_path", "is_default") or value is None:
                    continue
                for line in str(value).splitlines():
                    line = line.strip()
                    if not line:
                        continue
                    p = Path(os.path.expandvars(os.path.expanduser(line)))
                    full = p if p.is_absolute() else base_path / p
                    if key == "custom_nodes":
                        self.custom_nodes_dirs.append(full)
                    else:
                        self.add_model_dir(key, full, first=is_default)
                        log.info("extra model path [%s] %s -> %s", section, key, full)

    # -- lookups ---------------------------------------------------------------------------
    def model_dirs(self, folder: str) -> list[Path]:
        folder = FOLDER_ALIASES.get(folder, folder)
        if folder not in self.folders:
            raise KeyError(f"unknown model folder {folder!r}")
        return self.folders[folder]

    def list_models(self, folder: str) -> list[str]:
        """Sorted relative names (with subfolders, '/' separated) of the models in a folder.

        Cached until a directory of the folder changes (see :mod:`graph_runtime.listings`).
        """
        folder = FOLDER_ALIASES.get(folder, folder)
        roots = [str(r) for r in self.model_dirs(folder)]
        names = self.listings.get(("models", folder, tuple(roots)), roots, lambda: self._walk_models(folder))
        coming = self.announced.get(folder)
        return sorted(set(names) | coming) if coming else names

    def announce(self, folder: str, names: Iterable[str]) -> None:
        """List ``names`` in ``folder`` before they exist: files being written right now.

        On a first start the demo models take seconds to write; the canvas, validation and
        object_info see them at once, while the runtime holds its worker until they are there.
        """
        folder = FOLDER_ALIASES.get(folder, folder)
        self.announced = {**self.announced, folder: self.announced.get(folder, frozenset()) | frozenset(names)}

    def withdraw_announced(self) -> None:
        """Forget every announced name (the files exist now, or will not)."""
        self.announced = {}

    def _walk_models(self, folder: str) -> tuple[list[str], list[str]]:
        want_dirs = folder in DIRECTORY_FOLDERS
        names: set[str] = set()
        walked: list[str] = []
        for root in self.model_dirs(folder):
            if not root.is_dir():
                continue
            if want_dirs:
                names.update(_model_dirs_under(root))
                walked += [str(root)] + [str(p) for p in root.iterdir() if p.is_dir()]
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                walked.append(dirpath)
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                for fn in filenames:
                    if Path(fn).suffix.lower() in MODEL_EXTENSIONS:
                        names.add(Path(dirpath, fn).relative_to(root).as_posix())
        return sorted(names), walked

    def model_path(self, folder: str, name: str) -> Path | None:
        """The full path of a model by its listed name, or None if absent from every directory."""
        for root in self.model_dirs(folder):
            try:
                candidate = safe_join(root, name, resolve_links=False)
            except PathEscapeError:
                return None
            if candidate.exists():
                return candidate
        return None

    def list_input_images(self) -> list[str]:
        """Image files directly in ``input/`` (cached like :meth:`list_models`)."""
        root = str(self.input_dir)

        def walk() -> tuple[list[str], list[str]]:
            if not self.input_dir.is_dir():
                return [], []
            return sorted(p.name for p in self.input_dir.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), [root]

        return self.listings.get(("input", root), [root], walk)

    def directory_for(self, kind: str) -> Path:
        """The data directory for ComfyUI's ``type`` values: output, input, temp."""
        return {"output": self.output_dir, "input": self.input_dir, "temp": self.temp_dir}[kind]


def _model_dirs_under(root: Path) -> Iterable[str]:
    """Model folders (diffusers/transformers layouts) directly or one level below root."""
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        if any((child / marker).exists() for marker in ("model_index.json", "config.json")) or any(child.iterdir()):
            yield child.name
