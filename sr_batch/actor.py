"""The model actors: load the model once, then upscale every image they are given.

    UpscaleActor  fused: read, decode, upscale, encode, write, measure in one process (the
                  fastest arrangement on one machine: no pixel leaves the process)
    ModelActor    staged: decoded images in, integer output pixels out; the CPU stages around
                  it (stages.decode_batch, stages.finish_batch) run wherever Ray finds CPUs

Both are Ray Data callable classes: `__call__(batch) -> batch` is the only hot path.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from sr_batch import stats, stages
from sr_batch.runtime import configure_tensorflow, worker_name
from sr_batch.models.registry import ModelSpec
from sr_batch.plan import Tiling
from sr_batch.stages import ActorSettings, Work
from sr_batch.upscaler import Upscaler, make_tf_batch_fn, quantized, self_ensemble

log = logging.getLogger(__name__)

__all__ = ["ActorSettings", "UpscaleActor", "ModelActor", "build_upscaler"]


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


class _ModelRunner:
    """The model part of both actors: packed upscaling of decoded images in chunks."""

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

    def chunks(self, ready: list[Work]):
        """Runs of images with at least one model call's worth of tile pixels."""
        smallest = self.upscaler.tile_sizes[0]
        chunk, pixels = [], 0
        for w in ready:
            chunk.append(w)
            plan = self.model_for((w.route, self.settings.scale)).plan(w.decoded.height, w.decoded.width)
            pixels += plan.n_tiles * plan.tile_size ** 2
            if pixels >= self.settings.batch_size * smallest ** 2:
                yield chunk
                chunk, pixels = [], 0
        if chunk:
            yield chunk

    def upscale(self, ready: list[Work]) -> None:
        """Set each Work's output (and model-upscaled alpha), pass after pass; an image the model
        fails on fails."""
        for w in ready:
            w.output = w.decoded.pixels
            w.alpha = w.decoded.alpha if self.settings.alpha == "model" else None
            w.stats["worker"] = self.worker
        for step in range(max(len(w.passes) for w in ready)):
            # Images of different models (routes) or scales never share a batch.
            for key in dict.fromkeys((w.route, w.passes[step]) for w in ready if len(w.passes) > step):
                group = [w for w in ready if len(w.passes) > step and (w.route, w.passes[step]) == key
                         and w.output is not None]
                if group:
                    self._run_pass(self.model_for(key), group, first=step == 0)

    def _run_pass(self, upscaler: Upscaler, group: list[Work], first: bool) -> None:
        """One model pass over a group of images: their tiles (and alpha planes, as grey images)
        share packed batches; each Work's output becomes the next pass's input."""
        inputs = [w.output for w in group]
        with_alpha = [i for i, w in enumerate(group) if w.alpha is not None]
        inputs += [group[i].alpha[..., None] for i in with_alpha]
        try:
            results = upscaler.upscale(inputs)
        except Exception:  # noqa: BLE001 - isolate the image that broke the packed batch
            log.warning("packed upscale failed; retrying image by image", exc_info=True)
            results = []
            for image in inputs:
                try:
                    results.extend(upscaler.upscale([image]))
                except Exception as exc:  # noqa: BLE001
                    results.append(exc)
        alpha_results = dict(zip(with_alpha, results[len(group):]))
        for i, (w, result) in enumerate(zip(group, results)):
            alpha = alpha_results.get(i)
            failed = next((r for r in (result, alpha) if isinstance(r, Exception)), None)
            if failed is not None:
                stages.fail(w, "model_error", f"{type(failed).__name__}: {failed}")
                stages.finish_timing(w)
                continue
            w.output = result.pixels
            w.n_tiles += result.n_tiles
            w.infer_s += result.infer_s
            if first:
                w.tile_size = result.tile_size
            if alpha is not None:
                w.alpha = alpha.pixels[..., 0]
                w.n_tiles += alpha.n_tiles
                w.infer_s += alpha.infer_s

    def stream_all(self, works: list[Work]) -> None:
        for w in works:
            if w.stream is not None:
                w.stats["worker"] = self.worker
                stages.stream(self.settings, w, self.model_for((w.route, self.settings.scale)))


class UpscaleActor(_ModelRunner):
    """Fused: manifest rows in, stats rows out; decode, upscale, encode, write, measure here."""

    def __init__(self, settings: ActorSettings) -> None:
        super().__init__(settings)
        self.finisher = stages.Finisher(settings)

    def __call__(self, batch: pa.Table) -> pa.Table:
        work = [stages.start(self.settings, row, self.worker) for row in batch.to_pylist()]
        ready = [w for w in work if w.decoded is not None]
        if ready:
            self._upscale_and_finish(ready)
        self.stream_all(work)
        self.report_setup(work)
        return stats.make_table([w.stats for w in work])

    def _upscale_and_finish(self, ready: list[Work]) -> None:
        """Upscale in chunks of about one model batch of tiles; a second thread writes and
        measures chunk k while chunk k + 1 is in the model, so that CPU work overlaps inference
        (for a few large images too) and only two chunks' outputs are alive at once."""
        with ThreadPoolExecutor(1, thread_name_prefix="finish") as finisher:
            pending = None
            for chunk in self.chunks(ready):
                self.upscale(chunk)
                if pending is not None:
                    pending.result()
                pending = finisher.submit(self._finish_chunk, chunk)
            pending.result()

    def _finish_chunk(self, chunk: list[Work]) -> None:
        for w in chunk:
            if w.output is not None:
                self.finisher.finish(w)


class ModelActor(_ModelRunner):
    """Staged: decoded Works (Arrow) in, upscaled Works (Arrow) out; streamed TIFFs are read,
    upscaled and written here in bounded memory (they never pass through the object store)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        began = time.perf_counter()
        work = stages.from_arrow(batch)
        ready = [w for w in work if w.decoded is not None]
        for chunk in self.chunks(ready):
            self.upscale(chunk)
        self.stream_all(work)
        self.report_setup(work)
        log.debug("model actor: %d images in %.2f s", len(work), time.perf_counter() - began)
        return stages.to_arrow(work)
