"""ONNX in and out: export zoo models and check them against Keras; probe and run ONNX files
(dynamic or fixed shape, NHWC or NCHW); bad files fail in one line; the job runs them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

from sr_batch import stats, storage  # noqa: E402
from sr_batch.inference import build_upscaler  # noqa: E402
from sr_batch.settings import ActorSettings  # noqa: E402
from sr_batch.cli import main  # noqa: E402
from sr_batch.config import JobConfig  # noqa: E402
from sr_batch.errors import ConfigError, ModelFormatError, ModelScaleError  # noqa: E402
from sr_batch.models import onnx as onnx_models  # noqa: E402
from sr_batch.models import onnx_export  # noqa: E402
from sr_batch.models import registry  # noqa: E402
from sr_batch.layout import OutLayout  # noqa: E402
from sr_batch.model_probe import probe_on_ray  # noqa: E402
from sr_batch.pipeline import run_job  # noqa: E402
from sr_batch.plan import resolve_model, resolve_tiling  # noqa: E402
from sr_batch.tiling import Tiling  # noqa: E402
from sr_batch.upscaler import Upscaler, to_float, to_integer  # noqa: E402

from conftest import scene  # noqa: E402


def levels_apart(a: np.ndarray, b: np.ndarray) -> int:
    """Largest difference of two float images in [0, 1] once both are rounded to 8 bits."""
    return int(np.abs(to_integer(a, np.uint8).astype(np.int16) - to_integer(b, np.uint8)).max())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Zoo models exported once per module: name -> (path, ExportResult)."""
    folder = tmp_path_factory.mktemp("onnx")
    made = {}

    def export(name: str, scale: int = 2):
        if (name, scale) not in made:
            path = folder / f"{name}_x{scale}.onnx"
            made[name, scale] = (path, onnx_export.export_model(name, str(path), scale=scale))
        return made[name, scale]

    return export


def tiny_model(path: Path, *, channels_first: bool, side: int | None = None,
               batch: int | None = None, kernel: int = 1, scale: int = 2) -> Path:
    """A hand-built ONNX x`scale` upscaler: a conv that sends input channel 2 - c to every
    sub-pixel of channel c (R and B swapped), then DepthToSpace. With kernel 1 it is the
    nearest-neighbour upscale of the swapped image; a larger kernel adds corner taps, so
    the receptive radius is kernel // 2."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((3 * scale * scale, 3, kernel, kernel), np.float32)
    for sub in range(scale * scale):
        for channel in range(3):
            weights[sub * 3 + channel, 2 - channel, kernel // 2, kernel // 2] = 1.0
            if kernel > 1:  # the four corners: the impulse probe sees the reach either way
                weights[sub * 3 + channel, 2 - channel, ::kernel - 1, ::kernel - 1] = 0.1
    nodes, source = [], "image"
    if not channels_first:
        nodes.append(helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]))
        source = "nchw"
    nodes.append(helper.make_node("Conv", [source, "weights"], ["features"], pads=[kernel // 2] * 4))
    nodes.append(helper.make_node("DepthToSpace", ["features"], ["up" if not channels_first else "out"],
                                  blocksize=scale, mode="DCR"))
    if not channels_first:
        nodes.append(helper.make_node("Transpose", ["up"], ["out"], perm=[0, 2, 3, 1]))
    def shape(n, side):
        return [n, 3, side, side] if channels_first else [n, side, side, 3]

    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape(batch or "batch", side or "height"))],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT,
                                       shape(batch or "batch", side * scale if side else "out_height"))],
        [numpy_helper.from_array(weights, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def non_image_model(path: Path, shape: list) -> Path:
    """An ONNX graph that passes its input through: whatever `shape` says it takes."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "passthrough",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def file_spec(path: Path) -> registry.ModelSpec:
    return registry.resolve_model(str(path), 2)


