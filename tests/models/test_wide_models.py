"""Community-shaped models built here (graphs.py): a deep RRDB-style network whose response
never vanishes (tiled with a feathered overlap from its decay, the seam bound measured) and a
compact SRVGG-style one that tiles exactly; the probe gives the scale and is cached by the
file's SHA-256; an overlap below a model's need warns with its measured seam; float16 models."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sr_batch import stats, storage, tiling  # noqa: E402
from sr_batch.cli import main  # noqa: E402
from sr_batch.config import JobConfig  # noqa: E402
from sr_batch.errors import ModelScaleError  # noqa: E402
from sr_batch.models import onnx as onnx_models  # noqa: E402
from sr_batch.models import registry  # noqa: E402
from sr_batch.plan import plan_run, resolve_tiling  # noqa: E402
from sr_batch.upscaler import Upscaler, quantized, to_float  # noqa: E402

from conftest import png_bytes, scene  # noqa: E402
from models.graphs import rrdb_style, srvgg_style  # noqa: E402


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    return rrdb_style(tmp_path_factory.mktemp("deep") / "deep_x4.onnx")


@pytest.fixture(scope="module")
def compact(tmp_path_factory):
    return srvgg_style(tmp_path_factory.mktemp("compact") / "compact_x4.onnx")


def file_spec(path) -> registry.ModelSpec:
    return registry.resolve_model(str(path), 2)


def session_run(path):
    session = onnx_models.open_session(path.read_bytes(), str(path))
    layout = onnx_models.read_layout(session)
    return lambda batch: onnx_models.run_nhwc(session, layout, batch)


def upscaler_for(path, spec, config: JobConfig) -> Upscaler:
    tiles = resolve_tiling(config, spec.receptive_radius, spec.input_side, spec)
    return Upscaler(quantized(session_run(path)), spec.scale, tiles.sides, tiles.overlap, 4,
                    integer=True, blend=tiles.blend, whole=tiles.whole)


class CountingProbe:
    """The job's ONNX probe, in process, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, spec, scale, overlap=None):
        self.calls += 1
        return onnx_models.probe_onnx(spec, scale, overlap)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def write_images(folder, count=2, size=(150, 170)):
    folder.mkdir()
    for i in range(count):
        (folder / f"img{i}.png").write_bytes(png_bytes(scene(*size, seed=i)))
    return folder


# --- the probe ---------------------------------------------------------------------------


def test_deep_model_reaches_past_the_probe_so_its_overlap_comes_from_the_decay(deep):
    spec = onnx_models.probe_onnx(file_spec(deep), None)
    assert spec.scale == 4 and not spec.tiles_exactly
    decay = np.asarray(spec.response_decay)
    assert decay[0] == 1.0 and len(decay) == 64  # distances 0-63: the 128 px probe
    reach = int(np.flatnonzero(decay >= onnx_models.DECAY_THRESHOLD)[-1])
    assert 0 < reach < 40
    # Kept pixels have overlap - feather px of context: at least the reach.
    assert spec.receptive_radius == onnx_models.default_overlap(None, decay)
    blend = tiling.feather_width(spec.receptive_radius, None)
    assert spec.receptive_radius - blend >= reach and blend > 0
    (overlap, worst, mean), = spec.seams
    assert overlap == spec.receptive_radius and 0 < mean < worst < 1.0


def test_compact_model_keeps_exact_tiling(compact):
    spec = onnx_models.probe_onnx(file_spec(compact), None)
    assert spec.tiles_exactly and spec.scale == 4 and spec.receptive_radius == 9
    assert spec.seams == ((9, 0.0, 0.0),)
    tiles = resolve_tiling(JobConfig(sources=("x",), output="o"), spec.receptive_radius, None, spec)
    assert tiles.blend == 0 and tiles.seam == (0.0, 0.0)


def test_zoo_models_keep_exact_tiling_and_their_outputs():
    """Every zoo model tiles with abutting cores, as before feathering existed; the Upscaler's
    output is byte for byte the cores of its tiles pasted side by side."""
    config = JobConfig(sources=("x",), output="o")
    for spec in registry.list_models():
        assert resolve_tiling(config, spec.receptive_radius, None, spec).blend == 0, spec.name
    spec = registry.resolve_model("fsrcnn", 2)
    tiles = resolve_tiling(config.replace(tile_size=40), spec.receptive_radius, None, spec)

    def model(batch):  # a local model of the zoo's reach: pixels move, nothing is mixed
        return np.repeat(np.repeat(np.roll(batch, 1, axis=1) * 0.5 + batch * 0.5, 2, 1), 2, 2)

    image = scene(70, 90)
    upscaler = Upscaler(quantized(model), 2, tiles.sides, tiles.overlap, 4, integer=True, blend=tiles.blend)
    got = upscaler.upscale([image])[0].pixels
    plan = tiling.plan_tiles(70, 90, tiles.sides[0], tiles.overlap)
    outputs = quantized(model)(tiling.extract_tiles(to_float(image), plan), np.uint8)
    expected = np.empty_like(got)
    for index, (src, dst) in enumerate(zip(plan.sources, plan.destinations)):
        expected[dst[0] * 2:dst[1] * 2, dst[2] * 2:dst[3] * 2] = \
            outputs[index, src[0] * 2:src[1] * 2, src[2] * 2:src[3] * 2]
    assert got.tobytes() == expected.tobytes()


