"""What the steps of a run are given: the run's settings and the routes an image can take.

Built once by the driver (pipeline.actor_settings, the one place where the plan's and the
config's names become the steps' names) and handed to every actor and CPU stage.
"""

from __future__ import annotations

from dataclasses import dataclass

from sr_batch import provenance
from sr_batch.config import DEFAULT_MAX_OUTPUT_PIXELS
from sr_batch.layout import OutLayout
from sr_batch.models.registry import ModelSpec
from sr_batch.sizing import OutputSize
from sr_batch.tiling import Tiling


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
    output_size: OutputSize = OutputSize()
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
