"""The package's import graph, read from the source (imports inside functions count too): no
circle, and the code that runs in the actors and CPU stages imports nothing of the driver."""

from __future__ import annotations

import ast
import graphlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "sr_batch"
# What only the driver runs: deciding a run, starting Ray, the CLIs around it.
DRIVER = {"sr_batch.plan", "sr_batch.pipeline", "sr_batch.nightly", "sr_batch.preview", "sr_batch.cli",
          "sr_batch.demo", "sr_batch.ray_session", "sr_batch.model_probe", "sr_batch.bookkeeping",
          "sr_batch.run_record", "sr_batch.naming"}
# Where the per-image work starts in an actor or a CPU task.
WORKER_ENTRIES = ("sr_batch.actor", "sr_batch.steps")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from sr_batch import stats` imports the module sr_batch.stats
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} - {"sr_batch", "sr_batch.models", "sr_batch.reports"}
            for name, path in known.items()}


def test_the_import_graph_has_no_circle():
    edges = graph()
    try:
        order = list(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import circle: {' -> '.join(exc.args[1])}") from None
    assert "sr_batch.steps" in order and "sr_batch.plan" in order


def test_worker_code_imports_nothing_of_the_driver():
    edges = graph()
    reached, todo = set(), list(WORKER_ENTRIES)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(edges[name])
    assert {"sr_batch.steps", "sr_batch.inference", "sr_batch.settings", "sr_batch.work"} <= reached
    assert not reached & DRIVER, f"actor-side modules reach the driver: {sorted(reached & DRIVER)}"


def test_the_graph_reader_sees_a_circle_and_a_driver_import(tmp_path, monkeypatch):
    """The checks above can fail: a made-up package with a circle and an actor importing plan."""
    package = tmp_path / "sr_batch"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from sr_batch import b\n")
    (package / "b.py").write_text("def f():\n    from sr_batch.a import x\n")
    (package / "actor.py").write_text("from sr_batch.plan import RunPlan\n")
    (package / "steps.py").write_text("")
    (package / "plan.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    edges = graph()
    assert edges["sr_batch.a"] == {"sr_batch.b"} and edges["sr_batch.b"] == {"sr_batch.a"}
    assert edges["sr_batch.actor"] == {"sr_batch.plan"}


@pytest.mark.parametrize("lower, higher", [
    ("sr_batch.estimates", "sr_batch.routing"),
    ("sr_batch.models.onnx", "sr_batch.models.onnx_export"),
    ("sr_batch.niqe", "sr_batch.niqe_fit"),
    ("sr_batch.demo_images", "sr_batch.demo"),
    ("sr_batch.work", "sr_batch.steps"),
    ("sr_batch.tiling", "sr_batch.plan"),
    ("sr_batch.ray_session", "sr_batch.pipeline"),
    ("sr_batch.model_probe", "sr_batch.pipeline"),
    ("sr_batch.bookkeeping", "sr_batch.pipeline"),
    ("sr_batch.run_record", "sr_batch.pipeline"),
    ("sr_batch.decode", "sr_batch.encode"),
    ("sr_batch.naming", "sr_batch.plan"),
    ("sr_batch.model_probe", "sr_batch.plan"),
])
def test_a_split_module_never_reaches_the_one_above_it(lower, higher):
    """Modules split by job keep their direction: what a run needs reaches the rules, exports,
    fitting, the demo's flow and the planner through no import, not even one inside a function."""
    edges = graph()
    assert lower in edges[higher], f"{higher} no longer imports {lower}: update this test"
    reached, todo = set(), [lower]
    while todo:
        for name in edges[todo.pop()] - reached:
            reached.add(name)
            todo.append(name)
    assert higher not in reached, f"{lower} reaches {higher} through its imports"
