"""Runs on a real multi-node Ray: several `ray start` nodes on 127.0.0.1 with token auth.

Nodes are told apart by resources: `gpu_a` and `gpu_b` advertise one logical
GPU each (nothing needs a real one), `head` and `cpu` none.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from sr_batch import stats

from conftest import png_bytes, scene, stop_process
from multinode import ROOT, LocalCluster, NodeSpec

pytestmark = pytest.mark.slow

GPU_NODES = {"gpu_a", "gpu_b"}


@pytest.fixture(scope="module")
def cluster():
    """A head and three workers: two with a logical GPU, one with CPUs only."""
    with LocalCluster(NodeSpec("head", num_cpus=1),
                      [NodeSpec("gpu_a", num_cpus=1, num_gpus=1),
                       NodeSpec("gpu_b", num_cpus=1, num_gpus=1),
                       NodeSpec("cpu", num_cpus=2)]) as started:
        yield started


def run_args(src: Path, out: Path, cluster: LocalCluster, *options: str) -> list[str]:
    return [sys.executable, "-m", "sr_batch.cli", "run", str(src), "--output", str(out),
            "--address", cluster.gcs_address, *options]


def run_cli(args: list[str], cluster: LocalCluster, timeout_s: float = 300):
    return subprocess.run(args, env=cluster.env, capture_output=True, text=True,
                          timeout=timeout_s, cwd=ROOT, check=False)


def make_images(root: Path, sizes: list[int]) -> None:
    """Square PNGs img0000.png, ... of the given sides."""
    root.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        (root / f"img{i:04d}.png").write_bytes(png_bytes(scene(size, size, seed=i % 50)))


def ok_rows(out: Path) -> list[dict]:
    return [r for r in stats.read_stats(str(out)).to_pylist() if r["status"] == "ok"]


def worker_pid(worker: str) -> int:
    """The pid of a stats row's `worker` (`host:pid gpu=...`)."""
    return int(re.fullmatch(r"[^:]+:(\d+)( gpu=.*)?", worker).group(1))


# First in the file: its own cluster is then gone before the module's starts.
@pytest.mark.parametrize("arrangement", ["fused", "staged"])
def test_a_node_killed_mid_run(tmp_path, arrangement):
    """SIGKILL of the raylet of the node running the only model actor, mid-run: the run
    completes by itself (or, where Ray never brings the actor back, a rerun of the same
    command completes it), each image with one ok row, and no temporary file is left.

    Ray Data's actors restart without limit and retry their tasks: once the GCS marks
    the node dead (about 15 s), the actor restarts on the spare GPU node and redoes the
    blocks it had in flight, outputs it wrote but never reported included.

    Fused, the actor decodes, writes and names itself in each row, so the rows also show
    which node finished which image. Staged (the default with GPUs), the model actor only
    runs the model; the CPU tasks that decode and write are retried by Ray Data.
    """
    src, out = tmp_path / "in", tmp_path / "out"
    # Ray Data hands the one actor the manifest in 4 blocks, 2 at a time, and the driver
    # gets a block's rows once the next block is done. Small images first, large last: the
    # first rows arrive as the large blocks start, and these take long enough to be cut.
    sizes = [32] * 24 + [320] * 24
    count = len(sizes)
    make_images(src, sizes)
    # One actor, and a spare GPU node to restart it on. With none, the retried blocks wait
    # until a GPU comes free (another actor released at the end of its input) or, with no
    # GPU left in the cluster, for ever: Ray Data warns that "the job may hang forever".
    with LocalCluster(NodeSpec("head", num_cpus=1),
                      [NodeSpec("gpu_a", num_cpus=1, num_gpus=1),
                       NodeSpec("gpu_b", num_cpus=1, num_gpus=1)]) as cluster:
        args = run_args(src, out, cluster, "--gpus-per-actor", "1", "--model", "residual",
                        "--actors", "1", "--images-per-batch", "1", "--stats-flush-s", "0.001",
                        "--arrangement", arrangement)
        log = tmp_path / "run.log"
        with log.open("wb") as stderr:
            proc = subprocess.Popen(args, env=cluster.env, stdout=subprocess.DEVNULL,
                                    stderr=stderr, start_new_session=True, cwd=ROOT)
        try:
            # Kill once the driver has recorded rows and the actor has written outputs of
            # the large blocks: those it has not reported must be redone, and no image may
            # get two rows.
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, read_log(log)
                assert time.monotonic() < deadline, "no outputs were written in time"
                recorded = stats.read_stats(str(out)).num_rows
                written = len(list((out / "images").glob("*.png")))
                if recorded and written >= count // 2 + 2:
                    break
                time.sleep(0.05)
            found = cluster.find_process("UpscaleActor" if arrangement == "fused"
                                          else "ModelActor")
            assert found is not None, "the model actor was not found on any node"
            killed, killed_pid = found
            cluster.kill_node(killed)
            try:
                proc.wait(timeout=300)
                stuck = None
            except subprocess.TimeoutExpired:
                # Seen once in 9 runs: the actor never restarted and the run waited for it.
                # An operator would stop the run and run it again; so does this test.
                stuck = f"actors: {cluster.actors()}"
        finally:
            stop_process(proc, signal.SIGKILL, timeout_s=10)
        assert killed in GPU_NODES and written < count  # the kill landed mid-run
        cluster.wait_for_death(killed)
        rows = stats.read_stats(str(out)).to_pylist()
        assert {r["status"] for r in rows} == {"ok"}
        if stuck is None:
            assert proc.returncode == 0, read_log(log)
            assert sorted(r["source_uri"] for r in rows) == sorted(
                f"file://{src}/img{i:04d}.png" for i in range(count))
        if stuck is None and arrangement == "fused":
            survivor = (GPU_NODES - {killed}).pop()
            workers = cluster.worker_nodes()
            pids = {worker_pid(r["worker"]) for r in rows}
            restarted = {pid for pid in pids if workers.get(pid) == survivor}
            assert restarted, f"no image was finished on {survivor}: {pids}, {workers}"
            assert pids - restarted == {killed_pid}  # rows from before the kill, and after
        before = sum(worker_pid(r["worker"]) == killed_pid for r in rows)
        if arrangement == "fused":
            # Outputs written but never reported are redone: with rows coming back one call
            # at a time, those of the calls in flight at the kill (none, between two calls).
            assert before <= written
        print(f"killed {killed} after {recorded} rows and {written} outputs of {count}; "
              f"{before} rows came from it; "
              + ("the run completed" if stuck is None else f"the run was stuck ({stuck})"))

        rerun = run_cli(args, cluster)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{count - len(rows)} ok, 0 failed, {len(rows)} skipped" in rerun.stderr
    counts: dict[str, int] = {}
    for row in stats.read_stats(str(out)).to_pylist():
        if row["status"] == "ok":
            counts[row["source_uri"]] = counts.get(row["source_uri"], 0) + 1
    assert len(counts) == count and set(counts.values()) == {1}
    assert not [p for p in out.rglob("*") if re.fullmatch(r"\..+\.tmp-[0-9a-f]{8}", p.name)]
    for i, size in enumerate(sizes):
        with Image.open(out / "images" / f"img{i:04d}.png") as image:
            image.load()
            assert image.size == (2 * size, 2 * size)


