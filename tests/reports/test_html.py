"""The HTML report, rendered in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import numpy as np
import pytest
from PIL import Image

from sr_batch import cli

from reports.known_stats import RUN_A, RUN_B, make_stats, write_images


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
    write_images(out, str(tmp_path / "src"))
    page = tmp_path / "reports.html"
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
