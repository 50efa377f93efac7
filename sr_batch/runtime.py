"""The one home of TensorFlow/Keras runtime setup: threads, GPU memory, device and worker names.

Only actors, training, evaluation and benches call these; the driver never imports
TensorFlow, so importing this module costs nothing until a function runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import re
import socket
import sys
import tempfile

log = logging.getLogger(__name__)


def configure_tensorflow(threads: int) -> None:
    """Thread limits and GPU memory growth; must run before TensorFlow does any work.

    `threads` 0 leaves TensorFlow's own choice. In a process where TensorFlow is
    already running (a test, a notebook) the settings cannot change; say so.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with native_log_filtered():
        import tensorflow as tf

    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        log.info("TensorFlow is already initialised; thread settings (%d) unchanged", threads)


# An absl log line: severity letter (I, W, E, F), MMDD, time; and the notice absl prints once
# before its first line when logging is not set up yet.
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d\d")
_ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Logged at ERROR on CPUs without AVX-512 FP16, yet only a note: half precision (which no
# sr-batch model uses) falls back to Eigen. Hidden at any level, as ray_session hides it from actors.
_HALF_PRECISION_NOTE = b"oneDNN supports DT_HALF only on platforms with AVX-512"


@contextlib.contextmanager
def native_log_filtered(after_import: bool = False):
    """Drop what TF_CPP_MIN_LOG_LEVEL asks to hide from the native stderr of the block.

    TensorFlow (2.16+) logs its load-time notes (oneDNN, CPU features) through absl before
    absl is set up, so they reach stderr whatever TF_CPP_MIN_LOG_LEVEL says; in a Ray worker
    every such line is forwarded to the user's terminal, coloured, on each run and in
    one-line errors. The block's stderr goes to a temporary file, and what is not a hidden
    absl line is passed on. `after_import`: filter also where TensorFlow is imported already
    (a model's first run, whose oneDNN notes come before absl's setup too).
    """
    if "tensorflow" in sys.modules and not after_import:
        yield
        return
    try:
        level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        level = 0
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = _unhidden_lines(captured.read(), b"IWEF"[:level])
            if kept:
                os.write(2, kept)


def _unhidden_lines(text: bytes, hidden: bytes) -> bytes:
    """`text` less its absl lines of a hidden severity (and their continuation lines)."""
    kept, hiding = [], False
    for line in text.splitlines(keepends=True):
        header = _ABSL_LINE.match(line)
        if line.rstrip() == _ABSL_NOTICE:
            hiding = b"W" in hidden
        elif header:
            hiding = header.group(1) in hidden or _HALF_PRECISION_NOTE in line
        if not hiding:
            kept.append(line)
    return b"".join(kept)


def device_name() -> str:
    """The device Keras computes on, e.g. 'gpu: NVIDIA H200' or 'cpu: x86_64', for cards and benches."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}: {getattr(device, 'device_kind', device)}"
    if backend == "torch":
        import torch

        return f"gpu: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else f"cpu: {platform.machine()}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return f"gpu: {len(gpus)} x {gpus[0].name}" if gpus else f"cpu: {platform.machine()}"
    return backend


def worker_name() -> str:
    """host:pid of this process, with its CUDA_VISIBLE_DEVICES: the stats' `worker` column."""
    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    name = f"{socket.gethostname()}:{os.getpid()}"
    return f"{name} gpu={gpus}" if gpus not in (None, "") else name
