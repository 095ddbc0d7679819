"""How much memory each device has, and giving freed memory back — without importing torch.

The runtime stays torch-free (torch takes seconds to import and the server must answer at
once), yet the model manager needs free device memory to place models and ``/system_stats``
must report it.  So this probe reads torch only from ``sys.modules``: when no model code has
imported torch yet, no model is loaded either, and the CPU's numbers (from psutil) are all
there is to report.

Freed memory is given back explicitly instead of by slowing every allocation: glibc keeps
freed small blocks in its heap (``malloc_trim`` returns them), torch's CUDA allocator keeps
freed blocks cached (``empty_cache`` returns them).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
import time
from typing import Any

from graph_runtime.node_memory import current_rss

log = logging.getLogger(__name__)


def _torch() -> Any | None:
    return sys.modules.get("torch")


def ram() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")


def process_rss() -> int:
    """Resident memory of this process now, in bytes."""
    rss = current_rss()
    if rss:
        return rss
    import psutil  # pragma: no cover - not Linux

    return int(psutil.Process().memory_info().rss)  # pragma: no cover


_libc: Any = None


def malloc_trim() -> bool:
    """Return the C heap's free memory to the OS (glibc); False where unavailable."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:  # pragma: no cover
            _libc = False
    trim = getattr(_libc, "malloc_trim", None) if _libc else None
    if trim is None:
        return False
    return bool(trim(0))


class DeviceMemory:
    """Free/total memory per device ("cpu", "cuda:N", "mps") and the allocator's own view."""

    def free_bytes(self, device: str) -> int | None:
        """Bytes free on ``device`` now (None when unknown)."""
        kind, index = _split(device)
        if kind == "cpu":
            return ram()[1]
        torch = _torch()
        if torch is None:
            return None
        try:
            if kind == "cuda" and torch.cuda.is_available():
                free, _total = torch.cuda.mem_get_info(index)
                # blocks torch has cached but not handed out are free for our purposes
                return int(free) + int(torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index))
            if kind == "mps" and torch.backends.mps.is_available():
                total = int(torch.mps.recommended_max_memory())
                return max(total - int(torch.mps.driver_allocated_memory()), 0)
        except Exception:  # a driver hiccup must not break placement
            log.debug("free memory query failed for %s", device, exc_info=True)
        return None

    def total_bytes(self, device: str) -> int | None:
        kind, index = _split(device)
        if kind == "cpu":
            return ram()[0]
        torch = _torch()
        try:
            if torch is not None and kind == "cuda" and torch.cuda.is_available():
                return int(torch.cuda.mem_get_info(index)[1])
            if torch is not None and kind == "mps" and torch.backends.mps.is_available():
                return int(torch.mps.recommended_max_memory())
        except Exception:
            log.debug("total memory query failed for %s", device, exc_info=True)
        return None

    def devices(self) -> list[dict[str, Any]]:
        """Every device with total/free memory and torch's allocator view (``/system_stats`` rows)."""
        total, free = ram()
        torch = _torch()
        rows: list[dict[str, Any]] = []
        if torch is not None and hasattr(torch, "cuda"):
            try:
                if torch.cuda.is_available():
                    for index in range(torch.cuda.device_count()):
                        free_b, total_b = torch.cuda.mem_get_info(index)
                        reserved = int(torch.cuda.memory_reserved(index))
                        allocated = int(torch.cuda.memory_allocated(index))
                        rows.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                                     "index": index, "vram_total": int(total_b), "vram_free": int(free_b),
                                     "torch_vram_total": reserved, "torch_vram_free": reserved - allocated,
                                     "torch_vram_allocated": allocated,
                                     "torch_vram_peak": int(torch.cuda.max_memory_allocated(index))})
                elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                    allocated = int(torch.mps.current_allocated_memory())
                    driver = int(torch.mps.driver_allocated_memory())
                    rows.append({"name": "mps", "type": "mps", "index": 0, "vram_total": total, "vram_free": free,
                                 "torch_vram_total": driver, "torch_vram_free": max(driver - allocated, 0),
                                 "torch_vram_allocated": allocated})
            except Exception:  # a driver hiccup must not break the about panel
                log.debug("device query failed", exc_info=True)
        rss = process_rss()
        rows.append({"name": "cpu", "type": "cpu", "index": 0, "vram_total": total, "vram_free": free,
                     # on the CPU torch's allocator is the C heap: this process's resident memory
                     "torch_vram_total": rss, "torch_vram_free": 0, "process_rss": rss})
        return rows

    TRIM_INTERVAL = 1.0
    """Seconds between two trims after short prompts (see :meth:`trim_host`)."""
    TRIM_AFTER_WORK = 0.05
    """A prompt that ran at least this long (seconds) is always followed by a trim."""

    _last_trim = 0.0

    def trim_host(self, prompt_seconds: float | None = None) -> bool:
        """After a prompt: hand the C heap's freed pages back to the OS (the device cache stays warm).

        After a prompt that did real work (``prompt_seconds`` ≥ :data:`TRIM_AFTER_WORK`, or unknown)
        always; after short ones at most every :data:`TRIM_INTERVAL` seconds: a trim walks the whole
        heap (tens of microseconds, more on a big heap), as long as a trivial prompt's run itself,
        and a short prompt frees next to nothing.  Returns whether it trimmed.
        """
        now = time.monotonic()
        if prompt_seconds is not None and prompt_seconds < self.TRIM_AFTER_WORK \
                and now - self._last_trim < self.TRIM_INTERVAL:
            return False
        self._last_trim = now
        malloc_trim()
        return True

    def release_cached(self) -> None:
        """Give freed memory back: Python garbage, the C heap, torch's device caches."""
        gc.collect()
        torch = _torch()
        if torch is not None:
            try:
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
                    torch.cuda.ipc_collect()
                elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                    torch.mps.empty_cache()
            except Exception:  # pragma: no cover
                log.debug("emptying the device cache failed", exc_info=True)
        malloc_trim()


def _split(device: str) -> tuple[str, int]:
    kind, _, index = str(device).partition(":")
    return kind or "cpu", int(index) if index.isdigit() else 0
