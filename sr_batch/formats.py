"""Output formats: which format each output is written in, and the names that allow it.

The planner reserves, for each row, the extensions its output may take (`output_extensions`);
the writer picks the format the decoded image allows (`output_format`) and takes the reserved
name of that format (`output_uri_for`). These three rules live here only.
"""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from sr_batch import storage
from sr_batch.errors import UnsupportedModeError

if TYPE_CHECKING:
    from sr_batch.decode import DecodedImage

# The extension each input extension keeps under --format keep; anything else becomes PNG.
_KEEP_EXTENSION = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp",
                   ".tif": "tif", ".tiff": "tif"}
FORMAT_EXTENSION = {"png": "png", "jpeg": "jpg", "webp": "webp", "tiff": "tif"}
EXTENSION_FORMAT = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp", "tif": "tiff",
                    "tiff": "tiff"}

# Decoders whose format sr-batch also writes (--format keep writes the others as PNG).
_WRITABLE = frozenset({"PNG", "JPEG", "WEBP", "TIFF"})
# Formats that hold an alpha channel.
_KEEPS_ALPHA = {"png", "webp", "tiff"}


def output_extensions(requested: str, source_name: str) -> tuple[str, ...]:
    """The extensions a row may be written with, the planned one first.

    The others are where the writer must go when the planned format cannot hold
    the image: PNG for alpha in JPEG and for 16 bits in JPEG or WebP, TIFF for a
    TIFF input streamed above --max-pixels.
    """
    source_ext = posixpath.splitext(source_name)[1].lower()
    primary = (_KEEP_EXTENSION.get(source_ext, "png") if requested == "keep"
               else FORMAT_EXTENSION[requested])
    others = []
    if primary in ("jpg", "webp"):
        others.append("png")
    if source_ext in (".tif", ".tiff") and primary != "tif":
        others.append("tif")
    return (primary, *others)


def output_format(decoded: "DecodedImage", planned: str, requested: str = "keep") -> tuple[str, str | None]:
    """(format, note) for the output: the planned format (from the output's name), unless it
    cannot hold the image; alpha and 16 bits force PNG."""
    fmt, note = planned, None
    if requested == "keep" and decoded.format not in _WRITABLE:
        note = f"{decoded.format} not writable: {fmt.upper()} output"
    if decoded.alpha is not None and fmt not in _KEEPS_ALPHA:
        note = f"alpha channel: {fmt} cannot keep it, wrote PNG"
        fmt = "png"
    if decoded.bit_depth == 16 and fmt in ("jpeg", "webp"):
        note = f"16-bit input: {fmt} is 8-bit only, wrote PNG"
        fmt = "png"
    return fmt, note


def output_uri_for(row: dict, fmt: str, note: str | None) -> str:
    """The planned name for the format written; a format the plan did not reserve a name
    for (an output_uri whose extension cannot hold the image) fails the image."""
    ext = FORMAT_EXTENSION[fmt]
    if ext in row["output_exts"]:
        return row["output_uris"][row["output_exts"].index(ext)]
    raise UnsupportedModeError(f"output_uri {storage.display(row['output_uris'][0])} cannot be "
                               f"written as {fmt} ({note}); give it a .{ext} name")
