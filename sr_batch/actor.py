"""The Ray actor: load the model once, then read -> decode -> upscale -> encode/write -> stats.

Errors are data: a bad image becomes a `failed` row with `error_type` and a
one-line `error_message`, and the other images of the batch go on.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sr_batch import images, quality, resample, stats, storage, streaming
from sr_batch.runtime import configure_tensorflow, worker_name
from sr_batch.errors import (ImageError, ReferenceImageError, TooManyPixelsError,
                             UnsupportedModeError)
from sr_batch.layout import OutLayout
from sr_batch.models.registry import ModelSpec
from sr_batch.plan import EXTENSION_FORMAT, FORMAT_EXTENSION, Tiling
from sr_batch.upscaler import Upscaler, make_tf_batch_fn, self_ensemble, to_integer

log = logging.getLogger(__name__)

# Files up to this size are read whole; a bigger one is opened for ranged reads and
# its header checked first, so an image that must be streamed is never read whole.
WHOLE_READ_BYTES = 16 << 20


@dataclass(frozen=True)
class ActorSettings:
    """What every actor needs to know; built once from the plan (pipeline.actor_settings)."""

    model: ModelSpec
    scale: int
    tiling: Tiling
    layout: OutLayout
    """OUT: every write is checked to land under OUT/images (after links, on local disks)."""
    batch_size: int
    format: str
    """--format as asked (keep, png, ...); each row's planned name decides the actual format."""
    quality: int
    png_compress_level: int
    max_pixels: int
    retries: int
    intra_op_threads: int
    read_timeout_s: float | None = None
    """Seconds an http(s)/s3 read may wait for the server, per attempt."""
    alpha: str = "model"
    """How an alpha channel is upscaled: `model` (as a grey image) or `bicubic`."""
    self_ensemble: bool = False
    """Average the model over the 8 flips/rotations of each tile batch."""
    precision: str = "float32"
    """Model arithmetic (config.PRECISIONS)."""
    denoise: float | None = None
    """Interpolation strength of a mild/strong model pair; None for other models."""


@dataclass
class _Work:
    """One image in flight inside a batch."""

    row: dict
    stats: dict
    began: float
    decoded: images.DecodedImage | None = None
    stream: streaming.TiffLayout | None = None
    """Set instead of `decoded` for an image above max_pixels that is streamed."""
    timings: dict = field(default_factory=dict)


def build_upscaler(settings: ActorSettings) -> tuple[Upscaler, callable]:
    """Load the model (TensorFlow or ONNX Runtime imported here, inside the actor) and wrap it
    as an Upscaler."""
    tiling = settings.tiling
    if settings.model.arch == "bicubic":
        upscaler = Upscaler(None, settings.scale, tiling.sides, tiling.overlap, settings.batch_size)
        return upscaler, (lambda: 0)
    if settings.model.arch == "onnx":  # ONNX Runtime: no TensorFlow in this actor
        from sr_batch.models.onnx import load_session, make_onnx_batch_fn

        session = load_session(settings.model, settings.intra_op_threads)
        run, traces = make_onnx_batch_fn(session, tiling.sides, settings.model.name)
    else:
        configure_tensorflow(settings.intra_op_threads)
        from sr_batch.models.registry import load_keras_model, with_precision

        model = with_precision(load_keras_model(settings.model, denoise=settings.denoise),
                               settings.precision)
        run, traces = make_tf_batch_fn(model, tiling.sides)
    if settings.self_ensemble:
        run = self_ensemble(run)
    return Upscaler(run, settings.scale, tiling.sides, tiling.overlap, settings.batch_size), traces


