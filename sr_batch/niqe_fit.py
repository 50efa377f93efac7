"""NIQE's pristine model fitted on folders of clean images, checked, and the fitting command line.

A tool, not part of a run: `python jobs/fit_niqe.py` runs `main`. The features
are `niqe.patch_features`, computed in float64 so that a refit reproduces the
shipped model to round-off on any machine; `--check` refits and compares.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
from collections.abc import Iterable

import numpy as np

from sr_batch import storage
from sr_batch.errors import ConfigError, ImageError, SrBatchError
from sr_batch.decode import decode_image
from sr_batch.niqe import (FEATURE_NAMES, FEATURES_PER_SCALE, PATCH, SCALES, NiqeParams,
                           load_params, patch_features)

SHARPNESS_FRACTION = 0.75  # the paper keeps pristine patches sharper than this x the image's sharpest
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# --check tolerance: float round-off, relative to each entry's scale (see compare_params).
CHECK_RTOL = 1e-9


def fit_params(images: Iterable[np.ndarray], patch: int = PATCH,
               sharpness_fraction: float = SHARPNESS_FRACTION) -> NiqeParams:
    """The pristine model of a set of images: mean and covariance of their sharpest patches' features.

    As the paper: per image, only patches whose sharpness (mean local sigma) exceeds
    `sharpness_fraction` x the image's sharpest patch; then patches with an undefined
    feature are left out. Features are computed in float64 for reproducibility.
    """
    kept = []
    image_count = candidates = 0
    for image in images:
        image_count += 1
        features, sharpness = patch_features(image, np.float64, patch)
        candidates += len(features)
        if len(features) == 0:
            continue
        sharp = features[sharpness > sharpness_fraction * sharpness.max()]
        kept.append(sharp[~np.isnan(sharp).any(axis=1)])
    features = np.concatenate(kept) if kept else np.empty((0, SCALES * FEATURES_PER_SCALE))
    if len(features) < 2:
        raise ConfigError(f"{len(features)} usable patches in {image_count} images: "
                          f"a pristine model needs at least 2 (images of {patch}x{patch} px or more)")
    provenance = {
        "image_count": image_count,
        "patch_count": len(features),
        "candidate_patch_count": candidates,
        "patch_size": patch,
        "sharpness_threshold": sharpness_fraction,
        "luma": "BT.601 Y in [16, 235] (sr_batch.quality.rgb_to_y)",
        "features": list(FEATURE_NAMES),
    }
    return NiqeParams(mu=features.mean(axis=0), cov=np.cov(features, rowvar=False), provenance=provenance)


def dump_params(params: NiqeParams) -> bytes:
    """JSON of a pristine model; floats written to round-trip exactly."""
    document = {"mu": params.mu.tolist(), "cov": params.cov.tolist(), "provenance": params.provenance}
    return (json.dumps(document, indent=1) + "\n").encode()


def fit_folders(folders: list[str], patch: int = PATCH,
                sharpness_fraction: float = SHARPNESS_FRACTION) -> NiqeParams:
    """Fit on every image directly in the folders (fsspec URIs; sorted by name), with their provenance.

    `inputs_sha256` is the SHA-256 of the sorted hex SHA-256s of the image files, one
    per line: the same files give the same hash wherever they lie and in any order.
    """
    uris = [uri for folder in folders for uri in list_images(folder)]
    hashes = []

    def decoded():
        for uri in uris:
            data = storage.read_bytes(uri)
            hashes.append(hashlib.sha256(data).hexdigest())
            try:
                yield decode_image(data, max_pixels=_MAX_FIT_PIXELS).pixels
            except ImageError as exc:
                raise ConfigError(f"{uri}: {exc}") from None

    params = fit_params(decoded(), patch, sharpness_fraction)
    inputs = hashlib.sha256("".join(h + "\n" for h in sorted(hashes)).encode()).hexdigest()
    provenance = {"folders": list(folders), **params.provenance, "inputs_sha256": inputs}
    return dataclasses.replace(params, provenance=provenance)


# Any training image fits; the limit only stops a decompression bomb.
_MAX_FIT_PIXELS = 1 << 28


def list_images(folder: str) -> list[str]:
    """Image URIs directly in a folder (by suffix, any case), sorted; ConfigError if none."""
    uri = storage.to_uri(folder)
    fs, path = storage.get_fs(uri)
    protocol = uri.split("://", 1)[0]
    try:
        names = fs.ls(path, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"no such folder: {folder}") from None
    found = sorted(p for p in names if p.lower().endswith(IMAGE_SUFFIXES))
    if not found:
        raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return [f"{protocol}://{p}" for p in found]


def compare_params(fitted: NiqeParams, expected: NiqeParams, rtol: float = CHECK_RTOL) -> str | None:
    """The first way a refit differs from a saved model, in words; None when they agree.

    Numbers agree within rtol of each entry's scale, the size of its round-off:
    max(|mu_i|, sd_i) for mu, sqrt(cov_ii cov_jj) for cov. The inputs' hash, counts,
    patch size and threshold must be equal; folder names may differ (the same files
    elsewhere).
    """
    for key in ("image_count", "inputs_sha256", "patch_size", "sharpness_threshold", "patch_count"):
        if key in expected.provenance and fitted.provenance.get(key) != expected.provenance[key]:
            new, old = fitted.provenance.get(key), expected.provenance[key]
            if key == "inputs_sha256":
                return (f"the images differ from those the file was fitted on "
                        f"(inputs_sha256 {new:.12}... vs {old:.12}...)")
            return f"{key} is {new}, the file says {old}"
    sd = np.sqrt(np.abs(np.diag(expected.cov)))
    scales = {"mu": np.maximum(np.abs(expected.mu), sd), "cov": np.outer(sd, sd)}
    for name, scale in scales.items():
        new, old = getattr(fitted, name), getattr(expected, name)
        gap = np.abs(new - old) / np.where(scale > 0, scale, 1)
        if not np.all(gap <= rtol):  # NaN differs too
            where = np.unravel_index(int(np.nanargmax(np.where(np.isnan(gap), np.inf, gap))), gap.shape)
            index = ", ".join(str(int(i)) for i in where)
            return (f"{name}[{index}] is {float(new[where])!r}, the file says {float(old[where])!r} "
                    f"(off by {gap[where]:.1e} of its scale, tolerance {rtol:.0e})")
    return None


USAGE = """Fit NIQE's pristine model on folders of clean images, or check a saved one.

