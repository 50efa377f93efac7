"""What a hostile user tried, each made to happen on the real job: rows aimed at OUT's own
files or through a link, names that meet, inputs that used to stop or stall the run, a
pathological PNG, Ctrl-C and a run that dies, and model files that are no models.

In-process runs use the session's local Ray (`ray_local`); what is about the process (exit
codes, stderr lines, signals) runs `python -m sr_batch.cli` in a subprocess that imports this
checkout's sr_batch (PYTHONPATH) and starts its own local Ray.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import png_bytes, scene, stop_process
from PIL import Image

from sr_batch import cli, stats
from sr_batch.config import JobConfig
from sr_batch.errors import WriteError
from sr_batch.pipeline import run_job

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[")


def quiet(line: str) -> None:
    pass


def cli_env() -> dict:
    """A CLI subprocess that imports this checkout's sr_batch and starts a fresh local Ray."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "RAY_ADDRESS": ""}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sr_batch.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=cli_env(), cwd=REPO, check=False)


def rows_by_name(out: Path, run_id: str | None = None) -> dict[str, dict]:
    """The stats rows of a run (or all), by the source file's name."""
    return {Path(r["source_uri"]).name: r for r in stats.read_stats(str(out), run_id).to_pylist()}


def write_manifest(path: Path, **columns) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({k: [None if v is None else str(v) for v in vs] for k, vs in columns.items()}),
                   path)
    return path


def bicubic_x2(pixels: np.ndarray) -> np.ndarray:
    """Pillow's bicubic x2 of an 8-bit image: what `--model bicubic` writes."""
    image = Image.fromarray(pixels)
    return np.asarray(image.resize((image.width * 2, image.height * 2), Image.BICUBIC))


def read_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


# --- 1. OUT's own files ------------------------------------------------------------------


