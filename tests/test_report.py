"""Reports over a generated stats dataset whose answers are known, and the HTML in headless Chromium."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import signal
import subprocess
import uuid

import numpy as np
import pytest
from PIL import Image

from sr_batch import cli, report, stats, storage
from sr_batch.errors import ReportError
from sr_batch.resample import upscale_bicubic

from conftest import scene

RUN_A, RUN_B = "20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
IMAGES = [f"img{i:02d}" for i in range(10)]
DELTAS = [i - 4 for i in range(10)]  # run B's psnr_y_consistency minus run A's, per image


def _rows(output: str, run: str, model: str, consistency: list[float], images_root: str) -> list[dict]:
    rows = []
    for i, (image_id, value) in enumerate(zip(IMAGES, consistency)):
        with_reference = i < 5
        rows.append({
            "image_id": image_id, "status": "ok", "model": model, "scale": 2,
            "source_uri": f"{images_root}/in/{image_id}.png",
            "output_uri": f"{output}/images/{image_id}.png",
            "reference_uri": f"{images_root}/ref/{image_id}.png" if with_reference else None,
            "width": 32, "height": 32, "out_width": 64, "out_height": 64,
            "total_s": float(i + 1), "psnr_y_consistency": value,
            "sharpness_ratio": 1.0 + i / 10,
            "psnr_y": 25.0 + i if with_reference else None,
            "psnr_y_bicubic": 24.0 + i if with_reference else None,
            "finished_at": T0 + dt.timedelta(seconds=i),
        })
    return rows


def make_stats(output: str, images_root: str | None = None) -> None:
    """Run A: 10 ok (psnr_y_consistency 30..39), 2 failed; run B: the same 10 ok with DELTAS, 1 failed."""
    images_root = images_root or output
    consistency_a = [30.0 + i for i in range(10)]
    rows_a = _rows(output, RUN_A, "residual", consistency_a, images_root) + [
        {"image_id": "img10", "status": "failed", "model": "residual", "error_type": "corrupt_image",
         "error_message": "cannot decode image data: broken data stream", "source_uri": "x/img10.png",
         "finished_at": T0},
        {"image_id": "img11", "status": "failed", "model": "residual", "error_type": "missing_file",
         "error_message": "no such file: x/img11.png", "source_uri": "x/img11.png", "finished_at": T0},
    ]
    # Two parts, to read like a real run.
    stats.write_part(output, RUN_A, stats.make_table(rows_a[:6]), 0)
    stats.write_part(output, RUN_A, stats.make_table(rows_a[6:]), 1)
    storage.write_bytes_atomic(storage.join(output, "runs", f"{RUN_A}.json"), json.dumps(
        {"run_id": RUN_A, "started_at": "2026-01-01T00:00:00+00:00", "wall_s": 2.0,
         "model": {"name": "residual"}, "config": {"scale": 2}}).encode())

    consistency_b = [a + d for a, d in zip(consistency_a, DELTAS)]
    rows_b = _rows(output, RUN_B, "subpixel", consistency_b, images_root)
    for row in rows_b:
        row["finished_at"] += dt.timedelta(days=1)
    rows_b.append({"image_id": "img10", "status": "failed", "model": "subpixel",
                   "error_type": "corrupt_image", "error_message": "cannot decode image data: x",
                   "source_uri": "x/img10.png"})
    stats.write_part(output, RUN_B, stats.make_table(rows_b), 0)  # no run record: still running


@pytest.fixture
def out(tmp_path) -> str:
    root = str(tmp_path / "out")
    make_stats(root)
    return root


@pytest.fixture
def db(out):
    return report.open_stats(out)


def test_summary_counts_throughput_and_quantiles(db):
    made = report.build_report(db, run=RUN_A)
    (row,) = made.tables["summary"].to_pylist()
    assert (row["run_id"], row["model"]) == (RUN_A, "residual")
    assert (row["images"], row["ok"], row["failed"], row["skipped"]) == (12, 10, 2, 0)
    assert row["wall_s"] == 2.0  # from the run record
    assert row["images_per_s"] == pytest.approx(6.0)
    assert row["output_mp_per_s"] == pytest.approx(10 * 64 * 64 / 1e6 / 2.0)
    # quantile_cont over 1..10 and 30..39: linear interpolation
    assert [row["total_s_p50"], row["total_s_p90"], row["total_s_p99"]] == pytest.approx([5.5, 9.1, 9.91])
    assert [row["psnr_y_consistency_p10"], row["psnr_y_consistency_p50"],
            row["psnr_y_consistency_p90"]] == pytest.approx([30.9, 34.5, 38.1])
    assert row["sharpness_ratio_p50"] == pytest.approx(1.45)
    assert row["with_reference"] == 5
    assert row["psnr_y_gain_mean"] == pytest.approx(1.0)


def test_runs_latest_previous_all(db):
    assert list(db.runs) == [RUN_A, RUN_B]
    assert report.build_report(db).run_ids == [RUN_B]  # default: latest
    assert db.select_runs("previous") == [RUN_A]
    summary = report.build_report(db, run="all").tables["summary"].to_pylist()
    assert [r["run_id"] for r in summary] == [RUN_A, RUN_B]
    run_b = summary[1]
    assert (run_b["images"], run_b["ok"], run_b["failed"]) == (11, 10, 1)
    # No run record: the wall time is the span of finished_at (0..9 s).
    assert run_b["wall_s"] == pytest.approx(9.0)
    assert run_b["images_per_s"] == pytest.approx(11 / 9.0)


def test_worst_n_by_metric(db):
    made = report.build_report(db, run=RUN_A, metric="psnr_y_consistency", worst=3)
    worst = made.tables["worst"].to_pylist()
    assert [r["image_id"] for r in worst] == ["img00", "img01", "img02"]
    assert [r["psnr_y_consistency"] for r in worst] == [30.0, 31.0, 32.0]
    assert worst[0]["output_uri"].endswith("/images/img00.png")
    # Lower is better for times: the worst are the slowest.
    slow = report.build_report(db, run=RUN_A, metric="total_s", worst=2).tables["worst"].to_pylist()
    assert [r["image_id"] for r in slow] == ["img09", "img08"]
    # The default metric is psnr_y where references exist; only 5 images have one.
    default = report.build_report(db, run=RUN_A, worst=10)
    assert default.metric == "psnr_y"
    assert [r["image_id"] for r in default.tables["worst"].to_pylist()] == IMAGES[:5]


def test_failures_grouped_with_an_example(db):
    failures = report.build_report(db, run="all").tables["failures"].to_pylist()
    assert [(f["error_type"], f["images"], f["runs"]) for f in failures] == [
        ("corrupt_image", 2, 2), ("missing_file", 1, 1)]
    assert failures[1]["example_message"] == "no such file: x/img11.png"


@pytest.mark.parametrize("how", ["runs", "models"])
def test_compare_on_the_same_images(db, how):
    kwargs = ({"compare_runs": ("previous", "latest")} if how == "runs"
              else {"compare_models": ("residual", "subpixel")})
    made = report.build_report(db, metric="psnr_y_consistency", worst=3, **kwargs)
    (c,) = made.tables["compare"].to_pylist()
    assert (c["images_a"], c["images_b"], c["common"]) == (10, 10, 10)
    assert c["delta_mean"] == pytest.approx(np.mean(DELTAS))
    assert c["delta_p50"] == pytest.approx(np.quantile(DELTAS, 0.5))
    assert c["delta_p05"] == pytest.approx(np.quantile(DELTAS, 0.05))
    assert (c["better"], c["worse"], c["same"]) == (5, 4, 1)
    worse = made.tables["compare_worse"].to_pylist()
    assert [(r["image_id"], r["delta"]) for r in worse] == [("img00", -4), ("img01", -3), ("img02", -2)]


def test_same_answers_through_memory_filesystem(tmp_path):
    output = f"memory://report-test-{uuid.uuid4().hex[:8]}"
    make_stats(output)
    made = report.build_report(report.open_stats(output), run="all", metric="psnr_y_consistency")
    assert [r["images"] for r in made.tables["summary"].to_pylist()] == [12, 11]


def test_sql_over_all_runs_with_run_id(out, capsys):
    code = cli.main(["report", out, "--format", "csv", "--sql",
                     "SELECT run_id, count(*) AS n FROM stats GROUP BY run_id ORDER BY run_id"])
    assert code == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [["run_id", "n"], [RUN_A, "12"], [RUN_B, "11"]]


def test_bad_sql_is_one_clear_line(out, capsys):
    code = cli.main(["report", out, "--sql", "SELEC image_id FROM stats"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("sr-batch: error: bad SQL: Parser Error")
    code = cli.main(["report", out, "--sql", "SELECT no_such_column FROM stats"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE and err.count("\n") == 1 and "no_such_column" in err


def test_clear_errors_for_unknown_run_metric_and_missing_stats(db, tmp_path):
    with pytest.raises(ReportError, match="no run 'nope'"):
        report.build_report(db, run="nope")
    with pytest.raises(ReportError, match="unknown metric"):
        report.build_report(db, metric="psnr; DROP TABLE x")
    with pytest.raises(ReportError, match="no stats under"):
        report.open_stats(str(tmp_path / "empty"))


def test_table_and_json_formats(out, capsys):
    assert cli.main(["report", out, "--run", RUN_A]) == 0
    text = capsys.readouterr().out
    assert "== Summary per run ==" in text and "corrupt_image" in text
    assert cli.main(["report", out, "--format", "json", "--compare", RUN_A, RUN_B]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"] == [RUN_A, RUN_B] and doc["metric"] == "psnr_y"
    # Only the 5 images with a reference have psnr_y, unchanged between the runs.
    assert (doc["compare"][0]["common"], doc["compare"][0]["same"]) == (5, 5)


# --- HTML ---------------------------------------------------------------------------------


def _write_images(out: str, images_root: str) -> None:
    """Inputs, outputs (a sharpened bicubic) and references for the first 6 images; the rest missing."""
    for i, image_id in enumerate(IMAGES[:6]):
        lr = scene(32, 32, seed=i)
        up = upscale_bicubic(lr, 2)
        for folder, pixels in (("in", lr), ("ref", up), ("images", np.clip(up.astype(int) * 1.1, 0, 255))):
            root = out if folder == "images" else images_root
            os.makedirs(f"{root}/{folder}", exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(f"{root}/{folder}/{image_id}.png")


def test_gallery_crops_and_placeholders(tmp_path):
    out = str(tmp_path / "out")
    make_stats(out, images_root=str(tmp_path / "src"))
    _write_images(out, str(tmp_path / "src"))
    made = report.build_report(report.open_stats(out), run=RUN_A, metric="psnr_y_consistency",
                               plots=True, gallery=3)
    by_id = {(item.end, item.row["image_id"]): item.crops for item in made.gallery}
    worst = by_id[("worst", "img00")]  # readable, with a reference
    assert set(worst) == {"bicubic", "output", "reference"}
    assert all(uri and uri.startswith("data:image/jpeg;base64,") for uri in worst.values())
    best = by_id[("best", "img09")]  # no files on disk, no reference
    assert best == {"bicubic": None, "output": None}
    page = report.render_html(made)
    assert page.count("not readable") == 2 * 3  # the three best have no files


def _chromium() -> str:
    path = shutil.which("chromium")
    if not path:
        pytest.fail("Debian's `chromium` is not installed: run .ci/run, or "
                    "apt-get install -y chromium (the HTML report test needs a headless browser)")
    return path


def _run_chromium(args: list[str], profile: str, timeout_s: float = 90) -> str:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args]
    # Its own session, so a hang is ended by killing Chromium's process group and nothing else.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"chromium did not finish in {timeout_s} s")
    if process.returncode != 0:
        pytest.fail(f"chromium exited {process.returncode}: {stderr[-2000:]}")
    return stdout


def test_html_report_renders_in_headless_chromium(tmp_path):
    out = str(tmp_path / "out")
    make_stats(out, images_root=str(tmp_path / "src"))
    _write_images(out, str(tmp_path / "src"))
    page = tmp_path / "report.html"
    assert cli.main(["report", out, "--format", "html", "-o", str(page),
                     "--compare", RUN_A, RUN_B]) == 0
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text

    shot = tmp_path / "shot.png"
    # One launch: the screenshot, and the DOM after rendering on stdout.
    dom = _run_chromium([f"--screenshot={shot}", "--dump-dom", "--window-size=1200,2000", page.as_uri()],
                        str(tmp_path / "profile"))
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 10, "screenshot is blank"
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "screenshot has too few colours"

    for section in ("summary", "histograms", "scatter", "gallery", "worst", "failures", "compare"):
        assert f'id="{section}"' in dom, section
    assert dom.count("<svg") >= 4 and "data:image/jpeg;base64," in dom
