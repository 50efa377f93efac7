"""The models of an actor: loaded once (TensorFlow or ONNX Runtime imported here, inside the
actor, never in the driver), as integer Upscalers that the model steps (steps.Upscale,
steps.Stream) run."""

from __future__ import annotations

import threading
import time

from sr_batch.models.registry import ModelSpec
from sr_batch.runtime import configure_tensorflow, worker_name
from sr_batch.settings import ActorSettings
from sr_batch.tiling import Tiling
from sr_batch.upscaler import Upscaler, make_tf_batch_fn, quantized, self_ensemble
from sr_batch.work import Work


def build_upscaler(settings: ActorSettings, spec: ModelSpec | None = None,
                   tiling: Tiling | None = None, denoise: float | None = None) -> tuple[Upscaler, callable]:
    """Load a model (the run's, unless `spec` says another; TensorFlow or ONNX Runtime imported
    here, inside the actor) and wrap it as an integer Upscaler: outputs come back rounded to
    each image's own dtype."""
    if spec is None:
        spec, tiling, denoise = settings.model, settings.tiling, settings.denoise
    if spec.arch == "bicubic":
        upscaler = Upscaler(None, spec.scale, tiling.sides, tiling.overlap, settings.batch_size,
                            integer=True)
        return upscaler, (lambda: 0)
    if spec.arch == "onnx":  # ONNX Runtime: no TensorFlow in this actor
        from sr_batch.models.onnx import load_session, make_onnx_batch_fn

        session = load_session(spec, settings.intra_op_threads)
        run, traces = make_onnx_batch_fn(session, None if tiling.whole else tiling.sides, spec.name)
        run = quantized(self_ensemble(run) if settings.self_ensemble else run)
    else:
        configure_tensorflow(settings.intra_op_threads)
        from sr_batch.models.registry import load_keras_model, with_precision

        model = with_precision(load_keras_model(spec, denoise=denoise), settings.precision)
        if settings.self_ensemble:  # the 8 outputs are averaged in float, then rounded
            float_run, traces = make_tf_batch_fn(model, None if tiling.whole else tiling.sides)
            run = quantized(self_ensemble(float_run))
        else:  # rounded inside the traced function: 4x fewer bytes leave the device
            run, traces = make_tf_batch_fn(model, None if tiling.whole else tiling.sides, integer=True)
    return (Upscaler(run, spec.scale, tiling.sides, tiling.overlap, settings.batch_size, integer=True,
                     blend=tiling.blend, whole=tiling.whole),
            traces)


class Models:
    """The models of one actor: each (route, scale)'s Upscaler, loaded once, when an image first
    needs it; and the runs of images that fill a model call."""

    def __init__(self, settings: ActorSettings) -> None:
        began = time.perf_counter()
        self.settings = settings
        # Each model is loaded once, when an image first needs it: (route, scale) -> what
        # build_upscaler takes. A second pass (an asked size beyond the model's scale) uses
        # another scale's. Under `auto` most runs use few of the routes: a small run does not
        # wait for models none of its images gets.
        self._to_load: dict[tuple[str, int], tuple] = {
            (route.key, spec.scale): (spec, tiling, route.denoise)
            for route in settings.all_routes
            for spec, tiling in ((route.model, route.tiling), *route.pass_models)}
        self._loaded: dict[tuple[str, int], Upscaler] = {}
        self._counters: list = []
        self._loading = threading.Lock()  # actor calls run in threads
        # The first route's model is loaded now, so a model that cannot load stops the run
        # before any image, and every actor knows the tile sides.
        self.upscaler = self.model_for((settings.all_routes[0].key, settings.scale))
        self.worker = worker_name()
        self.setup_s = time.perf_counter() - began  # reported once, with the actor's first images

    def model_for(self, key: tuple[str, int]) -> Upscaler:
        """The Upscaler of (route, scale), loaded on first use."""
        upscaler = self._loaded.get(key)
        if upscaler is None:
            with self._loading:
                upscaler = self._loaded.get(key)
                if upscaler is None:
                    upscaler, traces = build_upscaler(self.settings, *self._to_load[key])
                    self._counters.append(traces)
                    self._loaded[key] = upscaler
        return upscaler

    def trace_count(self) -> int:
        return sum(count() for count in self._counters)

    def report_setup(self, works: list[Work]) -> None:
        """The actor's start-up time goes on the first row it returns, once."""
        with self._loading:  # two calls may finish at once: only one reports
            if works and self.setup_s is not None:
                works[0].stats["setup_s"], self.setup_s = self.setup_s, None

    def chunks(self, works: list[Work]):
        """Runs of Works with at least one model call's worth of tile pixels (in order; Works not
        in memory ride along in the run they fall in)."""
        smallest = self.upscaler.tile_sizes[0]
        chunk, pixels = [], 0
        for w in works:
            chunk.append(w)
            if not w.in_memory:
                continue
            plan = self.model_for((w.route, self.settings.scale)).plan(w.decoded.height, w.decoded.width)
            pixels += plan.n_tiles * plan.tile_size ** 2
            if pixels >= self.settings.batch_size * smallest ** 2:
                yield chunk
                chunk, pixels = [], 0
        if chunk:
            yield chunk
