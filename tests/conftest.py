"""Shared fixtures: a real local Ray (2 CPUs, 2 logical GPUs) and small generated images."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Every Ray the tests start (in-process, CLI subprocesses, `ray start`) listens on
# 127.0.0.1 only: Ray's single-node mode puts the node on the loopback address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# The tests import TensorFlow and PyTorch into one process (sr-batch's own processes never
# do); torch's optional triton crashes such a process as it loads. sr-batch convert blocks it
# the same way (models.convert.block_triton), before any test module imports torch.
from sr_batch.models.convert import block_triton  # noqa: E402

block_triton()


def scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB scene with edges (uint8): gradients, a disk and stripes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.4 * np.sin(x / max(width, 1) * 3 + seed)
    g = 0.5 + 0.4 * np.cos(y / max(height, 1) * 2)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    disk = ((y - cy) ** 2 + (x - cx) ** 2) < (0.25 * min(height, width)) ** 2
    b = np.where(disk, 0.9, 0.2) + 0.05 * ((x // 6) % 2)
    return (np.clip(np.stack([r, g, b], axis=2), 0, 1) * 255 + 0.5).astype(np.uint8)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def saved(image, fmt: str, **options) -> bytes:
    """A Pillow image saved to bytes in `fmt`."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def alpha_ramp(height: int, width: int) -> np.ndarray:
    """An alpha plane from fully transparent (0) to opaque (255) across the width."""
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))



def deep_planes(height: int, width: int, channels: int) -> np.ndarray:
    """uint16 planes using all 16 bits (low bytes differ from high bytes)."""
    return (np.arange(height * width * channels).reshape(height, width, channels) * 2749 % 65536
            ).astype(np.uint16)

def pytest_collection_modifyitems(items):
    """A test that uses the real local Ray is slow, whether or not its file says so."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session: 2 CPUs like the CI machine, 2 logical GPUs."""
    import ray

    if not ray.is_initialized():
        # "local": a fresh cluster of our own, never one that `ray start` left on this machine.
        ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False,
                 logging_level="WARNING",
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def image_dir(tmp_path):
    """Five small RGB PNGs (two in a subfolder) with varied sizes."""
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    sizes = [(24, 32), (17, 29), (40, 40), (9, 13), (33, 21)]
    for i, (h, w) in enumerate(sizes):
        folder = root / "sub" if i >= 3 else root
        Image.fromarray(scene(h, w, seed=i)).save(folder / f"im{i}.png")
    return root


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc, first_signal, timeout_s: float = 30.0) -> None:
    """Stop a process the test started, by its own id: a polite signal, then SIGKILL of its group."""
    import signal

    if proc.poll() is None:
        proc.send_signal(first_signal)
        try:
            proc.wait(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real `ray start --head` with the dashboard on 127.0.0.1 and token authentication on.

    Yields (gcs_address, dashboard_url, env) where env carries a HOME whose
    ~/.ray/auth_token holds the cluster's token (and no RAY_AUTH_MODE: the
    client must find the token by itself, as a user's would).
    """
    import secrets
    import signal
    import subprocess
    import sys
    import time

    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    gcs, dashboard, client = free_port(), free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith("RAY_") or k == "RAY_DISABLE_IMPORT_WARNING"}
    # Single-node mode: the node's address is the loopback one (as Ray does on macOS),
    # so the dashboard, the client server and the node's address stay on 127.0.0.1.
    env = {**base_env, "HOME": str(home), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # The cluster's `python` (a job's entrypoint) is this environment's, as on a
           # node whose setup activated the project's virtualenv.
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
         f"--ray-client-server-port={client}", "--num-cpus=2", "--disable-usage-stats",
         # Fixed defaults (52365, ...) would collide with another Ray on this machine,
         # e.g. the tests' in-process one, now that both live on 127.0.0.1.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
        env={**env, "RAY_AUTH_MODE": "token"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            check = subprocess.run(
                [sys.executable, "-c", "from ray.job_submission import JobSubmissionClient as C; "
                 f"C('{url}').list_jobs()"],
                env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, timeout=60)
            if check.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not come up: {check.stderr[-500:]!r}")
            time.sleep(2)
        yield f"127.0.0.1:{gcs}", url, env
    finally:
        stop_process(proc, signal.SIGINT)  # `ray start --block` stops its children on SIGINT


def bounded(call, limit_s: float = 60.0):
    """Run `call` in a daemon thread; return its result or exception. A call still running
    after `limit_s` fails the test instead of hanging the suite (it is a guard, not a timing)."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"still blocked after {limit_s} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]



@contextlib.contextmanager
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers; yields its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in held:
            conn.close()

