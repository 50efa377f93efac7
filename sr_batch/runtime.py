"""The one home of TensorFlow/Keras runtime setup: threads, GPU memory, device and worker names.

Only actors, training, evaluation and benches call these; the driver never imports
TensorFlow, so importing this module costs nothing until a function runs.
"""

from __future__ import annotations

import logging
import os
import platform
import socket

log = logging.getLogger(__name__)


def configure_tensorflow(threads: int) -> None:
    """Thread limits and GPU memory growth; must run before TensorFlow does any work.

    `threads` 0 leaves TensorFlow's own choice. In a process where TensorFlow is
    already running (a test, a notebook) the settings cannot change; say so.
    """
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
        for gpu in tf.config.list_physical_devices("GPU"):
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        log.info("TensorFlow is already initialised; thread settings (%d) unchanged", threads)


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
