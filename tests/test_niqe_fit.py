"""Fitting NIQE's pristine model: reproducible, with provenance; `--check` catches a changed file
or other images; the entry point reports errors in one line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_batch.niqe import load_params
from sr_batch.niqe_fit import dump_params, fit_folders, fit_params, main
from test_niqe import pink_noise

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pristine_dir(tmp_path_factory):
    """Four textured 256x256 PNGs (1/f noise, grey and colour) to fit on in a second."""
    folder = tmp_path_factory.mktemp("pristine")
    rng = np.random.default_rng(7)
    for i in range(4):
        channels = [pink_noise(256, rng) for _ in range(3 if i % 2 else 1)]
        image = np.clip(np.rint(128 + 40 * np.dstack(channels)), 0, 255).astype(np.uint8)
        Image.fromarray(image.squeeze()).save(folder / f"im{i}.png")
    (folder / "notes.txt").write_text("not an image: skipped by suffix")
    return folder


def test_fit_is_deterministic_and_records_provenance(pristine_dir, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main([str(pristine_dir), "-o", str(first)]) == 0
    assert main([str(pristine_dir), "-o", str(second)]) == 0
    assert first.read_bytes() == second.read_bytes()
    params = load_params(first)
    assert params.provenance["image_count"] == 4
    assert params.provenance["candidate_patch_count"] == 16
    assert 4 <= params.provenance["patch_count"] <= 16
    assert params.provenance["folders"] == [str(pristine_dir)]
    # fit_params on the decoded arrays gives the same numbers as the folder fit.
    arrays = [np.asarray(Image.open(p)) for p in sorted(pristine_dir.glob("*.png"))]
    direct = fit_params(arrays)
    np.testing.assert_array_equal(direct.mu, params.mu)
    np.testing.assert_array_equal(direct.cov, params.cov)


def test_check_passes_on_its_own_file_and_fails_on_a_changed_one(pristine_dir, tmp_path, capsys):
    path = tmp_path / "fit.json"
    assert main([str(pristine_dir), "-o", str(path)]) == 0
    assert main([str(pristine_dir), "--check", str(path)]) == 0

    document = json.loads(path.read_text())
    document["mu"][3] *= 1 + 1e-13  # round-off: still passes
    path.write_text(json.dumps(document))
    assert main([str(pristine_dir), "--check", str(path)]) == 0

    document["cov"][5][5] *= 1 + 1e-6
    path.write_text(json.dumps(document))
    capsys.readouterr()
    assert main([str(pristine_dir), "--check", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cov[5, 5]" in err, err


def test_check_names_different_inputs(pristine_dir, tmp_path, capsys):
    path = tmp_path / "fit.json"
    assert main([str(pristine_dir), "-o", str(path)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    for image in sorted(pristine_dir.glob("*.png")):
        (other / image.name).write_bytes(image.read_bytes())
    flipped = np.asarray(Image.open(other / "im0.png"))[::-1]
    Image.fromarray(flipped).save(other / "im0.png")  # same count, other pixels
    capsys.readouterr()
    assert main([str(other), "--check", str(path)]) == 1
    assert "the images differ" in capsys.readouterr().err

    for image in sorted(other.glob("*.png"))[1:]:
        image.unlink()
    capsys.readouterr()
    assert main([str(other), "--check", str(path)]) == 1
    assert "image_count is 1, the file says 4" in capsys.readouterr().err


def test_entry_point_checks_and_reports_errors_in_one_line(pristine_dir, tmp_path):
    path = tmp_path / "fit.json"
    path.write_bytes(dump_params(fit_folders([str(pristine_dir)])))
    script = [sys.executable, str(ROOT / "jobs" / "fit_niqe.py")]
    ok = subprocess.run(script + [str(pristine_dir), "--check", str(path)], check=False, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "matches" in ok.stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    failed = subprocess.run(script + [str(empty), "-o", str(tmp_path / "x.json")], check=False, capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: no images") and failed.stderr.count("\n") == 1
    assert not (tmp_path / "x.json").exists()


def test_usage_needs_an_output_or_a_check(pristine_dir):
    with pytest.raises(SystemExit) as exit_info:
        main([str(pristine_dir)])
    assert exit_info.value.code == 2