def test_feathered_stitch_of_a_local_model_is_exact():
    """The feather weights sum to one: a model without reach stitches to the whole image."""
    rng = np.random.default_rng(0)
    image = rng.random((83, 61, 3), dtype=np.float32)

    def model(batch):
        return np.repeat(np.repeat(batch, 3, 1), 3, 2)

    for blend in (1, 4, 8):
        plan = tiling.plan_tiles(83, 61, 40, 8, blend)
        tiled = tiling.stitch_tiles(model(tiling.extract_tiles(image, plan)), plan, 3)
        np.testing.assert_allclose(tiled, tiling.upscale_whole(model, image, 3, 8), atol=1e-6)


def test_deep_model_tiled_agrees_with_the_whole_image(deep):
    """Tiles of the job's default shape around cores of 40 px (many seams on a 150 x 170
    image) against one whole-image run: >= 45 dB, mean <= 0.2 levels."""
    spec = onnx_models.probe_onnx(file_spec(deep), None)
    config = JobConfig(sources=("x",), output="o", tile_size=40 + 2 * spec.receptive_radius)
    image = scene(150, 170, seed=3)
    tiled = upscaler_for(deep, spec, config).upscale([image])[0].pixels
    whole = upscaler_for(deep, spec, config.replace(whole_image=True)).upscale([image])[0]
    assert whole.n_tiles == 1 and tiled.shape == whole.pixels.shape == (600, 680, 3)
    diff = np.abs(tiled.astype(np.int16) - whole.pixels)
    assert psnr(tiled, whole.pixels) >= 45.0
    assert diff.mean() <= 0.2
    # Where the overlap is too narrow for the reach, the feather softens the seams it leaves.
    narrow = config.replace(tile_overlap=12, tile_size=40 + 24)
    feathered = upscaler_for(deep, spec, narrow)
    assert feathered.blend == 3
    hard = Upscaler(quantized(session_run(deep)), 4, feathered.tile_sizes, 12, 4, integer=True)
    reference = upscaler_for(deep, spec, narrow.replace(whole_image=True)).upscale([image])[0].pixels

    def worst(upscaler):
        return np.abs(upscaler.upscale([image])[0].pixels.astype(np.int16) - reference).max()

    assert worst(feathered) < worst(hard)


def test_probe_is_cached_by_sha256_and_scale_comes_from_the_file(tmp_path, deep):
    sources = write_images(tmp_path / "in", count=1, size=(20, 24))
    config = JobConfig(sources=(str(sources),), output=str(tmp_path / "out"), model=str(deep))
    probe = CountingProbe()
    first = plan_run(config, probe=probe, size_calls=False)
    assert probe.calls == 1 and first.config.scale == 4 and first.model.scale == 4
    cached = json.loads(storage.read_bytes(first.layout.probe(first.model.sha256)))
    assert cached["scale"] == 4 and cached["receptive_radius"] == first.model.receptive_radius
    again = plan_run(config, probe=probe, size_calls=False)
    assert probe.calls == 1  # a cache hit: no second probe
    assert again.model == first.model and again.tiling == first.tiling
    # A copy of the file elsewhere has the same bytes: the same cached probe.
    copy = tmp_path / "elsewhere.onnx"
    copy.write_bytes(deep.read_bytes())
    assert plan_run(config.replace(model=str(copy)), probe=probe, size_calls=False).model.scale == 4
    assert probe.calls == 1
    with pytest.raises(ModelScaleError, match=r"x4, but --scale 2 was given"):
        plan_run(config.replace(scale=2), probe=probe, size_calls=False)
    # A cache that does not read as a probe (broken, edited, another version) is measured again.
    cache = first.layout.probe(first.model.sha256).removeprefix("file://")
    for text in ("{not json", json.dumps({**cached, "scale": 5}), json.dumps({**cached, "probe_version": 0})):
        with open(cache, "w") as handle:
            handle.write(text)
        calls = probe.calls
        again = plan_run(config, probe=probe, size_calls=False).model
        assert probe.calls == calls + 1 and again.seams == first.model.seams


def test_overlap_below_the_model_s_need_warns_with_the_measured_seam(tmp_path, deep, compact):
    sources = write_images(tmp_path / "in", count=1, size=(20, 24))
    probe = CountingProbe()
    for path in (deep, compact):
        config = JobConfig(sources=(str(sources),), output=str(tmp_path / "out"), model=str(path),
                           tile_overlap=3)
        plan = plan_run(config, probe=probe, size_calls=False)
        need = plan.model.receptive_radius
        worst, mean = plan.model.seam_at(3)
        assert worst > 0.5 and plan.tiling.seam == (worst, mean) and plan.tiling.blend == 1
        assert plan.warning == (
            f"warning: --tile-overlap 3 is below the {need} px {path.name} needs: tiles differ from "
            f"the whole image by up to {worst:.1f} 8-bit levels (mean {mean:.2f}) on the probe "
            f"image; feathered over 1 px. Drop --tile-overlap for the model's own, or use --whole-image")
        ok = plan_run(config.replace(tile_overlap=need), probe=probe, size_calls=False)
        assert ok.warning is None
    # One probe per model measured both overlaps, the narrow one and its own: both cached.
    assert probe.calls == 2


