"""The work on one image, in three steps that run fused in one actor or apart as Ray Data stages.

    decode  (CPU)          manifest row -> Work: pixels, or a TIFF to stream, or a failure
    upscale (model actor)  Works -> integer output pixels (actor.py)
    finish  (CPU)          encode, write, measure -> the stats row

Fused (actor.UpscaleActor) hands numpy arrays from step to step in one process. Staged, the
hand-offs go through Ray's object store as Arrow rows (`to_arrow` / `from_arrow`): the pixels
as uint8/uint16 bytes, never float, one copy each way.

Errors are data: a bad image becomes a `failed` row with `error_type` and a one-line
`error_message`, and the other images of the batch go on.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import math
import pickle
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from sr_batch import images, provenance, quality, resample, stats, storage, streaming
from sr_batch.config import DEFAULT_MAX_OUTPUT_PIXELS
from sr_batch.errors import ImageError, ReferenceImageError, TooManyPixelsError, UnsupportedModeError
from sr_batch.layout import OutLayout
from sr_batch.models.registry import ModelSpec
from sr_batch.plan import EXTENSION_FORMAT, FORMAT_EXTENSION, Tiling
from sr_batch.runtime import worker_name
from sr_batch.sizing import OutputSize, model_passes, target_size

log = logging.getLogger(__name__)

# Files up to this size are read whole; a bigger one is opened for ranged reads and
# its header checked first, so an image that must be streamed is never read whole.
WHOLE_READ_BYTES = 16 << 20
# A bug in one image must not stop a million-image run: it fails that image with this type.
INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True)
class Route:
    """One model an image can be given: the run's model, or one of `--model auto`'s choices."""

    key: str
    """`main` for a run with one model; routing.Choice.key (`clean`, `real dn0.5`) under auto."""
    model: ModelSpec
    tiling: Tiling
    denoise: float | None = None
    pass_models: tuple[tuple[ModelSpec, Tiling], ...] = ()
    """The same model at other scales, with their tiling, for second passes (x8 = x4 then x2)."""

    @property
    def scales(self) -> tuple[int, ...]:
        return (self.model.scale, *(m.scale for m, _ in self.pass_models))


@dataclass(frozen=True)
class ActorSettings:
    """What the model actors and CPU stages of a run need; built once from the plan."""

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
    size: OutputSize = OutputSize()
    """--outscale / --width / --height / --fit; nothing asked: the model's scale."""
    pass_models: tuple[tuple[ModelSpec, Tiling], ...] = ()
    """The same model at other scales, with their tiling, for second passes (x8 = x4 then x2)."""
    routes: tuple[Route, ...] = ()
    """`--model auto`: every model an image may be routed to (by routing.choose); else empty."""
    metrics: tuple[str, ...] = ()
    """Extra metrics (config.OPTIONAL_METRICS): `niqe`."""
    identity: str | None = None
    """What the stats record as model_sha256 under auto (the rules and every model); else the model's."""
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    """Output pixels an image may come to (--max-output-pixels); larger: too_many_pixels."""
    run_id: str = ""
    """The run, as each output's XMP names it."""
    provenance: str = "xmp"
    """config.PROVENANCE_MODES: what each output says about its making."""
    provenance_source: str = "uri"
    """config.PROVENANCE_SOURCES: how the XMP names the source."""
    c2pa_signing: provenance.Signing | None = None
    """--c2pa-sign: sign a C2PA manifest into each output as well; None: XMP only."""

    @property
    def all_routes(self) -> tuple[Route, ...]:
        return self.routes or (Route("main", self.model, self.tiling, self.denoise, self.pass_models),)

    def route(self, key: str) -> Route:
        return next(r for r in self.all_routes if r.key == key)


@dataclass
class Work:
    """One image between the steps."""

    row: dict
    """The manifest row with its planned output names."""
    stats: dict
    """The stats row so far; `status` is failed until the image is written."""
    decoded: images.DecodedImage | None = None
    stream: streaming.TiffLayout | None = None
    """An image above --max-pixels that the model actor streams (set instead of `decoded`)."""
    output: np.ndarray | None = None
    """The upscaled colour planes, in the input's integer dtype."""
    alpha: np.ndarray | None = None
    """The alpha plane upscaled by the model (--alpha model), or None."""
    route: str = "main"
    """The key of the Route this image runs through."""
    target: tuple[int, int] | None = None
    """(width, height) of the output when a size was asked, else None (the model's scale)."""
    passes: tuple[int, ...] = ()
    """The model scales to run, in order (a second pass when the asked size needs it)."""
    n_tiles: int = 0
    tile_size: int = 0
    infer_s: float = 0.0
    timings: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """Nothing left to do: failed, or already written (a streamed image)."""
        return self.decoded is None and self.stream is None


