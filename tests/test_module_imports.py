"""Modules split by job keep their direction: the lower one (what a run needs) reaches the
higher one (rules, exports, fitting, the demo's flow) through no import, not even one
inside a function."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_imports() -> dict[str, set[str]]:
    """Every sr_batch module and the sr_batch modules it imports anywhere in its source."""
    found = {}
    for path in (ROOT / "sr_batch").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sr_batch"):
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names if alias.name.startswith("sr_batch"))
        found[name] = names
    return {name: names & found.keys() for name, names in found.items()}


def reachable(imports: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for name in imports[todo.pop()] - seen:
            seen.add(name)
            todo.append(name)
    return seen


@pytest.mark.parametrize("lower, higher", [
    ("sr_batch.estimates", "sr_batch.routing"),
    ("sr_batch.models.onnx", "sr_batch.models.onnx_export"),
    ("sr_batch.niqe", "sr_batch.niqe_fit"),
    ("sr_batch.demo_images", "sr_batch.demo"),
])
def test_lower_module_never_reaches_the_higher_one(lower, higher):
    imports = module_imports()
    assert lower in imports[higher], f"{higher} no longer imports {lower}: update this test"
    reached = reachable(imports, lower)
    assert higher not in reached, f"{lower} reaches {higher} through its imports"
    assert lower not in reached, f"{lower} imports itself through a circle"
