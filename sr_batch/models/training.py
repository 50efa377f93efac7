"""Train a zoo architecture on HR image folders (`sr-batch train`, jobs/train.py).

Batches come from models/data.py's seeded sampler (clean bicubic or degraded LR).
Each epoch scores the validation folder with the evaluation protocol
(models/evaluation.py) next to bicubic on the same pixels, and checkpoints the
compiled model (weights + optimizer) so the run can resume. The result is a
.keras file and its card (models/cards.py).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import posixpath
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import keras
import numpy as np

import sr_batch.models.layers  # noqa: F401 - registers DepthToSpace for checkpoint loading
from sr_batch import storage
from sr_batch.errors import ConfigError, MissingFileError, SrBatchError
from sr_batch.models import cards, degradations, evaluation, registry
from sr_batch.models.architectures import (ARCHITECTURES, LUMA_WEIGHTS, Y_ONLY, build_model,
                                          conv_macs_per_output_pixel, receptive_radius)
from sr_batch.models.data import add_downscaled, dataset_name, list_images, load_images, sample_batch
from sr_batch.runtime import device_name

log = logging.getLogger(__name__)

LOSSES = {"l1": "mean_absolute_error", "l2": "mean_squared_error"}
# The cosine schedule ends at this fraction of the initial learning rate.
FINAL_LR_FRACTION = 0.01
CHECKPOINT_NAME = "last.keras"
STATE_NAME = "state.json"


@dataclass(frozen=True)
class TrainConfig:
    """One training run; the resolved copy is written next to the output as JSON."""

    arch: str
    """Architecture: one of models.architectures.ARCHITECTURES."""
    scale: int
    """Upscaling factor."""
    train: tuple[str, ...]
    """Folders (fsspec URIs) of HR training images."""
    out: str
    """Where the trained .keras file goes (fsspec URI); a .json sidecar lands next to it."""
    val: str | None = None
    """Folder of HR validation images; Y-PSNR on it is logged every epoch."""
    eval: tuple[str, ...] = ()
    """Extra HR folders measured once after training (e.g. Set14)."""
    steps: int = 6000
    """Optimizer steps in total."""
    epoch_steps: int = 500
    """Steps between validation and checkpoints; `steps` must be a multiple."""
    batch_size: int = 16
    """HR patches per step (global, across GPUs)."""
    patch_size: int = 64
    """HR patch side in pixels; a multiple of scale."""
    lr: float = 1e-3
    """Initial Adam learning rate; cosine decay to 1% of it over `steps`."""
    seed: int = 0
    """Seeds the weights and the batch stream."""
    loss: str = "l1"
    """l1 or l2 on RGB in [0, 1]; on BT.601 Y for the Y-only architectures (srcnn, espcn, fsrcnn)."""
    checkpoint_dir: str | None = None
    """Folder for the resumable checkpoint; None trains without one."""
    name: str | None = None
    """Zoo name to register under in the package index; None does not register."""
    make_default: bool = False
    """Make the registered model the default for its scale."""
    init_from: str | None = None
    """A .keras file (fsspec URI) whose weights start every layer of the same name and shape."""
    data_workers: int = 1
    """Threads that cut and downscale patches (Pillow releases the GIL); raise it to keep a GPU fed."""
    minutes: float | None = None
    """Train for about this long instead of `steps`: a timed probe sets `steps` (whole epochs)."""
    degradation: str = "bicubic"
    """How LR patches are made: `bicubic` (Pillow BICUBIC downscale) or a degradations.RANGES
    name (`mild`, `strong`): blur, resize, noise and JPEG, see models/degradations.py."""
    val_preset: str = "clean"
    """Evaluation preset (degradations.PRESETS) applied to the validation LR."""
    scale_augment: tuple[float, ...] = ()
    """Also train on every image downscaled by these factors (e.g. 0.9 0.8 0.7 0.6, as FSRCNN)."""

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ConfigError(f"--arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.scale < 1:
            raise ConfigError(f"--scale must be >= 1, got {self.scale}")
        if self.loss not in LOSSES:
            raise ConfigError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.patch_size % self.scale or self.patch_size < 4 * self.scale:
            raise ConfigError(f"--patch-size must be a multiple of the scale and >= 4x it, got {self.patch_size}")
        if self.steps < 1 or self.batch_size < 1 or self.epoch_steps < 1 or self.data_workers < 1:
            raise ConfigError("--steps, --batch-size, --epoch-steps and --data-workers must be >= 1")
        if self.minutes is None and self.steps % min(self.epoch_steps, self.steps):
            raise ConfigError(f"--steps ({self.steps}) must be a multiple of --epoch-steps ({self.epoch_steps})")
        if not self.train:
            raise ConfigError("--train needs at least one folder")
        if self.minutes is not None and self.minutes <= 0:
            raise ConfigError(f"--minutes must be > 0, got {self.minutes}")
        if any(not 0.0 < factor < 1.0 for factor in self.scale_augment):
            raise ConfigError(f"--scale-augment factors must be in (0, 1), got {list(self.scale_augment)}")
        if self.degradation != "bicubic" and self.degradation not in degradations.RANGES:
            raise ConfigError(f"--degradation must be bicubic or one of {', '.join(degradations.RANGES)}, "
                              f"got {self.degradation!r}")
        if self.val_preset not in degradations.PRESETS:
            raise ConfigError(f"--val-preset must be one of {', '.join(degradations.PRESETS)}, "
                              f"got {self.val_preset!r}")
        if self.name is not None and not self.out.endswith(".keras"):
            raise ConfigError("--out must end in .keras")


def batch_stream(images: list[np.ndarray], config: TrainConfig, first_step: int) -> Iterator[tuple]:
    """Batches first_step .. config.steps - 1 in order, cut by `config.data_workers` threads.

    Each batch is still the pure function of (seed, step) that `sample_batch`
    makes, so the stream is the same for any number of workers.
    """
    def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
        return sample_batch(images, config.seed, step, config.batch_size, config.patch_size, config.scale,
                            config.degradation)

    if config.data_workers == 1:
        for step in range(first_step, config.steps):
            yield batch(step)
        return
    with ThreadPoolExecutor(config.data_workers, thread_name_prefix="patches") as pool:
        steps = iter(range(first_step, config.steps))
        ahead = collections.deque(pool.submit(batch, step)
                                  for step in itertools.islice(steps, 2 * config.data_workers))
        while ahead:
            yield ahead.popleft().result()
            ahead.extend(pool.submit(batch, step) for step in itertools.islice(steps, 1))


def validate(model, images: list[np.ndarray], scale: int, preset: str = "clean") -> dict:
    """Y-PSNR of the model (one call per whole image) and of bicubic, by the evaluation protocol."""
    return evaluation.score(evaluation.whole_image_upscale(model), images, scale, preset, ssim=False,
                            blockiness=False)


def _strategy_scope():
    """tf.distribute across several GPUs on the TensorFlow backend; otherwise no scope.

    MirroredStrategy costs a copy per step, so it is used only with more than one
    GPU. Other Keras backends (JAX, torch: the GPU bench machines) train on one device.
    """
    if keras.backend.backend() != "tensorflow":
        return contextlib.nullcontext()
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy().scope()
    return contextlib.nullcontext()


def _load_keras(uri: str, **kwargs):
    handle, path = tempfile.mkstemp(suffix=".keras")
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(storage.read_bytes(uri))
        return keras.saving.load_model(path, safe_mode=True, **kwargs)
    finally:
        os.unlink(path)


@keras.saving.register_keras_serializable(package="sr_batch")
class LumaLoss(keras.losses.Loss):
    """L1 or L2 on BT.601 Y of RGB output and target: the loss of the Y-only models.

    They change luma only, so an RGB loss would also score the bicubic chroma they
    cannot touch, and weigh R, G and B equally where Y-PSNR weighs them 0.26/0.50/0.10.
    """

    def __init__(self, kind: str = "l1", **kwargs):
        kwargs.setdefault("name", f"{kind}_on_y")
        super().__init__(**kwargs)
        if kind not in LOSSES:
            raise ValueError(f"kind must be one of {', '.join(LOSSES)}, got {kind!r}")
        self.kind = kind

    def call(self, y_true, y_pred):
        error = keras.ops.sum((y_pred - y_true) * keras.ops.convert_to_tensor(LUMA_WEIGHTS), axis=-1)
        return keras.ops.abs(error) if self.kind == "l1" else keras.ops.square(error)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


def loss_for(arch: str, kind: str):
    """The training loss: on Y for the Y-only architectures, on RGB for the rest."""
    return LumaLoss(kind) if arch in Y_ONLY else LOSSES[kind]


def _build_compiled(config: TrainConfig) -> keras.Model:
    model = build_model(config.arch, config.scale)
    schedule = keras.optimizers.schedules.CosineDecay(
        config.lr, decay_steps=config.steps, alpha=FINAL_LR_FRACTION)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss_for(config.arch, config.loss))
    return model


def _init_from(model: keras.Model, uri: str) -> int:
    """Copy weights from a saved model into `model` layer by layer, where names and shapes match.

    How EDSR trains x3/x4: the x2 body is a far better start than random weights;
    only the scale-specific sub-pixel conv starts fresh.
    """
    source = {layer.name: layer for layer in _load_keras(storage.to_uri(uri), compile=False).layers}
    copied = 0
    for layer in model.layers:
        donor = source.get(layer.name)
        weights = donor.get_weights() if donor is not None else []
        if weights and [w.shape for w in weights] == [w.shape for w in layer.get_weights()]:
            layer.set_weights(weights)
            copied += 1
    return copied


def _parent_card(uri: str) -> dict | None:
    """The lineage of an --init-from model: its file, SHA-256 and total steps, from its JSON sidecar.

    None when the file has no sidecar (then only its name is recorded).
    """
    try:
        card = json.loads(storage.read_bytes(storage.to_uri(uri.removesuffix(".keras") + ".json")))
    except MissingFileError:
        return None
    return {"file": posixpath.basename(uri), "sha256": card.get("sha256"), "arch": card.get("arch"),
            "scale": card.get("scale"), "steps_total": card.get("steps_total", card.get("steps"))}


# The --minutes probe: steps to compile and warm up, then steps timed.
PROBE_WARM_STEPS, PROBE_TIMED_STEPS = 20, 100


def fit_steps_to_minutes(config: TrainConfig, train_images: list[np.ndarray],
                         val_images: list[np.ndarray]) -> tuple[TrainConfig, dict]:
    """Time a throwaway model's steps (and one validation) here; set `steps` to the epochs that fit.

    The probe's weights are discarded: the real run starts fresh with a schedule
    over the steps it will actually take, so its card is the same as a run
    given those --steps.
    """
    probe = _build_compiled(config)
    warm = dataclasses.replace(config, steps=PROBE_WARM_STEPS)
    timed = dataclasses.replace(config, steps=PROBE_WARM_STEPS + PROBE_TIMED_STEPS)
    probe.fit(batch_stream(train_images, warm, 0), steps_per_epoch=PROBE_WARM_STEPS, epochs=1, shuffle=False, verbose=0)
    began = time.perf_counter()
    probe.fit(batch_stream(train_images, timed, PROBE_WARM_STEPS), steps_per_epoch=PROBE_TIMED_STEPS,
              epochs=1, shuffle=False, verbose=0)
    step_s = (time.perf_counter() - began) / PROBE_TIMED_STEPS
    val_s = 0.0
    if val_images:
        validate(probe, val_images, config.scale, config.val_preset)  # first call traces each shape
        began = time.perf_counter()
        validate(probe, val_images, config.scale, config.val_preset)
        val_s = time.perf_counter() - began
    epoch_s = config.epoch_steps * step_s + val_s
    epochs = max(1, int(config.minutes * 60 // epoch_s))
    steps = epochs * config.epoch_steps
    log.info("--minutes %g: %.2f ms/step, %.1f s/validation -> %d epochs of %d steps",
             config.minutes, 1e3 * step_s, val_s, epochs, config.epoch_steps)
    return dataclasses.replace(config, steps=steps), {"step_ms": round(1e3 * step_s, 4),
                                                       "val_s": round(val_s, 4), "steps": steps}


def _checkpoint_exists(checkpoint_dir: str) -> bool:
    fs, path = storage.get_fs(storage.to_uri(storage.join(checkpoint_dir, CHECKPOINT_NAME)))
    return fs.exists(path)


def train(config: TrainConfig) -> dict:
    """Run the training; write the .keras file and its JSON sidecar; return the sidecar."""
    if config.name is not None:
        _check_registrable(config.out)
    began = time.perf_counter()
    train_images = add_downscaled(load_images(config.train), config.scale_augment)
    val_images = load_images([config.val]) if config.val else []
    log.info("loaded %d training images (%.1f MP) and %d validation images in %.1fs",
             len(train_images), sum(im.shape[0] * im.shape[1] for im in train_images) / 1e6,
             len(val_images), time.perf_counter() - began)

    state = None
    if config.checkpoint_dir and _checkpoint_exists(config.checkpoint_dir):
        state = json.loads(storage.read_bytes(storage.join(storage.to_uri(config.checkpoint_dir), STATE_NAME)))
    probe = None
    if config.minutes is not None:
        if state is not None:  # the steps the interrupted run settled on
            config = dataclasses.replace(config, steps=int(state.get("steps", config.steps)))
        else:
            with _strategy_scope():
                config, probe = fit_steps_to_minutes(config, train_images, val_images)
    keras.utils.set_random_seed(config.seed)
    with _strategy_scope():
        if state is not None:
            model = _load_keras(storage.join(storage.to_uri(config.checkpoint_dir), CHECKPOINT_NAME))
            history = state["history"]
            # Training time counts on from the checkpoint: train_s and elapsed_s are the time
            # the shipped steps took, whatever the number of resumes.
            began -= history[-1]["elapsed_s"] if history else 0.0
            log.info("resumed from %s at step %d", config.checkpoint_dir, int(model.optimizer.iterations))
        else:
            model = _build_compiled(config)
            history = []
            if config.init_from:
                copied = _init_from(model, config.init_from)
                log.info("initialised %d of %d layers from %s", copied, len(model.layers), config.init_from)
    start_step = int(model.optimizer.iterations)
    epoch_steps = min(config.epoch_steps, config.steps)
    dataset = batch_stream(train_images, config, start_step)
    progress = _Progress(config, val_images, history, began)
    if start_step < config.steps:
        model.fit(dataset, epochs=config.steps // epoch_steps, initial_epoch=start_step // epoch_steps,
                  steps_per_epoch=epoch_steps, callbacks=[progress], shuffle=False, verbose=0)
    train_s = time.perf_counter() - began
    parent = _parent_card(config.init_from) if config.init_from else None

    # Ship the weights in a fresh, uncompiled model: no optimizer state in the file.
    export = build_model(config.arch, config.scale)
    export.set_weights(model.get_weights())
    data = cards.save_keras(export, storage.to_uri(config.out))
    sidecar = {
        "name": config.name or config.arch,
        "arch": config.arch,
        "scale": config.scale,
        "channels": 3,
        "net_channels": cards.net_channels(config.arch),
        "file": posixpath.basename(config.out),
        "sha256": registry.sha256_of(data),
        "bytes": len(data),
        "params": int(export.count_params()),
        "receptive_radius": receptive_radius(config.arch, config.scale),
        # Conv multiply-adds per output pixel (resampling and activations excluded); FLOPs = 2 MACs.
        "flops_per_pixel": 2 * conv_macs_per_output_pixel(export),
        # The folders as given: a card records datasets/T91/HR, not the trainer's home directory.
        "trained_on": [{"dataset": dataset_name(f), "uri": f, "images": len(list_images(f))}
                       for f in config.train],
        "steps": config.steps,
        "init_from": posixpath.basename(config.init_from) if config.init_from else None,
        "init_from_card": parent,
        # Optimizer steps behind these weights, counting the --init-from model's own.
        "steps_total": config.steps + ((parent or {}).get("steps_total") or 0),
        "seed": config.seed,
        "batch_size": config.batch_size,
        "patch_size": config.patch_size,
        "lr": config.lr,
        "loss": config.loss,
        "loss_on": "Y (BT.601)" if config.arch in Y_ONLY else "RGB",
        "degradation": ("Pillow BICUBIC downscale of the HR patch" if config.degradation == "bicubic"
                        else degradations.RANGES[config.degradation].to_card()),
        "val_preset": config.val_preset,
        "train_s": round(train_s, 1),
        "minutes_probe": probe,
        "trained_with": {"keras_backend": keras.backend.backend(), "device": device_name(),
                         "data_workers": config.data_workers},
        "metric": cards.METRIC,
        "eval": {},
        "history": history,
    }
    for folder in ([config.val] if config.val else []) + list(config.eval):
        images = val_images if folder == config.val else load_images([folder])
        sidecar["eval"][dataset_name(folder)] = validate(export, images, config.scale, config.val_preset)
    if "Set5" in sidecar["eval"]:
        sidecar["set5_psnr_y"] = sidecar["eval"]["Set5"]["psnr_y"]
        sidecar["set5_psnr_y_bicubic"] = sidecar["eval"]["Set5"]["psnr_y_bicubic"]
    for name, result in sidecar["eval"].items():
        log.info("final %s x%d: Y-PSNR %.2f dB, bicubic %.2f dB on the same pixels",
                 name, config.scale, result["psnr_y"], result["psnr_y_bicubic"])

    cards.write_card(config.out, {**sidecar, "config": dataclasses.asdict(config)})
    if config.name is not None:
        cards.register(sidecar, make_default=config.make_default)
        log.info("registered %s x%d in %s", sidecar["name"], config.scale, registry.INDEX_PATH)
    return sidecar


def _check_registrable(out: str) -> None:
    """Zoo entries name files in the package's weights folder, so --out must be there."""
    uri = storage.to_uri(out)
    if not uri.startswith("file://") or os.path.dirname(uri[len("file://"):]) != str(registry.WEIGHTS_DIR):
        raise ConfigError(f"--name registers into the zoo, so --out must be in {registry.WEIGHTS_DIR}")


