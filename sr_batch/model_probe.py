"""The probe of a user's model file, as `sr-batch run` makes it: the file is loaded once in a
Ray task (never in the driver, which may have no TensorFlow) to learn its scale, receptive
radius and SHA-256. The plan (plan.py) caches what it learns in OUT/probes/.
"""

from __future__ import annotations

import time
from dataclasses import replace

from sr_batch import errors, storage
from sr_batch.errors import ModelError
from sr_batch.models.registry import ModelSpec
from sr_batch.ray_session import init_ray


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
