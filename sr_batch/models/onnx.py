"""ONNX files run with ONNX Runtime: open, read the layout, run, and probe a user's model.

What the job's probe task and actors need for `--model file.onnx`; imports ONNX
Runtime, never TensorFlow. A model takes float32 (or float16) RGB in [0, 1], NHWC
(Keras, TensorFlow) or NCHW (PyTorch exports such as Real-ESRGAN's); its
height and width may be dynamic, or fixed and square (then every tile has that
side); its batch may be fixed too (then tiles go through it that many at a time).
Making ONNX files is `onnx_export` (Keras) and `convert` (PyTorch).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from sr_batch import tiling
from sr_batch.errors import ModelError, ModelFormatError, ModelScaleError
from sr_batch.models import registry
from sr_batch.models.registry import ModelSpec

# The check image: odd and not square, so an exported graph runs at a shape it was
# never traced at (dynamic height and width) and every border case of the resize shows.
CHECK_HEIGHT, CHECK_WIDTH = 45, 67
# Side of the zeros probe that measures the scale of a dynamic model: larger than any
# kernel, so 'same' padding cannot change the output size (as registry._SCALE_PROBE).
SCALE_PROBE = 8
# Sides of the impulse probe that measures a dynamic model's receptive radius, tried in
# turn until the impulse stays inside (a deep model reaches past 32 px). Small, so that
# probing a 16.7 M-parameter RRDB costs seconds: a response that still reaches past 63 px
# is treated as one that never vanishes (tiled with a feathered overlap from its decay).
IMPULSE_SIDES = (64, 128)
# Where a response that never vanishes counts as gone: 1e-3 of its peak (an impulse of
# 127 levels moves a pixel that far away by well under a tenth of a level).
DECAY_THRESHOLD = 1e-3
# The seam probe: a photo-like image of this side cut into cores of SEAM_PROBE_CORE px
# (2 x 2 tiles, so one horizontal and one vertical seam cross it), small enough that a
# 16.7 M-parameter model runs it in seconds.
SEAM_PROBE_SIDE, SEAM_PROBE_CORE = 64, 32
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_INSTALL_HINT = "pip install 'sr-batch[onnx]'"


# --- running ONNX files ----------------------------------------------------------------


@dataclass(frozen=True)
class OnnxLayout:
    """How an ONNX model takes and gives images, read from its declared input."""

    input_name: str
    output_name: str
    channels_first: bool
    """NCHW (PyTorch exports); False for NHWC (Keras, TensorFlow)."""
    side: int | None
    """Fixed input height = width in pixels; None where height and width are dynamic."""
    batch: int | None
    """Fixed batch size (many exports fix it to 1); None where the batch is dynamic."""
    dtype: type
    """What the input takes: np.float32 or np.float16."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ModelError(f"ONNX models need ONNX Runtime: {_INSTALL_HINT}") from None
    return onnxruntime


def session_providers() -> list[str]:
    """CUDA first where this ONNX Runtime build has it (onnxruntime-gpu), then the CPU."""
    available = _onnxruntime().get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def open_session(data: bytes, name: str, threads: int = 0):
    """An ONNX Runtime session over the model's bytes; `threads` 0 keeps ONNX Runtime's own choice."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(0, int(threads))
    options.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    try:
        return ort.InferenceSession(data, sess_options=options, providers=session_providers())
    except Exception as exc:  # noqa: BLE001 - ORT raises its own classes for every kind of bad file
        raise ModelFormatError(f"cannot load {name} as an ONNX model: {_first_line(exc)}") from None


def load_session(spec: ModelSpec, threads: int = 0):
    """Fetch a spec's ONNX file from any fsspec URI, verify it, and open a session on it."""
    return open_session(registry.read_verified(spec.uri, spec.sha256), spec.uri, threads)


