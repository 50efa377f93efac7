"""The per-image stats table: its schema, and writing it as a hive-partitioned Parquet dataset.

OUT/stats/run_id=<id>/part-<n>.parquet holds one row per manifest row. The
`run_id` column comes from the directory name (hive partitioning), so it is
not stored inside the files.
"""

from __future__ import annotations

import math
import contextlib
import io
import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from sr_batch import storage
from sr_batch.layout import OutLayout

STATUS_OK, STATUS_FAILED, STATUS_SKIPPED = "ok", "failed", "skipped"

# (name, type, unit/meaning). docs/stats.md's table is generated from this (schema_markdown).
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("image_id", pa.string(), "stable id of the image (hash of its URI, or the manifest's)"),
    ("source_uri", pa.string(), "input image URI"),
    ("output_uri", pa.string(), "upscaled image URI (null unless ok)"),
    ("reference_uri", pa.string(), "ground-truth HR image URI, when the manifest gives one"),
    ("status", pa.string(), "ok, failed or skipped"),
    ("error_type", pa.string(), "snake_case error class when failed (e.g. corrupt_image)"),
    ("error_message", pa.string(), "one-line human-readable error"),
    ("notes", pa.string(), "conversions applied, '; '-separated (palette expanded, format forced, ...)"),
    ("width", pa.int32(), "input width, px (after EXIF orientation)"),
    ("height", pa.int32(), "input height, px"),
    ("channels", pa.int32(), "input channels incl. alpha (1-4)"),
    ("bit_depth", pa.int32(), "bits per channel of the input (8 or 16)"),
    ("out_width", pa.int32(), "output width, px"),
    ("out_height", pa.int32(), "output height, px"),
    ("scale", pa.int32(), "the model's upscaling factor (of its first pass)"),
    ("passes", pa.int32(), "model passes run (2 for x8 as x4 then x2); 0 for failed and skipped rows"),
    ("outscale", pa.float64(), "output width / input width: the final factor after the resize to the asked size"),
    ("output_size", pa.string(), "--outscale/--width/--height/--fit as asked (outscale=1.5, size=3840x*, fit=WxH); null: the model's scale"),
    ("format", pa.string(), "output format (png, jpeg, webp, tiff)"),
    ("requested_format", pa.string(), "--format of the run (keep, png, ...); part of the settings"),
    ("self_ensemble", pa.bool_(), "averaged over the 8 flips/rotations (--self-ensemble)"),
    ("precision", pa.string(), "model arithmetic, float32 or bfloat16 (--precision); bicubic ignores it"),
    ("denoise", pa.float64(), "--denoise strength, 0-1, of a model shipped as a mild/strong pair (real); null for others"),
    ("alpha_mode", pa.string(), "how the alpha channel was upscaled (model, bicubic); null without alpha"),
    ("model", pa.string(), "zoo model name, `bicubic`, or the URI of the model file given to --model"),
    ("model_sha256", pa.string(), "SHA-256 of the model file ('bicubic' for the baseline; under --model auto, of the rules and every candidate)"),
    ("route", pa.string(), "--model auto: why this image got its model (e.g. 'jpeg q45', 'noise 8.1', 'clean'); null otherwise"),
    ("jpeg_quality_est", pa.float64(), "--model auto: the JPEG quality (IJG 1-100) read from the file's quantization tables; null if not a JPEG"),
    ("noise_sigma_est", pa.float64(), "--model auto: estimated noise sigma per channel, 8-bit levels"),
    ("tile_size", pa.int32(), "side of the tiles this image ran in, input px (streamed: the largest)"),
    ("tile_overlap", pa.int32(), "context margin per tile side, input px"),
    ("n_tiles", pa.int32(), "tiles run through the model for this image"),
    ("seam_max_levels", pa.float64(), "what tiling costs: largest |tiled - whole-image output|, 8-bit levels, measured by the model file's probe on its probe image at this overlap; 0 for exact tiling (overlap >= the model's radius) and --whole-image; null where not measured"),
    ("seam_mean_levels", pa.float64(), "the same, mean over the probe image (its seams are denser than a run's: an upper bound)"),
    ("bytes_in", pa.int64(), "input file size, bytes"),
    ("bytes_out", pa.int64(), "output file size, bytes"),
    ("source_sha256", pa.string(), "SHA-256 of the input file's bytes (as the output's XMP names it)"),
    ("output_sha256", pa.string(), "SHA-256 of the output file's bytes, as written: `sr-batch provenance FILE --out OUT` matches a file to its row"),
    ("provenance", pa.string(), "what the output says about its making: xmp (docs/formats.md, Provenance), c2pa (XMP and a signed C2PA manifest, --c2pa-sign) or none (--provenance none)"),
    ("source_mtime", pa.timestamp("us", tz="UTC"), "input modification time from the manifest"),
    ("source_etag", pa.string(), "input ETag from the manifest (object stores)"),
    ("decode_s", pa.float64(), "read + decode time, s"),
    ("infer_s", pa.float64(), "model time, s (this image's share of its packed batches)"),
    ("encode_s", pa.float64(), "encode + write time, s"),
    ("total_s", pa.float64(), "wall time spent on this image, s"),
    ("setup_s", pa.float64(), "start-up of the actor that made this row (imports, first model load), s: on the first row each actor returns, null on the others"),
    ("worker", pa.string(), "host:pid of the actor, with its CUDA_VISIBLE_DEVICES"),
    ("finished_at", pa.timestamp("us", tz="UTC"), "when the row was made"),
    ("psnr_y_consistency", pa.float64(), "dB: Y-PSNR of bicubic-downscaled output vs input"),
    ("sharpness_ratio", pa.float64(), "gradient energy of output / of bicubic upscale of input"),
    ("niqe", pa.float64(), "--metrics niqe: NIQE of the output, lower is more natural (not comparable with published NIQE values)"),
    ("niqe_bicubic", pa.float64(), "--metrics niqe: NIQE of the bicubic upscale of the input to the output's size"),
    ("psnr_y", pa.float64(), "dB vs reference: BT.601 Y, border=scale (null without reference)"),
    ("ssim_y", pa.float64(), "SSIM vs reference on Y, 11x11 Gaussian sigma 1.5, border=scale"),
    ("psnr_y_bicubic", pa.float64(), "dB, bicubic upscale of the input vs reference, same pixels"),
    ("ssim_y_bicubic", pa.float64(), "SSIM, bicubic upscale of the input vs reference, same pixels"),
]

