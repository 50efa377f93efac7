"""The model zoo index: names -> shipped weights, and loading them safely.

TensorFlow-free at import: the Ray driver resolves models here, and only
`load_keras_model` (run inside the actors) imports Keras.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import posixpath
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sr_batch import storage
from sr_batch.config import PRECISIONS, check_denoise
from sr_batch.errors import (ConfigError, ImageError, ModelChecksumError, ModelError, ModelFormatError,
                             ModelNotFoundError, ModelScaleError)

MODELS_DIR = Path(__file__).resolve().parent
INDEX_PATH = MODELS_DIR / "index.json"
WEIGHTS_DIR = MODELS_DIR / "weights"
BICUBIC = "bicubic"
CLEAN = "clean"
"""`--model clean`: the zoo's default for the scale (the model for clean downscales)."""
# `--denoise` for models shipped as a mild/strong pair when none is given: halfway, the
# strength that did best on the mixed `realistic` preset (docs/models.md).
DEFAULT_DENOISE = 0.5
# Side of the zeros probe that measures a loaded model's scale: small enough to
# cost nothing, larger than any kernel so 'same' padding cannot change the size.
_SCALE_PROBE = 8


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about a model before (and after) loading it."""

    name: str
    """Zoo name (`subpixel`), `bicubic`, or the file name of a user-supplied model."""
    arch: str
    """Architecture: basic, residual, subpixel, bicubic, or `keras` / `onnx` for a user file."""
    scale: int | None
    """Upscaling factor; None for a user file until it is loaded."""
    channels: int | None
    """Input and output channels; None where any count works (bicubic) or not yet known."""
    uri: str | None
    """fsspec URI of the .keras file; None for bicubic."""
    sha256: str | None
    """Expected SHA-256 of the file (zoo models); None skips the check."""
    params: int | None
    """Parameter count; 0 for bicubic, None for a user file until it is loaded."""
    receptive_radius: int | None
    """Input pixels that can reach an output pixel; None for a user file (measure it)."""
    input_side: int | None = None
    """Side of the square input a fixed-shape (ONNX) model takes: every tile has it; None: any."""
    denoise_uri: str | None = None
    """For a model shipped as a pair (`real`): the strong-denoise file; `uri` is the mild one,
    and `--denoise S` interpolates their weights, (1 - S) * mild + S * strong."""
    denoise_sha256: str | None = None
    tiles_exactly: bool = True
    """The response vanishes within `receptive_radius`: tiles equal the whole image to float
    rounding. False (a deep model whose response only decays): `receptive_radius` is the
    overlap where it falls below 1e-3 of its peak, and neighbouring tiles are feathered."""
    seams: tuple[tuple[int, float, float], ...] = ()
    """Measured by the probe: (overlap, max, mean) |tiled - whole image| in 8-bit levels on
    the probe image, per overlap probed; empty for the zoo (exact by construction)."""
    response_decay: tuple[float, ...] = ()
    """The probe's impulse response per input px from the impulse, relative to its peak."""
    probe_s: float | None = None
    """Seconds the probe took when it ran (a cached probe keeps the first run's)."""

    def seam_at(self, overlap: int) -> tuple[float, float] | None:
        """(max, mean) levels the probe measured at this overlap; (0, 0) where tiles are exact."""
        if self.tiles_exactly and self.receptive_radius is not None and overlap >= self.receptive_radius:
            return 0.0, 0.0
        return next(((m, a) for o, m, a in self.seams if o == overlap), None)

    @property
    def is_bicubic(self) -> bool:
        return self.arch == BICUBIC

    @property
    def identity(self) -> str:
        """What the stats record as `model_sha256`: the file's SHA-256, or `bicubic`; for a pair,
        the SHA-256 of both files' hashes (the denoise strength is its own column)."""
        if self.denoise_sha256 is not None:
            return sha256_of(f"{self.sha256}+{self.denoise_sha256}".encode())
        return self.sha256 or self.name

    @property
    def has_denoise(self) -> bool:
        return self.denoise_uri is not None


