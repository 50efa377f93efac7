"""The job end to end on a real local Ray: rows, columns, outputs, bad input, escapes, GPUs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sr_batch import manifest, stats, storage
from sr_batch.config import JobConfig
from sr_batch.pipeline import run_job

from conftest import png_bytes, scene

REQUIRED_COLUMNS = [
    "run_id", "image_id", "source_uri", "output_uri", "status", "error_type", "error_message",
    "width", "height", "channels", "bit_depth", "out_width", "out_height", "scale",
    "model", "model_sha256", "precision", "tile_size", "tile_overlap", "n_tiles",
    "decode_s", "infer_s", "encode_s", "total_s", "worker", "finished_at",
    "psnr_y_consistency", "sharpness_ratio", "psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic",
]


def quiet(line: str) -> None:
    pass


@pytest.mark.slow
def test_end_to_end_default_model(ray_local, image_dir, tmp_path):
    out = tmp_path / "out"
    result = run_job(JobConfig(sources=(str(image_dir),), output=str(out), tile_size=16,
                               run_id="e2e-1"), echo=quiet)
    assert result.counts == {"ok": 5}
    table = stats.read_stats(str(out))
    assert table.num_rows == 5
    for name in REQUIRED_COLUMNS:
        assert name in table.column_names, name
    assert set(table.column("run_id").to_pylist()) == {"e2e-1"}
    assert (out / "stats" / "run_id=e2e-1").is_dir()
    for row in table.to_pylist():
        assert row["status"] == "ok" and row["error_type"] is None
        assert (row["out_width"], row["out_height"]) == (2 * row["width"], 2 * row["height"])
        assert row["n_tiles"] >= 1 and row["tile_size"] == 16
        assert row["psnr_y_consistency"] > 25  # a real upscale downsamples back close to its input
        assert row["model_sha256"] and len(row["model_sha256"]) == 64
        path = row["output_uri"].removeprefix("file://")
        with Image.open(path) as image:
            assert image.size == (row["out_width"], row["out_height"])
        relative = os.path.relpath(path, out / "images")
        source_rel = os.path.relpath(row["source_uri"].removeprefix("file://"), image_dir)
        assert relative == source_rel
    record = json.loads((out / "runs" / "e2e-1.json").read_text())
    assert record["counts"] == {"ok": 5}
    # Where the seconds went: each actor says its start-up once, on its first row.
    setups = [r["setup_s"] for r in table.to_pylist() if r["setup_s"] is not None]
    assert len(setups) == len({r["worker"] for r in table.to_pylist()}) and min(setups) > 0
    phases = record["phases_s"]
    assert set(phases) == {"plan", "ray_start", "first_rows", "actor_setup", "run"}
    assert phases["actor_setup"] == max(setups)
    assert phases["ray_start"] == 0.0  # the session's Ray was already up
    assert 0 < phases["plan"] and phases["actor_setup"] < phases["first_rows"] < phases["run"] == record["wall_s"]
    assert record["versions"]["ray"] and record["versions"]["tensorflow"]
    assert record["config"]["tile_size"] == 16
    # No temporary files are left next to the outputs.
    assert not [p for p in out.rglob(".*") if p.is_file()]


@pytest.mark.slow
def test_run_removes_temporaries_an_interrupted_run_left(ray_local, image_dir, tmp_path):
    """A writer killed between write and rename leaves a hidden file; the next run deletes it."""
    out = tmp_path / "out"
    orphans = [out / "images" / ".a.png.tmp-0123abcd", out / "stats" / "run_id=old" / ".part-00000.parquet.tmp-89abcdef"]
    keep = [out / "images" / ".keep", out / "images" / ".b.png.tmp-notours"]
    for path in orphans + keep:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
        os.utime(path, (time.time() - 60, time.time() - 60))  # left by a run before this one
    lines: list[str] = []

    result = run_job(JobConfig(sources=(str(image_dir),), output=str(out), tile_size=16), echo=lines.append)

    assert result.counts == {"ok": 5}
    assert [p for p in orphans if p.exists()] == []
    assert all(p.exists() for p in keep)  # only our own temporary-name pattern is touched
    assert "removed 2 temporary file(s) left by an interrupted run" in lines


@pytest.mark.slow
def test_default_tiling_gives_each_image_the_cheaper_tile(ray_local, tmp_path):
    """No --tile-size: two tile sides; a small image runs in the small tile, a 250 px image
    in one large tile (4 small ones would cost more); a rerun skips both."""
    from sr_batch.config import DEFAULT_TILE_CORE, LARGE_TILE_CORE

    (tmp_path / "in").mkdir()
    for name, side in (("small", 40), ("large", 250)):
        Image.fromarray(scene(side, side, seed=side)).save(tmp_path / "in" / f"{name}.png")
    out = tmp_path / "out"
    config = JobConfig(sources=(str(tmp_path / "in"),), output=str(out), run_id="auto-1")
    assert run_job(config, echo=quiet).counts == {"ok": 2}
    rows = {Path(r["source_uri"]).stem: r for r in stats.read_stats(str(out)).to_pylist()}
    overlap = rows["small"]["tile_overlap"]
    assert rows["small"]["tile_size"] == DEFAULT_TILE_CORE + 2 * overlap
    assert rows["large"]["tile_size"] == LARGE_TILE_CORE + 2 * overlap
    assert rows["small"]["n_tiles"] == 1 and rows["large"]["n_tiles"] == 1
    record = json.loads((out / "runs" / "auto-1.json").read_text())
    assert record["plan"]["tile_sides"] == [DEFAULT_TILE_CORE + 2 * overlap, LARGE_TILE_CORE + 2 * overlap]
    again = run_job(config.replace(run_id="auto-2"), echo=quiet)
    assert again.counts == {"skipped": 2}


@pytest.mark.parametrize("sides, expected", [((128,), 8), ((512,), 8), ((1024,), 3), ((2048,), 1),
                                             ((128, 2048, 2048), 1), ((128, 128, 2048), 8)])
def test_images_per_call_follow_the_median_image_size(tmp_path, sides, expected):
    from sr_batch.layout import OutLayout
    from sr_batch.naming import plan_outputs
    from sr_batch.plan import images_per_call

    (tmp_path / "in").mkdir()
    for i, side in enumerate(sides):  # flat images: only the header matters
        Image.new("RGB", (side, side)).save(tmp_path / "in" / f"{i}.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    config = JobConfig(sources=(str(tmp_path / "in"),), output=str(tmp_path / "out"))
    table = plan_outputs(manifest.load_sources(config.sources), OutLayout.of(config.output), "keep")

    assert images_per_call(config, table) == expected
    assert images_per_call(config.replace(images_per_call=5), table) == 5


@pytest.mark.slow
def test_bfloat16_is_recorded_and_is_not_taken_for_a_float32_run(ray_local, tmp_path):
    """--precision bfloat16: close to the float32 output, its own stats value, and a rerun
    in the other precision processes the image again instead of skipping it."""
    (tmp_path / "in").mkdir()
    Image.fromarray(scene(48, 40, seed=11)).save(tmp_path / "in" / "a.png")
    config = JobConfig(sources=(str(tmp_path / "in"),), output=str(tmp_path / "out"), run_id="f32")
    assert run_job(config, echo=quiet).counts == {"ok": 1}
    f32 = np.asarray(Image.open(tmp_path / "out" / "images" / "a.png"))

    low = config.replace(precision="bfloat16", run_id="bf16")
    assert run_job(low, echo=quiet).counts == {"ok": 1}
    bf16 = np.asarray(Image.open(tmp_path / "out" / "images" / "a.png"))
    assert run_job(low.replace(run_id="bf16-again"), echo=quiet).counts == {"skipped": 1}
    assert run_job(config.replace(run_id="f32-again"), echo=quiet).counts == {"ok": 1}

    rows = {r["run_id"]: r for r in stats.read_stats(str(tmp_path / "out")).to_pylist()}
    assert [rows[k]["precision"] for k in ("f32", "bf16", "bf16-again", "f32-again")] == [
        "float32", "bfloat16", "bfloat16", "float32"]
    difference = np.abs(f32.astype(int) - bf16)
    assert difference.max() > 0  # it did run in bfloat16
    assert difference.mean() < 1.0 and difference.max() <= 8


@pytest.mark.slow
def test_reference_metrics_next_to_bicubic(ray_local, tmp_path):
    hr = scene(64, 48, seed=3)
    lr = np.asarray(Image.fromarray(hr).resize((24, 32), Image.BICUBIC))
    (tmp_path / "hr.png").write_bytes(png_bytes(hr))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "lr.png").write_bytes(png_bytes(lr))
    manifest.write_manifest(
        manifest.validate_manifest(__import__("pyarrow").table({
            "uri": [str(tmp_path / "in" / "lr.png")],
            "reference_uri": [str(tmp_path / "hr.png")]}), "test"),
        str(tmp_path / "m.parquet"))
    result = run_job(JobConfig(sources=(str(tmp_path / "m.parquet"),), output=str(tmp_path / "out"),
                               model="bicubic"), echo=quiet)
    assert result.counts == {"ok": 1}
    row = stats.read_stats(str(tmp_path / "out")).to_pylist()[0]
    # The bicubic "model" is the baseline itself: both numbers are the same pixels.
    assert row["psnr_y"] == pytest.approx(row["psnr_y_bicubic"], abs=1e-9)
    assert 20 < row["psnr_y"] < 60 and 0 < row["ssim_y"] <= 1


def make_bad_inputs(root: Path) -> dict[str, str]:
    """One file per kind of bad input; returns file name -> expected error_type."""
    root.mkdir(parents=True, exist_ok=True)
    good = png_bytes(scene(20, 20))
    (root / "good.png").write_bytes(good)
    (root / "empty.png").write_bytes(b"")
    whole = png_bytes(scene(40, 40))
    (root / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (root / "notes.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 10)
    Image.fromarray(scene(60, 60)).save(root / "huge.png")
    Image.fromarray(np.ones((8, 8), np.float32), "F").save(root / "float.tif")
    return {"empty.png": "empty_file", "truncated.png": "corrupt_image",
            "notes.jpg": "not_an_image", "huge.png": "too_many_pixels",
            "float.tif": "unsupported_mode", "missing.png": "missing_file"}


@pytest.mark.slow
def test_bad_inputs_fail_their_row_only(ray_local, tmp_path):
    expected = make_bad_inputs(tmp_path / "in")
    uris = [str(tmp_path / "in" / name) for name in [*expected, "good.png"]]
    manifest.write_manifest(manifest.validate_manifest(
        __import__("pyarrow").table({"uri": uris}), "test"), str(tmp_path / "m.csv"))
    lines: list[str] = []
    result = run_job(JobConfig(sources=(str(tmp_path / "m.csv"),), output=str(tmp_path / "out"),
                               max_pixels=50 * 50, tile_size=16), echo=lines.append)
    assert result.counts == {"ok": 1, "failed": len(expected)}
    rows = {Path(r["source_uri"]).name: r for r in stats.read_stats(str(tmp_path / "out")).to_pylist()}
    assert len(rows) == len(uris)
    for name, error_type in expected.items():
        assert rows[name]["status"] == "failed", name
        assert rows[name]["error_type"] == error_type, (name, rows[name]["error_message"])
        assert rows[name]["error_message"] and "\n" not in rows[name]["error_message"]
        assert rows[name]["output_uri"] is None
        # one clear line per failed image reaches the user
        assert sum(name in line and error_type in line for line in lines) == 1
    assert rows["good.png"]["status"] == "ok"
    assert Path(rows["good.png"]["output_uri"].removeprefix("file://")).is_file()


@pytest.mark.slow
def test_path_escapes_fail_that_image(ray_local, tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (tmp_path / "in" / name).write_bytes(png_bytes(scene(12, 12)))
    out = tmp_path / "out"
    import pyarrow as pa

    table = pa.table({
        "uri": [str(tmp_path / "in" / n) for n in ("a.png", "b.png", "c.png", "d.png")],
        "relative_path": ["../../escape.png", "ok/b.png", "x/../../c.png", "d.png"],
        "output_uri": [None, None, None, str(tmp_path / "elsewhere" / "d.png")],
    })
    pq.write_table(table, tmp_path / "m.parquet")
    result = run_job(JobConfig(sources=(str(tmp_path / "m.parquet"),), output=str(out),
                               model="bicubic"), echo=quiet)
    rows = {Path(r["source_uri"]).name: r for r in stats.read_stats(str(out)).to_pylist()}
    assert result.counts == {"ok": 1, "failed": 3}
    for name in ("a.png", "c.png", "d.png"):
        assert rows[name]["error_type"] == "path_escape", rows[name]
    assert rows["b.png"]["output_uri"] == f"file://{out}/images/ok/b.png"
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "elsewhere").exists()
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*.png") if "in" not in p.parts}
    assert written == {Path("out/images/ok/b.png")}


@pytest.mark.slow
def test_actors_get_distinct_gpus(ray_local, tmp_path):
    """--gpus-per-actor is the actors' Ray request: two actors, one logical GPU each."""
    (tmp_path / "in").mkdir()
    # Enough model work (seconds) that the second actor is up before the first has done it all,
    # even when the previous test's actors still hold the CPUs for a moment.
    for i in range(48):
        (tmp_path / "in" / f"{i}.png").write_bytes(png_bytes(scene(48, 48, seed=i)))
    result = run_job(JobConfig(sources=(str(tmp_path / "in"),), output=str(tmp_path / "out"),
                               tile_size=32, actors="2", gpus_per_actor=1, cpus_per_actor=0.5,
                               images_per_call=1, arrangement="fused"), echo=quiet)
    assert result.counts == {"ok": 48}
    workers = set(stats.read_stats(str(tmp_path / "out")).column("worker").to_pylist())
    gpus = {w.split("gpu=")[1] for w in workers}
    assert len(workers) == 2, workers
    assert gpus == {"0", "1"}, workers


