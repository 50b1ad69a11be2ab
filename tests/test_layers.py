"""The package's layers import downward only: cli -> eval -> runtime / compiler -> graph / backends -> base.

Every ``import`` and ``from ... import`` of ``apparate_trt`` modules is read from the source (at any
depth, lazy imports in functions included) and checked against the layer order below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "apparate_trt"

#: The layer of each top-level part of the package; a module may import its own layer and those below.
LAYERS = {
    "errors": 0,
    "_optional": 0,
    "_core": 0,
    "data": 0,
    "engine_dir": 0,
    "manifest_schema": 0,
    "defaults": 0,
    "latency": 0,
    "core_checks": 0,
    "progress": 0,
    "graph": 1,
    "backends": 1,
    "ramps": 1,
    "compiler": 2,
    "runtime": 2,
    "eval": 3,
    "cli": 4,
}
#: Parts on the same layer that must not import each other (ramps may use backends to run a ramp).
SIBLINGS_APART = [{"graph", "backends"}, {"graph", "ramps"}, {"compiler", "runtime"}]


def _part(module: str) -> str | None:
    """The top-level part of an ``apparate_trt`` module name (None for the package itself)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 and pieces[0] == "apparate_trt" else None


def _imports(path: Path) -> set[str]:
    """Every apparate_trt module ``path`` imports (absolute names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("apparate_trt"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("apparate_trt"):
            found.add(node.module)
            if node.module == "apparate_trt":
                found.update(f"apparate_trt.{alias.name}" for alias in node.names if alias.name in LAYERS)
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()} - {"__init__"}
    assert parts <= set(LAYERS), f"give these a layer in tests/test_layers.py: {sorted(parts - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_downward_only(path: Path):
    rel = path.relative_to(PACKAGE).parts
    own = rel[0].removesuffix(".py")
    if own == "__init__":
        return
    wrong = []
    for module in _imports(path):
        other = _part(module)
        if other is None or other == own:
            continue
        if LAYERS[other] > LAYERS[own] or any({own, other} == pair for pair in SIBLINGS_APART):
            wrong.append(module)
    assert not wrong, f"{'/'.join(rel)} (layer {own}) imports upward or across: {sorted(wrong)}"


def test_the_checker_sees_a_lazy_upward_import(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from apparate_trt.runtime.executor import Executor\n    return Executor\n")
    assert "apparate_trt.runtime.executor" in _imports(bad)
