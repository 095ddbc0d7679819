"""Start-up stays light: building the registry must not import torch or the model libraries.

The server answers its first request before torch is loaded (cold start target ≤ 2.5 s), so
node modules import heavy libraries inside ``execute`` or in ``nodes/diffusion/*`` helpers.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHECK = """
import sys
from graph_runtime.registry import build_registry
from nodes import PACKS
registry = build_registry(PACKS)
assert not registry.failures, [f.traceback for f in registry.failures]
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "controlnet_aux", "spandrel", "cv2")
               if m in sys.modules)
print(len(registry), heavy)
"""


def test_building_the_registry_imports_no_heavy_library():
    proc = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    count, heavy = proc.stdout.strip().split(" ", 1)
    assert int(count) > 10
    assert heavy == "[]", f"imported at start-up: {heavy}"