class UpscaleActor:
    """Ray Data callable class: `__call__(batch) -> stats batch` is the only hot path."""

    def __init__(self, settings: ActorSettings) -> None:
        self.settings = settings
        self.upscaler, self.trace_count = build_upscaler(settings)
        self.worker = worker_name()
        # The metrics of an image run on their own thread while it is encoded and written:
        # for the last large image of a call nothing else overlaps its finishing.
        self._measurer = ThreadPoolExecutor(1, thread_name_prefix="metrics")

    def __call__(self, batch: pa.Table) -> pa.Table:
        work = [self._start(row) for row in batch.to_pylist()]
        ready = [w for w in work if w.decoded is not None]
        for w in work:
            if w.decoded is None and w.stream is None:
                self._finish_timing(w, 0.0)
        if ready:
            self._upscale_and_finish(ready)
        for w in work:
            if w.stream is not None:
                self._stream_and_finish(w)
        return stats.make_table([w.stats for w in work])

    # --- stages ---------------------------------------------------------------------

    def _start(self, row: dict) -> _Work:
        """Base stats row, then read and decode; failures are recorded, not raised."""
        s = self.settings
        began = time.perf_counter()
        item = _Work(row=row, began=began, stats={
            "image_id": row["image_id"], "source_uri": row["uri"],
            "reference_uri": row.get("reference_uri"), "status": stats.STATUS_FAILED,
            "scale": s.scale, "model": s.model.name, "model_sha256": s.model.identity,
            "tile_size": s.tiling.largest, "tile_overlap": s.tiling.overlap,
            "requested_format": s.format, "self_ensemble": s.self_ensemble,
            "precision": s.precision, "denoise": s.denoise,
            "bytes_in": row.get("bytes"), "source_mtime": row.get("mtime"),
            "source_etag": row.get("etag"), "worker": self.worker,
        })
        try:
            if row.get("plan_error_type"):
                self._fail(item, row["plan_error_type"], row["plan_error_message"])
                return item
            decoded = self._read_and_decode(item)
            if decoded is not None:
                item.decoded = decoded
                item.stats.update(width=decoded.width, height=decoded.height,
                                  channels=decoded.channels, bit_depth=decoded.bit_depth)
            else:
                layout = item.stream
                item.stats.update(width=layout.width, height=layout.height,
                                  channels=layout.channels, bit_depth=layout.bit_depth)
        except ImageError as exc:
            self._fail(item, exc.error_type, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not stop a million-image run
            log.exception("unexpected error decoding %s", row["uri"])
            self._fail(item, "internal_error", f"{type(exc).__name__}: {exc}")
        item.timings["decode_s"] = time.perf_counter() - began
        return item

    def _read_and_decode(self, item: _Work) -> images.DecodedImage | None:
        """Decode the image, or set `item.stream` and return None to stream it.

        Above max_pixels, a TIFF that can be streamed is streamed; anything else
        raises too_many_pixels saying why it cannot be.
        """
        s, uri = self.settings, item.row["uri"]
        size = item.row.get("bytes")
        if size is None:
            size = storage.file_size(uri, s.retries, s.read_timeout_s)
        if size > WHOLE_READ_BYTES:
            # Headers only: the image is then streamed or read whole, never in this block.
            with storage.open_input(uri, s.retries, storage.HEADER_BLOCK_SIZE, s.read_timeout_s) as handle:
                pixels = streaming.count_pixels(handle)
                if pixels is not None and pixels > s.max_pixels:
                    item.stats["bytes_in"] = size
                    item.stream = streaming.check_streamable(handle, _too_many(pixels, s.max_pixels))
                    return None
        data = storage.read_bytes(uri, s.retries, s.read_timeout_s)
        item.stats["bytes_in"] = len(data)
        try:
            return images.decode_image(data, s.max_pixels)
        except TooManyPixelsError as exc:
            item.stream = streaming.check_streamable(io.BytesIO(data), exc)
            return None

    def _upscale_and_finish(self, ready: list[_Work]) -> None:
        """Upscale in chunks of about one model batch of tiles; a second thread writes and
        measures chunk k while chunk k + 1 is in the model, so that CPU work overlaps inference
        (for a few large images too) and only two chunks' float buffers are alive at once."""
        with ThreadPoolExecutor(1, thread_name_prefix="finish") as finisher:
            pending = None
            for chunk in self._chunks(ready):
                results = self._upscale_chunk(chunk)
                if pending is not None:
                    pending.result()
                pending = finisher.submit(self._finish_chunk, chunk, *results)
            pending.result()

    def _chunks(self, ready: list[_Work]):
        """Runs of images with at least one model call's worth of tile pixels."""
        smallest = self.upscaler.tile_sizes[0]
        chunk, pixels = [], 0
        for w in ready:
            chunk.append(w)
            plan = self.upscaler.plan(w.decoded.height, w.decoded.width)
            pixels += plan.n_tiles * plan.tile_size ** 2
            if pixels >= self.settings.batch_size * smallest ** 2:
                yield chunk
                chunk, pixels = [], 0
        if chunk:
            yield chunk

    def _upscale_chunk(self, ready: list[_Work]) -> tuple[list, dict]:
        """Results per image (an exception for one that failed), and alpha results by index."""
        # Alpha planes ride in the same packed batches as grey images (R=G=B in, mean out).
        inputs = [w.decoded.pixels for w in ready]
        with_alpha = [i for i, w in enumerate(ready)
                      if w.decoded.alpha is not None and self.settings.alpha == "model"]
        inputs += [ready[i].decoded.alpha[..., None] for i in with_alpha]
        try:
            results = self.upscaler.upscale(inputs)
        except Exception:  # noqa: BLE001 - isolate the image that broke the packed batch
            log.exception("packed upscale failed; retrying image by image")
            results = []
            for image in inputs:
                try:
                    results.extend(self.upscaler.upscale([image]))
                except Exception as exc:  # noqa: BLE001
                    results.append(exc)
        alpha_results = dict(zip(with_alpha, results[len(ready):]))
        return results, alpha_results

    def _finish_chunk(self, ready: list[_Work], results: list, alpha_results: dict) -> None:
        for i, (w, result) in enumerate(zip(ready, results)):
            alpha_result = alpha_results.get(i)
            failed = next((r for r in (result, alpha_result) if isinstance(r, Exception)), None)
            if failed is not None:
                self._fail(w, "model_error", f"{type(failed).__name__}: {failed}")
                self._finish_timing(w, 0.0)
                continue
            try:
                self._write_and_measure(w, result, alpha_result)
            except ImageError as exc:
                self._fail(w, exc.error_type, str(exc))
            except Exception as exc:  # noqa: BLE001
                log.exception("unexpected error writing %s", w.row["uri"])
                self._fail(w, "internal_error", f"{type(exc).__name__}: {exc}")
            self._finish_timing(w, result.infer_s + (alpha_result.infer_s if alpha_result else 0.0))

    def _write_and_measure(self, w: _Work, result, alpha_result=None) -> None:
        s, decoded = self.settings, w.decoded
        began = time.perf_counter()
        out_pixels = to_integer(result.pixels, decoded.pixels.dtype)
        alpha = None
        if alpha_result is not None:
            alpha = to_integer(alpha_result.pixels, decoded.alpha.dtype)[..., 0]
        elif decoded.alpha is not None:
            alpha = resample.upscale_bicubic(decoded.alpha, s.scale)
        planned = EXTENSION_FORMAT[w.row["output_exts"][0]]
        fmt, note = images.output_format(decoded, planned, s.format)
        notes = list(decoded.notes) + ([note] if note else [])
        output_uri = self._output_uri(w.row, fmt, note)
        metrics = self._measurer.submit(self._consistency_metrics, out_pixels, decoded.pixels)
        data = images.encode_image(out_pixels, alpha, fmt, quality=s.quality,
                                   png_compress_level=s.png_compress_level,
                                   icc_profile=decoded.icc_profile, exif=decoded.exif)
        storage.write_bytes_atomic(s.layout.check_output(output_uri, cached=False), data, s.retries)
        w.timings["encode_s"] = time.perf_counter() - began
        w.stats.update(
            status=stats.STATUS_OK, output_uri=output_uri, format=fmt, bytes_out=len(data),
            out_width=out_pixels.shape[1], out_height=out_pixels.shape[0],
            n_tiles=result.n_tiles + (alpha_result.n_tiles if alpha_result else 0),
            tile_size=result.tile_size or s.tiling.largest,
            alpha_mode=s.alpha if decoded.alpha is not None else None,
            **metrics.result(),
        )
        if w.row.get("reference_uri"):
            try:
                w.stats.update(self._reference_metrics(w.row["reference_uri"], out_pixels,
                                                       decoded.pixels))
            except ImageError as exc:
                notes.append(f"reference not scored ({exc.error_type}): {exc}")
        w.stats["notes"] = "; ".join(notes) or None

    @staticmethod
    def _output_uri(row: dict, fmt: str, note: str | None) -> str:
        """The planned name for the format written; a format the plan did not reserve a name
        for (an output_uri whose extension cannot hold the image) fails the image."""
        ext = FORMAT_EXTENSION[fmt]
        if ext in row["output_exts"]:
            return row["output_uris"][row["output_exts"].index(ext)]
        raise UnsupportedModeError(f"output_uri {storage.display(row['output_uris'][0])} cannot be "
                                   f"written as {fmt} ({note}); give it a .{ext} name")

    def _consistency_metrics(self, output: np.ndarray, lr: np.ndarray) -> dict:
        """The metrics that need no reference: output against its own input."""
        scale = self.settings.scale
        return {"psnr_y_consistency": _finite(quality.psnr_y_consistency(output, lr, scale)),
                "sharpness_ratio": _finite(quality.sharpness_ratio(output, lr, scale))}

    def _stream_and_finish(self, w: _Work) -> None:
        """Upscale an oversize TIFF block by block into a tiled BigTIFF; metrics are skipped."""
        s = self.settings
        began = time.perf_counter()
        notes = ["streamed in bounded memory: tiled BigTIFF output, metrics skipped"]
        if s.format not in ("keep", "tiff"):
            notes.append(f"streamed: {s.format} cannot be written block by block, wrote TIFF")
        result = None
        try:
            output_uri = s.layout.check_output(self._output_uri(w.row, "tiff", "streamed"), cached=False)
            with storage.open_input(w.row["uri"], s.retries, timeout_s=s.read_timeout_s) as handle:
                def write(path: str) -> None:
                    nonlocal result
                    result = streaming.upscale_tiff(handle, path, self.upscaler, alpha_mode=s.alpha,
                                                    zlib_level=s.png_compress_level)
                bytes_out = storage.write_file_atomic(output_uri, write, s.retries)
            notes += result.notes
            if w.row.get("reference_uri"):
                notes.append("reference not scored (streamed)")
            w.stats.update(status=stats.STATUS_OK, output_uri=output_uri, format="tiff",
                           bytes_out=bytes_out, out_width=result.out_width,
                           out_height=result.out_height, n_tiles=result.n_tiles,
                           psnr_y_consistency=None, sharpness_ratio=None,
                           notes="; ".join(notes))
        except ImageError as exc:
            self._fail(w, exc.error_type, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not stop a million-image run
            log.exception("unexpected error streaming %s", w.row["uri"])
            self._fail(w, "internal_error", f"{type(exc).__name__}: {exc}")
        infer_s = result.infer_s if result else 0.0
        w.timings["encode_s"] = time.perf_counter() - began - infer_s
        self._finish_timing(w, infer_s)

    def _reference_metrics(self, uri: str, output: np.ndarray, lr: np.ndarray) -> dict:
        s = self.settings
        reference = images.decode_image(storage.read_bytes(uri, s.retries, s.read_timeout_s),
                                        s.max_pixels * s.scale ** 2)
        try:
            metrics = quality.reference_metrics(output, lr, reference.pixels, s.scale)
        except ValueError as exc:
            raise ReferenceImageError(str(exc)) from None
        return {k: _finite(v) for k, v in metrics.items()}

    # --- bookkeeping ----------------------------------------------------------------

    @staticmethod
    def _fail(w: _Work, error_type: str, message: str) -> None:
        w.decoded = w.stream = None
        w.stats.update(status=stats.STATUS_FAILED, error_type=error_type,
                       error_message=" ".join(str(message).split())[:500], output_uri=None)

    @staticmethod
    def _finish_timing(w: _Work, infer_s: float) -> None:
        w.stats.update(decode_s=w.timings.get("decode_s"), infer_s=infer_s,
                       encode_s=w.timings.get("encode_s"),
                       total_s=sum(w.timings.values()) + infer_s,
                       finished_at=dt.datetime.now(dt.timezone.utc))


def _too_many(pixels: int, max_pixels: int) -> TooManyPixelsError:
    return TooManyPixelsError(f"{pixels} pixels exceeds the limit of {max_pixels} (--max-pixels)")


def _finite(value: float | None) -> float | None:
    """NaN (undefined, e.g. the sharpness of a flat image) is stored as null; inf is kept."""
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value
