"""The per-image path: one ordered list of steps, which both arrangements run.

    decode   CPU    read the source; decode it, or find it a TIFF to stream
    route    CPU    --model auto: estimate the degradation, pick the image's model
    size     CPU    the output size and the model passes that reach it
    upscale  model  tile, run the model, stitch, pass after pass (tiles of a call's images
                    share packed batches)
    stream   model  an image above --max-pixels: block by block into a tiled BigTIFF
    resize   CPU    the asked output size (one Lanczos resize); alpha by bicubic where asked
    measure  CPU    the metrics, on their own thread while the image is encoded and written
    write    CPU    encode with the provenance XMP, write atomically under OUT/images
    record   CPU    the row's tiling and timings

Every step is a `work.Step`: `step(works) -> works`. `segments()` cuts the list where it moves
between CPU and model steps. Fused (actor.UpscaleActor) runs every segment in the model actor,
handing numpy arrays from step to step; staged runs the CPU segments as Ray Data tasks
(`cpu_stage`) and the model segment in actor.ModelActor, the hand-offs going through the
object store as Arrow rows (handoff.py). A new step is one class here and one entry in STEPS.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from sr_batch import decode, encode, formats, provenance, quality, resample, stats, storage, streaming
from sr_batch.errors import ImageError, ReferenceImageError, TooManyPixelsError
from sr_batch.handoff import from_arrow, to_arrow
from sr_batch.runtime import worker_name
from sr_batch.settings import ActorSettings, Route
from sr_batch.sizing import model_passes, target_size
from sr_batch.work import Step, Work, fail, finish_timing, new_work

log = logging.getLogger(__name__)

# Files up to this size are read whole; a bigger one is opened for ranged reads and
# its header checked first, so an image that must be streamed is never read whole.
WHOLE_READ_BYTES = 16 << 20


# --- before the model ------------------------------------------------------------------


class Decode(Step):
    """Read the source and decode it; above --max-pixels, a TIFF that can be streamed is left
    to the `stream` step (never read whole), anything else fails as too_many_pixels."""

    name, timing, doing = "decode", "decode_s", "decoding"

    def wants(self, w: Work) -> bool:
        return not w.read

    def one(self, w: Work) -> None:
        s, row = self.settings, w.row
        w.read = True
        if row.get("plan_error_type"):
            fail(w, row["plan_error_type"], row["plan_error_message"])
            return
        image, w.stats["bytes_in"], data = read_and_decode(s, row)
        if data is not None:  # a streamed source is hashed as it is streamed (Stream)
            w.stats["source_sha256"] = provenance.sha256_hex(data)
        w.stats.update(width=image.width, height=image.height, channels=image.channels,
                       bit_depth=image.bit_depth)
        if isinstance(image, streaming.TiffLayout):
            w.stream = image
        else:
            w.decoded = image
            w.source = data if s.routes else None  # routing reads the JPEG tables from the bytes


def read_and_decode(s: ActorSettings, row: dict) -> tuple[decode.DecodedImage | streaming.TiffLayout,
                                                         int, bytes | None]:
    """(the decoded image, or the layout of a TIFF to stream; its size in bytes; its bytes,
    None for a streamed one)."""
    uri = row["uri"]
    size = row.get("bytes")
    if size is None:
        size = storage.file_size(uri, s.retries, s.read_timeout_s)
    if size > WHOLE_READ_BYTES:
        # Headers only: the image is then streamed or read whole, never in this block.
        with storage.open_input(uri, s.retries, storage.HEADER_BLOCK_SIZE, s.read_timeout_s) as handle:
            pixels = streaming.count_pixels(handle)
            if pixels is not None and pixels > s.max_pixels:
                too_many = TooManyPixelsError(
                    f"{pixels} pixels exceeds the limit of {s.max_pixels} (--max-pixels)")
                return streaming.check_streamable(handle, too_many), size, None
    data = storage.read_bytes(uri, s.retries, s.read_timeout_s)
    try:
        return decode.decode_image(data, s.max_pixels), len(data), data
    except TooManyPixelsError as exc:
        return streaming.check_streamable(io.BytesIO(data), exc), len(data), None


class ChooseRoute(Step):
    """--model auto: estimate the image's degradation and pick its route (a streamed TIFF, never
    decoded whole, takes the clean model)."""

    name, timing, doing = "route", "decode_s", "routing"

    def wants(self, w: Work) -> bool:
        return bool(self.settings.routes) and w.to_upscale

    def one(self, w: Work) -> None:
        from sr_batch import routing
        from sr_batch.estimates import estimate

        s = self.settings
        data, w.source = w.source, None
        if w.stream is not None:
            choice, estimates = routing.Choice("clean", None, "streamed: clean"), None
        else:
            estimates = estimate(data, w.decoded.pixels)
            choice = routing.choose(estimates, s.scale)
        if choice.key not in {r.key for r in s.routes}:  # no `real` at this scale: the clean model
            choice = routing.Choice("clean", None, choice.reason + f" -> clean (no real model at x{s.scale})")
        route = s.route(choice.key)
        w.route = route.key
        w.stats.update(model=route.model.name, denoise=route.denoise, route=choice.reason,
                       jpeg_quality_est=estimates and estimates.jpeg_quality,
                       noise_sigma_est=estimates and stats.nullable(estimates.noise_sigma))


class Size(Step):
    """The model scales to run and the exact output size (None: the model's scale)."""

    name, timing, doing = "size", "decode_s", "sizing"

    def wants(self, w: Work) -> bool:
        return w.to_upscale

    def one(self, w: Work) -> None:
        s = self.settings
        w.passes, w.target = plan_size(s, s.route(w.route), w.decoded or w.stream)


def plan_size(s: ActorSettings, route: Route, image) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    """(model scales to run, the exact output size or None) for one image."""
    if not s.output_size.asked:
        check_output_pixels(s, image, (image.width * s.scale, image.height * s.scale))
        return (s.scale,), None
    if isinstance(image, streaming.TiffLayout):
        raise TooManyPixelsError(
            f"images above --max-pixels are streamed at the model's scale only; "
            f"--{(s.output_size.key() or '').split('=')[0]} needs the image whole")
    target = target_size(s.output_size, image.width, image.height, s.scale)
    factor = max(target[0] / image.width, target[1] / image.height)
    try:
        passes = model_passes(factor, s.scale, route.scales)
    except ValueError as exc:
        raise TooManyPixelsError(f"{image.width}x{image.height} to {target[0]}x{target[1]}: {exc}") from None
    reached = math.prod(passes) ** 2 * image.width * image.height
    if reached > s.max_pixels * s.scale ** 2:
        raise TooManyPixelsError(
            f"{image.width}x{image.height} to {target[0]}x{target[1]} runs through "
            f"{' then '.join(f'x{p}' for p in passes)} ({reached} pixels), more than --max-pixels x scale^2")
    check_output_pixels(s, image, target)
    return passes, target


def check_output_pixels(s: ActorSettings, image, target: tuple[int, int]) -> None:
    """TooManyPixelsError where the output of `image` (decoded, or a TIFF to stream) would have
    more than --max-output-pixels: the run's bound on one image's time and bytes."""
    if target[0] * target[1] > s.max_output_pixels:
        raise TooManyPixelsError(
            f"{image.width}x{image.height} to {target[0]}x{target[1]} is {target[0] * target[1]} output "
            f"pixels, more than the limit of {s.max_output_pixels} (--max-output-pixels)")


# --- the model -------------------------------------------------------------------------


class Upscale(Step):
    """Each image's output (and model-upscaled alpha), pass after pass: the tiles of the list's
    images (and their alpha planes, as grey images) share packed batches; images of different
    models or scales never share one. An image the model fails on fails as model_error."""

    name, on_model, doing = "upscale", True, "upscaling"

    def __init__(self, settings: ActorSettings, models) -> None:
        super().__init__(settings)
        self.models = models  # inference.Models: each (route, scale)'s Upscaler, loaded once

    def __call__(self, works: list[Work]) -> list[Work]:
        ready = [w for w in works if w.in_memory]
        for w in ready:
            w.output = w.decoded.pixels
            w.alpha = w.decoded.alpha if self.settings.alpha == "model" else None
            w.stats["worker"] = self.models.worker
        for step in range(max((len(w.passes) for w in ready), default=0)):
            for key in dict.fromkeys((w.route, w.passes[step]) for w in ready if len(w.passes) > step):
                group = [w for w in ready if len(w.passes) > step and (w.route, w.passes[step]) == key
                         and w.output is not None]
                if group:
                    self._run_pass(self.models.model_for(key), group, first=step == 0)
        return works

    def _run_pass(self, upscaler, group: list[Work], first: bool) -> None:
        """One model pass over a group of images; each Work's output becomes the next pass's input."""
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
                fail(w, "model_error", f"{type(failed).__name__}: {failed}")
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


class Stream(Step):
    """Upscale an oversize TIFF block by block into a tiled BigTIFF (metrics skipped): read,
    model and write at once, so it runs where the model is and never passes through the object
    store."""

    name, on_model, doing = "stream", True, "streaming"

    def __init__(self, settings: ActorSettings, models) -> None:
        super().__init__(settings)
        self.models = models

    def wants(self, w: Work) -> bool:
        return w.stream is not None

    def one(self, w: Work) -> None:
        began, result = time.perf_counter(), None
        w.stats["worker"] = self.models.worker
        try:
            result = self._stream(w, self.models.model_for((w.route, self.settings.scale)))
        finally:
            w.infer_s = result.infer_s if result else 0.0
            w.timings["encode_s"] = time.perf_counter() - began - w.infer_s
            w.stream = None

    def _stream(self, w: Work, upscaler):
        s = self.settings
        notes = ["streamed in bounded memory: tiled BigTIFF output, metrics skipped"]
        if s.format not in ("keep", "tiff"):
            notes.append(f"streamed: {s.format} cannot be written block by block, wrote TIFF")
        result = None
        output_uri = s.layout.check_output(formats.output_uri_for(w.row, "tiff", "streamed"), cached=False)
        output_sha256 = xmp = None
        with storage.open_input(w.row["uri"], s.retries, timeout_s=s.read_timeout_s) as handle:
            # The source is never held whole: one sequential pass hashes it (a second read of
            # it, small beside upscaling an image this large).
            w.stats["source_sha256"] = provenance.sha256_of_stream(handle)
            if s.provenance == "xmp":
                scale = s.route(w.route).model.scale
                making = making_of(s, w, w.stats["width"] * scale, w.stats["height"] * scale)
                xmp = output_xmp(making, _tiff_xmp(handle), "tiff", notes)
            if s.c2pa_signing is not None:
                notes.append("streamed: no C2PA manifest (XMP only)")
            handle.seek(0)

            def write(path: str) -> None:
                nonlocal result, output_sha256
                result = streaming.upscale_tiff(handle, path, upscaler, alpha_mode=s.alpha,
                                                zlib_level=s.png_compress_level, xmp=xmp)
                with open(path, "rb") as written:  # too big to hold: hashed from the local file
                    output_sha256 = provenance.sha256_of_stream(written)
            bytes_out = storage.write_file_atomic(output_uri, write, s.retries)
        notes += result.notes
        if w.row.get("reference_uri"):
            notes.append("reference not scored (streamed)")
        w.stats.update(status=stats.STATUS_OK, output_uri=output_uri, format="tiff",
                       bytes_out=bytes_out, output_sha256=output_sha256, provenance=s.provenance,
                       out_width=result.out_width, passes=1,
                       outscale=result.out_width / w.stats["width"],
                       out_height=result.out_height, n_tiles=result.n_tiles,
                       psnr_y_consistency=None, sharpness_ratio=None,
                       notes="; ".join(notes))
        return result


def _tiff_xmp(handle) -> bytes | None:
    """The XMP (tag 700) of a streamed TIFF's first page, read from its header."""
    import tifffile

    handle.seek(0)
    with tifffile.TiffFile(handle) as tif:
        return decode.tiff_xmp(tif)


# --- after the model -------------------------------------------------------------------


class Resize(Step):
    """The asked output size: one antialiased (Lanczos) resize of the model's output and alpha;
    an alpha the model did not upscale (--alpha bicubic) is upscaled by bicubic here."""

    name, timing, doing = "resize", "encode_s", "resizing"

    def wants(self, w: Work) -> bool:
        return w.output is not None

    def one(self, w: Work) -> None:
        if w.alpha is None and w.decoded.alpha is not None:
            size = w.target or (w.output.shape[1], w.output.shape[0])
            w.alpha = resample.resize_bicubic(w.decoded.alpha, size)
        if w.target is not None and (w.output.shape[1], w.output.shape[0]) != w.target:
            w.output = resample.resize_lanczos(w.output, w.target)
            if w.alpha is not None and w.alpha.shape[:2] != w.output.shape[:2]:
                w.alpha = resample.resize_lanczos(w.alpha, w.target)


class Measure(Step):
    """The metrics of each output, computed on their own thread while `write` encodes and writes
    it: no-reference (consistency with the input, sharpness; NIQE where asked) and, for rows with
    a reference_uri, PSNR/SSIM against it. `write` collects them; the two run in one segment."""

    name, timing, doing = "measure", "encode_s", "measuring"

    def __init__(self, settings: ActorSettings) -> None:
        super().__init__(settings)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metrics")

    def wants(self, w: Work) -> bool:
        return w.output is not None

    def one(self, w: Work) -> None:
        w.measuring = self._pool.submit(self._metrics, w.output, w.decoded.pixels, w.row.get("reference_uri"))

    def _metrics(self, output: np.ndarray, lr: np.ndarray, reference_uri: str | None) -> tuple[dict, str | None]:
        """(the row's metric columns, a note where the reference could not be scored)."""
        measured, note = self._no_reference(output, lr), None
        if reference_uri:
            try:
                measured.update(self._against_reference(reference_uri, output, lr))
            except ImageError as exc:
                note = f"reference not scored ({exc.error_type}): {exc}"
        return measured, note

    def _no_reference(self, output: np.ndarray, lr: np.ndarray) -> dict:
        consistency, sharpness = quality.no_reference_metrics(output, lr)
        measured = {"psnr_y_consistency": stats.nullable(consistency),
                    "sharpness_ratio": stats.nullable(sharpness)}
        if "niqe" in self.settings.metrics:
            from sr_batch.niqe import niqe

            bicubic = resample.resize_bicubic(lr, (output.shape[1], output.shape[0]))
            measured.update(niqe=stats.nullable(niqe(output)), niqe_bicubic=stats.nullable(niqe(bicubic)))
        return measured

    def _against_reference(self, uri: str, output: np.ndarray, lr: np.ndarray) -> dict:
        s = self.settings
        reference = decode.decode_image(storage.read_bytes(uri, s.retries, s.read_timeout_s),
                                        s.max_pixels * s.scale ** 2)
        try:
            metrics = quality.reference_metrics(output, lr, reference.pixels, s.scale)
        except ValueError as exc:
            raise ReferenceImageError(str(exc)) from None
        return {k: stats.nullable(v) for k, v in metrics.items()}


class Write(Step):
    """Encode in the planned format (or the one the image forces), with ICC, EXIF and the
    provenance XMP (and a C2PA manifest where asked); write it atomically under OUT/images;
    complete the stats row with the metrics. The pixels are dropped after."""

    name, timing, doing = "write", "encode_s", "writing"

    def wants(self, w: Work) -> bool:
        return w.output is not None

    def one(self, w: Work) -> None:
        try:
            self._write(w)
        finally:
            w.decoded = w.output = w.alpha = w.measuring = None  # free the pixels

    def _write(self, w: Work) -> None:
        s, decoded, out_pixels = self.settings, w.decoded, w.output
        planned = formats.EXTENSION_FORMAT[w.row["output_exts"][0]]
        fmt, note = formats.output_format(decoded, planned, s.format)
        notes = list(decoded.notes) + ([note] if note else [])
        output_uri = formats.output_uri_for(w.row, fmt, note)
        xmp = making = None
        if s.provenance == "xmp":
            making = making_of(s, w, out_pixels.shape[1], out_pixels.shape[0])
            xmp = output_xmp(making, decoded.xmp, fmt, notes)
        data = encode.encode_image(out_pixels, w.alpha, fmt, quality=s.quality,
                                   png_compress_level=s.png_compress_level,
                                   icc_profile=decoded.icc_profile, exif=decoded.exif, xmp=xmp)
        if s.c2pa_signing is not None:
            # The source is the manifest's ingredient: read again (a Work does not keep its bytes).
            source = storage.read_bytes(w.row["uri"], s.retries, s.read_timeout_s)
            data = provenance.sign_c2pa(data, fmt, making, source, decoded.format, s.c2pa_signing)
        storage.write_bytes_atomic(s.layout.check_output(output_uri, cached=False), data, s.retries)
        metrics, reference_note = w.measuring.result() if w.measuring else ({}, None)
        w.stats.update(
            status=stats.STATUS_OK, output_uri=output_uri, format=fmt, bytes_out=len(data),
            output_sha256=provenance.sha256_hex(data),
            provenance="c2pa" if s.c2pa_signing is not None else s.provenance,
            out_width=out_pixels.shape[1], out_height=out_pixels.shape[0],
            outscale=out_pixels.shape[1] / decoded.width, passes=len(w.passes), n_tiles=w.n_tiles,
            alpha_mode=s.alpha if decoded.alpha is not None else None, **metrics)
        if reference_note:
            notes.append(reference_note)
        w.stats["notes"] = "; ".join(notes) or None


def making_of(s: ActorSettings, w: Work, width: int, height: int) -> provenance.Making:
    """What made this output, as its XMP (and C2PA manifest) state it."""
    return provenance.Making(
        source_uri=w.row["uri"] if s.provenance_source == "uri" else None,
        source_sha256=w.stats.get("source_sha256"), model=w.stats["model"],
        model_sha256=s.route(w.route).model.identity, scale=s.scale, out_width=width,
        out_height=height, denoise=w.stats.get("denoise"), route=w.stats.get("route"),
        run_id=s.run_id, when=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))