# --- decode ----------------------------------------------------------------------------


def model_label(spec: ModelSpec) -> str:
    """What the stats `model` column says: the zoo name, or a model file's URI as given."""
    return spec.uri if spec.arch in ("keras", "onnx") and spec.uri else spec.name


def start(settings: ActorSettings, row: dict, worker: str) -> Work:
    """The image's base stats row, then read and decode; failures are recorded, not raised."""
    s = settings
    began = time.perf_counter()
    w = Work(row=row, stats={
        "image_id": row["image_id"], "source_uri": row["uri"],
        "reference_uri": row.get("reference_uri"), "status": stats.STATUS_FAILED,
        "scale": s.scale, "model": model_label(s.model), "model_sha256": s.identity or s.model.identity,
        "tile_size": s.tiling.largest, "tile_overlap": s.tiling.overlap,
        "seam_max_levels": s.tiling.seam and s.tiling.seam[0],
        "seam_mean_levels": s.tiling.seam and s.tiling.seam[1],
        "requested_format": s.format, "self_ensemble": s.self_ensemble,
        "precision": s.precision, "denoise": s.denoise, "output_size": s.size.key(), "passes": 0,
        "bytes_in": row.get("bytes"), "source_mtime": row.get("mtime"),
        "source_etag": row.get("etag"), "worker": worker,
    })
    try:
        if row.get("plan_error_type"):
            fail(w, row["plan_error_type"], row["plan_error_message"])
        else:
            image, w.stats["bytes_in"], data = read_and_decode(s, row)
            if data is not None:  # a streamed source is hashed as it is streamed (stream())
                w.stats["source_sha256"] = provenance.sha256_hex(data)
            w.stats.update(width=image.width, height=image.height, channels=image.channels,
                           bit_depth=image.bit_depth)
            if s.routes:
                route_image(s, w, image, data)
            w.passes, w.target = plan_size(s, s.route(w.route), image)
            if isinstance(image, streaming.TiffLayout):
                w.stream = image
            else:
                w.decoded = image
    except ImageError as exc:
        fail(w, exc.error_type, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not stop a million-image run
        fail_internally(w, "decoding", exc)
    w.timings["decode_s"] = time.perf_counter() - began
    if w.done:
        finish_timing(w)
    return w


def route_image(s: ActorSettings, w: Work, image, data: bytes | None) -> None:
    """--model auto: estimate the image's degradation and pick its route (a streamed TIFF, never
    decoded whole, takes the clean model)."""
    from sr_batch import routing

    if isinstance(image, streaming.TiffLayout):
        choice = routing.Choice("clean", None, "streamed: clean")
        estimates = None
    else:
        estimates = routing.estimate(data, image.pixels)
        choice = routing.choose(estimates, s.scale)
    known = {r.key for r in s.routes}
    if choice.key not in known:  # no `real` at this scale: the clean model, and say so
        choice = routing.Choice("clean", None, choice.reason + f" -> clean (no real model at x{s.scale})")
    route = s.route(choice.key)
    w.route = route.key
    w.stats.update(model=route.model.name, denoise=route.denoise, route=choice.reason,
                   tile_size=route.tiling.largest, tile_overlap=route.tiling.overlap,
                   jpeg_quality_est=estimates and estimates.jpeg_quality,
                   noise_sigma_est=estimates and _finite(estimates.noise_sigma))


def plan_size(s: ActorSettings, route: Route, image) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    """(model scales to run, the exact output size or None) for one image."""
    if not s.size.asked:
        check_output_pixels(s, image, (image.width * s.scale, image.height * s.scale))
        return (s.scale,), None
    if isinstance(image, streaming.TiffLayout):
        raise TooManyPixelsError(
            f"images above --max-pixels are streamed at the model's scale only; "
            f"--{(s.size.key() or '').split('=')[0]} needs the image whole")
    target = target_size(s.size, image.width, image.height, s.scale)
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


def read_and_decode(s: ActorSettings, row: dict) -> tuple[images.DecodedImage | streaming.TiffLayout,
                                                         int, bytes | None]:
    """(the decoded image, or the layout of a TIFF to stream; its size in bytes; its bytes,
    None for a streamed one).

    Above max_pixels, a TIFF that can be streamed is streamed; anything else raises
    too_many_pixels saying why it cannot be.
    """
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
        return images.decode_image(data, s.max_pixels), len(data), data
    except TooManyPixelsError as exc:
        return streaming.check_streamable(io.BytesIO(data), exc), len(data), None


# --- finish ----------------------------------------------------------------------------


class Finisher:
    """Encode, write and measure upscaled images; the metrics of an image run on their own
    thread while it is encoded and written."""

    def __init__(self, settings: ActorSettings) -> None:
        self.settings = settings
        self._measurer = ThreadPoolExecutor(1, thread_name_prefix="metrics")

    def finish(self, w: Work) -> None:
        """Write the image and complete its stats row; failures are recorded, not raised."""
        try:
            self._write_and_measure(w)
        except ImageError as exc:
            fail(w, exc.error_type, str(exc))
        except Exception as exc:  # noqa: BLE001
            fail_internally(w, "writing", exc)
        w.decoded = w.output = w.alpha = None  # the pixels are no longer needed: free them
        finish_timing(w)

    def _write_and_measure(self, w: Work) -> None:
        s, decoded = self.settings, w.decoded
        began = time.perf_counter()
        out_pixels, alpha = w.output, w.alpha
        if alpha is None and decoded.alpha is not None:
            size = w.target or (out_pixels.shape[1], out_pixels.shape[0])
            alpha = resample.resize_bicubic(decoded.alpha, size)
        if w.target is not None and (out_pixels.shape[1], out_pixels.shape[0]) != w.target:
            # The asked size: one antialiased resize of the model's output (and alpha).
            out_pixels = resample.resize_lanczos(out_pixels, w.target)
            if alpha is not None and alpha.shape[:2] != out_pixels.shape[:2]:
                alpha = resample.resize_lanczos(alpha, w.target)
        planned = EXTENSION_FORMAT[w.row["output_exts"][0]]
        fmt, note = images.output_format(decoded, planned, s.format)
        notes = list(decoded.notes) + ([note] if note else [])
        output_uri = output_uri_for(w.row, fmt, note)
        metrics = self._measurer.submit(self._no_reference_metrics, out_pixels, decoded.pixels)
        xmp = making = None
        if s.provenance == "xmp":
            making = making_of(s, w, out_pixels.shape[1], out_pixels.shape[0])
            xmp = output_xmp(making, decoded.xmp, fmt, notes)
        data = images.encode_image(out_pixels, alpha, fmt, quality=s.quality,
                                   png_compress_level=s.png_compress_level,
                                   icc_profile=decoded.icc_profile, exif=decoded.exif, xmp=xmp)
        if s.c2pa_signing is not None:
            # The source is the manifest's ingredient: read again (a Work does not keep its bytes).
            source = storage.read_bytes(w.row["uri"], s.retries, s.read_timeout_s)
            data = provenance.sign_c2pa(data, fmt, making, source, decoded.format, s.c2pa_signing)
        storage.write_bytes_atomic(s.layout.check_output(output_uri, cached=False), data, s.retries)
        w.timings["encode_s"] = time.perf_counter() - began
        w.stats.update(
            status=stats.STATUS_OK, output_uri=output_uri, format=fmt, bytes_out=len(data),
            output_sha256=provenance.sha256_hex(data),
            provenance="c2pa" if s.c2pa_signing is not None else s.provenance,
            out_width=out_pixels.shape[1], out_height=out_pixels.shape[0],
            outscale=out_pixels.shape[1] / decoded.width, passes=len(w.passes),
            n_tiles=w.n_tiles, tile_size=w.tile_size or s.route(w.route).tiling.largest,
            alpha_mode=s.alpha if decoded.alpha is not None else None,
            **metrics.result(),
        )
        if w.row.get("reference_uri"):
            try:
                w.stats.update(self._reference_metrics(w.row["reference_uri"], out_pixels, decoded.pixels))
            except ImageError as exc:
                notes.append(f"reference not scored ({exc.error_type}): {exc}")
        w.stats["notes"] = "; ".join(notes) or None

    def _no_reference_metrics(self, output: np.ndarray, lr: np.ndarray) -> dict:
        """The metrics that need no reference: output against its own input (and NIQE, asked)."""
        consistency, sharpness = quality.no_reference_metrics(output, lr)
        measured = {"psnr_y_consistency": _finite(consistency), "sharpness_ratio": _finite(sharpness)}
        if "niqe" in self.settings.metrics:
            from sr_batch.niqe import niqe

            bicubic = resample.resize_bicubic(lr, (output.shape[1], output.shape[0]))
            measured.update(niqe=_finite(niqe(output)), niqe_bicubic=_finite(niqe(bicubic)))
        return measured

    def _reference_metrics(self, uri: str, output: np.ndarray, lr: np.ndarray) -> dict:
        s = self.settings
        reference = images.decode_image(storage.read_bytes(uri, s.retries, s.read_timeout_s),
                                        s.max_pixels * s.scale ** 2)
        try:
            metrics = quality.reference_metrics(output, lr, reference.pixels, s.scale)
        except ValueError as exc:
            raise ReferenceImageError(str(exc)) from None
        return {k: _finite(v) for k, v in metrics.items()}


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
    if fmt == "jpeg" and len(xmp) > images.JPEG_XMP_MAX:
        # One APP1 segment holds 64 KB; sr-batch writes no Extended XMP, so ours goes alone.
        xmp, _ = provenance.build_xmp(making, None)
        note = (f"source XMP too large for a JPEG XMP segment with sr-batch's ({len(source_xmp)} "
                "bytes): replaced by sr-batch's")
    if note:
        notes.append(note)
    return xmp


def output_uri_for(row: dict, fmt: str, note: str | None) -> str:
    """The planned name for the format written; a format the plan did not reserve a name
    for (an output_uri whose extension cannot hold the image) fails the image."""
    ext = FORMAT_EXTENSION[fmt]
    if ext in row["output_exts"]:
        return row["output_uris"][row["output_exts"].index(ext)]
    raise UnsupportedModeError(f"output_uri {storage.display(row['output_uris'][0])} cannot be "
                               f"written as {fmt} ({note}); give it a .{ext} name")


def stream(settings: ActorSettings, w: Work, upscaler) -> None:
    """Upscale an oversize TIFF block by block into a tiled BigTIFF; metrics are skipped."""
    s = settings
    began = time.perf_counter()
    notes = ["streamed in bounded memory: tiled BigTIFF output, metrics skipped"]
    if s.format not in ("keep", "tiff"):
        notes.append(f"streamed: {s.format} cannot be written block by block, wrote TIFF")
    result = None
    try:
        output_uri = s.layout.check_output(output_uri_for(w.row, "tiff", "streamed"), cached=False)
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
    except ImageError as exc:
        fail(w, exc.error_type, str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug must not stop a million-image run
        fail_internally(w, "streaming", exc)
    w.infer_s = result.infer_s if result else 0.0
    w.timings["encode_s"] = time.perf_counter() - began - w.infer_s
    w.stream = None
    finish_timing(w)


def _tiff_xmp(handle) -> bytes | None:
    """The XMP (tag 700) of a streamed TIFF's first page, read from its header."""
    import tifffile

    handle.seek(0)
    with tifffile.TiffFile(handle) as tif:
        return images.tiff_xmp(tif)


# --- bookkeeping -----------------------------------------------------------------------


def fail(w: Work, error_type: str, message: str) -> None:
    w.decoded = w.stream = w.output = w.alpha = None
    w.stats.update(status=stats.STATUS_FAILED, error_type=error_type,
                   error_message=storage.display(" ".join(str(message).split()))[:500], output_uri=None)


def fail_internally(w: Work, doing: str, exc: Exception) -> None:
    """A bug, not the image's fault: one log line (the traceback at debug level), the image fails."""
    log.warning("unexpected error %s %s: %s: %s", doing, storage.display(w.row["uri"]),
                type(exc).__name__, exc)
    log.debug("traceback", exc_info=True)
    fail(w, INTERNAL_ERROR, f"{type(exc).__name__} while {doing}: {exc}")


def finish_timing(w: Work) -> None:
    w.stats.update(decode_s=w.timings.get("decode_s"), infer_s=w.infer_s,
                   encode_s=w.timings.get("encode_s"),
                   total_s=sum(w.timings.values()) + w.infer_s,
                   finished_at=dt.datetime.now(dt.timezone.utc))


def _finite(value: float | None) -> float | None:
    """NaN (undefined, e.g. the sharpness of a flat image) is stored as null; inf is kept."""
    if value is None:
        return None
    value = float(value)
    return None if np.isnan(value) else value


# --- hand-offs through the object store (staged) ----------------------------------------

_ARRAYS = ("pixels", "alpha", "output", "output_alpha")


def to_arrow(works: list[Work]) -> pa.Table:
    """Works as Arrow rows: every array's bytes in one large_binary column (one copy), the rest
    (rows, stats, metadata, array shapes) pickled beside them; finished works carry no arrays."""
    columns: dict[str, list] = {name: [] for name in _ARRAYS}
    states = []
    for w in works:
        arrays = {"pixels": w.decoded.pixels if w.decoded else None,
                  "alpha": w.decoded.alpha if w.decoded else None,
                  "output": w.output, "output_alpha": w.alpha}
        shapes = {}
        for name, array in arrays.items():
            columns[name].append(None if array is None else np.ascontiguousarray(array))
            shapes[name] = None if array is None else (array.shape, array.dtype.str)
        decoded = replace(w.decoded, pixels=None, alpha=None) if w.decoded else None
        state = replace(w, decoded=decoded, output=None, alpha=None)
        states.append(pickle.dumps((state, shapes), protocol=pickle.HIGHEST_PROTOCOL))
    return pa.table({"state": pa.array(states, pa.binary()),
                     **{name: _binary_column(columns[name]) for name in _ARRAYS}})


def from_arrow(table: pa.Table) -> list[Work]:
    """The Works of `to_arrow`; arrays are read-only views of the Arrow buffers (no copy)."""
    works = []
    columns = {name: table.column(name) for name in _ARRAYS}
    for i, blob in enumerate(table.column("state").to_pylist()):
        w, shapes = pickle.loads(blob)
        arrays = {name: None if shapes[name] is None else
                  np.frombuffer(columns[name][i].as_buffer(), np.dtype(shapes[name][1])).reshape(shapes[name][0])
                  for name in _ARRAYS}
        if w.decoded is not None:
            w.decoded = replace(w.decoded, pixels=arrays["pixels"], alpha=arrays["alpha"])
        w.output, w.alpha = arrays["output"], arrays["output_alpha"]
        works.append(w)
    return works


def _binary_column(arrays: list[np.ndarray | None]) -> pa.Array:
    """One large_binary array over the arrays' bytes, built with a single copy into one buffer."""
    sizes = np.array([0 if a is None else a.nbytes for a in arrays], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    data = np.empty(int(offsets[-1]), np.uint8)
    for array, start in zip(arrays, offsets[:-1]):
        if array is not None:
            data[start:start + array.nbytes] = array.reshape(-1).view(np.uint8)
    valid = np.array([a is not None for a in arrays])
    mask = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(arrays),
                                            [mask, pa.py_buffer(offsets), pa.py_buffer(data)],
                                            null_count=int((~valid).sum()))


# --- the CPU stages of the staged arrangement (Ray Data tasks) ---------------------------


def decode_batch(batch: pa.Table, settings: ActorSettings) -> pa.Table:
    """Manifest rows -> decoded Works (Arrow), on any node with a free CPU."""
    worker = worker_name()
    return to_arrow([start(settings, row, worker) for row in batch.to_pylist()])


def finish_batch(batch: pa.Table, settings: ActorSettings) -> pa.Table:
    """Upscaled Works (Arrow) -> stats rows: encode, write and measure, on any node with a free CPU."""
    works = from_arrow(batch)
    finisher = Finisher(settings)
    for w in works:
        if w.output is not None:
            finisher.finish(w)
    return stats.make_table([w.stats for w in works])
