"""`sr-batch demo`: the set and its manifest, and the whole command on a real local Ray:
quiet on the console, scored against the originals, ending with the report."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sr_batch import demo, ray_session, resample, stats
from sr_batch.manifest import read_manifest

from conftest import png_bytes, scene, stop_process

REPO = Path(__file__).resolve().parents[1]

# What a newcomer would read as a failure: Python and Ray warnings, Ray's C++ log prefix
# ("[2026-11-29 15:23:12,053 E 32548 32548]"), absl's ("E1129 ...", "I0000 ..."), the core
# worker's notices, tracebacks, and the lines Ray Data and TensorFlow print on their own.
NOISE = re.compile(r"WARNING|Warning:|^\[[^\]]* [IWEF] \d+ \d+\]|^[IWEF]\d{4} |core_worker|Traceback"
                   r"|Progress bars|oneDNN|absl::|RAW: |\(raylet\)", re.MULTILINE)


def test_make_demo_set_pairs_inputs_with_originals(tmp_path):
    made = demo.make_demo_set(tmp_path / "out", count=3, size=(24, 40), scale=3)
    assert made.count == 3 and made.size == (24, 40) and made.scale == 3
    table = read_manifest(str(made.manifest))
    assert pq.read_schema(made.manifest).names == ["uri", "reference_uri"]
    assert table.num_rows == 3
    for uri, reference in zip(table.column("uri").to_pylist(), table.column("reference_uri").to_pylist()):
        small = np.asarray(Image.open(uri.removeprefix("file://")))
        original = np.asarray(Image.open(reference.removeprefix("file://")))
        assert small.shape == (24, 40, 3) and original.shape == (72, 120, 3)
        # The input is exactly the SR benchmarks' LR image of its original.
        assert np.array_equal(small, resample.downscale_bicubic(original, 3))
    assert sorted(p.name for p in made.inputs.iterdir()) == ["demo000.png", "demo001.png", "demo002.png"]


def test_quiet_worker_lines_match_only_the_known_noise():
    skip = re.compile(ray_session.QUIET_WORKER_LINES)
    assert skip.search("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert skip.search("I0000 00:00:1795965795.844089    2247 port.cc:153] oneDNN custom operations are on. "
                       "You may see slightly different numerical results")
    assert skip.search("E0000 00:00:1796455164.294902   17799 util.cc:131] oneDNN supports DT_HALF only on "
                       "platforms with AVX-512. Falling back to the default Eigen-based implementation if present.")
    assert skip.search("[mutex.cc : 452] RAW: Lock blocking 0x563e17f48cc0   @ 0x7fc8c0e2b1a2")
    for real in ["[mutex.cc : 1954] RAW: Check (v & kMuWriter) failed: Lock: Mutex corrupt",
                 "E0000 00:00:1795965795.8 2247 cuda_dnn.cc:8579] Unable to register cuDNN factory",
                 "E0000 00:00:1796455164.2 17799 util.cc:131] oneDNN primitive creation failed",
                 "Traceback (most recent call last):", "ValueError: bad image",
                 "WARNING: something else entirely"]:
        assert not skip.search(real), real


def test_drop_log_message_drops_only_that_message(caplog):
    ray_session._drop_log_message("sr_batch.test_demo.quiet", "Progress bars disabled.")
    ray_session._drop_log_message("sr_batch.test_demo.quiet", "Progress bars disabled.")  # once only
    logger = logging.getLogger("sr_batch.test_demo.quiet")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="sr_batch.test_demo.quiet"):
        logger.warning("Progress bars disabled. To enable, set ...")
        logger.warning("Progress bars for operators disabled.")
    assert [r.getMessage() for r in caplog.records] == ["Progress bars for operators disabled."]


# --- the command on a real local Ray ---------------------------------------------------


def cli_env(home: Path) -> dict:
    """This environment without Ray settings (a RAY_ADDRESS would send the run elsewhere), and
    a HOME of the test's own, where Ray makes the local cluster's token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home)}


def run_cli(args: list[str], env: dict, timeout_s: float = 600) -> tuple[int, str, str]:
    """sr-batch in a subprocess of its own session, stopped by its own id if it overruns."""
    proc = subprocess.Popen([sys.executable, "-m", "sr_batch.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc, signal.SIGINT)
        out, err = proc.communicate()
        pytest.fail(f"sr-batch {' '.join(args)} ran over {timeout_s} s; stderr:\n{err[-3000:]}")
    return proc.returncode, out, err


@pytest.mark.slow
def test_demo_is_quiet_and_scores_against_originals(tmp_path):
    out = tmp_path / "demo-out"
    code, stdout, stderr = run_cli(["demo", str(out), "--count", "3", "--width", "64", "--height", "48"],
                                   cli_env(tmp_path / "home"))
    assert code == 0, stderr[-3000:]
    assert not NOISE.search(stderr), f"noise on the console:\n{stderr}"
    assert not NOISE.search(stdout), stdout

    names = ["demo000.png", "demo001.png", "demo002.png"]
    assert sorted(p.name for p in (out / "demo-input").iterdir()) == names
    assert sorted(p.name for p in (out / "upscaled" / "images").iterdir()) == names
    for name in names:
        assert Image.open(out / "demo-input" / name).size == (64, 48)
        assert Image.open(out / "demo-reference" / name).size == (128, 96)
        assert Image.open(out / "upscaled" / "images" / name).size == (128, 96)
    manifest = read_manifest(str(out / "demo-manifest.parquet"))
    assert manifest.column("reference_uri").null_count == 0

    rows = stats.read_stats(str(out / "upscaled")).to_pylist()
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(r["psnr_y"] is not None and r["psnr_y_bicubic"] is not None for r in rows)
    assert np.mean([r["psnr_y"] for r in rows]) > np.mean([r["psnr_y_bicubic"] for r in rows])

    page = (out / "report.html").read_text()
    assert page.lower().startswith("<!doctype html") and rows[0]["run_id"] in page
    assert "dB over bicubic" in stdout and str(out / "report.html") in stdout
    for command in ("sr-batch run YOUR_PHOTOS/ --output out/", f"sr-batch report {out / 'upscaled'}",
                    "sr-batch models"):
        assert command in stdout


@pytest.mark.slow
def test_run_stays_quiet_but_names_a_failed_image(tmp_path):
    """The quieting keeps real errors: a broken image still gets its one `failed:` line."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "good.png").write_bytes(png_bytes(scene(20, 24)))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, _, stderr = run_cli(["run", str(src), "--output", str(tmp_path / "out"), "--model", "bicubic"],
                              cli_env(tmp_path / "home"))
    assert code == 1, stderr[-3000:]
    failed = [line for line in stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and "broken.png" in failed[0], stderr
    assert not NOISE.search(stderr), f"noise on the console:\n{stderr}"