def output_xmp(making: provenance.Making, source_xmp: bytes | None, fmt: str,
               notes: list[str]) -> bytes:
    """The output's XMP packet: the source's extended with what made the output (provenance.py);
    what could not be kept goes to `notes`."""
    xmp, note = provenance.build_xmp(making, source_xmp)
    if fmt == "jpeg" and len(xmp) > encode.JPEG_XMP_MAX:
        # One APP1 segment holds 64 KB; sr-batch writes no Extended XMP, so ours goes alone.
        xmp, _ = provenance.build_xmp(making, None)
        note = (f"source XMP too large for a JPEG XMP segment with sr-batch's ({len(source_xmp)} "
                "bytes): replaced by sr-batch's")
    if note:
        notes.append(note)
    return xmp


class Record(Step):
    """Every row, written or failed: the tiling its image ran with (the side the model chose,
    else the route's largest) and the step timings."""

    name = "record"

    def wants(self, w: Work) -> bool:
        return True

    def one(self, w: Work) -> None:
        tiling = self.settings.route(w.route).tiling
        chosen = w.tile_size if w.tile_size and not w.failed else 0
        w.stats.update(tile_size=chosen or tiling.largest, tile_overlap=tiling.overlap)
        finish_timing(w)


# --- the list, and how the arrangements cut it ----------------------------------------

