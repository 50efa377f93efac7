"""Keras models out as ONNX (`sr-batch export`), and the check every export must pass.

Export (`export_model`) goes through Keras 3's own `model.export(format="onnx")`
(tf2onnx underneath) with dynamic batch, height and width, and writes the file
only when ONNX Runtime reproduces Keras on a check image within one 8-bit level
(`ExportCheck`, which `convert` holds PyTorch exports to as well).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass

import numpy as np

from sr_batch import storage
from sr_batch.errors import ModelExportError
from sr_batch.models import registry
from sr_batch.models.onnx import make_check_image, open_session, read_layout, run_nhwc
from sr_batch.models.registry import ModelSpec
from sr_batch.upscaler import to_integer

# An export may differ from Keras by float rounding only: at most one 8-bit level
# (two float32 results a hair either side of a .5 boundary round one level apart).
MAX_LEVELS = 1
# Names the exported graph gives its input and output (tf2onnx's would be `Identity:0`).
INPUT_NAME, OUTPUT_NAME = "lr", "sr"
_INSTALL_HINT = "pip install 'sr-batch[onnx]'"


@dataclass(frozen=True)
class ExportCheck:
    """How closely ONNX Runtime reproduced Keras on the check image."""

    levels: int
    """Largest difference of the two outputs, each clipped and rounded to 8 bits."""
    max_abs: float
    """Largest difference of the two float outputs."""
    height: int
    width: int

    @property
    def ok(self) -> bool:
        return self.levels <= MAX_LEVELS

    def line(self) -> str:
        verdict = "ok" if self.ok else "FAILED"
        return (f"check {verdict}: ONNX Runtime vs Keras on a {self.width}x{self.height} image: "
                f"{self.levels} 8-bit level(s) apart at most (allowed {MAX_LEVELS}), "
                f"max |difference| {self.max_abs:.1e}")


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote."""

    uri: str
    name: str
    scale: int
    bytes: int
    sha256: str
    opset: int
    check: ExportCheck

    def summary_line(self) -> str:
        return (f"wrote {self.uri}: {self.name} x{self.scale} as ONNX (opset {self.opset}, "
                f"{self.bytes / 1e6:.2f} MB, SHA-256 {self.sha256})")


def _upsampling_layer_class():
    """A Keras layer that computes UpSampling2D's resize with TensorFlow directly.

    Keras 3.15's `ops.image.resize` checks `size[0] <= 0` in Python, which fails
    when the size is a symbolic tensor, i.e. for every UpSampling2D with a
    bilinear/bicubic interpolation traced at dynamic height and width
    (keras-team/keras PR 22079). This layer runs the same op Keras' TensorFlow
    backend runs there: `tf.image.resize(x, (h * sy, w * sx), method)`, no antialias.
    """
    import keras
    import tensorflow as tf

    class TracedUpSampling2D(keras.layers.Layer):
        def __init__(self, size, interpolation, **kwargs):
            super().__init__(**kwargs)
            self.size, self.interpolation = tuple(size), interpolation

        def call(self, inputs):
            shape = tf.shape(inputs)
            target = tf.stack([shape[1] * self.size[0], shape[2] * self.size[1]])
            return tf.image.resize(inputs, target, method=self.interpolation)

    return TracedUpSampling2D


def traceable_copy(model):
    """The model itself, or where it has interpolating UpSampling2D layers (channels_last), a
    copy with the same weights whose resizes trace at dynamic height and width."""
    import keras

    def needs_swap(layer) -> bool:
        return (isinstance(layer, keras.layers.UpSampling2D) and layer.interpolation != "nearest"
                and layer.data_format == "channels_last")

    if not any(needs_swap(layer) for layer in model.layers):
        return model
    layer_class = _upsampling_layer_class()

    def clone(layer):
        if needs_swap(layer):
            return layer_class(layer.size, layer.interpolation, name=layer.name)
        return type(layer).from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def convert_keras(model, opset: int | None = None, name: str | None = None) -> bytes:
    """The Keras model as ONNX bytes, input `lr` (N, H, W, C) and output `sr`, all dynamic."""
    import tensorflow as tf

    name = name or model.name
    channels = model.input_shape[-1]
    signature = [tf.TensorSpec((None, None, None, channels), tf.float32, name=INPUT_NAME)]
    errors = _ErrorLog()
    tf2onnx_log = logging.getLogger("tf2onnx")
    # tf2onnx logs an op it cannot convert and writes the graph anyway: collect those
    # lines for the one-line error instead of letting them reach the user's terminal.
    tf2onnx_log.addHandler(errors)
    propagate, tf2onnx_log.propagate = tf2onnx_log.propagate, False
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf2onnx's numpy-2 shims warn on every export
                traceable_copy(model).export(path, format="onnx", verbose=False,
                                             input_signature=signature, opset_version=opset)
        except ImportError as exc:
            raise ModelExportError(f"ONNX export needs tf2onnx and onnx ({exc}): {_INSTALL_HINT}") from None
        except Exception as exc:  # noqa: BLE001 - tracing or tf2onnx: either way no export
            raise ModelExportError(f"cannot convert {name} to ONNX: {_first_line(exc)}") from None
        finally:
            tf2onnx_log.removeHandler(errors)
            tf2onnx_log.propagate = propagate
        if errors.messages:
            raise ModelExportError(f"cannot convert {name} to ONNX: {errors.messages[0]}")
        with open(path, "rb") as handle:
            return _name_graph(handle.read())


