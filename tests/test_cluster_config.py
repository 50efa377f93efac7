"""cluster.yaml is a valid Ray cluster launcher config with CPU head and GPU workers."""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _worker_types(cluster: dict) -> dict:
    return {name: spec for name, spec in cluster["available_node_types"].items()
            if name != cluster["head_node_type"]}


def test_matches_rays_schema(cluster):
    schema_path = os.path.join(os.path.dirname(ray.__file__), "autoscaler/ray-schema.json")
    schema = json.loads(Path(schema_path).read_text())

    jsonschema.validate(cluster, schema)


def test_ray_prepares_and_validates_it(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray").setLevel(logging.WARNING)
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)

    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_workers_bring_gpus_and_autoscale(cluster):
    workers = _worker_types(cluster)

    assert workers, "no worker node type"
    gpu_workers = {name: spec for name, spec in workers.items()
                   if spec.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_workers, "no worker node type advertises a GPU"
    for name, spec in gpu_workers.items():
        assert isinstance(spec["min_workers"], int) and isinstance(spec["max_workers"], int), name
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= cluster["max_workers"], name
        assert spec["resources"].get("CPU", 0) >= 1, f"{name}: actors and I/O tasks need CPUs"


def test_head_has_no_gpu_and_runs_no_actors(cluster):
    head = cluster["available_node_types"][cluster["head_node_type"]]

    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0


def _installs(commands: list[str]) -> list[tuple[str, set[str]]]:
    """(path, extras) of every `pip install "PATH[extras]"` in the commands."""
    found = []
    for command in commands:
        for path, extras in re.findall(r'pip install\s+"?([^\s"\[]+)\[([^\]]*)\]', command):
            found.append((path, {e.strip() for e in extras.split(",")}))
    return found


def test_workers_install_this_package_with_gpu_extra(cluster):
    mounted = set(cluster["file_mounts"])
    worker_installs = _installs(cluster.get("setup_commands", []) + cluster["worker_setup_commands"])
    head_installs = _installs(cluster.get("setup_commands", []) + cluster["head_setup_commands"])

    assert any("gpu" in extras for _, extras in worker_installs), worker_installs
    # The head runs no model: it must not pull GPU TensorFlow and its CUDA wheels.
    assert head_installs and all("gpu" not in extras for _, extras in head_installs)
    # What is installed is the project checkout that file_mounts copies to the node.
    assert cluster["file_mounts"]["/home/ubuntu/sr-batch"] == "."
    for path, _ in worker_installs + head_installs:
        assert path in mounted, f"{path} is not a file_mounts target"


def test_cpu_workers_autoscale_for_the_cpu_stages_without_gpu_wheels(cluster):
    """Staged runs put decode and encode on any CPU: a CPU-only worker type scales for them,
    installing the package without GPU TensorFlow."""
    cpu_workers = {name: spec for name, spec in _worker_types(cluster).items()
                   if spec.get("resources", {}).get("GPU", 0) == 0}
    assert cpu_workers, "no CPU-only worker node type"
    for name, spec in cpu_workers.items():
        assert spec["resources"].get("CPU", 0) >= 4, name
        assert 0 <= spec["min_workers"] < spec["max_workers"] <= cluster["max_workers"], name
        installs = _installs(spec["worker_setup_commands"])
        assert installs and all("gpu" not in extras and "cpu" in extras for _, extras in installs), installs