def read_layout(session, name: str = "the model") -> OnnxLayout:
    """The model's image layout; ModelFormatError where its input is not an RGB image batch."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ModelFormatError(f"{name} takes {len(inputs)} inputs; an upscaler takes one image batch")
    declared = inputs[0]
    shape = list(declared.shape)
    not_image = (f"{name} takes {declared.name!r} of shape {_shape_text(shape)}: "
                 f"not an image batch (rank 4 with 3 channels, NHWC or NCHW)")
    if len(shape) != 4:
        raise ModelFormatError(not_image)
    fixed = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if fixed[3] == 3:
        channels_first, height, width = False, fixed[1], fixed[2]
    elif fixed[1] == 3:
        channels_first, height, width = True, fixed[2], fixed[3]
    else:
        raise ModelFormatError(not_image)
    if declared.type not in _DTYPES:
        raise ModelFormatError(f"{name} takes {declared.type} input; sr-batch feeds float32 or "
                               f"float16 images in [0, 1]")
    if height != width:
        raise ModelFormatError(f"{name} takes fixed {height or '?'}x{width or '?'} images; "
                               f"sr-batch's tiles are square (export it with dynamic height and width)")
    return OnnxLayout(input_name=declared.name, output_name=outputs[0].name,
                      channels_first=channels_first, side=height, batch=fixed[0],
                      dtype=_DTYPES[declared.type])


def run_nhwc(session, layout: OnnxLayout, batch: np.ndarray) -> np.ndarray:
    """Run (N, H, W, 3) float32 through the model whatever its layout; (N, H*s, W*s, C) float32 out."""
    x = batch.astype(layout.dtype, copy=False)
    if layout.channels_first:
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x)
    step = layout.batch or max(1, len(x))
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        missing = step - len(chunk)
        if missing:  # a fixed-batch model takes whole batches only: pad with black tiles
            chunk = np.concatenate([chunk, np.zeros((missing, *chunk.shape[1:]), chunk.dtype)])
        out = session.run([layout.output_name], {layout.input_name: chunk})[0]
        outputs.append(out[:step - missing])
    out = outputs[0] if len(outputs) == 1 else np.concatenate(outputs)
    if out.ndim != 4:
        raise ModelFormatError(f"the model returned shape {out.shape}: not an image batch")
    if layout.channels_first:
        out = out.transpose(0, 2, 3, 1)
    return out.astype(np.float32, copy=False)


def make_onnx_batch_fn(session, tile_size: int | Sequence[int] | None, name: str = "the model"):
    """Same contract as upscaler.make_tf_batch_fn: `run` maps (N, T, T, 3) float32 in [0, 1]
    to (N, T*s, T*s, 3) for every tile side T (None: any height and width, whole images); ONNX Runtime traces nothing, so the trace
    counter stays 0. A fixed-shape model serves its own side only."""
    layout = read_layout(session, name)
    if tile_size is None:  # whole images: any height and width
        return (lambda batch: run_nhwc(session, layout, batch)), (lambda: 0)
    sizes = {tile_size} if isinstance(tile_size, int) else set(tile_size)
    if layout.side is not None and sizes != {layout.side}:
        raise ModelFormatError(f"{name} takes fixed {layout.side} px tiles only, "
                               f"not {'/'.join(map(str, sorted(sizes)))} px")

    def run(batch: np.ndarray) -> np.ndarray:
        if batch.shape[1] not in sizes:
            raise ValueError(f"no tile side {batch.shape[1]} px; have {sorted(sizes)}")
        return run_nhwc(session, layout, batch)

    return run, (lambda: 0)


def measure_scale(session, layout: OnnxLayout, name: str) -> int:
    """The model's upscaling factor, from one run on black input of the probe's (or its fixed) side."""
    side = layout.side or SCALE_PROBE
    try:
        out = run_nhwc(session, layout, np.zeros((1, side, side, 3), np.float32))
    except ModelFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - the graph itself failed on an image input
        raise ModelFormatError(f"ONNX Runtime cannot run {name} on a {side}x{side} RGB image: "
                               f"{_first_line(exc)}") from None
    height, width, channels = out.shape[1:]
    registry.check_output_channels(channels, name)
    if height != width or height % side:
        raise ModelScaleError(f"model {name} maps {side}x{side} input to {width}x{height}: "
                              f"not an integer upscale")
    return height // side


@dataclass(frozen=True)
class Response:
    """How far a one-pixel change reaches through the model (the impulse probe)."""

    radius: int | None
    """Exact receptive radius, input px, where the response vanishes (below float noise) inside
    the probe; None where it still reaches the probe's edge (deep or attention models)."""
    decay: tuple[float, ...]
    """Largest response at each Chebyshev distance (input px) from the impulse, relative to
    the peak: decay[0] = 1."""

    def reach(self, threshold: float = DECAY_THRESHOLD) -> int | None:
        """The last distance where the response is still >= threshold x peak; None where that is
        the probe's edge (the response has not fallen that far inside it)."""
        above = [d for d, value in enumerate(self.decay) if value >= threshold]
        last = above[-1] if above else 0
        return None if last >= len(self.decay) - 1 else last


