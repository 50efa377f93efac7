"""One image between the steps (`Work`), the shape every step has (`Step`), and failures as data.

A step takes a list of Works and returns it, each Work carrying what the steps before it
found. A bad image never raises out of a step: it becomes a `failed` Work with `error_type`
and a one-line `error_message`, and the other images of the list go on.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from sr_batch import decode, stats, storage, streaming
from sr_batch.errors import ImageError
from sr_batch.models.registry import ModelSpec
from sr_batch.settings import ActorSettings

log = logging.getLogger(__name__)

# A bug in one image must not stop a million-image run: it fails that image with this type.
INTERNAL_ERROR = "internal_error"


@dataclass
class Work:
    """One image between the steps."""

    row: dict
    """The manifest row with its planned output names."""
    stats: dict
    """The stats row so far; `status` is failed until the image is written."""
    decoded: decode.DecodedImage | None = None
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
    """The tile side the model's first pass chose; 0 until the model has run."""
    infer_s: float = 0.0
    timings: dict = field(default_factory=dict)
    """Seconds per stats timing column (decode_s, encode_s) that the steps added to."""
    read: bool = False
    """The source was read (or reading it failed)."""
    source: bytes | None = None
    """The source's bytes between decode and routing (`--model auto` only); dropped after."""
    measuring: Future | None = None
    """The metrics, computing on their own thread while the image is encoded and written."""

    @property
    def failed(self) -> bool:
        return self.stats.get("error_type") is not None

    @property
    def in_memory(self) -> bool:
        """Decoded, not failed: the image's pixels are here."""
        return self.decoded is not None

    @property
    def to_upscale(self) -> bool:
        """Read and not failed: decoded in memory, or a TIFF to stream."""
        return self.decoded is not None or self.stream is not None


def new_work(s: ActorSettings, row: dict, worker: str) -> Work:
    """A manifest row as a Work, with its stats row's first values."""
    first = s.all_routes[0]
    return Work(row=row, route=first.key, stats={
        "image_id": row["image_id"], "source_uri": row["uri"],
        "reference_uri": row.get("reference_uri"), "status": stats.STATUS_FAILED,
        "scale": s.scale, "model": model_label(s.model), "model_sha256": s.identity or s.model.identity,
        "seam_max_levels": s.tiling.seam and s.tiling.seam[0],
        "seam_mean_levels": s.tiling.seam and s.tiling.seam[1],
        "requested_format": s.format, "self_ensemble": s.self_ensemble,
        "precision": s.precision, "denoise": s.denoise, "output_size": s.output_size.key(), "passes": 0,
        "bytes_in": row.get("bytes"), "source_mtime": row.get("mtime"),
        "source_etag": row.get("etag"), "worker": worker,
    })


class Step:
    """One step of the per-image path: `step(works) -> works`.

    A step does its work on the Works it `wants` (by default those decoded in memory); an
    ImageError fails that image with its type, anything else fails it as internal_error,
    and the time spent goes to the stats column `timing`. `on_model` steps run where the
    models are loaded (the model actors); the others on any CPU.
    """

    name = ""
    """The step in the step list (steps.STEPS) and the docs."""
    on_model = False
    timing: str | None = None
    doing = "working"
    """For the one log line of an unexpected error: `unexpected error <doing> <uri>`."""

    def __init__(self, settings: ActorSettings) -> None:
        self.settings = settings

    def wants(self, w: Work) -> bool:
        return w.in_memory

    def one(self, w: Work) -> None:
        raise NotImplementedError

    def __call__(self, works: list[Work]) -> list[Work]:
        for w in works:
            if not self.wants(w):
                continue
            began = time.perf_counter()
            try:
                self.one(w)
            except ImageError as exc:
                fail(w, exc.error_type, str(exc))
            except Exception as exc:  # noqa: BLE001 - a bug must not stop a million-image run
                fail_internally(w, self.doing, exc)
            if self.timing is not None:
                w.timings[self.timing] = w.timings.get(self.timing, 0.0) + time.perf_counter() - began
        return works


def model_label(spec: ModelSpec) -> str:
    """What the stats `model` column says: the zoo name, or a model file's URI as given."""
    return spec.uri if spec.arch in ("keras", "onnx") and spec.uri else spec.name


def fail(w: Work, error_type: str, message: str) -> None:
    """The image fails: its pixels are dropped and the row says why, in one line."""
    w.decoded = w.stream = w.output = w.alpha = w.source = w.measuring = None
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