def test_rows_aimed_at_outs_own_files_fail_and_out_keeps_working(ray_local, tmp_path, capsys):
    """output_uri on a stats part, an earlier run's record, the lock, a manifest, or OUT/x.png:
    each row fails as path_escape and nothing is written there; afterwards `run` and `report`
    on that OUT still work."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(8):
        (src / f"g{i}.png").write_bytes(png_bytes(scene(16, 16, seed=i)))
    run_job(JobConfig(sources=(str(src / "g0.png"),), output=str(out), model="bicubic",
                      run_id="earlier"), echo=quiet)
    record_before = (out / "runs" / "earlier.json").read_bytes()
    parts_before = sorted(p.name for p in (out / "stats" / "run_id=earlier").iterdir())
    targets = {
        "g1.png": out / "stats" / "run_id=earlier" / "part-0.parquet",
        "g2.png": out / "runs" / "earlier.json",
        "g3.png": out / "nightly.lock",
        "g4.png": out / "manifests" / "m.parquet",
        "g5.png": out / "x.png",
    }
    names = [*targets, "g6.png", "g7.png"]
    # The manifest itself lives at one of the targets, as a nightly run's does.
    manifest_path = write_manifest(out / "manifests" / "m.parquet",
                                   uri=[src / n for n in names], relative_path=names,
                                   output_uri=[*targets.values(), None, None])
    manifest_before = manifest_path.read_bytes()

    result = run_job(JobConfig(sources=(str(manifest_path),), output=str(out), model="bicubic",
                               lock=True, run_id="hostile"), echo=quiet)

    assert result.counts == {"ok": 2, "failed": 5}
    rows = rows_by_name(out, "hostile")
    for name in targets:
        assert rows[name]["status"] == "failed", rows[name]
        assert rows[name]["error_type"] == "path_escape", rows[name]
        assert "outside" in rows[name]["error_message"], rows[name]
    for name in ("g6.png", "g7.png"):
        assert rows[name]["status"] == "ok"
        assert rows[name]["output_uri"] == f"file://{out}/images/{name}"
    assert (out / "runs" / "earlier.json").read_bytes() == record_before
    assert sorted(p.name for p in (out / "stats" / "run_id=earlier").iterdir()) == parts_before
    assert manifest_path.read_bytes() == manifest_before
    assert not (out / "x.png").exists()
    assert not (out / "nightly.lock").exists()  # released, never replaced by an image
    assert json.loads((out / "runs" / "hostile.json").read_text())["status"] == "finished"

    # The same OUT still runs and reports: the five rows fail again (exit 1, not 3) ...
    capsys.readouterr()
    assert cli.main(["run", str(manifest_path), "--output", str(out), "--model", "bicubic"]) == 1
    err = capsys.readouterr().err
    assert err.count("path_escape") == 5 and "2 skipped" in err, err[-2000:]
    # ... and the report reads every run's stats and records.
    assert cli.main(["report", str(out), "--run", "all", "--format", "json"]) == 0
    report = capsys.readouterr()
    assert "hostile" in report.out and "earlier" in report.out, report


def test_stray_files_under_out_stats_break_nothing(ray_local, tmp_path, capsys):
    """A file under OUT/stats that no run wrote (a plain file named like a run's folder, a note
    in a run's folder) is not read: later runs still skip and reports still work."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        (src / f"s{i}.png").write_bytes(png_bytes(scene(16, 16, seed=i)))
    config = JobConfig(sources=(str(src),), output=str(out), model="bicubic")
    assert run_job(config.replace(run_id="one"), echo=quiet).counts == {"ok": 2}
    (out / "stats" / "run_id=stray").write_text("not parquet")
    (out / "stats" / "run_id=one" / "notes.txt").write_text("not parquet either")
    (out / "stats" / "run_id=one" / "copy.parquet").write_text("a broken copy")
    assert run_job(config.replace(run_id="two"), echo=quiet).counts == {"skipped": 2}
    assert cli.main(["report", str(out), "--run", "all", "--format", "json"]) == 0
    assert len(stats.read_stats(str(out))) == 4


def test_a_relative_output_uri_is_relative_to_out(ray_local, tmp_path, monkeypatch):
    """`images/sub/r.png` in a manifest means OUT/images/sub/r.png, wherever the command runs."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "r.png").write_bytes(png_bytes(scene(12, 12, seed=4)))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manifest_path = write_manifest(tmp_path / "m.parquet", uri=[src / "r.png"],
                                   output_uri=["images/sub/r.png"])
    result = run_job(JobConfig(sources=(str(manifest_path),), output=str(out), model="bicubic"), echo=quiet)
    assert result.counts == {"ok": 1}
    assert (out / "images" / "sub" / "r.png").exists() and not (elsewhere / "images").exists()


# --- 2. a link inside OUT -----------------------------------------------------------------


def test_a_link_inside_out_cannot_carry_outputs_elsewhere(ray_local, tmp_path):
    """OUT/images/linked -> a folder outside OUT, made before the run: rows through it fail
    as path_escape (by relative_path, by output_uri, and one folder deeper) and the folder
    stays empty."""
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    (out / "images").mkdir(parents=True)
    os.symlink(elsewhere, out / "images" / "linked")
    names = ["y.png", "z.png", "w.png", "ok.png"]
    for i, name in enumerate(names):
        (src / name).write_bytes(png_bytes(scene(12, 12, seed=i)))
    manifest_path = write_manifest(
        tmp_path / "m.parquet", uri=[src / n for n in names],
        relative_path=["linked/y.png", "z.png", "linked/deeper/w.png", "ok.png"],
        output_uri=[None, out / "images" / "linked" / "z.png", None, None])

    result = run_job(JobConfig(sources=(str(manifest_path),), output=str(out), model="bicubic"),
                     echo=quiet)

    assert result.counts == {"ok": 1, "failed": 3}
    rows = rows_by_name(out)
    for name in ("y.png", "z.png", "w.png"):
        assert rows[name]["error_type"] == "path_escape", rows[name]
        assert "through a link" in rows[name]["error_message"], rows[name]
    assert rows["ok.png"]["status"] == "ok"
    assert list(elsewhere.rglob("*")) == []


# --- 3. two images, one output --------------------------------------------------------------


def test_a_gif_and_a_png_of_one_name_both_come_out_each_with_its_own_pixels(ray_local, tmp_path):
    """`a.gif` and `a.png` in one folder: a.png keeps the name `a.png`, a.gif comes out as
    `a.gif.png`, each holding the bicubic upscale of its own input."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    png = scene(14, 18, seed=1)
    (src / "a.png").write_bytes(png_bytes(png))
    # Four colours in blocks: the GIF's palette holds them exactly.
    blocks = np.kron(np.arange(12).reshape(3, 4) % 4, np.ones((5, 5), np.int64))[:14, :18]
    colours = np.array([[255, 0, 0], [0, 0, 255], [250, 250, 250], [10, 120, 10]], np.uint8)
    Image.fromarray(colours[blocks]).save(src / "a.gif")
    with Image.open(src / "a.gif") as image:
        gif = np.asarray(image.convert("RGB"))

    result = run_job(JobConfig(sources=(str(src),), output=str(out), model="bicubic"), echo=quiet)

    assert result.counts == {"ok": 2}
    rows = rows_by_name(out)
    assert rows["a.png"]["output_uri"] == f"file://{out}/images/a.png"
    assert rows["a.gif"]["output_uri"] == f"file://{out}/images/a.gif.png"
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.gif.png", "a.png"]
    from_png, from_gif = read_pixels(out / "images" / "a.png"), read_pixels(out / "images" / "a.gif.png")
    assert max_diff(from_png, bicubic_x2(png)) <= 1
    assert max_diff(from_gif, bicubic_x2(gif)) <= 1
    assert max_diff(from_png, bicubic_x2(gif)) > 50  # not each other's


def test_two_rows_naming_one_output_fail_the_later_row(ray_local, tmp_path):
    """An output_uri and another row's default name meet, in either order: the later row fails
    as output_collision and the file holds the earlier row's upscale."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    names = ["p.png", "q.png", "s.png", "t.png"]
    pixels = {name: scene(10, 12, seed=10 + i) for i, name in enumerate(names)}
    for name in names:
        (src / name).write_bytes(png_bytes(pixels[name]))
    manifest_path = write_manifest(
        tmp_path / "m.parquet", uri=[src / n for n in names],
        relative_path=["p-unused.png", "dup.png", "dup2.png", "t-unused.png"],
        output_uri=[out / "images" / "dup.png", None, None, out / "images" / "dup2.png"])

    result = run_job(JobConfig(sources=(str(manifest_path),), output=str(out), model="bicubic"),
                     echo=quiet)

    assert result.counts == {"ok": 2, "failed": 2}
    rows = rows_by_name(out)
    for later in ("q.png", "t.png"):
        assert rows[later]["error_type"] == "output_collision", rows[later]
        assert rows[later]["output_uri"] is None
    assert rows["p.png"]["output_uri"] == f"file://{out}/images/dup.png"
    assert rows["s.png"]["output_uri"] == f"file://{out}/images/dup2.png"
    assert max_diff(read_pixels(out / "images" / "dup.png"), bicubic_x2(pixels["p.png"])) <= 1
    assert max_diff(read_pixels(out / "images" / "dup2.png"), bicubic_x2(pixels["s.png"])) <= 1
    assert sorted(p.name for p in (out / "images").iterdir()) == ["dup.png", "dup2.png"]


def test_alpha_under_jpeg_goes_to_png_beside_never_over_another_rows_output(ray_local, tmp_path):
    """--format jpeg: an RGBA PNG is written as PNG, as `x.png`, or `x.png.png` where another
    row's output_uri holds `x.png`; no row's output is overwritten."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)

    def rgba(seed: int) -> np.ndarray:
        alpha = rng.integers(60, 256, (12, 14, 1), dtype=np.uint8)
        return np.concatenate([scene(12, 14, seed=seed), alpha], axis=2)

    x, y, other = rgba(1), rgba(2), scene(12, 14, seed=3)
    (src / "x.png").write_bytes(png_bytes(x, "RGBA"))
    (src / "y.png").write_bytes(png_bytes(y, "RGBA"))
    (src / "other.png").write_bytes(png_bytes(other))
    manifest_path = write_manifest(
        tmp_path / "m.parquet", uri=[src / "x.png", src / "other.png", src / "y.png"],
        relative_path=["x.png", "other.png", "y.png"],
        output_uri=[None, out / "images" / "x.png", None])

    result = run_job(JobConfig(sources=(str(manifest_path),), output=str(out), model="bicubic",
                               format="jpeg"), echo=quiet)

    assert result.counts == {"ok": 3}
    rows = rows_by_name(out)
    assert rows["other.png"]["output_uri"] == f"file://{out}/images/x.png"
    assert rows["x.png"]["output_uri"] == f"file://{out}/images/x.png.png"
    assert rows["y.png"]["output_uri"] == f"file://{out}/images/y.png"
    for name in ("x.png", "y.png"):
        assert rows[name]["format"] == "png"
        assert "alpha channel: jpeg cannot keep it, wrote PNG" in rows[name]["notes"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["x.png", "x.png.png", "y.png"]
    held = read_pixels(out / "images" / "x.png")
    assert held.shape[2] == 3 and max_diff(held, bicubic_x2(other)) <= 1  # other's, untouched
    for path, source in ((out / "images" / "x.png.png", x), (out / "images" / "y.png", y)):
        written = read_pixels(path)
        assert written.shape[2] == 4
        assert max_diff(written[..., :3], bicubic_x2(source[..., :3])) <= 1


# --- 4. one input must not stop or stall the run -------------------------------------------


@pytest.mark.parametrize("per_call", [None, 1], ids=["default-call-size", "images-per-call-1"])
def test_an_unknown_protocol_fails_its_row_only(tmp_path, per_call):
    """`foo://bar/x.png` among 21 real images: that row fails as read_error, 21 ok, exit 1,
    no traceback."""
    src = tmp_path / "in"
    src.mkdir()
    uris = ["foo://bar/x.png"]
    for i in range(21):
        (src / f"r{i:02d}.png").write_bytes(png_bytes(scene(12, 12, seed=i)))
        uris.append(str(src / f"r{i:02d}.png"))
    manifest_path = write_manifest(tmp_path / "m.parquet", uri=uris)
    out = tmp_path / "out"

    extra = [] if per_call is None else ["--images-per-call", str(per_call)]
    proc = run_cli("run", str(manifest_path), "--output", str(out), "--model", "bicubic", *extra)

    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "21 ok, 1 failed" in proc.stderr.strip().splitlines()[-1]
    rows = stats.read_stats(str(out)).to_pylist()
    bad = [r for r in rows if r["source_uri"] == "foo://bar/x.png"]
    assert len(bad) == 1 and bad[0]["status"] == "failed", bad
    assert bad[0]["error_type"] == "read_error" and "unknown protocol 'foo'" in bad[0]["error_message"]
    assert sum(r["status"] == "ok" for r in rows) == 21


class FifoWatch:
    """Notices a reader opening a FIFO: a non-blocking open for writing succeeds only while
    some process has it open for reading (else ENXIO)."""

    def __init__(self, path: Path) -> None:
        self.path, self.opened, self._stop = path, False, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
                self.opened = True  # closing at once gives the reader EOF, so nothing hangs
            except OSError as exc:
                assert exc.errno == errno.ENXIO, exc
            time.sleep(0.02)

    def stop(self) -> bool:
        self._stop.set()
        self._thread.join(5)
        return self.opened


def test_a_fifo_in_a_source_folder_is_listed_out_and_never_opened(tmp_path):
    """`fifo.png` (a FIFO) beside two images: the run ends (a blocking open would hang it), the
    FIFO gets no row and one warning line counts it."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(2):
        (src / f"i{i}.png").write_bytes(png_bytes(scene(12, 12, seed=i)))
    os.mkfifo(src / "fifo.png")
    watch = FifoWatch(src / "fifo.png")
    try:
        proc = run_cli("run", str(src), "--output", str(out), "--model", "bicubic", timeout=240)
    finally:
        opened = watch.stop()

    assert not opened
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "skipped" in line and "file(s)" in line]
    assert warnings == [("WARNING sr_batch.manifest: skipped 1 file(s): 1 not a regular file "
                         "(FIFO, socket or device)")], proc.stderr[-3000:]
    assert sorted(rows_by_name(out)) == ["i0.png", "i1.png"]  # no row for the FIFO


def test_a_fifo_named_in_a_manifest_fails_its_row_unopened(ray_local, tmp_path):
    """The same FIFO named in a manifest: a failed row (read_error), not a hung run."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "i0.png").write_bytes(png_bytes(scene(12, 12)))
    os.mkfifo(src / "fifo.png")
    manifest_path = write_manifest(tmp_path / "m.parquet", uri=[src / "fifo.png", src / "i0.png"])
    watch = FifoWatch(src / "fifo.png")
    done: list = []
    worker = threading.Thread(target=lambda: done.append(run_job(JobConfig(
        sources=(str(manifest_path),), output=str(out), model="bicubic"), echo=quiet)), daemon=True)
    worker.start()
    worker.join(180)
    opened = watch.stop()

    assert done, "the run hung on the FIFO"
    assert not opened
    assert done[0].counts == {"ok": 1, "failed": 1}
    row = rows_by_name(out)["fifo.png"]
    assert row["error_type"] == "read_error" and "not a regular file (a FIFO)" in row["error_message"]


# --- 5. a PNG that declares far more than it holds -----------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def test_a_tiny_png_declaring_10000x10000_fails_as_corrupt(ray_local, tmp_path):
    """109 bytes: an RGB IHDR of 10000x10000 and one row of pixel data. It fails as
    corrupt_image (it used to be decoded as a black 100 MP image, zero-filled)."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    data = (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 10000, 10000, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * 10000), 9))
            + _png_chunk(b"IEND", b""))
    assert len(data) == 109
    (src / "bomb.png").write_bytes(data)
    (src / "fine.png").write_bytes(png_bytes(scene(12, 12)))

    result = run_job(JobConfig(sources=(str(src),), output=str(out), model="bicubic"), echo=quiet)

    assert result.counts == {"ok": 1, "failed": 1}
    row = rows_by_name(out)["bomb.png"]
    assert row["error_type"] == "corrupt_image", row
    assert "1 of 10000 rows" in row["error_message"], row
    assert not (out / "images" / "bomb.png").exists()


# --- 6. Ctrl-C, and a run that dies ---------------------------------------------------------


def test_ctrl_c_ends_the_run_as_interrupted_and_a_rerun_finishes_it(tmp_path):
    """SIGINT to the process group (what Ctrl-C does) once the first images are recorded: the
    run ends within 20 s with one `interrupted` line, exit 130 and its record `interrupted`;
    the same command again does the rest: one ok row per image across both runs."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    n = 16
    for i in range(n):
        (src / f"{i}.png").write_bytes(png_bytes(scene(160, 200, seed=i)))
    command = [sys.executable, "-m", "sr_batch.cli", "run", str(src), "--output", str(out),
               "--model", "quality", "--images-per-call", "2", "--stats-flush-s", "1"]
    proc = subprocess.Popen([*command, "--run-id", "first"], stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=REPO, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    parts = out / "stats" / "run_id=first"
    try:
        # The first images are in once a progress line or a stats part (flushed every 1 s) is.
        deadline = time.monotonic() + 400
        while not (any(line.startswith("progress:") for line in lines)
                   or (parts.is_dir() and any(parts.glob("part-*.parquet")))):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=20)
        reader.join(10)
    finally:
        stop_process(proc, signal.SIGKILL)
    stderr = "".join(lines)
    assert code == 130, stderr[-3000:]
    assert [line for line in stderr.splitlines() if "interrupted" in line] == [
        "sr-batch: interrupted; rerun the same command to finish"], stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    record = json.loads((out / "runs" / "first.json").read_text())
    assert record["status"] == "interrupted", record
    assert 0 < record["counts"].get("ok", 0) < n, record["counts"]

    again = subprocess.run([*command, "--run-id", "second"], capture_output=True, text=True,
                           timeout=600, env=cli_env(), cwd=REPO, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = stats.read_stats(str(out)).to_pylist()
    ok = sorted(Path(r["source_uri"]).name for r in rows if r["status"] == "ok")
    assert ok == sorted(f"{i}.png" for i in range(n)), rows  # exactly one ok row per image
    assert json.loads((out / "runs" / "second.json").read_text())["status"] == "finished"


def test_a_run_that_dies_mid_run_records_failed_with_its_error(ray_local, tmp_path):
    """The stats become unwritable once the run is under way (their run folder turns into a
    file as the run starts its images): the run stops with the write error, and its record
    says `failed` with that error, not `running`."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(png_bytes(scene(12, 12, seed=i)))

    def block_stats(line: str) -> None:
        if line.startswith("run doomed: "):  # the header: planned, record written, Ray up
            (out / "stats").mkdir(parents=True, exist_ok=True)
            (out / "stats" / "run_id=doomed").write_text("in the way")

    with pytest.raises(WriteError, match="run_id=doomed"):
        run_job(JobConfig(sources=(str(src),), output=str(out), model="bicubic", run_id="doomed",
                          stats_flush_s=0.001), echo=block_stats)

    record = json.loads((out / "runs" / "doomed.json").read_text())
    assert record["status"] == "failed", record
    assert record["error"].startswith("WriteError: cannot write"), record
    assert "run_id=doomed" in record["error"] and record["finished_at"], record


# --- 7. errors a user can read ----------------------------------------------------------------


def _lambda_model(path: Path) -> None:
    import keras

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Lambda(lambda x: keras.ops.repeat(keras.ops.repeat(x, 2, axis=1), 2, axis=2))(inputs)
    keras.Model(inputs, outputs).save(path)


def _garbage_zip(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights.bin", np.random.default_rng(1).bytes(300))


BAD_MODELS = {
    "lambda": (_lambda_model, "it contains a Lambda layer (Python code inside the file)"),
    "garbage-zip": (_garbage_zip, "not a .keras file (a zip archive without config.json)"),
    "random-bytes": (lambda p: p.write_bytes(np.random.default_rng(0).bytes(1000)),
                     "not a .keras file (1000 bytes that are not a zip archive)"),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_a_model_file_that_is_no_model_is_one_plain_line_naming_it(tmp_path, image_dir, case):
    """--model at a Lambda model, a zip of junk, random bytes: exit 3 and stderr is exactly one
    line, naming the user's file (never Keras's temporary copy), without colour codes."""
    make, reason = BAD_MODELS[case]
    model = tmp_path / "my model.keras"
    make(model)

    proc = run_cli("run", str(image_dir), "--output", str(tmp_path / "out"), "--model", str(model))

    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"sr-batch: error: cannot load model file://{model}: {reason}"), lines
    assert not ANSI.search(proc.stderr), proc.stderr
    assert not re.search(r"/tmp/tmp\w+\.keras", proc.stderr), proc.stderr


def test_a_failed_file_with_a_newline_in_its_name_is_one_escaped_line(ray_local, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "bad\nname.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (src / "good.png").write_bytes(png_bytes(scene(12, 12)))
    lines: list[str] = []

    result = run_job(JobConfig(sources=(str(src),), output=str(out), model="bicubic"), echo=lines.append)

    assert result.counts == {"ok": 1, "failed": 1}
    failed = [line for line in lines if line.startswith("failed:")]
    assert len(failed) == 1 and "\n" not in failed[0], lines
    assert failed[0].startswith(f"failed: file://{src}/bad\\nname.png: corrupt_image: "), failed


# --- 8. names, manifests and options that used to crash, stray or run for nothing -------------


def test_names_no_filesystem_takes_fail_their_rows_and_long_or_partial_names_come_out(ray_local, tmp_path):
    """One manifest: a NUL byte in a uri (read_error), in a relative_path's folder and in its file
    name (path_escape), a folder named as an image (read_error); a legal 246-character name and
    a relative_path column with some nulls (named rows get their name, the others the default)
    come out. Nothing stops the run and no row is internal_error."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    long_name = "n" * 242 + ".png"
    for i, name in enumerate(["g0.png", "g1.png", "g2.png", "g3.png", "g4.png", long_name]):
        (src / name).write_bytes(png_bytes(scene(12, 12, seed=i)))
    (src / "folder.png").mkdir()
    rows = [  # uri, relative_path
        (f"{src}/o\x00k.png", "nul-uri.png"),
        (f"{src}/g0.png", "nuldir\x00/x.png"),
        (f"{src}/g1.png", "o\x00k.png"),
        (f"{src}/folder.png", None),
        (f"{src}/{long_name}", None),
        (f"{src}/g2.png", "named/two.png"),
        (f"{src}/g3.png", None),
        (f"{src}/g4.png", "named/four.png"),
    ]
    manifest_path = write_manifest(tmp_path / "m.parquet", uri=[u for u, _ in rows],
                                   relative_path=[r for _, r in rows])

    result = run_job(JobConfig(sources=(str(manifest_path),), output=str(out), model="bicubic",
                               run_id="names"), echo=quiet)

    assert result.counts == {"ok": 4, "failed": 4}
    by_uri = {r["source_uri"]: r for r in stats.read_stats(str(out), "names").to_pylist()}
    expected = {f"{src}/o\x00k.png": "read_error", f"{src}/g0.png": "path_escape",
                f"{src}/g1.png": "path_escape", f"{src}/folder.png": "read_error"}
    for path, error_type in expected.items():
        row = by_uri[f"file://{path}"]
        assert (row["status"], row["error_type"]) == ("failed", error_type), row
    assert "NUL byte" in by_uri[f"file://{src}/o\x00k.png"]["error_message"]
    assert "is a directory" in by_uri[f"file://{src}/folder.png"]["error_message"]
    outputs = {Path(r["source_uri"]).name: r["output_uri"] for r in by_uri.values() if r["status"] == "ok"}
    assert outputs == {long_name: f"file://{out}/images/{long_name}",
                       "g2.png": f"file://{out}/images/named/two.png",
                       "g3.png": f"file://{out}/images/g3.png",
                       "g4.png": f"file://{out}/images/named/four.png"}
    assert read_pixels(out / "images" / long_name).shape == (24, 24, 3)


def test_a_run_record_left_running_by_a_killed_driver_is_marked_by_the_next_run(ray_local, tmp_path):
    """A record still `running` whose driver (a pid on this host) is gone, as kill -9 leaves it:
    the next run into OUT records it as failed, saying why; a live run's record is left alone."""
    import socket

    from sr_batch.lock import holder

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "a.png").write_bytes(png_bytes(scene(12, 12)))
    (out / "runs").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for run_id, pid in (("killed", dead.pid), ("alive", os.getpid())):
        (out / "runs" / f"{run_id}.json").write_text(json.dumps(
            {"run_id": run_id, "status": "running", **holder(), "pid": pid}))
    lines: list[str] = []

    run_job(JobConfig(sources=(str(src),), output=str(out), model="bicubic", run_id="next"),
            echo=lines.append)

    killed = json.loads((out / "runs" / "killed.json").read_text())
    assert killed["status"] == "failed", killed
    assert killed["error"] == (f"its driver (pid {dead.pid} on {socket.gethostname()}) ended "
                               f"without recording how the run ended")
    assert f"run killed: recorded as failed (its driver, pid {dead.pid}, is gone)" in lines
    assert json.loads((out / "runs" / "alive.json").read_text())["status"] == "running"
    assert json.loads((out / "runs" / "next.json").read_text())["status"] == "finished"


def _link_out_folder(name: str):
    def make(out: Path, elsewhere: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        os.symlink(elsewhere, out / name)
    return make


EXIT_2_BEFORE_RAY = {
    "outscale-1e9": (["--outscale", "1e9", "--scale", "2"], None,
                     "--outscale 1e+09 is more than x32, the most that 3 model passes reach from x2"),
    "fit-1x1": (["--fit", "1x1"], None, "--fit must be WxH with W, H >= 8 px, got 1x1"),
    "tile-overlap-100000": (["--tile-overlap", "100000"], None,
                            "--tile-overlap must be 0 to 256 px, got 100000"),
    "tf-threads-negative": (["--tf-threads", "-1"], None, "--tf-threads must be >= 0 (0: automatic), got -1"),
    "stats-flush-s-0": (["--stats-flush-s", "0"], None,
                        "--stats-flush-s must be a number of seconds > 0, got 0"),
    "run-id-dot-dot": (["--run-id", "../../evil"], None, "--run-id must be 1 to 128 letters, digits, "
                       "'.', '_' or '-', starting with a letter or digit, got '../../evil'"),
    "linked-images": ([], _link_out_folder("images"), "images is a link (to "),
    "linked-runs": ([], _link_out_folder("runs"), "runs is a link (to "),
}


@pytest.mark.parametrize("case", sorted(EXIT_2_BEFORE_RAY))
def test_bad_options_and_a_linked_out_are_exit_2_in_one_line_before_any_work(tmp_path, case):
    """Each of these used to start Ray and fail every image, run for nothing, or write outside
    OUT: now one line, exit 2, and nothing written (no run record, no image), here or elsewhere."""
    options, setup, message = EXIT_2_BEFORE_RAY[case]
    src, out, elsewhere = tmp_path / "in", tmp_path / "out", tmp_path / "elsewhere"
    src.mkdir()
    elsewhere.mkdir()
    (src / "a.png").write_bytes(png_bytes(scene(12, 12)))
    if setup is not None:
        setup(out, elsewhere)

    proc = run_cli("run", str(src), "--output", str(out), "--model", "bicubic", *options)

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) == 1, proc.stderr[-3000:]
    assert proc.stderr.startswith("sr-batch: error: ") and message in proc.stderr, proc.stderr
    assert list(elsewhere.iterdir()) == []
    assert not list(tmp_path.glob("**/*.json")) and not list(tmp_path.glob("out/**/*.png"))


def test_stats_that_cannot_be_written_stop_the_run_before_any_image_in_one_line(tmp_path):
    """OUT/stats is a file, so no stats row could be written (as with a read-only OUT/stats for
    another user): exit 3 with one line, before any image is written; the run is recorded as
    failed with that error."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.png").write_bytes(png_bytes(scene(12, 12, seed=i)))
    out.mkdir()
    (out / "stats").write_text("in the way")

    proc = run_cli("run", str(src), "--output", str(out), "--model", "bicubic", "--run-id", "blocked")

    assert proc.returncode == 3, proc.stderr[-3000:]
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"sr-batch: error: cannot write the stats under file://{out}/stats: cannot write "
                           f"file://{out}/stats/run_id=blocked/.write-check-"), line
    assert not (out / "images").exists()
    record = json.loads((out / "runs" / "blocked.json").read_text())
    assert record["status"] == "failed" and record["error"] == "StorageError: " + line[len("sr-batch: error: "):]


def _grey_model(path: Path) -> None:
    import keras

    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Conv2DTranspose(1, 2, strides=2)(inputs)
    keras.Model(inputs, outputs).save(path)


def test_a_keras_model_with_a_grey_output_is_refused_before_any_image(tmp_path, image_dir):
    """RGB in, 1 channel out: one line and exit 3 as for the same model in ONNX, no image written
    (it used to write grey images of colour inputs, all `ok`)."""
    model = tmp_path / "grey_x2.keras"
    _grey_model(model)
    out = tmp_path / "out"

    proc = run_cli("run", str(image_dir), "--output", str(out), "--model", str(model))

    assert proc.returncode == 3, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [
        f"sr-batch: error: file://{model} returns 1 channels; an RGB upscaler returns 3"], proc.stderr
    assert not (out / "images").exists()


def test_stats_rows_come_back_one_actor_call_at_a_time(ray_local, tmp_path, monkeypatch):
    """Every actor call's rows reach the driver (and so the stats) as soon as that call ends:
    with two images a call, no batch the driver gets holds more than two rows (blocks of
    several calls used to hold every row until the whole block was done)."""
    from sr_batch import pipeline

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(12):
        (src / f"{i}.png").write_bytes(png_bytes(scene(12, 12, seed=i)))
    sizes: list[int] = []
    upscale = pipeline._upscale

    def recording(*args):
        for batch in upscale(*args):
            sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pipeline, "_upscale", recording)
    result = run_job(JobConfig(sources=(str(src),), output=str(out), model="bicubic", images_per_call=2,
                               stats_flush_s=0.001), echo=quiet)

    assert result.counts == {"ok": 12}
    assert sum(sizes) == 12 and max(sizes) <= 2, sizes


def test_an_output_above_the_per_image_pixel_budget_fails_as_too_many_pixels(ray_local, tmp_path):
    """--max-output-pixels bounds every image's output, streamed or not: a PNG and a stripped
    TIFF streamed above --max-pixels whose x2 output would pass it fail as too_many_pixels
    (the TIFF used to stream whatever size it declared); a small image comes out; raising the
    budget lets the other two run."""
    import tifffile

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    (src / "small.png").write_bytes(png_bytes(scene(8, 8)))
    (src / "big.png").write_bytes(png_bytes(scene(40, 40, seed=1)))
    tifffile.imwrite(src / "stripped.tif", scene(48, 48, seed=2), photometric="rgb", rowsperstrip=8)
    config = JobConfig(sources=(str(src),), output=str(out), model="bicubic", max_pixels=2000,
                       max_output_pixels=5000, run_id="tight")

    assert run_job(config, echo=quiet).counts == {"ok": 1, "failed": 2}

    rows = rows_by_name(out, "tight")
    assert rows["small.png"]["status"] == "ok"
    assert rows["big.png"]["error_message"] == ("40x40 to 80x80 is 6400 output pixels, more than the "
                                                "limit of 5000 (--max-output-pixels)")
    assert rows["stripped.tif"]["error_message"] == ("48x48 to 96x96 is 9216 output pixels, more than "
                                                     "the limit of 5000 (--max-output-pixels)")
    assert {rows[n]["error_type"] for n in ("big.png", "stripped.tif")} == {"too_many_pixels"}
    assert sorted(p.name for p in (out / "images").iterdir()) == ["small.png"]
    again = run_job(config.replace(max_output_pixels=10_000, run_id="roomy"), echo=quiet)
    assert again.counts == {"ok": 2, "skipped": 1}
    assert read_pixels(out / "images" / "big.png").shape == (80, 80, 3)
    assert tifffile.imread(out / "images" / "stripped.tif").shape[:2] == (96, 96)