def measure_response(run: tiling.RunModel, scale: int, side: int) -> tuple[np.ndarray, int]:
    """|output(flat + impulse) - output(flat)| on a constant 0.5 image with a +0.5 impulse at the
    centre of a side x side probe, as the largest change per distance; and the centre."""
    centre = side // 2
    flat = np.full((1, side, side, 3), 0.5, np.float32)
    poked = flat.copy()
    poked[0, centre, centre, :] += 0.5
    out = run(np.concatenate([flat, poked]))
    change = np.abs(out[1] - out[0]).max(axis=-1)
    rows = np.abs(np.arange(change.shape[0]) // scale - centre)
    cols = np.abs(np.arange(change.shape[1]) // scale - centre)
    distance = np.maximum(rows[:, None], cols[None, :])
    per_distance = np.zeros(distance.max() + 1)
    np.maximum.at(per_distance, distance.ravel(), change.ravel())
    return per_distance, centre


def measure_reach(run: tiling.RunModel, scale: int, sides: Sequence[int] = IMPULSE_SIDES) -> Response:
    """The impulse probe on growing sides until the response vanishes inside one (an exact
    radius); else the decay measured on the largest side."""
    for side in sides:
        per_distance, centre = measure_response(run, scale, side)
        inside = per_distance[:centre]  # distances every direction of the probe still has
        reached = np.flatnonzero(per_distance > tiling.IMPULSE_TOLERANCE)
        radius = int(reached[-1]) if reached.size else 0
        peak = float(per_distance.max()) or 1.0
        decay = tuple(float(v) / peak for v in inside)
        if radius < centre - 1:
            return Response(radius, decay)
    return Response(None, decay)


def measure_radius(session, layout: OnnxLayout, scale: int, name: str) -> int:
    """A fixed-shape model's receptive radius by the impulse method on its own side; it must
    leave a core in its tiles (a fixed side cannot grow to blend a wider response)."""
    run = lambda batch: run_nhwc(session, layout, batch)  # noqa: E731
    try:
        radius = tiling.receptive_radius_from_impulse(run, scale, size=layout.side)
    except ValueError:
        radius = layout.side
    if layout.side - 2 * radius >= 1:
        return radius
    raise ModelFormatError(
        f"{name} takes fixed {layout.side}x{layout.side} tiles, and its receptive field "
        f"leaves no core in them (side - 2 x radius < 1); export it with dynamic height and width")


def measure_seams(run: tiling.RunModel, scale: int, overlap: int, blend: int) -> tuple[float, float]:
    """What tiling costs: (max, mean) |tiled - whole image| in 8-bit levels on the check image,
    tiled with this overlap and feather into SEAM_PROBE_CORE px cores (seams 4-8x denser than
    in a run, so the mean is an upper bound on a run's)."""
    image = make_check_image(SEAM_PROBE_SIDE, SEAM_PROBE_SIDE, seed=1)
    plan = tiling.plan_tiles(SEAM_PROBE_SIDE, SEAM_PROBE_SIDE, SEAM_PROBE_CORE + 2 * overlap,
                             overlap, min(blend, SEAM_PROBE_CORE // 2))
    tiled = tiling.stitch_tiles(run(tiling.extract_tiles(image, plan)), plan, scale)
    whole = tiling.upscale_whole(run, image, scale, overlap)
    levels = np.abs(np.clip(tiled, 0, 1) - np.clip(whole, 0, 1)) * 255.0
    return round(float(levels.max()), 3), round(float(levels.mean()), 4)


@dataclass(frozen=True)
class Probe:
    """What the probe of a model file learns: all a run needs to tile it, and what tiling costs."""

    scale: int
    params: int | None
    input_side: int | None
    radius: int | None
    """Exact receptive radius; None where the response does not vanish inside the probe."""
    overlap: int
    """The default overlap: the exact radius, else where the response falls below
    DECAY_THRESHOLD of its peak, at most tiling.MAX_FEATHERED_OVERLAP."""
    decay: tuple[float, ...]
    seams: tuple[tuple[int, float, float], ...]
    """(overlap, max levels, mean levels) for each overlap measured: the default, and the
    run's own where it asked another."""
    probe_s: float


def default_overlap(radius: int | None, decay: Sequence[float]) -> int:
    """The exact radius, else where the response falls below DECAY_THRESHOLD of its peak,
    capped (tiling.MAX_FEATHERED_OVERLAP)."""
    if radius is not None:
        return radius
    reach = Response(None, tuple(decay)).reach()
    if reach is None:
        return tiling.MAX_FEATHERED_OVERLAP
    # Kept pixels have overlap - feather px of context: grow the overlap so that is the reach.
    return min(reach + -(-reach // 3), tiling.MAX_FEATHERED_OVERLAP)


def probe_file(data: bytes, name: str, overlap: int | None = None) -> Probe:
    """Measure a model file with ONNX Runtime: scale, receptive radius or decay, and the seam
    bound at the default overlap (and at `overlap` too, where given and different)."""
    began = time.perf_counter()
    session = open_session(data, name, threads=0)
    layout = read_layout(session, name)
    scale = measure_scale(session, layout, name)
    run = lambda batch: run_nhwc(session, layout, batch)  # noqa: E731
    if layout.side is not None:
        radius = measure_radius(session, layout, scale, name)
        return Probe(scale=scale, params=count_params(data), input_side=layout.side, radius=radius,
                     overlap=radius, decay=(), seams=(), probe_s=time.perf_counter() - began)
    response = measure_reach(run, scale)
    chosen = default_overlap(response.radius, response.decay)
    seams = []
    for each in dict.fromkeys(o for o in (chosen, overlap) if o is not None):
        blend = tiling.feather_width(each, response.radius)
        seams.append((each, *measure_seams(run, scale, each, blend)))
    return Probe(scale=scale, params=count_params(data), input_side=None, radius=response.radius,
                 overlap=chosen, decay=tuple(round(v, 6) for v in response.decay),
                 seams=tuple(seams), probe_s=round(time.perf_counter() - began, 3))


def count_params(data: bytes) -> int | None:
    """Weights stored in the graph (its initializers); None without the `onnx` package."""
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load_model_from_string(data).graph
    return int(sum(int(np.prod(t.dims)) for t in graph.initializer))


def spec_from_probe(spec: ModelSpec, probe: Probe, scale: int | None) -> ModelSpec:
    """The spec completed by a probe (fresh or cached); ModelScaleError where `scale` (None
    accepts any) is not the model's."""
    if scale is not None and probe.scale != scale:
        raise ModelScaleError(f"model {spec.name!r} upscales by x{probe.scale}, but --scale {scale} "
                              f"was given; drop --scale to use the model's own")
    return replace(spec, scale=probe.scale, channels=3, params=probe.params,
                   receptive_radius=probe.overlap, input_side=probe.input_side,
                   tiles_exactly=probe.radius is not None, seams=probe.seams,
                   response_decay=probe.decay, probe_s=probe.probe_s)


def probe_onnx(spec: ModelSpec, scale: int | None, overlap: int | None = None) -> ModelSpec:
    """The spec of a user's ONNX file completed: SHA-256 pinned, scale checked against `scale`
    (None accepts any), receptive radius or decay, fixed input side and seam bound measured
    (also at `overlap` where given). No TensorFlow."""
    data = registry.read_verified(spec.uri, spec.sha256)
    # Pin the bytes we measured: the actors verify the same SHA-256 when they load.
    spec = replace(spec, sha256=registry.sha256_of(data))
    return spec_from_probe(spec, probe_file(data, spec.uri, overlap), scale)


def make_check_image(height: int = CHECK_HEIGHT, width: int = CHECK_WIDTH, seed: int = 0) -> np.ndarray:
    """A photo-like float32 RGB image in [0, 1]: gradients, a dark disk, stripes, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    a, b, c = rng.uniform(1, 6, 3)
    image = np.stack([np.sin(a * x), np.cos(b * y), np.sin(c * (x + y))], axis=2) * 0.35 + 0.5
    image[((y - 0.5) ** 2 + (x - 0.4) ** 2) < 0.08] *= 0.5
    image[((x * width / 2).astype(int) % 2 == 0) & (y > 0.7)] += 0.15
    image += rng.normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _shape_text(shape: list) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + ")"
