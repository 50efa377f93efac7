"""Report queries over the known stats: summary, worst N, failures, comparisons, errors."""

from __future__ import annotations

import numpy as np
import pytest

from sr_batch import reports
from sr_batch.errors import ReportError

from reports.known_stats import DELTAS, IMAGES, RUN_A


def test_summary_counts_throughput_and_quantiles(db):
    made = reports.build_report(db, run=RUN_A)
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


def test_worst_n_by_metric(db):
    made = reports.build_report(db, run=RUN_A, metric="psnr_y_consistency", worst=3)
    worst = made.tables["worst"].to_pylist()
    assert [r["image_id"] for r in worst] == ["img00", "img01", "img02"]
    assert [r["psnr_y_consistency"] for r in worst] == [30.0, 31.0, 32.0]
    assert worst[0]["output_uri"].endswith("/images/img00.png")
    # Lower is better for times: the worst are the slowest.
    slow = reports.build_report(db, run=RUN_A, metric="total_s", worst=2).tables["worst"].to_pylist()
    assert [r["image_id"] for r in slow] == ["img09", "img08"]
    # The default metric is psnr_y where references exist; only 5 images have one.
    default = reports.build_report(db, run=RUN_A, worst=10)
    assert default.metric == "psnr_y"
    assert [r["image_id"] for r in default.tables["worst"].to_pylist()] == IMAGES[:5]


def test_failures_grouped_with_an_example(db):
    failures = reports.build_report(db, run="all").tables["failures"].to_pylist()
    assert [(f["error_type"], f["images"], f["runs"]) for f in failures] == [
        ("corrupt_image", 2, 2), ("missing_file", 1, 1)]
    assert failures[1]["example_message"] == "no such file: x/img11.png"


@pytest.mark.parametrize("how", ["runs", "models"])
def test_compare_on_the_same_images(db, how):
    kwargs = ({"compare_runs": ("previous", "latest")} if how == "runs"
              else {"compare_models": ("residual", "subpixel")})
    made = reports.build_report(db, metric="psnr_y_consistency", worst=3, **kwargs)
    (c,) = made.tables["compare"].to_pylist()
    assert (c["images_a"], c["images_b"], c["common"]) == (10, 10, 10)
    assert c["delta_mean"] == pytest.approx(np.mean(DELTAS))
    assert c["delta_p50"] == pytest.approx(np.quantile(DELTAS, 0.5))
    assert c["delta_p05"] == pytest.approx(np.quantile(DELTAS, 0.05))
    assert (c["better"], c["worse"], c["same"]) == (5, 4, 1)
    worse = made.tables["compare_worse"].to_pylist()
    assert [(r["image_id"], r["delta"]) for r in worse] == [("img00", -4), ("img01", -3), ("img02", -2)]


def test_clear_errors_for_unknown_run_metric_and_missing_stats(db, tmp_path):
    with pytest.raises(ReportError, match="no run 'nope'"):
        reports.build_report(db, run="nope")
    with pytest.raises(ReportError, match="unknown metric"):
        reports.build_report(db, metric="psnr; DROP TABLE x")
    with pytest.raises(ReportError, match="no stats under"):
        reports.open_stats(str(tmp_path / "empty"))