# --- export --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["residual", "quality_lite"])  # bicubic skip; + DepthToSpace
def test_export_matches_keras_within_one_level(exported, name):
    path, result = exported(name)
    assert result.check.ok and result.check.levels <= 1, result.check.line()
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # Independently of the export's own check: another image, at another size.
    keras_model = registry.load_keras_model(registry.resolve_model(name, 2))
    image = to_float(scene(38, 51, seed=3))[None]
    expected = np.asarray(keras_model(image, training=False))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (declared,) = session.get_inputs()
    assert declared.name == "lr" and declared.shape == ["batch", "height", "width", 3]
    got = session.run(["sr"], {"lr": image})[0]
    assert got.shape == expected.shape == (1, 76, 102, 3)
    assert levels_apart(expected, got) <= 1
    assert np.abs(expected - got).max() < 1e-4


def test_export_keeps_tensorflow_bicubic_semantics(exported):
    """TF's half-pixel bicubic is Keys a = -0.5 with out-of-image taps dropped and the weights
    renormalised: ONNX Resize's defaults (a = -0.75, edge taps kept) differ by up to 17 levels."""
    path, _ = exported("residual")
    resizes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Resize"]
    assert len(resizes) == 1
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in resizes[0].attribute}
    assert attributes["mode"] == b"cubic"
    assert attributes["cubic_coeff_a"] == pytest.approx(-0.5)
    assert attributes["exclude_outside"] == 1
    assert attributes["coordinate_transformation_mode"] == b"half_pixel"


def test_cli_export_prints_the_check(tmp_path, capsys):
    out = tmp_path / "espcn_x2.onnx"  # DepthToSpace and the bicubic chroma path
    assert main(["export", "espcn", "--scale", "2", "--format", "onnx", "-o", str(out)]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2].startswith("check ok: ONNX Runtime vs Keras on a 67x45 image")
    assert lines[-1].startswith(f"wrote file://{out}: espcn x2 as ONNX")
    assert onnx_models.probe_onnx(file_spec(out), 2).scale == 2


