"""PyTorch super-resolution files (`.pth`, `.safetensors`) in as ONNX: `sr-batch convert`.

The weights are read without running any code from the file (PyTorch's weights-only
unpickler; safetensors holds only tensors), spandrel (the library chaiNNer and
ComfyUI use) detects the architecture from the weights' names and shapes and builds it,
and PyTorch exports it as ONNX, NCHW, with dynamic batch, height and width. The file is
written only when ONNX Runtime reproduces PyTorch on an odd-sized image within one 8-bit
level. Needs the `[torch]` extra; the job itself runs the ONNX file with ONNX Runtime only.
"""

from __future__ import annotations

import io
import posixpath
import sys
from dataclasses import dataclass

import numpy as np

from sr_batch import storage
from sr_batch.errors import ModelError, ModelExportError, ModelFormatError
from sr_batch.models import registry
from sr_batch.models.onnx import make_check_image, open_session, read_layout, run_nhwc
from sr_batch.models.onnx_export import MAX_LEVELS, ExportCheck
from sr_batch.upscaler import to_integer

_INSTALL_HINT = "pip install 'sr-batch[torch]'"
PYTORCH_EXTENSIONS = (".pth", ".pt", ".ckpt", ".safetensors")
# ONNX opset of the export: 17 has every op the spandrel architectures the job runs use
# (ONNX Runtime 1.16+ runs it).
OPSET = 17
# Where spandrel keeps an architecture: its own package holds only permissively licensed
# code (MIT, Apache 2.0, public domain); spandrel_extra_arches holds the restrictive ones.
_PERMISSIVE = "MIT, Apache 2.0 or public domain (spandrel's permissive set)"
_RESTRICTIVE = "restrictive, e.g. non-commercial (spandrel_extra_arches): read its license before use"


@dataclass(frozen=True)
class Conversion:
    """What `convert_model` wrote."""

    uri: str
    architecture: str
    scale: int
    params: int
    tags: tuple[str, ...]
    license: str
    bytes: int
    sha256: str
    check: ExportCheck

    def lines(self) -> list[str]:
        tags = f" ({', '.join(self.tags)})" if self.tags else ""
        return [f"architecture: {self.architecture}{tags}, x{self.scale}, {self.params:,} parameters",
                f"architecture license: {self.license}; the weights keep the license of where "
                f"they came from",
                self.check.line().replace("Keras", "PyTorch"),
                f"wrote {self.uri}: ONNX opset {OPSET}, NCHW, dynamic height and width "
                f"({self.bytes / 1e6:.2f} MB, SHA-256 {self.sha256})"]


def block_triton() -> None:
    """Keep torch from importing triton, its GPU kernel compiler, in this process: a CPU export
    never uses it, and importing it where TensorFlow is loaded crashes the process (SIGSEGV in
    triton's native module, torch 2.14 / triton 3.8 beside TensorFlow 2.21). torch asks for
    triton only through an import that it treats as optional."""
    sys.modules.setdefault("triton", None)


def _torch():
    block_triton()
    try:
        import spandrel  # noqa: F401 - checked here, used by the caller
        import torch
    except ImportError:
        raise ModelError(f"converting PyTorch files needs PyTorch and spandrel: {_INSTALL_HINT}") from None
    return torch


def read_state_dict(data: bytes, name: str) -> dict:
    """The tensors of a .pth/.pt/.ckpt (weights-only unpickling: no code from the file runs)
    or .safetensors file; ModelFormatError in one line for anything else."""
    torch = _torch()
    extension = posixpath.splitext(name)[1].lower()
    try:
        if extension == ".safetensors":
            from safetensors.torch import load

            return load(data)
        if extension not in PYTORCH_EXTENSIONS:
            raise ModelFormatError(f"{name}: not a PyTorch file (.pth, .pt, .ckpt or .safetensors)")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except ModelFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - unpickling refusals, truncated files, bad headers
        raise ModelFormatError(f"cannot read {name} as weights only: {_first_line(exc)}") from None
    if not isinstance(state, dict):
        raise ModelFormatError(f"{name} holds a {type(state).__name__}, not a dict of weights")
    return state


