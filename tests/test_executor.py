"""--executor: a small local run goes through the step list in the driver's process, no Ray;
everything else through an actor pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import pytest

from conftest import png_bytes, scene
from sr_batch.config import JobConfig
from sr_batch.errors import ConfigError


def plan_of(tmp_path, count: int, **options):
    from sr_batch.plan import plan_run

    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    for i in range(count):
        (source / f"{i}.png").write_bytes(png_bytes(scene(16, 16, seed=i)))
    return plan_run(JobConfig(sources=(str(source),), output=str(tmp_path / "out"), model="bicubic",
                              **options))


@pytest.fixture
def no_ray_here(monkeypatch):
    """This process as a fresh `sr-batch run` sees it: no RAY_ADDRESS, no Ray started."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: False))


def test_auto_runs_one_call_of_a_local_run_here(tmp_path, no_ray_here):
    from sr_batch.pipeline import runs_here

    plan = plan_of(tmp_path, 3, images_per_call=4)
    assert runs_here(plan)
    assert not runs_here(plan_of(tmp_path, 5, images_per_call=4))  # more than one call
    assert not runs_here(plan_of(tmp_path, 3, images_per_call=4, address="auto"))
    assert not runs_here(plan_of(tmp_path, 3, images_per_call=4, arrangement="staged"))
    assert not runs_here(plan_of(tmp_path, 3, images_per_call=4, executor="ray"))
    assert runs_here(plan_of(tmp_path, 9, images_per_call=4, executor="local"))


def test_auto_uses_a_ray_that_is_up_or_named(tmp_path, no_ray_here, monkeypatch):
    from sr_batch.pipeline import runs_here

    plan = plan_of(tmp_path, 1, images_per_call=4)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # inside a Ray job
    assert not runs_here(plan)
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(is_initialized=lambda: True))
    assert not runs_here(plan)


@pytest.mark.parametrize("options", [{"address": "auto"}, {"arrangement": "staged"}, {"gpus_per_actor": 1.0}])
def test_local_refuses_what_needs_ray(options):
    with pytest.raises(ConfigError, match="--executor local runs every step in this process"):
        JobConfig(sources=("x",), output="o", executor="local", **options)
    with pytest.raises(ConfigError, match="--executor must be one of"):
        JobConfig(sources=("x",), output="o", executor="threads")


@pytest.mark.slow
def test_one_image_from_the_cli_runs_without_ray(tmp_path):
    """The CLI as a user runs it on one photo, with the default model, in a process where Ray
    cannot even be imported (sys.modules["ray"] = None): the local executor never touches it."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.png").write_bytes(png_bytes(scene(40, 60)))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = ("import sys; sys.modules['ray'] = None; from sr_batch.cli import main; "
              f"sys.exit(main(['run', {str(tmp_path / 'in')!r}, '--output', {str(tmp_path / 'out')!r}, "
              "'--run-id', 'one-1']))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "every step in this process (no Ray: 1 images, one actor call)" in proc.stderr
    record = json.loads((tmp_path / "out" / "runs" / "one-1.json").read_text())
    assert record["status"] == "finished" and record["counts"] == {"ok": 1}
    assert record["config"]["executor"] == "local" and record["config"]["actors"] is None
    phases = record["phases_s"]
    assert phases["ray_start"] is None and 0 < phases["actor_setup"] < phases["first_rows"] < phases["run"]
    assert (tmp_path / "out" / "images" / "photo.png").exists()