SCHEMA = pa.schema([(name, dtype) for name, dtype, _ in COLUMNS])
"""Schema of the stored files (run_id is the hive partition)."""


def nullable(value: float | None) -> float | None:
    """A measured value as stored: NaN (undefined, e.g. the sharpness of a flat image) becomes
    null; inf is kept."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def schema_markdown() -> str:
    """The stats schema as a Markdown table, run_id first: the table in docs/stats.md."""
    rows = [("run_id", "string (hive partition)", "the run that wrote the row (`OUT/stats/run_id=<id>/`)"),
            *((name, str(dtype), meaning) for name, dtype, meaning in COLUMNS)]
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for name, dtype, meaning in rows:
        cell = meaning.replace("|", r"\|")  # a bar would end the Markdown cell
        lines.append(f"| `{name}` | {dtype} | {cell} |")
    return "\n".join(lines) + "\n"


def make_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts, missing keys are null) as a table with SCHEMA."""
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def write_part(output: OutLayout | str, run_id: str, table: pa.Table, seq: int, retries: int = 3) -> str:
    """Write one Parquet part file of a run (under OUT, a layout or a URI) atomically; return its URI."""
    layout = output if isinstance(output, OutLayout) else OutLayout.of(output)
    buffer = io.BytesIO()
    pq.write_table(table.cast(SCHEMA), buffer, compression="zstd")
    uri = storage.join(layout.stats_run(run_id), f"part-{seq:05d}-{uuid.uuid4().hex[:8]}.parquet")
    storage.write_bytes_atomic(uri, buffer.getvalue(), retries=retries)
    return uri


def check_writable(layout: OutLayout, run_id: str, retries: int = 3) -> None:
    """Write and delete a small file in the run's stats folder: a WriteError here, before any
    image runs, rather than after the first images are written with no row to say so."""
    uri = storage.join(layout.stats_run(run_id), f".write-check-{uuid.uuid4().hex[:8]}")
    storage.write_bytes_atomic(uri, b"", retries=retries)
    fs, path = storage.get_fs(uri)
    with contextlib.suppress(OSError):  # a store that lets us write but not delete: harmless
        fs.rm_file(path)
    if storage.is_local(fs):  # leave no empty folder: the first part makes it again
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


# The stats parts a run writes (write_part); anything else under OUT/stats is not ours to read.
PART_GLOB = "run_id=*/part-*.parquet"


def part_files(output: OutLayout | str) -> tuple[object, str, list[str]]:
    """(filesystem, OUT/stats path, every stats part under it, sorted): only the files
    `write_part` makes, so a stray file under OUT/stats cannot break a run or a report."""
    layout = output if isinstance(output, OutLayout) else OutLayout.of(output)
    fs, path = storage.get_fs(layout.stats)
    path = path.rstrip("/")
    try:
        files = sorted(fs.glob(f"{path}/{PART_GLOB}"))
    except FileNotFoundError:
        files = []
    return fs, path, files


def dataset(output: OutLayout | str):
    """The stats parts as one pyarrow dataset with every column of SCHEMA (columns an older
    part lacks read as nulls) and the hive run_id; None when there are none."""
    import pyarrow.dataset as ds

    fs, path, files = part_files(output)
    if not files:
        return None
    return ds.dataset(files, filesystem=fs, format="parquet",
                      schema=pa.schema([*SCHEMA, pa.field("run_id", pa.string())]),
                      partitioning=ds.partitioning(pa.schema([("run_id", pa.string())]), flavor="hive"),
                      partition_base_dir=path)


def read_stats(output: str, run_id: str | None = None) -> pa.Table:
    """All stats rows under OUT/stats (or one run's), with the run_id column."""
    import pyarrow.dataset as ds

    parts = dataset(output)
    if parts is None:
        return pa.schema([*SCHEMA, ("run_id", pa.string())]).empty_table()
    return parts.to_table(filter=(ds.field("run_id") == run_id) if run_id else None)
