"""Every knob of a run, as one frozen dataclass validated once."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass

from sr_batch.errors import ConfigError
from sr_batch.tiling import tile_core

FORMATS = ("keep", "png", "webp", "jpeg", "tiff")
# How an alpha channel is upscaled: by the model (as a grey image) or by bicubic.
ALPHA_MODES = ("model", "bicubic")
SCALES = (2, 3, 4)
# Model arithmetic: float32, or bfloat16 convolutions (Keras mixed_bfloat16) with the
# bicubic skip and the output layer in float32; see models.registry.with_precision.
PRECISIONS = ("float32", "bfloat16")
# Where the work around the model runs: `fused` in the model actor (fastest on one machine:
# no pixel leaves the process), `staged` as Ray Data CPU stages that Ray places on any node
# with free CPUs (a cluster's GPUs then only upscale), `auto` staged when actors take GPUs.
ARRANGEMENTS = ("auto", "fused", "staged")
# What runs the step list: `ray` (an actor pool on a local or remote Ray), `local` (this
# process, fused, no Ray), `auto`: local for a local run whose images fit one actor call and
# no Ray is up in the process (Ray's and an actor's start would cost more than the work).
EXECUTORS = ("auto", "ray", "local")
# What an output says about its making (provenance.py): an XMP packet, or nothing.
PROVENANCE_MODES = ("xmp", "none")
# How the XMP names the source: its URI and SHA-256, or (private paths) its SHA-256 alone.
PROVENANCE_SOURCES = ("uri", "hash")
# Metrics beyond the default two (psnr_y_consistency, sharpness_ratio) that a run may add.
OPTIONAL_METRICS = ("niqe",)

# Default tile: a 128 px core plus the model's context on each side (136 px for
# a radius-4 model). A 128-multiple core cuts common sizes (128, 512, 4096) into
# whole tiles with no padding waste; a batch of 16 such tiles of a 64-channel
# model stays well under 1 GB of activations on CPU or GPU.
DEFAULT_TILE_CORE = 128
# With no --tile-size, a second tile with a 256 px core: each image takes whichever of the
# two runs fewer padded pixels through the model. For a radius-15 model a 512 px image
# costs 1.25x its pixels in 286 px tiles against 1.52x in 158 px tiles; a 128 px image
# still takes the small tile (1.52x, against 5x in the large one).
LARGE_TILE_CORE = 256
# Tiles per model call. 16 keeps the CPU busy without growing the activations
# past what a 2-core laptop has in cache-friendly memory.
DEFAULT_BATCH_SIZE = 16
# Images handed to an actor per call; tiles of all of them are packed together,
# so small images still fill whole model batches.
DEFAULT_IMAGES_PER_CALL = 8
# Unless --images-per-call is given, a call holds about this many input pixels (from a
# sample of the images' headers), 1 to DEFAULT_IMAGES_PER_CALL images: large images go
# one per call, so that an actor's two calls in flight overlap one image's decode and
# finishing with another's inference (4 x 4096^2: 3.2 -> 3.6 MP/s on 2 cores).
PIXELS_PER_CALL = 4_000_000
# Images whose headers are read to size the calls.
CALL_SIZE_SAMPLE = 16
# 178 MP input: Pillow's own decompression-bomb threshold (2 x 89.5 MP).
DEFAULT_MAX_PIXELS = 178_956_970
# Output pixels an image may come to: a 31623 px square, about 3 GB as 8-bit RGB and 1,000 s
# of model time at 1 MP/s. Far larger
# outputs (a 330 kB TIFF declaring 20000 x 20000 px makes 1.6 GP at x2) fail their row as
# too_many_pixels unless --max-output-pixels is raised.
DEFAULT_MAX_OUTPUT_PIXELS = 1_000_000_000
# The widest context a tile may carry per side: ten times the zoo's widest receptive radius
# (27 px). A 256 px core with this overlap is a 768 px tile, whose batch of 16 at 64 channels
# holds about 2.4 GB of activations; 100000 px asked for 448 GiB.
MAX_TILE_OVERLAP = 256
# The largest tile side: a batch of 16 such tiles of a 64-channel model is about 17 GB of
# activations, the most a large GPU holds.
MAX_TILE_SIZE = 2048
# A run id names a folder (OUT/stats/run_id=ID) and a file (OUT/runs/ID.json): letters, digits,
# `.`, `_` and `-`, starting with a letter or digit, so it can never leave those folders.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: str | None) -> None:
    """ConfigError unless `run_id` is None or a name RUN_ID allows."""
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"--run-id must be 1 to 128 letters, digits, '.', '_' or '-', starting with a "
                          f"letter or digit, got {run_id!r}")


def parse_actors(text: str | int | tuple[int, int] | None) -> tuple[int, int] | None:
    """Parse `--actors N` or `--actors MIN-MAX` into (min, max); None means automatic."""
    if text is None or text == "auto":
        return None
    if isinstance(text, tuple):
        low, high = text
    elif isinstance(text, int):
        low = high = text
    else:
        parts = str(text).split("-")
        try:
            if len(parts) == 1:
                low = high = int(parts[0])
            elif len(parts) == 2:
                low, high = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--actors must be N or MIN-MAX, got {text!r}") from None
    if low < 1 or high < low:
        raise ConfigError(f"--actors needs 1 <= MIN <= MAX, got {low}-{high}")
    return (low, high)


def check_denoise(value: float) -> float:
    """A --denoise strength, checked to lie in [0, 1]: the one rule, for runs and evaluation."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--denoise must be in [0, 1], got {value:g}")
    return float(value)