def detect(state: dict, name: str):
    """spandrel's ImageModelDescriptor of an RGB super-resolution model in these weights."""
    from spandrel import ImageModelDescriptor, ModelLoader, canonicalize_state_dict

    try:
        model = ModelLoader().load_from_state_dict(canonicalize_state_dict(state))
    except Exception as exc:  # noqa: BLE001 - UnsupportedModelError, or weights of the wrong shape
        raise ModelFormatError(f"{name}: no architecture spandrel knows matches these weights "
                               f"({_first_line(exc)})") from None
    if not isinstance(model, ImageModelDescriptor) or model.purpose != "SR":
        raise ModelFormatError(f"{name} is a {model.architecture.name} {model.purpose} model, "
                               f"not an image upscaler")
    if (model.input_channels, model.output_channels) != (3, 3):
        raise ModelFormatError(f"{name} maps {model.input_channels} to {model.output_channels} "
                               f"channels; sr-batch runs RGB models (3 to 3)")
    return model


def license_of(model) -> str:
    """What spandrel says about the architecture's license: which of its packages has it."""
    module = type(model.model).__module__
    return _RESTRICTIVE if module.startswith("spandrel_extra_arches") else _PERMISSIVE


def export_onnx(model) -> bytes:
    """The module as ONNX bytes: input `input` (N, 3, H, W), output `output`, all dynamic."""
    import warnings

    torch = _torch()
    module = model.model.eval()
    side = max(32, model.size_requirements.minimum or 0)
    side += (-side) % (model.size_requirements.multiple_of or 1)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notes
            torch.onnx.export(module, torch.rand(1, 3, side, side), buffer, input_names=["input"],
                              output_names=["output"], opset_version=OPSET, dynamo=False,
                              dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                            "output": {0: "batch", 2: "out_height", 3: "out_width"}})
    except Exception as exc:  # noqa: BLE001 - tracing or an op ONNX lacks: either way no export
        raise ModelExportError(f"cannot export {model.architecture.name} to ONNX: {_first_line(exc)}") from None
    return buffer.getvalue()


def check_against_torch(model, data: bytes) -> ExportCheck:
    """Run PyTorch and ONNX Runtime on the same odd-sized image and compare at 8 bits."""
    torch = _torch()
    image = make_check_image()
    with torch.no_grad():
        expected = model.model(torch.from_numpy(image.transpose(2, 0, 1)[None].copy())).numpy()
    expected = expected.transpose(0, 2, 3, 1)
    session = open_session(data, "the exported model")
    got = run_nhwc(session, read_layout(session, "the exported model"), image[None])
    if got.shape != expected.shape:
        return ExportCheck(levels=255, max_abs=float("inf"), height=image.shape[0], width=image.shape[1])
    expected = np.clip(expected, 0, 1)
    got = np.clip(got, 0, 1)
    levels = np.abs(to_integer(expected, np.uint8).astype(np.int16) - to_integer(got, np.uint8))
    return ExportCheck(levels=int(levels.max()), max_abs=float(np.abs(expected - got).max()),
                       height=image.shape[0], width=image.shape[1])


def convert_model(source: str, output: str) -> Conversion:
    """Convert a PyTorch super-resolution file (any fsspec URI) to ONNX at `output`. Nothing is
    written unless the architecture is known and ONNX Runtime reproduces PyTorch within
    MAX_LEVELS on the check image."""
    _torch()
    name = storage.display(storage.to_uri(source))
    data = storage.read_bytes(storage.to_uri(source))
    model = detect(read_state_dict(data, name), name)
    onnx_bytes = export_onnx(model)
    check = check_against_torch(model, onnx_bytes)
    if check.levels > MAX_LEVELS:
        raise ModelExportError(f"ONNX export of {name} does not reproduce PyTorch: "
                               f"{check.line().replace('Keras', 'PyTorch')}; nothing written")
    uri = storage.to_uri(output)
    storage.write_bytes_atomic(uri, onnx_bytes)
    return Conversion(uri=uri, architecture=model.architecture.name, scale=int(model.scale),
                      params=int(sum(p.numel() for p in model.model.parameters())),
                      tags=tuple(model.tags), license=license_of(model), bytes=len(onnx_bytes),
                      sha256=registry.sha256_of(onnx_bytes), check=check)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