def test_float16_models_run(tmp_path):
    full = rrdb_style(tmp_path / "full.onnx", blocks=2)
    half = rrdb_style(tmp_path / "half.onnx", blocks=2, dtype=np.float16)
    spec = onnx_models.probe_onnx(file_spec(half), 4)
    layout = onnx_models.read_layout(onnx_models.load_session(spec))
    assert layout.dtype is np.float16 and spec.scale == 4 and spec.seams
    config = JobConfig(sources=("x",), output="o", tile_size=40 + 2 * spec.receptive_radius)
    image = scene(60, 70, seed=2)
    got = upscaler_for(half, spec, config).upscale([image])[0].pixels
    reference = upscaler_for(full, onnx_models.probe_onnx(file_spec(full), 4), config).upscale([image])[0].pixels
    assert got.dtype == np.uint8 and got.shape == reference.shape == (240, 280, 3)
    assert np.abs(got.astype(np.int16) - reference).max() <= 3  # float16's 11-bit mantissa


# --- the job -------------------------------------------------------------------------------


def first_line(err: str) -> str:
    return next(line for line in err.splitlines() if line.startswith("run "))


@pytest.mark.slow
def test_deep_model_runs_without_scale_and_prints_its_seam_bound(ray_local, tmp_path, deep, capsys):
    sources = write_images(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["run", str(sources), "--output", str(out), "--model", str(deep)])
    err = capsys.readouterr().err
    assert code == 0, err
    line = first_line(err)
    worst, mean = map(float, re.search(r"seam bound max ([\d.]+) / mean ([\d.]+) levels", line).groups())
    assert " x4 " in line and "feathered" in line
    # The bound printed is what tiling the probe image costs, measured here apart from the job.
    spec = onnx_models.probe_onnx(file_spec(deep), None)
    run = session_run(deep)
    image = onnx_models.make_check_image(64, 64, seed=1)
    overlap = spec.receptive_radius
    plan = tiling.plan_tiles(64, 64, 32 + 2 * overlap, overlap, tiling.feather_width(overlap, None))
    tiled = tiling.stitch_tiles(run(tiling.extract_tiles(image, plan)), plan, 4)
    whole = tiling.upscale_whole(run, image, 4, overlap)
    levels = np.abs(np.clip(tiled, 0, 1) - np.clip(whole, 0, 1)) * 255
    assert worst == pytest.approx(levels.max(), abs=0.01) and mean == pytest.approx(levels.mean(), abs=0.001)
    rows = stats.read_stats(str(out)).to_pylist()
    assert {r["status"] for r in rows} == {"ok"} and {r["scale"] for r in rows} == {4}
    assert {r["model"] for r in rows} == {storage.to_uri(str(deep))}
    (kept,) = {(r["seam_max_levels"], r["seam_mean_levels"]) for r in rows}
    assert kept == pytest.approx((levels.max(), levels.mean()), abs=1e-3)
    assert {(r["out_width"], r["out_height"]) for r in rows} == {(680, 600)}
    record = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert (record["plan"]["seam_max_levels"], record["plan"]["seam_mean_levels"]) == kept
    assert record["model"]["tiles_exactly"] is False and record["versions"]["onnxruntime"] == ort.__version__
    # The second run reads the probe from OUT/probes, and its first line says the same.
    assert main(["run", str(sources), "--output", str(out), "--model", str(deep), "--force"]) == 0
    assert "seam bound max" in first_line(capsys.readouterr().err)
    assert len(list((out / "probes").glob("*.json"))) == 1


@pytest.mark.slow
def test_conflicting_scale_stops_before_any_image(ray_local, tmp_path, compact, capsys):
    sources = write_images(tmp_path / "in", count=1, size=(20, 24))
    out = tmp_path / "out"
    code = main(["run", str(sources), "--output", str(out), "--model", str(compact), "--scale", "2"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sr-batch: error:")]
    assert code == 3 and len(errors) == 1 and "upscales by x4, but --scale 2 was given" in errors[0], err
    assert not (out / "images").exists()


@pytest.mark.slow
def test_whole_image_option_runs_each_image_in_one_piece(ray_local, tmp_path, compact, capsys):
    sources = write_images(tmp_path / "in", count=2, size=(40, 50))
    code = main(["run", str(sources), "--output", str(tmp_path / "out"), "--model", str(compact),
                 "--whole-image"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "whole images, padded 9 px, seam bound 0 (exact)" in first_line(err)
    rows = stats.read_stats(str(tmp_path / "out")).to_pylist()
    assert {r["n_tiles"] for r in rows} == {1} and {r["out_width"] for r in rows} == {200}