def test_model_actors_run_only_on_the_gpu_nodes(cluster, tmp_path):
    """With --gpus-per-actor 1, every image is upscaled by a process of a GPU node."""
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, [24] * 16)
    proc = run_cli(run_args(src, out, cluster, "--gpus-per-actor", "1", "--model", "bicubic",
                            "--images-per-batch", "1"), cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2-2 actors x 1 CPU / 1 GPU" in proc.stderr  # one per GPU of the cluster
    rows = ok_rows(out)
    assert len(rows) == 16
    # Ray hands each GPU actor its logical GPU as CUDA_VISIBLE_DEVICES.
    assert all(re.search(r" gpu=\d+$", r["worker"]) for r in rows), {r["worker"] for r in rows}
    workers = cluster.worker_nodes()
    nodes = {workers[worker_pid(r["worker"])] for r in rows}
    assert nodes and nodes <= GPU_NODES, nodes


def test_driver_memory_does_not_grow_with_the_stats_of_a_long_manifest(cluster, tmp_path):
    """Stats rows stream out in parts, so the driver's memory grows with a manifest only by
    what the manifest itself takes (about 1 KB an image), not by the rows it has written.

    Measured on 2 busy cores: from 1,000 to 8,000 tiny images the driver's peak private
    memory grew 20 MB; with every row held until the end (bookkeeping.FLUSH_ROWS = 10**9 and
    --stats-flush-s 1e5) it grew 77 MB. The bound, 6 KB an image, lies between.
    """
    image = png_bytes(scene(4, 4))
    peaks = {}
    for count in (1000, 8000):
        src, out = tmp_path / f"in{count}", tmp_path / f"out{count}"
        src.mkdir()
        for i in range(count):
            (src / f"img{i:05d}.png").write_bytes(image)
        # A flush after every batch: by default up to FLUSH_ROWS rows wait for the next
        # part, a bounded ~8 KB each (measured) that would hide what grows with the images.
        args = run_args(src, out, cluster, "--gpus-per-actor", "1", "--model", "bicubic",
                        "--stats-flush-s", "0.001")
        peaks[count] = run_sampling_memory(args, cluster)
        rows = stats.read_stats(str(out))
        assert rows.num_rows == count and set(rows.column("status").to_pylist()) == {"ok"}
        assert len(list(out.glob("stats/*/part-*.parquet"))) > 1  # written in parts
    growth = peaks[8000] - peaks[1000]
    assert growth < 6_000 * 7000, f"driver grew {growth / 1e6:.0f} MB ({peaks})"


def run_sampling_memory(args: list[str], cluster: LocalCluster, timeout_s: float = 300) -> int:
    """Run the CLI; return the peak of the driver's private memory (RSS less shared pages:
    the object store pages it wrote are the cluster's, not its heap)."""
    log = Path(args[args.index("--output") + 1] + ".log")
    with log.open("wb") as stderr:
        proc = subprocess.Popen(args, env=cluster.env, stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, cwd=ROOT)
    peak = 0
    try:
        driver = psutil.Process(proc.pid)
        deadline = time.monotonic() + timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                memory = driver.memory_info()
            except psutil.NoSuchProcess:
                break
            peak = max(peak, memory.rss - memory.shared)
            time.sleep(0.02)
        assert proc.poll() is not None, "the run did not finish in time"
    finally:
        stop_process(proc, signal.SIGKILL, timeout_s=10)
    assert proc.returncode == 0, read_log(log)
    return peak


def read_log(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]
