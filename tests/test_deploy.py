"""deploy/: the crontab line and the KubeRay manifests parse, carry what they need,
and their commands are valid sr-batch command lines."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from sr_batch.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?))*$")


def parse_entrypoint(command: str):
    """`python jobs/upscale.py ARGS` is `sr-batch run ARGS`; parse it with the real parser."""
    words = shlex.split(command)
    assert words[:2] == ["python", "jobs/upscale.py"], words
    return build_parser().parse_args(["run", *words[2:]])


def check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the driver only; no actors on the head
    assert head["template"]["spec"]["containers"][0]["image"]
    (gpu_group,) = spec["workerGroupSpecs"]
    assert 1 <= gpu_group["minReplicas"] <= gpu_group["replicas"] <= gpu_group["maxReplicas"]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"


def test_rayjob_manifest():
    doc = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    assert doc["metadata"]["name"]
    args = parse_entrypoint(doc["spec"]["entrypoint"])
    assert args.gpus_per_actor == 1 and args.lock and args.output.startswith("s3://")
    assert doc["spec"]["shutdownAfterJobFinishes"] is True
    check_cluster_spec(doc["spec"]["rayClusterSpec"])


def test_raycronjob_manifest():
    doc = yaml.safe_load((DEPLOY / "raycronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
    fields = doc["spec"]["schedule"].split()
    assert len(fields) == 5 and all(CRON_FIELD.match(f) for f in fields)
    template = doc["spec"]["jobTemplate"]
    args = parse_entrypoint(template["entrypoint"])
    assert args.lock  # two overlapping nights must not both run
    check_cluster_spec(template["rayClusterSpec"])
    # The template is a RayJob spec: the same keys as the plain RayJob's spec.
    rayjob = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())["spec"]
    assert set(template) == set(rayjob)


def test_crontab_line():
    lines = [l for l in (DEPLOY / "crontab").read_text().splitlines()
             if l.strip() and not l.startswith("#")]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert all(CRON_FIELD.match(f) for f in fields[:5])
    command = fields[5].split("&&", 1)[1].split(">>", 1)[0]
    words = shlex.split(command)
    assert words[0].endswith("sr-batch")
    args = build_parser().parse_args(words[1:])
    assert args.command == "nightly" and args.address.startswith("http://")
    assert "token" not in lines[0].lower()


@pytest.mark.parametrize("name", ["rayjob.yaml", "raycronjob.yaml", "crontab"])
def test_no_secrets_in_deploy_files(name):
    text = (DEPLOY / name).read_text()
    assert not re.search(r"(AWS_SECRET|RAY_AUTH_TOKEN\s*[:=]|aws_secret_access_key)", text)