class _ErrorLog(logging.Handler):
    """Keeps the messages of ERROR log records."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _name_graph(data: bytes) -> bytes:
    """Give the graph readable names: output `sr` (not tf2onnx's `Identity:0`), dims
    batch/height/width (not `unk__172`), so tools and users see what the model takes."""
    import onnx

    model = onnx.load_model_from_string(data)
    graph = model.graph
    old = graph.output[0].name
    for node in graph.node:
        node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
    graph.output[0].name = OUTPUT_NAME
    for value, dims in ((graph.input[0], ("batch", "height", "width")),
                        (graph.output[0], ("batch", "out_height", "out_width"))):
        for dim, label in zip(value.type.tensor_type.shape.dim, dims):
            if not dim.HasField("dim_value"):
                dim.dim_param = label
    return model.SerializeToString()


def check_against_keras(model, data: bytes, image: np.ndarray | None = None) -> ExportCheck:
    """Run the Keras model and ONNX Runtime on the same image and compare at 8 bits."""
    image = make_check_image() if image is None else image
    batch = image[None].astype(np.float32)
    expected = np.asarray(model(batch, training=False), dtype=np.float32)
    session = open_session(data, "the exported model")
    got = run_nhwc(session, read_layout(session, "the exported model"), batch)
    if got.shape != expected.shape:
        return ExportCheck(levels=255, max_abs=float("inf"), height=image.shape[0], width=image.shape[1])
    levels = np.abs(to_integer(expected, np.uint8).astype(np.int16) - to_integer(got, np.uint8))
    return ExportCheck(levels=int(levels.max()), max_abs=float(np.abs(expected - got).max()),
                       height=image.shape[0], width=image.shape[1])


def _keras_spec(model: str, scale: int | None) -> ModelSpec:
    """The spec of a zoo model (at `scale`, default x2) or of a user's .keras file."""
    if model.lower().endswith(".onnx"):
        raise ModelExportError(f"{model} is already an ONNX model")
    spec = registry.resolve_model(model, scale or 2)
    if spec.is_bicubic:
        raise ModelExportError("bicubic is Pillow's resampling, not a network: nothing to export")
    return spec


def export_model(model: str, output: str, scale: int | None = None,
                 opset: int | None = None) -> ExportResult:
    """Export a zoo model (name at `scale`, default x2) or a user's .keras file (its scale checked
    when `scale` is given) as ONNX to `output` (any fsspec URI). Written only when ONNX Runtime
    reproduces Keras within MAX_LEVELS on the check image; else ModelExportError, nothing written."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spec = _keras_spec(model, scale)
    keras_model = registry.load_keras_model(spec, scale)
    channels = keras_model.input_shape[-1]
    if channels != 3:
        raise ModelExportError(f"{spec.name} takes {channels} channels; sr-batch runs RGB models (3)")
    data = convert_keras(keras_model, opset, spec.name)
    check = check_against_keras(keras_model, data)
    if not check.ok:
        raise ModelExportError(f"ONNX export of {spec.name} does not reproduce Keras: {check.line()}; "
                               f"nothing written")
    uri = storage.to_uri(output)
    storage.write_bytes_atomic(uri, data)
    return ExportResult(uri=uri, name=spec.name, scale=registry.measure_scale(keras_model),
                        bytes=len(data), sha256=registry.sha256_of(data), opset=_opset_of(data),
                        check=check)


def _opset_of(data: bytes) -> int:
    import onnx

    model = onnx.load_model_from_string(data)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