@dataclass(frozen=True)
class JobConfig:
    """One upscaling run; the resolved copy is written to OUT/runs/<run_id>.json."""

    sources: tuple[str, ...]
    """Directories, globs, fsspec URIs or one manifest file (.parquet/.csv/.jsonl)."""
    output: str
    """Output root (fsspec URI); images go to OUT/images, stats to OUT/stats."""
    model: str | None = None
    """`auto`, `clean`, a zoo name, `bicubic`, or a path/URI to a .keras/.onnx file; None (as
    `clean`) picks the zoo's default for the scale. The command line's default is `auto`."""
    scale: int | None = None
    """Upscaling factor; must match the model's. None: the model's own (a model file's, as its
    probe measured; the zoo's default x2)."""
    denoise: float | None = None
    """How hard a model shipped as a mild/strong pair (`real`) cleans, 0 to 1; None: the
    model's default. Other models refuse it."""
    outscale: float | None = None
    """Output size as a factor of the input (any F >= 1, e.g. 1.5 or 8); None: the model's scale."""
    width: int | None = None
    """Output width in px (the height keeps the aspect unless --height is given too)."""
    height: int | None = None
    """Output height in px (the width keeps the aspect unless --width is given too)."""
    fit: str | None = None
    """WxH: the largest output with the input's aspect that fits inside W x H px."""
    tile_size: int | None = None
    """Input-pixel side of the fixed square tile the model sees; None: two tiles, a 128 px and
    a 256 px core plus the overlap on each side, each image taking the cheaper one."""
    tile_overlap: int | None = None
    """Context margin per tile side in input pixels; None uses the model's receptive-field radius."""
    whole_image: bool = False
    """Run each image through the model in one piece (mirror-padded by the overlap): no seams
    at all, for images that fit the device's memory; tiles otherwise."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Tiles per model call."""
    images_per_call: int | None = None
    """Images per actor call; their tiles share model batches. None: from a sample of the
    images' sizes, about PIXELS_PER_CALL input pixels a call, 1 to 8 images."""
    format: str = "keep"
    """Output format: keep (the input's where writable, else PNG), png, webp, jpeg or tiff."""
    quality: int = 95
    """Quality for the lossy formats (jpeg, webp)."""
    png_compress_level: int = 1
    """zlib level for PNG output; 1 is several times faster than 6 for a few % more bytes."""
    actors: tuple[int, int] | None = None
    """Actor pool size (min, max); None sizes it to the cluster leaving CPUs for I/O tasks."""
    gpus_per_actor: float = 0.0
    """Ray GPU request per actor (fractional allowed)."""
    cpus_per_actor: float = 1.0
    """Ray CPU request per actor."""
    arrangement: str = "auto"
    """fused (decode, encode, write and metrics in the model actor), staged (as separate Ray Data
    CPU stages on any node), or auto: staged when the actors take GPUs, else fused."""
    executor: str = "auto"
    """ray, local (every step in this process, no Ray), or auto: local when the run is local
    (no --address), its images fit one actor call and the arrangement is fused."""
    tf_threads: int = 0
    """TensorFlow threads per actor; 0: local Ray splits this machine's cores between actors,
    a cluster uses max(1, round(cpus_per_actor))."""
    address: str | None = None
    """Ray address (`auto`, ray://HOST:10001); None starts or joins a local Ray."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Input pixel limit: larger tiled/stripped TIFFs are streamed in bounded memory to a
    tiled BigTIFF; larger images of other formats fail as too_many_pixels."""
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    """Output pixel limit per image (streamed or not); an image whose output would be larger
    fails as too_many_pixels."""
    alpha: str = "model"
    """How an alpha channel is upscaled: `model` (as a grey image) or `bicubic`."""
    metrics: tuple[str, ...] = ()
    """Extra per-image metrics: `niqe` (no-reference naturalness of the output and of bicubic;
    about a quarter of the default model's time on a CPU)."""
    self_ensemble: bool = False
    """Average the model over the 8 flips/rotations of each tile: a little more PSNR for 8x the model time."""
    precision: str = "float32"
    """Model arithmetic: float32, or bfloat16 convolutions (faster on GPUs and on CPUs with
    AMX/AVX512-BF16, at a measured PSNR cost; the README gives both)."""
    provenance: str = "xmp"
    """What each output says about its making: `xmp` (Digital Source Type, source, model, run;
    docs/formats.md "Provenance") or `none`. Not in the reuse key: it changes no pixel."""
    provenance_source: str = "uri"
    """How the XMP names the source: `uri` (its URI and SHA-256) or `hash` (SHA-256 only, for
    private paths)."""
    c2pa_sign: str | None = None
    """CERT,KEY: PEM certificate chain and private key (paths or URIs) to add a signed C2PA
    manifest (the `c2pa` extra) to each output beside its XMP; None: no C2PA."""
    retries: int = 3
    """Retries, with exponential backoff, of transient storage errors."""
    read_timeout_s: float | None = 60.0
    """Seconds an http(s)/s3 read may wait for the server, per attempt (connect and each read)."""
    run_id: str | None = None
    """Run identifier; None makes one from the UTC time."""
    progress_s: float = 10.0
    """Seconds between progress lines."""
    force: bool = False
    """Reprocess every image, even those an earlier run finished with the same settings."""
    lock: bool = False
    """Hold OUT/nightly.lock for the run, so overlapping scheduled runs never both run."""
    stats_flush_s: float = 30.0
    """Seconds between stats flushes; a killed driver loses at most this much bookkeeping."""
    dry_run: bool = False
    """Plan only: list, compare with earlier runs, read a sample of headers and tell what would
    run (and why), what would be skipped, how many megapixels and about how long; write
    nothing, submit nothing, start no Ray."""
    plan_manifest: str | None = None
    """With dry_run: write the rows that would run to this manifest file (.parquet, .csv or
    .jsonl, by its name; with a `reason` column), which `sr-batch run` takes as a SOURCE."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("give at least one SOURCE (directory, glob, URI or manifest file)")
        if self.scale is not None and self.scale not in SCALES:
            raise ConfigError(f"--scale must be one of {SCALES}, got {self.scale}")
        if self.format not in FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        object.__setattr__(self, "metrics", tuple(self.metrics))
        for metric in self.metrics:
            if metric not in OPTIONAL_METRICS:
                raise ConfigError(f"--metrics takes {', '.join(OPTIONAL_METRICS)}, got {metric!r}")
        if self.arrangement not in ARRANGEMENTS:
            raise ConfigError(f"--arrangement must be one of {', '.join(ARRANGEMENTS)}, got {self.arrangement!r}")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.executor == "local" and (self.address is not None or self.staged):
            raise ConfigError("--executor local runs every step in this process: drop --address "
                              "and --arrangement staged (or --gpus-per-actor)")
        if self.provenance not in PROVENANCE_MODES:
            raise ConfigError(f"--provenance must be one of {', '.join(PROVENANCE_MODES)}, "
                              f"got {self.provenance!r}")
        if self.provenance_source not in PROVENANCE_SOURCES:
            raise ConfigError(f"--provenance-source must be one of {', '.join(PROVENANCE_SOURCES)}, "
                              f"got {self.provenance_source!r}")
        if self.c2pa_sign is not None:
            if len([part for part in self.c2pa_sign.split(",") if part.strip()]) != 2:
                raise ConfigError(f"--c2pa-sign takes CERT,KEY (two PEM files), got {self.c2pa_sign!r}")
            if self.provenance == "none":
                raise ConfigError("--c2pa-sign adds to the XMP provenance: drop --provenance none")
        if self.alpha not in ALPHA_MODES:
            raise ConfigError(f"--alpha must be one of {', '.join(ALPHA_MODES)}, got {self.alpha!r}")
        if self.tile_size is not None and not 8 <= self.tile_size <= MAX_TILE_SIZE:
            raise ConfigError(f"--tile-size must be 8 to {MAX_TILE_SIZE} px, got {self.tile_size}")
        if self.tile_overlap is not None and self.tile_size is not None:
            try:
                tile_core(self.tile_size, self.tile_overlap)
            except ValueError:
                raise ConfigError(f"--tile-size {self.tile_size} leaves no core with --tile-overlap "
                                  f"{self.tile_overlap}; need tile_size > 2 * tile_overlap") from None
        if self.tile_overlap is not None and not 0 <= self.tile_overlap <= MAX_TILE_OVERLAP:
            raise ConfigError(f"--tile-overlap must be 0 to {MAX_TILE_OVERLAP} px, got {self.tile_overlap}")
        if self.tf_threads < 0:
            raise ConfigError(f"--tf-threads must be >= 0 (0: automatic), got {self.tf_threads}")
        for name in ("stats_flush_s", "progress_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {value:g}")
        check_run_id(self.run_id)
        if self.denoise is not None:
            try:
                check_denoise(self.denoise)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        for name in ("batch_size", "images_per_call", "max_pixels", "max_output_pixels"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality must be in 1..100, got {self.quality}")
        if not 0 <= self.png_compress_level <= 9:
            raise ConfigError("--png-compress-level must be in 0..9")
        if self.gpus_per_actor < 0 or self.cpus_per_actor < 0:
            raise ConfigError("--gpus-per-actor and --cpus-per-actor must be >= 0")
        if self.gpus_per_actor == 0 and self.cpus_per_actor == 0:
            raise ConfigError("an actor needs some CPU or GPU: set --cpus-per-actor > 0")
        if self.read_timeout_s is not None and not (math.isfinite(self.read_timeout_s)
                                                    and self.read_timeout_s > 0):
            raise ConfigError("--read-timeout-s must be a number of seconds > 0")
        if self.retries < 0:
            raise ConfigError("--retries must be >= 0")
        if self.plan_manifest is not None:
            from sr_batch.manifest import MANIFEST_EXTENSIONS  # pyarrow: only when asked

            if not self.dry_run:
                raise ConfigError("--plan-manifest writes the plan of a dry run: add --dry-run")
            if not self.plan_manifest.lower().endswith(MANIFEST_EXTENSIONS):
                raise ConfigError(f"--plan-manifest must end in {', '.join(MANIFEST_EXTENSIONS)}, "
                                  f"got {self.plan_manifest!r}")
        object.__setattr__(self, "actors", parse_actors(self.actors))
        from sr_batch.sizing import check_reachable

        # Without --scale a model file's own scale is known only after its probe: bound by the
        # largest, and the plan checks again with the model's.
        check_reachable(self.output_size, self.scale or max(SCALES), SCALES)

    @property
    def output_size(self):
        """The output size options as one sizing.OutputSize."""
        from sr_batch.sizing import OutputSize, parse_fit

        return OutputSize(self.outscale, self.width, self.height, parse_fit(self.fit))

    def replace(self, **changes) -> "JobConfig":
        """Return a copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def staged(self) -> bool:
        """Decode and finish as CPU stages apart from the model actors."""
        return self.arrangement == "staged" or (self.arrangement == "auto" and self.gpus_per_actor > 0)

    @property
    def intra_op_threads(self) -> int:
        return self.tf_threads or max(1, round(self.cpus_per_actor))


def default_actor_count(cluster_cpus: float, cluster_gpus: float, cpus_per_actor: float,
                        gpus_per_actor: float) -> int:
    """Actors that fit while leaving at least one CPU free for Ray Data's read/write tasks.

    An actor pool that takes every CPU starves the other tasks and the job hangs
    (seen on 2-core machines), so one CPU is always kept back.
    """
    if gpus_per_actor > 0:
        by_gpu = int(cluster_gpus // gpus_per_actor)
        if by_gpu < 1:
            raise ConfigError(
                f"--gpus-per-actor {gpus_per_actor} but the cluster has {cluster_gpus:g} GPUs"
            )
    else:
        by_gpu = 1 << 30
    spare_cpus = max(0.0, cluster_cpus - 1.0)
    by_cpu = int(spare_cpus // cpus_per_actor) if cpus_per_actor > 0 else 1 << 30
    return max(1, min(by_gpu, by_cpu))


def local_cpu_count() -> int:
    return os.cpu_count() or 1