def test_export_fails_in_one_line_for_an_unconvertible_model(tmp_path, capsys):
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.UpSampling2D(2, interpolation="lanczos3")(inputs)
    keras.Model(inputs, outputs).save(tmp_path / "lanczos.keras")
    assert main(["export", str(tmp_path / "lanczos.keras"), "-o", str(tmp_path / "l.onnx")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sr-batch: error: cannot convert lanczos.keras to ONNX: Tensorflow op ")
    assert err[0].endswith("ScaleAndTranslate] is not supported")
    assert not (tmp_path / "l.onnx").exists()


def test_the_check_fails_an_export_that_differs(exported):
    other, _ = exported("quality_lite")
    check = onnx_export.check_against_keras(
        registry.load_keras_model(registry.resolve_model("residual", 2)), other.read_bytes())
    assert not check.ok and check.levels > 1
    assert check.line().startswith("check FAILED")


# --- probing and running ONNX files ----------------------------------------------------


@pytest.mark.parametrize("channels_first", [False, True], ids=["nhwc", "nchw"])
def test_dynamic_model_is_probed_and_runs_in_its_layout(tmp_path, channels_first):
    path = tiny_model(tmp_path / "tiny.onnx", channels_first=channels_first, kernel=3)
    spec = onnx_models.probe_onnx(file_spec(path), 2)
    assert (spec.scale, spec.receptive_radius, spec.input_side, spec.params) == (2, 1, None, 12 * 3 * 9)
    assert spec.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    layout = onnx_models.read_layout(onnx_models.load_session(spec))
    assert layout.channels_first is channels_first and layout.batch is None

    nearest = tiny_model(tmp_path / "nearest.onnx", channels_first=channels_first)
    run, traces = onnx_models.make_onnx_batch_fn(onnx_models.load_session(file_spec(nearest)), (12, 20))
    batch = np.random.default_rng(0).random((3, 12, 12, 3), dtype=np.float32)
    expected = np.repeat(np.repeat(batch[..., ::-1], 2, axis=1), 2, axis=2)  # R and B swapped
    np.testing.assert_array_equal(run(batch), expected)
    assert run(np.zeros((2, 20, 20, 3), np.float32)).shape == (2, 40, 40, 3)
    with pytest.raises(ValueError, match="16 px"):
        run(np.zeros((1, 16, 16, 3), np.float32))
    assert traces() == 0


@pytest.mark.parametrize("channels_first", [False, True], ids=["nhwc", "nchw"])
def test_fixed_shape_model_tiles_at_its_side(tmp_path, channels_first):
    """Fixed side 16 and fixed batch 2: an odd number of tiles still goes through whole batches."""
    path = tiny_model(tmp_path / "fixed.onnx", channels_first=channels_first, side=16, batch=2)
    spec = onnx_models.probe_onnx(file_spec(path), 2)
    assert (spec.scale, spec.receptive_radius, spec.input_side) == (2, 0, 16)
    session = onnx_models.load_session(spec)
    assert onnx_models.read_layout(session).batch == 2
    with pytest.raises(ModelFormatError, match="fixed 16 px tiles only"):
        onnx_models.make_onnx_batch_fn(session, (16, 32))
    run, _ = onnx_models.make_onnx_batch_fn(session, 16)
    image = scene(30, 41, seed=1)
    (result,) = Upscaler(run, 2, 16, 0, batch_size=4).upscale([image])
    assert result.n_tiles == 6 and result.tile_size == 16
    expected = np.repeat(np.repeat(image[..., ::-1], 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(to_integer(result.pixels, np.uint8), expected)


def test_fixed_shape_with_no_core_left_fails(tmp_path):
    path = tiny_model(tmp_path / "narrow.onnx", channels_first=True, side=8, kernel=9)  # radius 4
    with pytest.raises(ModelFormatError, match="fixed 8x8 tiles.*leaves no core"):
        onnx_models.probe_onnx(file_spec(path), 2)


@pytest.mark.slow
def test_job_takes_a_fixed_model_s_side_as_its_tile(ray_local, tmp_path):
    path = tiny_model(tmp_path / "fixed.onnx", channels_first=True, side=24, kernel=3)
    config = JobConfig(sources=("x",), output=str(tmp_path), model=str(path))
    spec = resolve_model(config, probe_on_ray(None))
    assert (spec.arch, spec.input_side, spec.receptive_radius) == ("onnx", 24, 1)
    tiling = resolve_tiling(config, spec.receptive_radius, spec.input_side)
    assert tiling.sides == (24,) and tiling.overlap == 1
    with pytest.raises(ConfigError, match="takes fixed 24 px tiles; drop --tile-size 32"):
        resolve_tiling(config.replace(tile_size=32), spec.receptive_radius, spec.input_side)


@pytest.mark.parametrize("shape", [["batch", 10], ["batch", 1, "height", "width"]],
                         ids=["rank2", "grey"])
def test_non_image_input_fails(tmp_path, shape):
    path = non_image_model(tmp_path / "vector.onnx", shape)
    with pytest.raises(ModelFormatError, match="not an image batch"):
        onnx_models.probe_onnx(file_spec(path), 2)


@pytest.mark.slow
def test_bad_files_and_scales_fail_the_cli_in_one_line(ray_local, tmp_path, image_dir, exported, capsys):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf")
    vector = non_image_model(tmp_path / "vector.onnx", ["batch", 10])
    residual, _ = exported("residual")
    cases = [(bad, 2, "cannot load file://" + str(bad) + " as an ONNX model"),
             (vector, 2, "vector.onnx takes 'x' of shape (batch, 10): not an image batch"),
             (residual, 3, "model 'residual_x2.onnx' upscales by x2, but --scale 3 was given")]
    for path, scale, message in cases:
        out = tmp_path / f"out-{path.stem}"
        code = main(["run", str(image_dir), "--output", str(out), "--model", str(path),
                     "--scale", str(scale)])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("sr-batch: error:")]
        assert code == 3, err
        assert len(errors) == 1 and message in errors[0], err
        assert "Traceback" not in err
        assert not (out / "images").exists() and not (out / "stats").exists()


def test_probe_and_actor_run_onnx_without_tensorflow(tmp_path):
    """The job's probe task and actors import ONNX Runtime only, never TensorFlow or Keras."""
    import subprocess
    import sys

    path = tiny_model(tmp_path / "tiny.onnx", channels_first=True, kernel=3)
    script = f"""
import sys
import numpy as np
from sr_batch.inference import build_upscaler
from sr_batch.settings import ActorSettings
from sr_batch.layout import OutLayout
from sr_batch.models import onnx, registry
from sr_batch.tiling import Tiling
spec = onnx.probe_onnx(registry.resolve_model({str(path)!r}, 2), 2)
settings = ActorSettings(model=spec, scale=2, tiling=Tiling((20,), 1), layout=OutLayout.of("out"),
                         batch_size=4, format="png", quality=95, png_compress_level=1,
                         max_pixels=10**8, retries=0, intra_op_threads=1)
upscaler, _ = build_upscaler(settings)
(result,) = upscaler.upscale([np.zeros((30, 30, 3), np.uint8)])
assert result.pixels.shape == (60, 60, 3), result.pixels.shape
print(sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_wrong_scale_raises_the_scale_error(exported):
    path, _ = exported("residual")
    with pytest.raises(ModelScaleError, match="x2, but --scale 4"):
        onnx_models.probe_onnx(file_spec(path), 4)


def test_self_ensemble_wraps_the_onnx_model_as_the_keras_one(exported):
    path, _ = exported("residual")
    common = {"scale": 2, "tiling": Tiling((40,), 4), "layout": OutLayout.of("out"),
              "batch_size": 4, "format": "png",
              "quality": 95, "png_compress_level": 1, "max_pixels": 10**8, "retries": 0,
              "intra_op_threads": 0, "self_ensemble": True}
    onnx_spec = onnx_models.probe_onnx(file_spec(path), 2)
    from_onnx, _ = build_upscaler(ActorSettings(model=onnx_spec, **common))
    from_keras, _ = build_upscaler(ActorSettings(model=registry.resolve_model("residual", 2), **common))
    image = scene(45, 58, seed=2)
    (a,), (b,) = from_onnx.upscale([image]), from_keras.upscale([image])
    assert a.n_tiles == b.n_tiles == 4
    assert levels_apart(a.pixels, b.pixels) <= 1


# --- the job --------------------------------------------------------------------------


@pytest.mark.slow
def test_job_runs_an_onnx_file_like_its_keras_original(ray_local, image_dir, tmp_path, exported, capsys):
    path, result = exported("residual")
    keras_run = run_job(JobConfig(sources=(str(image_dir),), output=str(tmp_path / "keras"),
                                  model="residual"), echo=lambda line: None)
    assert keras_run.counts == {"ok": 5}
    code = main(["run", str(image_dir), "--output", str(tmp_path / "onnx"), "--model", str(path)])
    assert code == 0, capsys.readouterr().err
    keras_rows = {r["image_id"]: r for r in stats.read_stats(str(tmp_path / "keras")).to_pylist()}
    onnx_rows = stats.read_stats(str(tmp_path / "onnx")).to_pylist()
    assert len(onnx_rows) == 5 and {r["status"] for r in onnx_rows} == {"ok"}
    assert {r["model_sha256"] for r in onnx_rows} == {result.sha256}
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    # The model column keeps the file's URI; the run record names ONNX Runtime and its provider.
    assert {r["model"] for r in onnx_rows} == {storage.to_uri(str(path))}
    record = json.loads(next((tmp_path / "onnx" / "runs").glob("*.json")).read_text())
    assert record["versions"]["onnxruntime"] == ort.__version__
    assert record["versions"]["onnxruntime_provider"] == "CPUExecutionProvider"
    for row in onnx_rows:
        other = keras_rows[row["image_id"]]
        ours = np.asarray(_read(row["output_uri"]), np.int16)
        theirs = np.asarray(_read(other["output_uri"]), np.int16)
        assert ours.shape == theirs.shape == (2 * row["height"], 2 * row["width"], 3)
        assert np.abs(ours - theirs).max() <= 1, row["source_uri"]


@pytest.mark.slow
def test_bfloat16_is_refused_for_onnx_before_any_image(ray_local, image_dir, tmp_path, exported):
    path, _ = exported("residual")
    with pytest.raises(ConfigError, match="--precision bfloat16 applies to Keras models"):
        run_job(JobConfig(sources=(str(image_dir),), output=str(tmp_path / "out"), model=str(path),
                          precision="bfloat16"), echo=lambda line: None)
    assert not (tmp_path / "out" / "images").exists()


def _read(uri: str) -> np.ndarray:
    from PIL import Image

    with Image.open(uri.removeprefix("file://")) as image:
        return np.asarray(image)
