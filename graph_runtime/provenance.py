"""The reproducibility record: what produced an output, carried by every history entry and, as a
``genesis`` PNG text chunk, by every saved image.

``{"genesis": version, "torch", "diffusers", "transformers", "python", "device": {"name", "type"},
"attention": {...}, "options": {"device", "dtype", ...}, "models": [{"label", "dtype", "device",
"files": [{"file", "sha256"}]}]}``

* Versions come from the installed distributions' metadata (no import of torch or diffusers).
* The device name and the attention backend are read from the libraries only when they are
  already imported (a prompt that loaded no model has no device to report beyond the option).
* ``models`` are the models the prompt used, as the model manager recorded them since the
  prompt began (:meth:`ModelManager.begin_prompt` / ``prompt_models``): label, dtype, device and
  the SHA-256 of every file, hashed once per file version by
  :class:`~graph_runtime.file_hashes.FileHashes` (cached by path, size and mtime).  Hashing reads
  whole files, so this is called on the worker thread (at save time, and when the job ends), never
  on the event loop.  File names are given relative to the models folder, so a picture does not
  carry the server's directory layout.
"""
from __future__ import annotations

import importlib.metadata
import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

DISTRIBUTIONS = ("genesis", "torch", "diffusers", "transformers")


@lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device(options: Any) -> dict[str, Any]:
    """The compute device prompts run on: its type and name (the accelerator's when one is used)."""
    wanted = str(getattr(options, "device", "auto") or "auto")
    torch = sys.modules.get("torch")
    if wanted != "cpu" and torch is not None:
        try:
            if torch.cuda.is_available():
                index = int(wanted.split(":")[1]) if wanted.startswith("cuda:") else torch.cuda.current_device()
                return {"type": "cuda", "index": index, "name": torch.cuda.get_device_name(index)}
            mps = getattr(torch.backends, "mps", None)
            if mps is not None and mps.is_available():
                return {"type": "mps", "name": "Apple MPS"}
        except Exception:  # a broken driver: report the CPU the prompt fell back to
            pass
    return {"type": "cpu", "name": _cpu_name()}


def attention() -> dict[str, Any]:
    """Which attention implementation diffusers dispatches to, and the SDPA kernels torch allows."""
    info: dict[str, Any] = {}
    dispatch = sys.modules.get("diffusers.models.attention_dispatch")
    registry = getattr(dispatch, "_AttentionBackendRegistry", None)
    if registry is not None:
        try:
            backend = registry.get_active_backend()[0]
            info["backend"] = getattr(backend, "value", str(backend))
        except Exception:
            pass
    torch = sys.modules.get("torch")
    if torch is not None:
        info.setdefault("backend", "native")  # diffusers' default: torch.nn.functional.scaled_dot_product_attention
        cuda = getattr(torch.backends, "cuda", None)
        if cuda is not None and torch.cuda.is_available():
            kernels = {"flash": "flash_sdp_enabled", "mem_efficient": "mem_efficient_sdp_enabled",
                       "math": "math_sdp_enabled", "cudnn": "cudnn_sdp_enabled"}
            info["sdpa_kernels"] = [k for k, fn in kernels.items() if callable(getattr(cuda, fn, None))
                                    and getattr(cuda, fn)()]
    return info


def _relative(path: str, paths: Any) -> str:
    """A model file named relative to its model folder root (else just its file name)."""
    p = Path(path)
    for roots in getattr(paths, "folders", {}).values():
        for root in roots:
            try:
                return p.relative_to(root).as_posix()
            except ValueError:
                continue
    models_dir = getattr(paths, "models_dir", None)
    if models_dir is not None:
        try:
            return p.relative_to(models_dir).as_posix()
        except ValueError:
            pass
    return p.name


def models_used(models: Any, paths: Any, used: Any = None) -> list[dict[str, Any]]:
    """The prompt's models with dtype, device and file SHA-256s (see the module docstring).

    ``used``: the prompt's :class:`~graph_runtime.model_manager.PromptModels` (default: the one
    of the calling context)."""
    prompt_models = getattr(models, "prompt_models", None)
    if not callable(prompt_models):
        return []
    rows = []
    for row in prompt_models(with_sha256=True, **({"record": used} if used is not None else {})):
        digests = row.get("sha256") or {}
        files = [{"file": _relative(f, paths), "sha256": digests.get(f)} for f in row.get("files") or []]
        rows.append({"label": row.get("label"), "dtype": row.get("dtype"), "device": row.get("device"),
                     "files": files})
    return rows


def record(models: Any, options: Any, paths: Any, used: Any = None) -> dict[str, Any]:
    """The whole record for the prompt running now, or the one ``used`` belongs to (blocking: may
    hash model files)."""
    found = versions()
    result: dict[str, Any] = {"genesis": found["genesis"], "torch": found["torch"],
                              "diffusers": found["diffusers"], "transformers": found["transformers"],
                              "python": found["python"], "device": device(options), "attention": attention()}
    result["options"] = {k: getattr(options, k) for k in ("device", "dtype", "fp8_weights")
                         if hasattr(options, k)}
    result["models"] = models_used(models, paths, used)
    return result