@pytest.mark.slow
def test_cli_default_configuration_completes(tmp_path, image_dir):
    """The README command with every default, in a fresh process that starts its own Ray."""
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, "-m", "sr_batch.cli", "run", str(image_dir),
                           "--output", str(out)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("run ") and "5 ok, 0 failed" in last
    assert len(list((out / "images").rglob("*.png"))) == 5


@pytest.mark.slow
def test_cli_reports_failures_in_one_line_and_exits_nonzero(tmp_path):
    make_bad_inputs(tmp_path / "in")
    proc = subprocess.run([sys.executable, "-m", "sr_batch.cli", "run", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out"), "--model", "bicubic",
                           "--max-pixels", "2500"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "1 ok, 5 failed" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_cli_config_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sr_batch.cli", "run", str(tmp_path),
                           "--output", str(tmp_path / "o"), "--tile-size", "16",
                           "--tile-overlap", "8"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "sr-batch: error: --tile-size 16 leaves no core with --tile-overlap 8; "
        "need tile_size > 2 * tile_overlap"]


@pytest.fixture(scope="module")
def user_model_file(tmp_path_factory):
    """A user's own .keras file (random weights): loaded by path, probed for scale and radius."""
    import keras

    from sr_batch.models.architectures import build_model

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "mine_x2.keras"
    build_model("subpixel", 2).save(path)
    return path


@pytest.mark.slow
def test_model_from_a_path(ray_local, image_dir, tmp_path, user_model_file):
    import hashlib

    from sr_batch.models.architectures import receptive_radius

    result = run_job(JobConfig(sources=(str(image_dir),), output=str(tmp_path / "out"),
                               model=str(user_model_file), tile_size=32), echo=quiet)
    assert result.counts == {"ok": 5}
    rows = stats.read_stats(str(tmp_path / "out")).to_pylist()
    assert {r["model_sha256"] for r in rows} == {hashlib.sha256(user_model_file.read_bytes()).hexdigest()}
    assert {r["model"] for r in rows} == {storage.to_uri(str(user_model_file))}  # the URI given
    # The overlap was measured from the model, and covers its declared radius.
    assert rows[0]["tile_overlap"] >= 1
    assert rows[0]["tile_overlap"] <= receptive_radius("subpixel", 2)


@pytest.mark.slow
def test_scale_mismatch_stops_before_any_image(ray_local, image_dir, tmp_path, user_model_file):
    from sr_batch.errors import ModelScaleError

    with pytest.raises(ModelScaleError, match="x2"):
        run_job(JobConfig(sources=(str(image_dir),), output=str(tmp_path / "out"),
                          model=str(user_model_file), scale=3), echo=quiet)
    assert not (tmp_path / "out" / "images").exists()
    assert not (tmp_path / "out" / "stats").exists()


# --- any output size -------------------------------------------------------------------


@pytest.mark.slow
def test_any_output_size_runs_the_model_then_resizes(ray_local, tmp_path):
    """--outscale 1.5 and 8, --width and --fit: the model at its scale (twice for x8), one
    Lanczos resize to the exact size, recorded in the stats; a reference at the output size
    is scored, and another --outscale reprocesses instead of reusing the outputs."""
    from sr_batch import resample

    (tmp_path / "in").mkdir()
    hr = scene(120, 96, seed=3)
    lr = resample.resize_bicubic(hr, (64, 80))  # 1.5x smaller than the reference
    Image.fromarray(lr).save(tmp_path / "in" / "a.png")
    Image.fromarray(hr).save(tmp_path / "ref.png")
    rgba = np.dstack([scene(20, 30, seed=4), np.full((20, 30), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "in" / "b.png")
    table = manifest.load_sources([str(tmp_path / "in")])
    refs = [str(tmp_path / "ref.png") if u.endswith("a.png") else None for u in table.column("uri").to_pylist()]
    manifest.write_manifest(table.set_column(table.schema.get_field_index("reference_uri"),
                                             "reference_uri", pa.array(refs)),
                            str(tmp_path / "m.parquet"))
    base = JobConfig(sources=(str(tmp_path / "m.parquet"),), output=str(tmp_path / "out"),
                     model="bicubic", scale=2)

    def rows(run_id):
        return {Path(r["source_uri"]).name: r for r in stats.read_stats(str(tmp_path / "out"), run_id).to_pylist()}

    assert run_job(base.replace(outscale=1.5, run_id="r15"), echo=quiet).counts == {"ok": 2}
    a = rows("r15")["a.png"]
    assert (a["out_width"], a["out_height"], a["passes"], a["scale"]) == (96, 120, 1, 2)
    assert a["outscale"] == pytest.approx(1.5) and a["output_size"] == "outscale=1.5"
    assert a["psnr_y"] is not None and a["psnr_y_bicubic"] is not None  # reference at the output size
    assert a["psnr_y_consistency"] > 30
    out = np.asarray(Image.open(a["output_uri"].removeprefix("file://")))
    assert out.shape == (120, 96, 3)
    b = rows("r15")["b.png"]
    assert Image.open(b["output_uri"].removeprefix("file://")).size == (45, 30)
    assert Image.open(b["output_uri"].removeprefix("file://")).mode == "RGBA"

    assert run_job(base.replace(outscale=8, run_id="r8"), echo=quiet).counts == {"ok": 2}
    a8 = rows("r8")["a.png"]
    assert (a8["out_width"], a8["passes"]) == (64 * 8, 2)  # x2 three times would be 3 passes: x2, x4
    assert a8["psnr_y"] is None and "reference not scored" in a8["notes"]  # reference is not 8x

    assert run_job(base.replace(width=100, run_id="w"), echo=quiet).counts == {"ok": 2}
    assert {n: (r["out_width"], r["out_height"]) for n, r in rows("w").items()} == {
        "a.png": (100, 125), "b.png": (100, 67)}
    assert run_job(base.replace(fit="50x50", run_id="fit"), echo=quiet).counts == {"ok": 2}
    assert {n: (r["out_width"], r["out_height"]) for n, r in rows("fit").items()} == {
        "a.png": (40, 50), "b.png": (50, 33)}
    # The same size again is reused; the output size is part of the settings.
    assert run_job(base.replace(fit="50x50", run_id="fit-again"), echo=quiet).counts == {"skipped": 2}


@pytest.mark.slow
def test_sr_batch_run_takes_the_output_size_options(ray_local, tmp_path):
    """The same through `sr-batch run`: --outscale, then --fit, each recorded and each its own setting."""
    from sr_batch import cli

    (tmp_path / "in").mkdir()
    Image.fromarray(scene(40, 60, seed=5)).save(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    args = ["run", str(tmp_path / "in"), "--output", str(out), "--model", "bicubic", "--scale", "2"]
    sizes = {}
    # Each option is its own setting: the second run redoes the image into the same file.
    for run_id, option in (("o", ["--outscale", "3.5"]), ("f", ["--fit", "100x100"])):
        assert cli.main([*args, *option, "--run-id", run_id]) == 0
        (row,) = stats.read_stats(str(out), run_id).to_pylist()
        assert row["status"] == "ok"
        sizes[run_id] = (row["out_width"], row["out_height"], row["output_size"])
        with Image.open(row["output_uri"].removeprefix("file://")) as image:
            assert image.size == (row["out_width"], row["out_height"])
    assert sizes == {"o": (210, 140, "outscale=3.5"), "f": (100, 67, "fit=100x100")}


# --- --model auto ----------------------------------------------------------------------


@pytest.mark.slow
def test_auto_routes_each_image_and_runs_it_as_its_model_would(ray_local, tmp_path):
    """The default `--model auto` through `sr-batch run`: a clean PNG takes the clean default, a
    JPEG at quality 40 `real` at 0.75, a PNG with noise sigma 15 `real` at 0.75; the stats say
    why; each output equals a run with that model alone; auto is its own reusable setting."""
    import io

    from sr_batch import cli
    from sr_batch.models import registry

    src, single = tmp_path / "in", tmp_path / "jpeg-only"
    src.mkdir()
    single.mkdir()
    Image.fromarray(scene(48, 64, seed=1)).save(src / "clean.png")
    buffer = io.BytesIO()
    Image.fromarray(scene(48, 64, seed=2)).save(buffer, "JPEG", quality=40)
    (src / "web.jpg").write_bytes(buffer.getvalue())
    (single / "web.jpg").write_bytes(buffer.getvalue())
    noise = np.random.default_rng(3).normal(0, 15, (48, 64, 3))
    Image.fromarray(np.clip(scene(48, 64, seed=3) + noise, 0, 255).astype(np.uint8)).save(src / "noisy.png")

    out = tmp_path / "out"
    args = ["run", str(src), "--output", str(out), "--scale", "2"]
    assert cli.main([*args, "--run-id", "auto"]) == 0
    rows = {Path(r["source_uri"]).name: r for r in stats.read_stats(str(out), "auto").to_pylist()}
    clean, web, noisy = rows["clean.png"], rows["web.jpg"], rows["noisy.png"]
    assert (clean["model"], clean["denoise"]) == (registry.resolve_model(None, 2).name, None)
    assert clean["route"].startswith("clean") and clean["jpeg_quality_est"] is None
    assert (web["model"], web["denoise"], web["route"]) == ("real", 0.75, "jpeg q40")
    assert web["jpeg_quality_est"] == pytest.approx(40, abs=1)
    assert (noisy["model"], noisy["denoise"]) == ("real", 0.75)
    assert noisy["route"].startswith("noise") and 12 <= noisy["noise_sigma_est"] <= 20
    # One identity for auto (its rules and every candidate), its own setting for reuse.
    (identity,) = {r["model_sha256"] for r in rows.values()}
    assert identity not in {registry.resolve_model(None, 2).identity, registry.resolve_model("real", 2).identity}

    alone = tmp_path / "alone"
    assert cli.main(["run", str(single), "--output", str(alone), "--scale", "2", "--model", "real",
                     "--denoise", "0.75"]) == 0
    (by_itself,) = stats.read_stats(str(alone)).to_pylist()
    with Image.open(web["output_uri"].removeprefix("file://")) as a, \
            Image.open(by_itself["output_uri"].removeprefix("file://")) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))

    assert cli.main([*args, "--run-id", "again"]) == 0  # auto again: nothing to redo
    again = {Path(r["source_uri"]).name: r for r in stats.read_stats(str(out), "again").to_pylist()}
    assert {r["status"] for r in again.values()} == {"skipped"}
    assert {n: (r["model"], r["denoise"], r["route"]) for n, r in again.items()} == {
        n: (r["model"], r["denoise"], r["route"]) for n, r in rows.items()}  # what each got
    assert cli.main([*args, "--model", "clean", "--run-id", "clean"]) == 0  # another setting
    redone = stats.read_stats(str(out), "clean").to_pylist()
    assert [r["status"] for r in redone] == ["ok"] * 3
    assert {r["model"] for r in redone} == {registry.resolve_model(None, 2).name}


@pytest.mark.slow
def test_metrics_niqe_scores_each_output_and_its_bicubic_and_the_report_ranks_by_it(ray_local, tmp_path):
    """--metrics niqe: `niqe` and `niqe_bicubic` per image; without references the report's
    metric, worst list and gallery are by NIQE."""
    from sr_batch import reports

    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(scene(120, 160, seed=i)).save(tmp_path / "in" / f"{i}.png")
    config = JobConfig(sources=(str(tmp_path / "in"),), output=str(tmp_path / "out"), model="bicubic",
                       metrics=("niqe",))
    assert run_job(config, echo=quiet).counts == {"ok": 3}
    rows = stats.read_stats(str(tmp_path / "out")).to_pylist()
    assert all(np.isfinite(r["niqe"]) and np.isfinite(r["niqe_bicubic"]) for r in rows)
    # The output is bicubic here: it and its bicubic reference are the same picture.
    assert all(r["niqe"] == pytest.approx(r["niqe_bicubic"], abs=1e-3) for r in rows)
    db = reports.open_stats(str(tmp_path / "out"))
    try:
        report = reports.build_report(db, plots=True, gallery=2)
    finally:
        db.con.close()
    assert report.metric == "niqe" and len(report.gallery) == 4
    worst = report.tables["worst"].to_pylist()
    assert [w["niqe"] for w in worst] == sorted((r["niqe"] for r in rows), reverse=True)


# --- the staged arrangement ------------------------------------------------------------


@pytest.mark.slow
def test_staged_arrangement_writes_what_the_fused_one_does(ray_local, tmp_path):
    """Decode and encode as CPU tasks around model actors that only upscale: the same files,
    byte for byte (grey, alpha, two tile sides), and the same stats but for timings and worker."""
    (tmp_path / "in").mkdir()
    for i, (h, w) in enumerate([(40, 50), (130, 70), (33, 97)]):
        Image.fromarray(scene(h, w, seed=i)).save(tmp_path / "in" / f"rgb{i}.png")
    Image.fromarray(scene(30, 30, seed=9)[..., 0]).save(tmp_path / "in" / "grey.png")
    rgba = np.dstack([scene(30, 40, seed=5), np.linspace(0, 255, 1200).reshape(30, 40).astype(np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "in" / "alpha.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    outputs = {}
    for arrangement in ("fused", "staged"):
        out = tmp_path / arrangement
        # No XMP: it names the run and the time of writing, which differ by design.
        result = run_job(JobConfig(sources=(str(tmp_path / "in"),), output=str(out), model="residual",
                                   arrangement=arrangement, run_id=arrangement, provenance="none"),
                         echo=quiet)
        assert result.counts == {"ok": 5, "failed": 1}
        outputs[arrangement] = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
        record = json.loads((out / "runs" / f"{arrangement}.json").read_text())
        assert record["config"]["arrangement"] == arrangement
        setups = [r["setup_s"] for r in stats.read_stats(str(out)).to_pylist() if r["setup_s"] is not None]
        assert setups and record["phases_s"]["actor_setup"] == max(setups)
    assert outputs["fused"] == outputs["staged"]
    volatile = {"decode_s", "infer_s", "encode_s", "total_s", "setup_s", "worker", "finished_at",
                "output_uri", "run_id"}
    rows = {a: sorted(({k: v for k, v in r.items() if k not in volatile}
                       for r in stats.read_stats(str(tmp_path / a)).to_pylist()), key=lambda r: r["image_id"])
            for a in ("fused", "staged")}
    assert rows["fused"] == rows["staged"]


def test_an_interrupt_that_a_library_swallows_still_stops_the_run():
    """The latch around the batch loop: SIGINT raises KeyboardInterrupt and sets the event, so a
    KeyboardInterrupt caught inside Ray's iteration still ends the run at the next batch."""
    import signal

    from sr_batch.pipeline import _interrupt_latch

    before = signal.getsignal(signal.SIGINT)
    with _interrupt_latch() as interrupted:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode
        except KeyboardInterrupt:
            pass  # what a library might do
        assert interrupted.is_set()
    assert signal.getsignal(signal.SIGINT) is before