class _Progress(keras.callbacks.Callback):
    """Log loss and speed every 100 steps; validate and checkpoint at the end of each epoch."""

    LOG_EVERY = 100

    def __init__(self, config: TrainConfig, val_images: list[np.ndarray], history: list[dict],
                 began: float):
        super().__init__()
        self.config = config
        self.val_images = val_images
        self.history = history
        self.began = began
        self.window_began = time.perf_counter()
        self.window_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.window_steps += 1
        step = int(self.model.optimizer.iterations)
        if step % self.LOG_EVERY == 0:
            now = time.perf_counter()
            rate = self.window_steps / max(now - self.window_began, 1e-9)
            log.info("step %d/%d  loss %.5f  lr %.2e  %.1f steps/s  %.0fs",
                     step, self.config.steps, float((logs or {}).get("loss", math.nan)),
                     float(self.model.optimizer.learning_rate), rate, now - self.began)
            self.window_began, self.window_steps = now, 0

    def on_epoch_end(self, epoch, logs=None):
        step = int(self.model.optimizer.iterations)
        record = {"step": step, "loss": round(float((logs or {}).get("loss", math.nan)), 6),
                  "elapsed_s": round(time.perf_counter() - self.began, 1)}
        if self.val_images:
            result = validate(self.model, self.val_images, self.config.scale, self.config.val_preset)
            record.update(val_psnr_y=result["psnr_y"], val_psnr_y_bicubic=result["psnr_y_bicubic"])
            log.info("epoch %d (step %d): val Y-PSNR %.3f dB, bicubic %.3f dB (%+.3f)",
                     epoch + 1, step, result["psnr_y"], result["psnr_y_bicubic"],
                     result["psnr_y"] - result["psnr_y_bicubic"])
        self.history.append(record)
        if self.config.checkpoint_dir:
            directory = storage.to_uri(self.config.checkpoint_dir)
            cards.save_keras(self.model, storage.join(directory, CHECKPOINT_NAME))
            storage.write_bytes_atomic(storage.join(directory, STATE_NAME),
                                       json.dumps({"step": step, "steps": self.config.steps,
                                                   "history": self.history}).encode())


