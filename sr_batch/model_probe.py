"""The probe of a user's model file, as `sr-batch run` makes it: the file is loaded once in a
Ray task (never in the driver, which may have no TensorFlow) to learn its scale, receptive
radius and SHA-256; and its cache in OUT/probes/ (read_probe, write_probe), which the plan
(plan.py) reads before it probes and writes after.
"""

from __future__ import annotations

import time
from dataclasses import replace

from sr_batch import errors, storage
from sr_batch.config import SCALES
from sr_batch.errors import ModelError
from sr_batch.layout import OutLayout
from sr_batch.models.registry import ModelSpec
from sr_batch.ray_session import init_ray

# Bumped when the probe measures differently: older cached probes are then measured again.
PROBE_VERSION = 1
# A probe's result as cached, in OUT/probes/<sha256>.json: the spec fields it measures.
_PROBED_FIELDS = ("scale", "channels", "params", "receptive_radius", "input_side", "tiles_exactly",
                  "seams", "response_decay", "probe_s")


def probe_on_ray(address: str | None):
    """A plan's probe of a user's model file: loaded once in a Ray task (never in the driver,
    which may have no TensorFlow) to learn its scale, receptive radius and SHA-256."""
    def probe(spec: ModelSpec, scale: int | None, overlap: int | None = None) -> ModelSpec:
        import ray

        init_ray(address)
        try:
            outcome = ray.get(_probe_task().remote(replace(spec, scale=scale), overlap))
        except ray.exceptions.RayError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise ModelError(f"cannot load model {storage.display(spec.uri)}: {first}") from None
        if isinstance(outcome, tuple):  # (error class name, one-line message)
            error = getattr(errors, outcome[0], None)
            is_model_error = isinstance(error, type) and issubclass(error, ModelError)
            raise (error if is_model_error else ModelError)(outcome[1])
        return outcome

    return probe


def _probe_task():
    import ray

    @ray.remote(num_cpus=1, max_retries=0)
    def probe(spec: ModelSpec, overlap: int | None):
        """The spec completed, or (error class, one-line message naming the user's file)."""
        try:
            if spec.arch == "onnx":  # ONNX Runtime only: no TensorFlow in this task
                from sr_batch.models.onnx import probe_onnx

                return probe_onnx(spec, spec.scale, overlap)
            from sr_batch import tiling
            from sr_batch.models.registry import load_keras_model, measure_scale, sha256_of
            from sr_batch.runtime import configure_tensorflow

            configure_tensorflow(1)
            began = time.perf_counter()
            # Pin the bytes measured: the actors verify the same SHA-256 when they load.
            spec = replace(spec, sha256=sha256_of(storage.read_bytes(spec.uri)))
            model = load_keras_model(spec, spec.scale)
            scale = measure_scale(model)
            radius = tiling.receptive_radius_from_impulse(
                lambda x: model(x, training=False).numpy(), scale)
            return replace(spec, scale=scale, receptive_radius=radius, params=int(model.count_params()),
                           probe_s=round(time.perf_counter() - began, 3))
        except Exception as exc:  # noqa: BLE001 - any failure is the model's, told in one line
            message = " ".join(str(exc).split()) or type(exc).__name__
            if storage.display(spec.uri) not in message:
                message = f"cannot load model {storage.display(spec.uri)}: {message}"
            return type(exc).__name__, message

    return probe


# --- the probe cache -------------------------------------------------------------------


def read_probe(layout: OutLayout, spec: ModelSpec) -> ModelSpec | None:
    """The spec completed from OUT's cached probe of its file (spec.sha256), kept in
    OUT/probes/<sha256>.json beside the runs that use it (every node of a cluster and every
    later run into OUT sees it; a per-node cache would not); None if none is there, it is
    from another probe version, or it does not read as one."""
    import json

    try:
        cached = json.loads(storage.read_bytes(layout.probe(spec.sha256)))
    except Exception:  # noqa: BLE001 - an absent or broken cache only means probing again
        return None
    if not isinstance(cached, dict) or cached.get("probe_version") != PROBE_VERSION:
        return None
    try:
        fields = {name: cached[name] for name in _PROBED_FIELDS}
        fields["seams"] = tuple((int(o), float(m), float(a)) for o, m, a in fields["seams"])
        fields["response_decay"] = tuple(map(float, fields["response_decay"]))
        if fields["scale"] not in SCALES or not isinstance(fields["receptive_radius"], int) \
                or fields["receptive_radius"] < 0:
            return None
        return replace(spec, **fields)
    except (KeyError, TypeError, ValueError):
        return None


def write_probe(layout: OutLayout, spec: ModelSpec, retries: int) -> None:
    """Cache a probe's result in OUT; a failure to write costs the next run a probe, no more."""
    import json

    record = {"probe_version": PROBE_VERSION, "model": spec.uri, "sha256": spec.sha256,
              **{name: getattr(spec, name) for name in _PROBED_FIELDS}}
    try:
        storage.write_bytes_atomic(layout.probe(spec.sha256),
                                   json.dumps(record, indent=1).encode(), retries)
    except Exception:  # noqa: BLE001 - see the docstring
        return
