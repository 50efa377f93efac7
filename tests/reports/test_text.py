"""The report as a text table and as JSON, through the CLI."""

from __future__ import annotations

import json

from sr_batch import cli

from reports.known_stats import RUN_A, RUN_B


def test_table_and_json_formats(out, capsys):
    assert cli.main(["report", out, "--run", RUN_A]) == 0
    text = capsys.readouterr().out
    assert "== Summary per run ==" in text and "corrupt_image" in text
    assert cli.main(["report", out, "--format", "json", "--compare", RUN_A, RUN_B]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"] == [RUN_A, RUN_B] and doc["metric"] == "psnr_y"
    # Only the 5 images with a reference have psnr_y, unchanged between the runs.
    assert (doc["compare"][0]["common"], doc["compare"][0]["same"]) == (5, 5)