USAGE = """Train a zoo model on HR image folders.

Example (how the shipped default x2 model was made, ~8 minutes on 2 CPU cores):

    python jobs/train.py --arch residual --scale 2 \
        --train datasets/T91/HR datasets/BSDS200/HR \
        --val datasets/Set5/HR --eval datasets/Set14/HR \
        --steps 6000 --batch-size 32 --patch-size 64 --threads 2 \
        --out sr_batch/models/weights/residual_x2.keras --checkpoint-dir runs-local/residual_x2 \
        --name residual --make-default

Rerun the same command to resume from the checkpoint after an interruption.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True,
                        help="basic, residual, subpixel, srcnn, espcn, fsrcnn, quality or quality_lite")
    parser.add_argument("--scale", type=int, required=True, help="upscaling factor, e.g. 2")
    parser.add_argument("--train", nargs="+", required=True, help="folders (fsspec URIs) of HR training images")
    parser.add_argument("--val", help="folder of HR validation images (Y-PSNR logged every epoch)")
    parser.add_argument("--eval", nargs="*", default=[], help="extra HR folders measured once at the end")
    parser.add_argument("--out", required=True, help="output .keras file (fsspec URI); a .json sidecar goes next to it")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps in total (default 6000)")
    parser.add_argument("--minutes", type=float,
                        help="train for about this long instead: a timed probe sets --steps to whole epochs")
    parser.add_argument("--epoch-steps", type=int, default=500, help="steps between validation/checkpoints (default 500)")
    parser.add_argument("--batch-size", type=int, default=16, help="HR patches per step (default 16)")
    parser.add_argument("--patch-size", type=int, default=64, help="HR patch side, a multiple of scale (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate, cosine-decayed (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights and batches (default 0)")
    parser.add_argument("--loss", default="l1", choices=["l1", "l2"],
                        help="pixel loss (default l1), on Y for srcnn, espcn and fsrcnn")
    parser.add_argument("--scale-augment", type=float, nargs="+", default=[], metavar="FACTOR",
                        help="also train on each image downscaled by these factors, e.g. 0.9 0.8 0.7 0.6")
    parser.add_argument("--checkpoint-dir", help="folder for a resumable checkpoint; rerun the same command to resume")
    parser.add_argument("--name", help="register the result in the package zoo under this name (--out must be in the weights folder)")
    parser.add_argument("--make-default", action="store_true", help="make the registered model the default for its scale")
    parser.add_argument("--init-from", help="a .keras file whose same-named, same-shaped layers start the run (x2 -> x4)")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow CPU threads; 0 lets TF decide")
    parser.add_argument("--degradation", default="bicubic",
                        help="LR patches: bicubic (clean downscale), or mild / strong (blur, resize, "
                             "noise and JPEG; see sr_batch/models/degradations.py)")
    parser.add_argument("--val-preset", default="clean",
                        help="degradation preset of the validation LR (clean, jpeg50, realistic, ...)")
    parser.add_argument("--data-workers", type=int, default=1,
                        help="threads cutting training patches (default 1; 4-8 keep a GPU busy)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The training command line (`python jobs/train.py`, `sr-batch train`); returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    if keras.backend.backend() == "tensorflow":
        from sr_batch.runtime import configure_tensorflow

        configure_tensorflow(args.threads)

    try:
        config = TrainConfig(
            arch=args.arch, scale=args.scale, train=tuple(args.train), val=args.val, eval=tuple(args.eval),
            out=args.out, steps=args.steps, epoch_steps=args.epoch_steps, batch_size=args.batch_size,
            patch_size=args.patch_size, lr=args.lr, seed=args.seed, loss=args.loss,
            checkpoint_dir=args.checkpoint_dir, name=args.name, make_default=args.make_default,
            init_from=args.init_from, data_workers=args.data_workers, minutes=args.minutes,
            degradation=args.degradation, val_preset=args.val_preset, scale_augment=tuple(args.scale_augment),
        )
        train(config)
    except SrBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
