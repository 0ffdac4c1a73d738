"""The package layers follow the data: each layer imports only the ones below it.

model (schemas, features, training, scoring)
  <- streaming.settings / .metrics / .fatal / .children / .kafka (infrastructure every process shares)
  <- producers, streaming.scoring (validation, state, merchant risk, the scoring service)
  <- streaming.worker, streaming.api (the two processes on the one scoring service)
  <- streaming.cli, streaming.demo, streaming.quality, benchmarks (tools on top)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each layer must not import (prefix match on module names).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "model": ("streaming", "producers", "benchmarks"),
    "streaming.settings": ("streaming.worker", "streaming.api", "streaming.scoring", "producers"),
    "streaming.metrics": ("streaming.worker", "streaming.api", "producers"),
    "streaming.fatal": ("streaming.worker", "streaming.api", "streaming.scoring", "producers"),
    "streaming.children": ("streaming.worker", "streaming.api", "streaming.scoring", "producers", "benchmarks"),
    "streaming.kafka": ("streaming.worker", "streaming.api", "streaming.scoring", "producers", "benchmarks"),
    "producers": ("streaming.worker", "streaming.api", "streaming.scoring", "streaming.cli", "streaming.demo"),
    "streaming.scoring": ("streaming.worker", "streaming.api", "producers", "benchmarks"),
    "streaming.worker": ("streaming.api", "producers", "benchmarks"),
    "streaming.api": ("streaming.worker", "producers", "benchmarks"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in ("model", "producers", "streaming", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_only_layers_below_it(layer: str) -> None:
    modules = {name: path for name, path in _modules().items() if _under(name, layer)}
    assert modules, f"no modules under {layer}"
    wrong = sorted(
        f"{name} imports {imported}"
        for name, path in modules.items()
        for imported in _imports(path)
        if any(_under(imported, bad) for bad in FORBIDDEN[layer])
    )
    assert wrong == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from streaming.worker.pipeline import Pipeline\nimport producers.publisher\n")
    assert {"streaming.worker.pipeline", "producers.publisher"} <= _imports(module)
