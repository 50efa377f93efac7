"""`python -m sr_batch.models.evaluation`: bicubic and models in the standard convention, and a
bfloat16 row per model."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from sr_batch import quality, resample  # noqa: E402
from sr_batch.models.architectures import build_model  # noqa: E402


def test_evaluate_prints_bicubic_and_models_in_the_standard_convention(tmp_path, hr_folder, capsys):
    from sr_batch.models import evaluation
    from sr_batch.models.data import load_images

    model_path = tmp_path / "untrained.keras"
    build_model("residual", 2).save(model_path)
    out_json = tmp_path / "rows.json"
    assert evaluation.main([str(hr_folder), "--scale", "2", "--model", str(model_path),
                            "--no-speed", "--threads", "1", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "bicubic" in printed and "untrained.keras" in printed and "border = scale" in printed
    rows = {r["name"]: r for r in json.loads(out_json.read_text())}
    # The bicubic row, by hand: HR cropped to a multiple of 2, Pillow LR, Y, border 2.
    psnrs, ssims = [], []
    for hr in load_images([str(hr_folder)]):
        hr = hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2]
        up = resample.upscale_bicubic(resample.downscale_bicubic(hr, 2), 2)
        psnrs.append(quality.psnr_y(up, hr, border=2))
        ssims.append(quality.ssim_y(up, hr, border=2))
    scores = rows["bicubic"]["scores"]["synthetic"]
    assert scores["psnr_y"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert scores["blockiness"] == scores["blockiness_bicubic"] == pytest.approx(np.mean(
        [quality.grid_blockiness(resample.upscale_bicubic(resample.downscale_bicubic(
            hr[: hr.shape[0] // 2 * 2, : hr.shape[1] // 2 * 2], 2), 2), 2)
         for hr in load_images([str(hr_folder)])]), abs=1e-3)
    assert "blocks" in printed
    assert scores["ssim_y"] == pytest.approx(np.mean(ssims), abs=1e-4)
    # The untrained residual model is TF's bicubic: within a rounding step of Pillow's.
    model_row = rows["untrained.keras"]
    assert model_row["params"] == build_model("residual", 2).count_params()
    assert abs(model_row["scores"]["synthetic"]["psnr_y"] - scores["psnr_y"]) < 1.0


def test_evaluate_bfloat16_adds_a_row_per_model(tmp_path, hr_folder, capsys):
    from sr_batch.models import evaluation

    model_path = tmp_path / "untrained.keras"
    build_model("residual", 2).save(model_path)
    out_json = tmp_path / "rows.json"
    assert evaluation.main([str(hr_folder), "--scale", "2", "--model", str(model_path), "--bfloat16",
                            "--no-speed", "--threads", "1", "--json", str(out_json)]) == 0
    assert "untrained.keras bf16" in capsys.readouterr().out
    rows = json.loads(out_json.read_text())
    assert [(r["name"], r["precision"]) for r in rows] == [
        ("bicubic", "float32"), ("untrained.keras", "float32"), ("untrained.keras", "bfloat16")]
    # Untrained, the model is its float32 bicubic skip (the convolutions add zeros): the same scores.
    full, half = (r["scores"]["synthetic"]["psnr_y"] for r in rows[1:])
    assert half == pytest.approx(full, abs=0.01)


def test_evaluate_routes_auto_per_image_as_the_job_does(tmp_path, hr_folder, capsys):
    """`--model auto` on each preset: the JPEG preset's LRs (their files) route to `real`, the
    clean ones to the clean default, with the same scores as that model alone."""
    from sr_batch.models import evaluation

    out_json = tmp_path / "rows.json"
    assert evaluation.main([str(hr_folder), "--scale", "2", "--model", "auto", "--model", "residual",
                            "--preset", "clean", "--preset", "jpeg30", "--no-speed", "--threads", "1",
                            "--json", str(out_json)]) == 0
    assert "routes: real dn0.75 4" in capsys.readouterr().out
    rows = {(r["name"], r["preset"]): r for r in json.loads(out_json.read_text())}
    assert rows["auto", "jpeg30"]["routes"] == {"real dn0.75": 4}
    assert rows["auto", "clean"]["routes"] == {"clean": 4}
    assert rows["auto", "clean"]["scores"] == rows["residual", "clean"]["scores"]
