"""Training and evaluation data: HR image folders, and the seeded patch sampler.

Batches are numpy: random HR patches (flips, 90 degree rotations) and their LR,
drawn from a generator seeded by (seed, step) so a resumed run sees exactly the
batches an uninterrupted one would. LR is the Pillow bicubic downscale (the
evaluation convention) or a degraded patch (models/degradations.py).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from sr_batch import resample, storage
from sr_batch.errors import ConfigError
from sr_batch.models import degradations

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: str) -> list[str]:
    """Image URIs directly in `folder`, sorted, by suffix (png, jpg, bmp; any case)."""
    uri = storage.to_uri(folder)
    fs, path = storage.get_fs(uri)
    protocol = uri.split("://", 1)[0]
    found = [p for p in fs.ls(path, detail=False) if p.lower().endswith(IMAGE_SUFFIXES)]
    if not found:
        raise ConfigError(f"no .png/.jpg/.bmp/.webp images in {folder}")
    return sorted(f"{protocol}://{p}" if protocol != "file" else "file://" + p for p in found)


def load_images(folders: tuple[str, ...] | list[str]) -> list[np.ndarray]:
    """Every image of the folders, decoded to uint8 RGB HxWx3 in memory."""
    images = []
    for folder in folders:
        for uri in list_images(folder):
            with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    return images


def add_downscaled(images: list[np.ndarray], factors: tuple[float, ...]) -> list[np.ndarray]:
    """The images, then a bicubic downscaled copy of each per factor (FSRCNN's scale augmentation).

    A downscaled photo is a new HR image with finer detail per pixel: more of what
    the model must learn to restore, from the same folder.
    """
    copies = list(images)
    for factor in factors:
        if not 0.0 < factor < 1.0:
            raise ConfigError(f"scale augmentation factors must be in (0, 1), got {factor}")
        for image in images:
            size = (max(1, round(image.shape[1] * factor)), max(1, round(image.shape[0] * factor)))
            copies.append(resample.resize_bicubic(image, size))
    return copies


def dataset_name(folder: str) -> str:
    """`.../Set5/HR` -> `Set5`: the last path part that is not HR."""
    parts = [p for p in storage.to_uri(folder).split("://", 1)[1].split("/") if p]
    return next((p for p in reversed(parts) if p.upper() != "HR"), folder)


def sample_batch(images: list[np.ndarray], seed: int, step: int, batch_size: int,
                 patch_size: int, scale: int, degradation: str = "bicubic") -> tuple[np.ndarray, np.ndarray]:
    """Batch `step` of the stream: (LR, HR) float32 in [0, 1], a pure function of (seed, step).

    Images are drawn in proportion to their area, so every HR pixel is about
    equally likely to be seen; images smaller than a patch are never drawn.
    LR is the Pillow bicubic downscale, or with a `degradation` range set the
    degradation pipeline's patch, drawn from its own generator (seed, step, i).
    """
    ranges = None if degradation == "bicubic" else degradations.RANGES[degradation]
    rng = np.random.default_rng([seed, step])
    areas = np.array([im.shape[0] * im.shape[1] if min(im.shape[:2]) >= patch_size else 0
                      for im in images], dtype=np.float64)
    if not areas.any():
        raise ConfigError(f"no training image is at least {patch_size}x{patch_size}")
    picks = rng.choice(len(images), size=batch_size, p=areas / areas.sum())
    lr_side = patch_size // scale
    hr = np.empty((batch_size, patch_size, patch_size, 3), np.uint8)
    lr = np.empty((batch_size, lr_side, lr_side, 3), np.uint8)
    for i, pick in enumerate(picks):
        image = images[pick]
        top = rng.integers(0, image.shape[0] - patch_size + 1)
        left = rng.integers(0, image.shape[1] - patch_size + 1)
        patch = image[top:top + patch_size, left:left + patch_size]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = np.rot90(patch, k=int(rng.integers(0, 4)))
        hr[i] = patch
        if ranges is None:
            lr[i] = resample.downscale_bicubic(np.ascontiguousarray(patch), scale)
        else:
            lr[i] = degradations.degrade(patch, scale, ranges, np.random.default_rng([seed, step, i]))
    return lr.astype(np.float32) / 255.0, hr.astype(np.float32) / 255.0

