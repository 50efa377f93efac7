"""Faults survived: an actor process killed mid-run, S3 through a loopback moto server with
injected transient errors, and permanent storage errors."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import numpy as np
import pytest

from sr_batch import stats
from sr_batch.config import JobConfig
from sr_batch.pipeline import run_job

from conftest import free_port, png_bytes, scene, stop_process

pytestmark = pytest.mark.slow


def test_actor_killed_mid_run(ray_local, tmp_path):
    """kill -9 of the actor process: Ray restarts it, the job goes on, every row arrives once."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(30):
        (src / f"{i:02d}.png").write_bytes(png_bytes(scene(48, 48, seed=i)))
    results, errors = [], []

    def run() -> None:
        try:
            results.append(run_job(JobConfig(sources=(str(src),), output=str(out), tile_size=32,
                                             images_per_call=1), echo=lambda line: None))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    killed = []
    deadline = time.monotonic() + 180
    while not killed and thread.is_alive() and time.monotonic() < deadline:
        if len(list((out / "images").glob("*.png"))) >= 3:
            for proc in psutil.Process(os.getpid()).children(recursive=True):
                try:
                    if "UpscaleActor" in " ".join(proc.cmdline()):
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                except psutil.NoSuchProcess:
                    pass
        time.sleep(0.05)
    thread.join(timeout=300)
    assert not errors, errors
    assert killed, "the actor was never seen running"
    assert results and results[0].counts == {"ok": 30}
    rows = stats.read_stats(str(out)).to_pylist()
    assert sorted(Path(r["source_uri"]).name for r in rows) == sorted(p.name for p in src.iterdir())


class FaultProxy:
    """A loopback HTTP proxy in front of the S3 server that answers every `every`-th request
    with a transient error (503 SlowDown, 500 InternalError), at most `limit` times."""

    def __init__(self, upstream_port: int, every: int = 5, limit: int = 200) -> None:
        self.upstream_port, self.every, self.limit = upstream_port, every, limit
        self.requests = self.injected = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.requests += 1
                    fault = proxy.requests % proxy.every == 0 and proxy.injected < proxy.limit
                    proxy.injected += fault
                if fault:
                    code, name = (503, "SlowDown") if proxy.injected % 2 else (500, "InternalError")
                    payload = (f"<?xml version='1.0'?><Error><Code>{name}</Code>"
                               f"<Message>injected</Message></Error>").encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # HEAD answers carry the object's length with no body.
                length = response.getheader("Content-Length") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 API in server mode on 127.0.0.1, stopped by its own pid."""
    port = free_port()
    moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "moto did not start"
                time.sleep(0.2)
        yield port
    finally:
        stop_process(proc, signal.SIGTERM)


def aws_env(port: int) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))},
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "RAY_ADDRESS": ""}


def s3fs_for(port: int):
    import s3fs

    return s3fs.S3FileSystem(key="testing", secret="testing",
                             client_kwargs={"endpoint_url": f"http://127.0.0.1:{port}"},
                             skip_instance_cache=True)


def sr_batch_run(args, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "sr_batch.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_s3_end_to_end_through_transient_faults(s3_server):
    fs = s3fs_for(s3_server)
    fs.mkdir("photos")
    for i in range(6):
        fs.pipe_file(f"photos/in/{'sub/' if i % 2 else ''}{i}.png", png_bytes(scene(20, 24, seed=i)))
    with FaultProxy(s3_server, every=4) as proxy:
        env = aws_env(proxy.port)
        made = sr_batch_run(["manifest", "s3://photos/in/", "-o", "s3://photos/manifest.parquet"], env)
        assert made.returncode == 0, made.stderr[-2000:]
        proc = sr_batch_run(["run", "s3://photos/manifest.parquet", "--output", "s3://photos/out",
                             "--model", "bicubic"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proxy.injected >= 5, (proxy.injected, proxy.requests)
    assert "6 ok, 0 failed" in proc.stderr.strip().splitlines()[-1]
    fs.invalidate_cache()
    outputs = sorted(fs.find("photos/out/images"))
    assert outputs == sorted(f"photos/out/images/{'sub/' if i % 2 else ''}{i}.png" for i in range(6))
    import pyarrow.dataset as ds

    table = ds.dataset("photos/out/stats", filesystem=fs, format="parquet",
                       partitioning="hive").to_table()
    assert table.num_rows == 6 and set(table.column("status").to_pylist()) == {"ok"}
    assert all(table.column("source_etag").to_pylist())  # the object store's fingerprint
    assert fs.exists("photos/out/runs")


def test_header_reads_fetch_one_small_block_from_s3(s3_server, monkeypatch):
    """Sizing a large object by its header reads HEADER_BLOCK_SIZE, not s3fs's 50 MB block."""
    from sr_batch import storage, streaming

    fs = s3fs_for(s3_server)
    fs.mkdir("headers")
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    fs.pipe_file("headers/big.png", png_bytes(noise))
    assert fs.size("headers/big.png") > 4 * storage.HEADER_BLOCK_SIZE
    for key, value in aws_env(s3_server).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)

    fetched = {}
    for label, block in (("header", storage.HEADER_BLOCK_SIZE), ("default", None)):
        with storage.open_input("s3://headers/big.png", 0, block) as handle:
            assert streaming.count_pixels(handle) == 1200 * 1200
            fetched[label] = handle.cache.total_requested_bytes
    # One header block (readahead adds the few bytes asked for) against the whole object.
    assert 0 < fetched["header"] < 2 * storage.HEADER_BLOCK_SIZE
    assert fetched["default"] > 4 * storage.HEADER_BLOCK_SIZE


def test_s3_permanent_errors(s3_server):
    fs = s3fs_for(s3_server)
    fs.mkdir("perm")
    fs.pipe_file("perm/in/a.png", png_bytes(scene(16, 16)))
    env = aws_env(s3_server)
    # No such bucket for the output: nothing can be written, so the run stops in one line.
    proc = sr_batch_run(["run", "s3://perm/in/", "--output", "s3://no-such-bucket/out",
                         "--model", "bicubic"], env)
    assert proc.returncode == 3
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "sr-batch: error: cannot write to the output s3://no-such-bucket/out")
    assert "Traceback" not in proc.stderr
    # A manifest row whose object is gone fails that image only.
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open("perm/m.parquet", "wb") as handle:
        pq.write_table(pa.table({"uri": ["s3://perm/in/a.png", "s3://perm/in/gone.png"]}), handle)
    proc = sr_batch_run(["run", "s3://perm/m.parquet", "--output", "s3://perm/out",
                         "--model", "bicubic"], env)
    assert proc.returncode == 1
    assert "missing_file" in proc.stderr and "1 ok, 1 failed" in proc.stderr