STEPS: tuple[type[Step], ...] = (Decode, ChooseRoute, Size, Upscale, Stream, Resize, Measure, Write, Record)


def segments(steps: tuple[type[Step], ...] = STEPS) -> list[tuple[type[Step], ...]]:
    """The list cut where it moves between CPU and model steps: (CPU, model, CPU)."""
    cut: list[list[type[Step]]] = []
    for step in steps:
        if not cut or cut[-1][-1].on_model != step.on_model:
            cut.append([])
        cut[-1].append(step)
    return [tuple(part) for part in cut]


def build(part: tuple[type[Step], ...], settings: ActorSettings, models=None) -> list[Step]:
    """The steps of one segment, made once per actor or task (model steps get the models)."""
    return [step(settings, models) if step.on_model else step(settings) for step in part]


def run(steps: list[Step], works: list[Work]) -> list[Work]:
    for step in steps:
        works = step(works)
    return works


def begin(settings: ActorSettings, batch: pa.Table, worker: str) -> list[Work]:
    """Manifest rows as Works: what the first step is given."""
    return [new_work(settings, row, worker) for row in batch.to_pylist()]


def cpu_stage(batch: pa.Table, settings: ActorSettings, segment: int) -> pa.Table:
    """One CPU segment of the list as a Ray Data task (staged), on any node with a free CPU:
    manifest rows (the first segment) or handed-off Works in; handed-off Works, or the stats
    rows (the last segment), out."""
    parts = segments()
    works = begin(settings, batch, worker_name()) if segment == 0 else from_arrow(batch)
    works = run(build(parts[segment], settings), works)
    return stats.make_table([w.stats for w in works]) if segment == len(parts) - 1 else to_arrow(works)
