"""``/system_stats``: versions, memory and devices, without importing torch on the request path.

Importing torch takes seconds; the frontend asks for system stats while it boots.  So the
torch *version* comes from package metadata (no import), and device details come from
torch only once it is in ``sys.modules`` — because a prompt ran, or because the first
``/system_stats`` request started a background thread that imports it.  Until then the
answer lists the CPU only.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import threading
from typing import Any

log = logging.getLogger(__name__)

COMFYUI_API_VERSION = "0.3.64"
"""The ComfyUI release whose HTTP/WebSocket API this server implements.

The frontend shows it in its About panel and uses it for node-pack version checks; Genesis'
own version is reported next to it as ``genesis_version``.
"""


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def memory() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return int(vm.total), int(vm.available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")


class SystemInfo:
    """Builds the ``/system_stats`` answer; probes torch devices in the background once."""

    def __init__(self, argv: list[str] | None = None, *, probe_torch: bool = True) -> None:
        self.argv = list(argv if argv is not None else sys.argv)
        self._probe_enabled = probe_torch
        self._probe_lock = threading.Lock()
        self._probe_thread: threading.Thread | None = None
        self.versions = {
            "genesis": package_version("genesis") or "0.1.0",
            "torch": package_version("torch") or "",
            "frontend": package_version("comfyui-frontend-package") or "",
            "templates": package_version("comfyui-workflow-templates"),
        }

    def start_probe(self) -> None:
        """Import torch in a daemon thread (once) so later answers can list CUDA/MPS devices."""
        if not self._probe_enabled or "torch" in sys.modules:
            return
        with self._probe_lock:
            if self._probe_thread is None:
                self._probe_thread = threading.Thread(target=self._import_torch, name="genesis-torch-probe",
                                                      daemon=True)
                self._probe_thread.start()

    @staticmethod
    def _import_torch() -> None:
        try:
            import torch  # noqa: F401
        except Exception:  # pragma: no cover - torch is a hard dependency
            log.warning("torch could not be imported; devices are not listed", exc_info=True)

    def devices(self) -> list[dict[str, Any]]:
        """Each device's total and free memory and torch's allocator view (accelerators first, then the CPU)."""
        from graph_runtime.device_memory import DeviceMemory

        return DeviceMemory().devices()

    def stats(self) -> dict[str, Any]:
        self.start_probe()
        total, free = memory()
        return {
            "system": {
                "os": os.name,
                "ram_total": total,
                "ram_free": free,
                "comfyui_version": COMFYUI_API_VERSION,
                "genesis_version": self.versions["genesis"],
                "required_frontend_version": self.versions["frontend"],
                "installed_templates_version": self.versions["templates"],
                "required_templates_version": self.versions["templates"],
                "python_version": sys.version,
                "pytorch_version": self.versions["torch"],
                "embedded_python": False,
                "argv": self.argv,
            },
            "devices": self.devices(),
        }