def read_index(index_path: Path | str = INDEX_PATH) -> dict:
    """The zoo index as a dict; an absent file is an empty zoo."""
    try:
        with open(index_path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"models": [], "default": {}}


def _spec_from_entry(entry: dict) -> ModelSpec:
    pair = entry.get("denoise_file")
    return ModelSpec(
        name=entry["name"], arch=entry["arch"], scale=int(entry["scale"]),
        channels=int(entry["channels"]), uri=storage.to_uri(str(WEIGHTS_DIR / entry["file"])),
        sha256=entry["sha256"], params=int(entry["params"]),
        receptive_radius=int(entry["receptive_radius"]),
        denoise_uri=storage.to_uri(str(WEIGHTS_DIR / pair)) if pair else None,
        denoise_sha256=entry.get("denoise_sha256"),
    )


def list_models(index_path: Path | str = INDEX_PATH) -> list[ModelSpec]:
    """Every shipped model, one spec per (name, scale), sorted by name then scale."""
    entries = read_index(index_path)["models"]
    return sorted((_spec_from_entry(e) for e in entries), key=lambda s: (s.name, s.scale))


def bicubic_spec(scale: int) -> ModelSpec:
    """The no-network baseline: Pillow bicubic, which reads 2 input pixels either side."""
    return ModelSpec(name=BICUBIC, arch=BICUBIC, scale=scale, channels=None, uri=None,
                     sha256=None, params=0, receptive_radius=2)


def is_model_uri(name_or_uri: str) -> bool:
    """True when `--model` names a file rather than a zoo entry."""
    return "/" in name_or_uri or "://" in name_or_uri or name_or_uri.endswith((".keras", ".onnx"))


def resolve_model(name_or_uri: str | None, scale: int, index_path: Path | str = INDEX_PATH) -> ModelSpec:
    """Turn `--model` into a spec: None or `clean` -> the default for `scale`, a zoo name,
    bicubic, or a file.

    A file's scale, parameters and radius stay None until `load_keras_model`.
    """
    index = read_index(index_path)
    if name_or_uri is None or name_or_uri == CLEAN:
        name_or_uri = index.get("default", {}).get(str(scale))
        if name_or_uri is None:
            defaults = ", ".join(f"x{s}" for s in sorted(index.get("default", {}), key=int)) or "none"
            raise ModelNotFoundError(
                f"no default model for x{scale} (defaults exist for: {defaults}); "
                f"pass --model bicubic or a .keras file")
    if name_or_uri == BICUBIC:
        return bicubic_spec(scale)
    if name_or_uri.lower().endswith((".pth", ".pt", ".ckpt", ".safetensors")):
        # Converted once, checked, then run: the job's nodes need no PyTorch (gigabytes).
        stem = posixpath.splitext(posixpath.basename(name_or_uri))[0]
        raise ConfigError(f"--model {name_or_uri} is a PyTorch file: convert it once with "
                          f"`sr-batch convert {name_or_uri} -o {stem}.onnx`, then pass {stem}.onnx")
    if is_model_uri(name_or_uri):
        uri = storage.to_uri(name_or_uri)
        arch = "onnx" if uri.lower().endswith(".onnx") else "keras"
        return ModelSpec(name=posixpath.basename(uri.rstrip("/")), arch=arch, scale=None,
                         channels=None, uri=uri, sha256=None, params=None, receptive_radius=None)
    entries = [e for e in index["models"] if e["name"] == name_or_uri]
    if not entries:
        names = sorted({e["name"] for e in index["models"]} | {BICUBIC})
        raise ModelNotFoundError(
            f"unknown model {name_or_uri!r}; choose one of {', '.join(names)} or a path to a .keras or .onnx file")
    for entry in entries:
        if int(entry["scale"]) == scale:
            return _spec_from_entry(entry)
    scales = ", ".join(f"x{s}" for s in sorted(int(e["scale"]) for e in entries))
    raise ModelNotFoundError(f"model {name_or_uri!r} has no x{scale} weights; available scales: {scales}")


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_keras_model(spec: ModelSpec, scale: int | None = None, denoise: float | None = None):
    """Fetch, verify and load a spec's .keras file with safe_mode=True.

    The file is copied to a local temporary file first (Keras reads local paths
    only). Raises ModelChecksumError when the bytes do not match `spec.sha256`,
    and ModelScaleError when the model does not upscale by `scale` (default:
    `spec.scale`; None accepts any). A pair (`spec.denoise_uri`) loads both files
    and interpolates their weights at `denoise` (default DEFAULT_DENOISE), as
    Real-ESRGAN's network interpolation does: both were fine-tuned from one parent.
    """
    if spec.uri is None:
        raise ModelError(f"model {spec.name!r} has no weights file to load")
    model = _load_verified(spec.uri, spec.sha256)
    if spec.denoise_uri is not None:
        strength = check_denoise(DEFAULT_DENOISE if denoise is None else denoise)
        strong = _load_verified(spec.denoise_uri, spec.denoise_sha256)
        mild_weights, strong_weights = model.get_weights(), strong.get_weights()
        if [w.shape for w in mild_weights] != [w.shape for w in strong_weights]:
            raise ModelError(f"model {spec.name!r}: {storage.display(spec.uri)} and "
                             f"{storage.display(spec.denoise_uri)} differ in shape")
        model.set_weights([(1.0 - strength) * a + strength * b
                           for a, b in zip(mild_weights, strong_weights)])

    expected = spec.scale if scale is None else scale
    try:
        measured = measure_scale(model, storage.display(spec.uri))
    except (ModelScaleError, ModelFormatError):
        raise
    except Exception as exc:  # noqa: BLE001 - a model that loads but cannot run on an image
        raise ModelError(f"cannot run model {storage.display(spec.uri)}: it fails on a "
                         f"{_SCALE_PROBE}x{_SCALE_PROBE} test image ({_first_line(exc)}); "
                         "sr-batch needs one image in, one out") from exc
    if expected is not None and measured != expected:
        raise ModelScaleError(f"model {spec.name!r} upscales by x{measured}, but x{expected} was requested")
    return model


