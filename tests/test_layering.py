"""The layout's boundaries hold: graph_runtime imports neither nodes/ nor web/, web/ imports no nodes/.

server.py is the one composition root that brings them together (``default_registry``); a module
that reaches across a boundary would make the runtime unusable without the built-in packs, or the
web layer load model code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_top_levels(path: Path) -> set[str]:
    """Top-level package names imported anywhere in a module (function-local imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("graph_runtime", {"nodes", "web", "server"}),
    ("web", {"nodes", "server"}),
])
def test_package_imports_stay_inside_their_layer(package: str, forbidden: set[str]) -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_top_levels(path) & forbidden)
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported_top_levels(path) & forbidden
    }
    assert offenders == {}, f"{package}/ reaches across its boundary: {offenders}"


def test_the_probe_sees_function_local_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import nodes.image\n    from web.app import serve\n")
    assert imported_top_levels(module) == {"nodes", "web"}


def test_server_builds_the_registry_of_the_built_in_packs(tmp_path: Path) -> None:
    import nodes
    from graph_runtime.paths import FolderPaths
    from server import default_registry

    paths = FolderPaths(tmp_path)
    paths.ensure_dirs()
    registry = default_registry(paths)
    assert registry.failures == []
    for pack in ("KSampler", "CheckpointLoaderSimple", "SaveImage", "LoadVideo"):
        assert registry.get(pack) is not None
    assert len(nodes.PACKS) >= 10
