"""Domain errors. Each carries a snake_case `error_type` that lands in the stats.

Per-image errors become a `failed` row; job-level errors stop the run before
any image is processed. Only the CLI turns them into exit codes.
"""


class SrBatchError(Exception):
    """Base class for every error sr-batch raises on purpose."""

    error_type = "error"


# --- per-image errors: one failed stats row each -------------------------------------


class ImageError(SrBatchError):
    """A problem with one image; the job goes on with the others."""


class MissingFileError(ImageError):
    error_type = "missing_file"


class EmptyFileError(ImageError):
    error_type = "empty_file"


class NotAnImageError(ImageError):
    error_type = "not_an_image"


class CorruptImageError(ImageError):
    error_type = "corrupt_image"


class TooManyPixelsError(ImageError):
    error_type = "too_many_pixels"


class UnsupportedModeError(ImageError):
    error_type = "unsupported_mode"


class PathEscapeError(ImageError):
    error_type = "path_escape"


class ReadError(ImageError):
    error_type = "read_error"


class WriteError(ImageError):
    error_type = "write_error"


class ProvenanceError(ImageError):
    """--c2pa-sign: the manifest could not be signed, or does not validate once written."""
    error_type = "provenance_error"


class ReferenceImageError(ImageError):
    error_type = "reference_error"


class ModelRunError(ImageError):
    """The model failed on this image's tiles (raised where the error cannot be a row directly)."""

    error_type = "model_error"


# --- job-level errors: the run stops with one clear line ------------------------------


class ConfigError(SrBatchError):
    error_type = "config_error"


class StorageError(SrBatchError):
    """The output cannot be written at all (no such bucket, access denied)."""

    error_type = "storage_error"


class ManifestError(SrBatchError):
    error_type = "manifest_error"


class ModelError(SrBatchError):
    error_type = "model_error"


class ModelNotFoundError(ModelError):
    error_type = "model_not_found"


class ModelChecksumError(ModelError):
    error_type = "model_checksum"


class ModelScaleError(ModelError):
    error_type = "model_scale"


class ModelFormatError(ModelError):
    """The file is no model sr-batch can run: malformed, or its input is not an image batch."""

    error_type = "model_format"


class ModelExportError(ModelError):
    """A model cannot be exported, or its export does not reproduce it."""

    error_type = "model_export"


class ReportError(SrBatchError):
    """A report cannot be made: no stats, an unknown run or metric, bad SQL."""

    error_type = "report_error"