def read_verified(uri: str, sha256: str | None) -> bytes:
    """A model file's bytes, checked against `sha256` where one is pinned (the zoo's index, or
    the hash the run's probe measured)."""
    try:
        data = storage.read_bytes(uri)
    except ImageError as exc:  # storage reports missing/unreadable files as image errors
        raise ModelNotFoundError(f"cannot read model {storage.display(uri)}: {exc}") from None
    if sha256 is not None and sha256_of(data) != sha256:
        raise ModelChecksumError(
            f"model {storage.display(uri)} has SHA-256 {sha256_of(data)}, {sha256} was expected; "
            f"the file is corrupt or was replaced")
    return data


def _load_verified(uri: str, sha256: str | None):
    """One .keras file: read, check its SHA-256, load with safe_mode=True; refusals in one line."""
    shown = storage.display(uri)
    data = read_verified(uri, sha256)
    not_keras = _not_a_keras_archive(data)
    if not_keras:
        raise ModelError(f"cannot load model {shown}: {not_keras}")

    import keras

    import sr_batch.models.layers  # noqa: F401 - registers DepthToSpace for deserialisation

    handle, path = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(data)
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as exc:  # noqa: BLE001 - any failure here means "not a loadable model"
            reason = _refusal(data, exc).replace(path, shown)
            raise ModelError(f"cannot load model {shown}: {reason}") from exc
    finally:
        os.unlink(path)
    # Weights stored in float16 (half the file) run in float32, like every other model.
    return with_dtype(model, "float32") if stored_in_float16(model) else model


# Layers that run code or files from outside the .keras file; safe_mode never loads them.
_REFUSED_LAYERS = {
    "Lambda": "a Lambda layer (Python code inside the file)",
    "TFSMLayer": "a TFSMLayer (it loads an external TensorFlow SavedModel)",
}


