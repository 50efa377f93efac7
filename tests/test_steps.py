"""Each per-image step alone, without Ray or TensorFlow (bicubic is the model): decode, route,
size, upscale, resize, measure, write, record; the step list's segments, the Arrow hand-off
and the stats parts."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import png_bytes, scene
from sr_batch import handoff, stats, steps
from sr_batch.config import JobConfig
from sr_batch.errors import ImageError
from sr_batch.inference import Models
from sr_batch.work import Step, Work, new_work


def jpeg_bytes(array: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def settings_for(tmp_path, files: dict[str, bytes], **options):
    """(ActorSettings, the planned manifest rows) of a run over `files`, planned as `run` does."""
    from sr_batch.pipeline import actor_settings
    from sr_batch.plan import plan_run

    source = tmp_path / "in"
    source.mkdir(exist_ok=True)
    for name, data in files.items():
        (source / name).write_bytes(data)
    options = {"model": "bicubic", "scale": 2, "provenance": "none", "images_per_call": 8} | options
    plan = plan_run(JobConfig(sources=(str(source),), output=str(tmp_path / "out"), **options),
                    run_id="steps-1")
    rows = {row["uri"].rsplit("/", 1)[-1]: row for row in plan.todo.to_pylist()}
    return actor_settings(plan, (1, 1)), rows


def works_of(settings, rows: dict) -> list[Work]:
    return [new_work(settings, row, "w") for row in rows.values()]


def test_the_list_is_cut_into_cpu_model_cpu_segments():
    names = [[step.name for step in part] for part in steps.segments()]
    assert names == [["decode", "route", "size"], ["upscale", "stream"],
                     ["resize", "measure", "write", "record"]]
    assert [part[0].on_model for part in steps.segments()] == [False, True, False]
    assert len({step.name for step in steps.STEPS}) == len(steps.STEPS)


def test_decode_reads_and_fails_as_data(tmp_path):
    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(20, 30)), "b.png": b"not a png"})
    ok, bad = steps.Decode(settings)(works_of(settings, rows))
    assert ok.decoded.pixels.shape == (20, 30, 3) and not ok.failed
    assert ok.stats["width"] == 30 and ok.stats["height"] == 20 and len(ok.stats["source_sha256"]) == 64
    assert ok.source is None  # the bytes are kept for routing only
    assert bad.failed and bad.stats["error_type"] == "not_an_image" and bad.decoded is None
    assert "decode_s" in ok.timings and "decode_s" in bad.timings
    again = steps.Decode(settings)([ok])  # a read Work is not read again
    assert again[0].decoded is ok.decoded


def test_decode_fails_a_row_the_plan_failed(tmp_path):
    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(8, 8))})
    row = rows["a.png"] | {"plan_error_type": "path_escape", "plan_error_message": "outside OUT"}
    [w] = steps.Decode(settings)([new_work(settings, row, "w")])
    assert w.stats["error_type"] == "path_escape" and w.stats["error_message"] == "outside OUT"


def test_route_sends_a_low_quality_jpeg_to_real_and_a_clean_png_to_clean(tmp_path):
    settings, rows = settings_for(tmp_path, {"clean.png": png_bytes(scene(64, 64, seed=1)),
                                             "q30.jpg": jpeg_bytes(scene(64, 64, seed=1), 30)},
                                  model="auto", scale=4)
    works = steps.ChooseRoute(settings)(steps.Decode(settings)(works_of(settings, rows)))
    by_name = {w.row["uri"].rsplit("/", 1)[-1]: w for w in works}
    assert by_name["clean.png"].route == "clean" and by_name["clean.png"].stats["route"].startswith("clean")
    assert by_name["q30.jpg"].route.startswith("real") and by_name["q30.jpg"].stats["jpeg_quality_est"] <= 40
    assert all(w.source is None for w in works)


def test_size_plans_passes_and_refuses_too_many_output_pixels(tmp_path):
    from sr_batch.sizing import OutputSize

    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(20, 30))})
    [w] = steps.Size(settings)(steps.Decode(settings)(works_of(settings, rows)))
    assert w.passes == (2,) and w.target is None
    asked = settings.__class__(**{**settings.__dict__, "output_size": OutputSize(outscale=3.0)})
    [w] = steps.Size(asked)(steps.Decode(asked)(works_of(asked, rows)))
    assert w.passes == (2, 2) and w.target == (90, 60)
    small = settings.__class__(**{**settings.__dict__, "max_output_pixels": 100})
    [w] = steps.Size(small)(steps.Decode(small)(works_of(small, rows)))
    assert w.stats["error_type"] == "too_many_pixels" and "--max-output-pixels" in w.stats["error_message"]


def test_upscale_resize_measure_write_record(tmp_path):
    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(20, 30)),
                                             "b.png": png_bytes(scene(10, 12, seed=3))})
    models = Models(settings)
    works = steps.run(steps.build(steps.STEPS, settings, models), works_of(settings, rows))
    for w in works:
        assert w.stats["status"] == "ok", w.stats.get("error_message")
        assert w.decoded is None and w.output is None  # the pixels are freed after the write
        written = Image.open(w.stats["output_uri"].removeprefix("file://"))
        assert written.size == (2 * w.stats["width"], 2 * w.stats["height"])
        assert w.stats["psnr_y_consistency"] > 40 and w.stats["tile_size"] == settings.tiling.largest
        assert w.stats["total_s"] >= w.stats["decode_s"] > 0 and w.stats["finished_at"] is not None


def test_resize_reaches_the_asked_size_and_bicubic_alpha(tmp_path):
    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(20, 30))})
    [w] = steps.Decode(settings)(works_of(settings, rows))
    w.output, w.target = np.zeros((40, 60, 3), np.uint8), (45, 30)
    w.decoded = w.decoded.__class__(**{**w.decoded.__dict__, "alpha": np.full((20, 30), 200, np.uint8)})
    steps.Resize(settings)([w])
    assert w.output.shape == (30, 45, 3) and w.alpha.shape == (30, 45)
    assert int(w.alpha.min()) == int(w.alpha.max()) == 200


def test_write_fails_a_format_the_plan_reserved_no_name_for(tmp_path):
    grey16 = io.BytesIO()
    Image.fromarray(scene(20, 30)[..., 0].astype(np.uint16) * 257).save(grey16, format="PNG")
    settings, rows = settings_for(tmp_path, {"a.png": grey16.getvalue()}, format="jpeg")
    row = rows["a.png"] | {"output_exts": ["jpg"], "output_uris": [rows["a.png"]["output_uris"][0]]}
    before = steps.build(steps.segments()[0], settings) + steps.build(steps.segments()[1], settings, Models(settings))
    [w] = steps.run(before, [new_work(settings, row, "w")])
    assert w.output.dtype == np.uint16  # 16 bits: JPEG cannot hold it, and the plan named no PNG
    steps.Write(settings)(steps.Measure(settings)([w]))
    assert w.stats["error_type"] == "unsupported_mode" and "give it a .png name" in w.stats["error_message"]
    assert w.output is None and w.measuring is None


def test_record_gives_a_failed_row_its_routes_tiling(tmp_path):
    settings, rows = settings_for(tmp_path, {"b.png": b"broken"})
    [w] = steps.Record(settings)(steps.Decode(settings)(works_of(settings, rows)))
    assert w.stats["tile_size"] == settings.tiling.largest and w.stats["tile_overlap"] == settings.tiling.overlap
    assert w.stats["encode_s"] is None and w.stats["decode_s"] > 0


def test_a_bug_in_a_step_fails_that_image_only(tmp_path):
    class Flaky(Step):
        name, doing = "flaky", "testing"

        def one(self, w):
            if w.stats["width"] == 30:
                raise KeyError("boom")
            if w.stats["width"] == 12:
                raise ImageError("no good")

    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(20, 30)),
                                             "b.png": png_bytes(scene(10, 12)),
                                             "c.png": png_bytes(scene(10, 14))})
    a, b, c = Flaky(settings)(steps.Decode(settings)(works_of(settings, rows)))
    assert a.stats["error_type"] == "internal_error" and "KeyError while testing" in a.stats["error_message"]
    assert b.stats["error_type"] == ImageError.error_type and c.in_memory and not c.failed


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_the_arrow_hand_off_keeps_every_array_and_field(tmp_path, dtype):
    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(20, 30)), "b.png": b"broken"})
    works = steps.Decode(settings)(works_of(settings, rows))
    works[0].output = (np.arange(40 * 60 * 3) % 251).astype(dtype).reshape(40, 60, 3)
    works[0].alpha = np.ones((40, 60), dtype)
    works[0].passes, works[0].route = (2,), "main"
    back = handoff.from_arrow(handoff.to_arrow(works))
    np.testing.assert_array_equal(back[0].output, works[0].output)
    np.testing.assert_array_equal(back[0].alpha, works[0].alpha)
    np.testing.assert_array_equal(back[0].decoded.pixels, works[0].decoded.pixels)
    assert back[0].output.dtype == dtype and not back[0].output.flags.owndata  # views, no copy
    assert back[0].stats == works[0].stats and back[0].passes == (2,)
    assert back[1].failed and back[1].decoded is None and back[1].output is None


def test_staged_segments_give_the_fused_rows(tmp_path):
    from sr_batch.actor import ModelActor, UpscaleActor

    settings, rows = settings_for(tmp_path, {"a.png": png_bytes(scene(20, 30)), "b.png": b"broken"})
    batch = pa.Table.from_pylist(list(rows.values()))
    staged = steps.cpu_stage(ModelActor(settings)(steps.cpu_stage(batch, settings, 0)), settings, 2)
    fused = UpscaleActor(settings)(batch)
    keep = ["image_id", "status", "error_type", "bytes_out", "output_sha256", "tile_size", "psnr_y_consistency"]
    assert staged.select(keep).to_pylist() == fused.select(keep).to_pylist()


def test_stats_parts_round_trip(tmp_path):
    from sr_batch.layout import OutLayout

    layout = OutLayout.of(str(tmp_path / "out"))
    table = stats.make_table([{"image_id": "a", "source_uri": "file:///a.png", "status": "ok",
                               "psnr_y_consistency": stats.nullable(float("nan")), "sharpness_ratio": 1.5}])
    uri = stats.write_part(layout, "r-1", table, 0, retries=0)
    assert "run_id=r-1" in uri and uri.endswith(".parquet")
    back = pq.read_table(uri.removeprefix("file://"))
    assert back.schema.equals(stats.SCHEMA, check_metadata=False)
    assert back.to_pylist()[0]["psnr_y_consistency"] is None and back.to_pylist()[0]["sharpness_ratio"] == 1.5
    assert stats.read_stats(str(tmp_path / "out"), "r-1").num_rows == 1