Example (how sr_batch/niqe_pristine.json was made, about 15 s on 2 busy CPU cores):

    python jobs/fit_niqe.py datasets/T91/HR datasets/BSDS200/HR -o sr_batch/niqe_pristine.json

Check that a file is what its images give (exit 0) or not (exit 1, one line why):

    python jobs/fit_niqe.py datasets/T91/HR datasets/BSDS200/HR --check sr_batch/niqe_pristine.json
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fit_niqe.py", description=USAGE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", metavar="FOLDER",
                        help="folders (fsspec URIs) of pristine images; every image directly in them is used")
    parser.add_argument("-o", "--out", help="write the fitted model here (JSON)")
    parser.add_argument("--check", metavar="FILE",
                        help="refit and compare with FILE: exit 1 if it differs beyond round-off")
    parser.add_argument("--patch-size", type=int, default=PATCH, help=f"patch side in px (default {PATCH})")
    parser.add_argument("--sharpness-threshold", type=float, default=SHARPNESS_FRACTION,
                        help=f"keep patches sharper than this x the image's sharpest (default {SHARPNESS_FRACTION})")
    args = parser.parse_args(argv)
    if args.out is None and args.check is None:
        parser.error("give -o FILE to write the model, --check FILE to compare with one, or both")
    if args.patch_size < 8 or args.patch_size % 2:
        parser.error("--patch-size must be even and at least 8")
    return args


def main(argv: list[str] | None = None) -> int:
    """The fitting command line (`python jobs/fit_niqe.py`); returns the exit code."""
    args = parse_args(argv)
    try:
        expected = load_params(args.check) if args.check else None
        fitted = fit_folders(args.folders, args.patch_size, args.sharpness_threshold)
        if args.out:
            storage.write_bytes_atomic(storage.to_uri(args.out), dump_params(fitted))
    except SrBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = f"{fitted.provenance['image_count']} images, {fitted.provenance['patch_count']} patches"
    if expected is not None:
        difference = compare_params(fitted, expected)
        if difference is not None:
            print(f"{args.check} differs from the refit: {difference}", file=sys.stderr)
            return 1
        print(f"{args.check} matches the refit ({counts})")
    if args.out:
        print(f"wrote {args.out} ({counts})")
    return 0