def _not_a_keras_archive(data: bytes) -> str | None:
    """Why `data` cannot be a .keras file (a zip archive with config.json), or None."""
    if not data:
        return "the file is empty"
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return f"not a .keras file ({len(data)} bytes that are not a zip archive)"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            if "config.json" not in archive.namelist():
                return "not a .keras file (a zip archive without config.json)"
            json.loads(archive.read("config.json"))
    except json.JSONDecodeError as exc:
        return f"not a .keras file (its config.json is not JSON: {_first_line(exc)})"
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"not a .keras file (a broken zip archive: {_first_line(exc)})"
    return None


def _refusal(data: bytes, exc: Exception) -> str:
    """One line on why Keras refused the archive: a refused layer by name, else Keras's words."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            config = json.loads(archive.read("config.json"))
        classes = _layer_classes(config)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError):
        classes = set()
    refused = [what for name, what in _REFUSED_LAYERS.items() if name in classes]
    if refused:
        return (f"it contains {' and '.join(refused)}, which loading with safe_mode=True refuses; "
                "rebuild the model from layers registered with "
                "@keras.saving.register_keras_serializable()")
    return _first_line(exc)


def _layer_classes(config) -> set[str]:
    """Every `class_name` anywhere in a Keras config tree."""
    found: set[str] = set()
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str):
                found.add(node["class_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def _first_line(exc: BaseException) -> str:
    """An exception as one short line: its first sentence-ish, without a dumped config."""
    text = " ".join(str(exc).split()).split(" Full object config:")[0]
    text = text or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# Layers kept in float32 under bfloat16: the bicubic skip/upsample, which carries the
# image itself, and whatever makes the output (its 8-bit mantissa would be about one
# 8-bit level at white).
_FLOAT32_LAYERS = ("UpSampling2D", "Resizing")


def with_precision(model, precision: str):
    """The model itself for float32; for bfloat16 a copy with the same weights whose
    convolutions compute in bfloat16 (Keras' mixed_bfloat16 policy: float32 weights,
    bfloat16 arithmetic), with the image paths of `_FLOAT32_LAYERS` and the output
    layer in float32. Tensor cores and AMX run bfloat16 2-5x faster than float32."""
    if precision == "float32":
        return model
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    import keras

    output_layers = {t._keras_history.operation.name for t in model.outputs}

    def clone(layer):
        config = layer.get_config()
        if type(layer).__name__ not in _FLOAT32_LAYERS and layer.name not in output_layers:
            config["dtype"] = "mixed_bfloat16"
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def with_dtype(model, dtype: str):
    """A copy of `model` whose every layer holds and computes in `dtype` (float16 to store a
    file at half the size, float32 to run one that was stored so)."""
    import keras

    def clone(layer):
        return type(layer).from_config({**layer.get_config(), "dtype": dtype})

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights([np.asarray(w).astype(dtype) for w in model.get_weights()])
    return copy


def stored_in_float16(model) -> bool:
    return any(np.asarray(w).dtype == np.float16 for w in model.weights)


def check_output_channels(channels: int, name: str) -> None:
    """ModelFormatError unless the model returns RGB (3 channels), whatever its file format: a
    1-channel output would write grey images of colour inputs."""
    if channels != 3:
        raise ModelFormatError(f"{name} returns {channels} channels; an RGB upscaler returns 3")


def measure_scale(model, name: str = "the model") -> int:
    """The model's upscaling factor, from one run on a small zeros batch; its output must be RGB."""
    channels = model.input_shape[-1] or 3
    probe = np.zeros((1, _SCALE_PROBE, _SCALE_PROBE, channels), dtype=np.float32)
    shape = tuple(model(probe, training=False).shape)
    check_output_channels(shape[-1], name)
    height, width = shape[1], shape[2]
    if height != width or height % _SCALE_PROBE:
        raise ModelScaleError(
            f"model maps {_SCALE_PROBE}x{_SCALE_PROBE} input to {width}x{height}: not an integer upscale")
    return height // _SCALE_PROBE


def complete_spec(spec: ModelSpec, model) -> ModelSpec:
    """The spec with what loading revealed: scale, channels and parameter count."""
    return dataclasses.replace(spec, scale=measure_scale(model), channels=model.input_shape[-1],
                               params=int(model.count_params()))
