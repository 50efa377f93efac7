"""Measure models the SR literature's way, each beside bicubic on the same pixels.

One protocol, used by `sr-batch evaluate` (jobs/evaluate.py) and by training's
validation: HR cropped to a multiple of the scale, LR by Pillow BICUBIC of that
crop, then optionally degraded by a named, seeded preset (models/degradations.py:
jpeg50, noise15, realistic, ...); Y-PSNR/Y-SSIM on BT.601 luma with `scale`
pixels shaved (sr_batch/quality.py); bicubic is scored on the same degraded LR.
Models run as the job runs them: tiled, overlap = receptive radius, output
rounded to uint8.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from sr_batch import quality, resample, storage
from sr_batch.config import check_denoise
from sr_batch.errors import SrBatchError
from sr_batch.estimates import estimate
from sr_batch.models import cards, degradations, registry
from sr_batch.upscaler import Upscaler, make_tf_batch_fn, self_ensemble, to_integer

log = logging.getLogger(__name__)

# Throughput tiles: 128 input px, 16 per batch, as the job's CPU defaults run them.
SPEED_TILE = 128
SPEED_BATCH = 16
# Timed batches after one warm-up; enough for a stable mean on a quiet machine.
SPEED_BATCHES = 3
# Degraded LRs are drawn from this seed (image i of a set: generator (seed, i)).
PRESET_SEED = 0

Upscale = Callable[[np.ndarray], np.ndarray]


def degraded_lr(hr: np.ndarray, scale: int, preset: str = "clean", index: int = 0) -> np.ndarray:
    """The evaluation LR of an HR image already cropped to a multiple of `scale`."""
    return degraded_lr_file(hr, scale, preset, index)[0]


def degraded_lr_file(hr: np.ndarray, scale: int, preset: str = "clean",
                     index: int = 0) -> tuple[np.ndarray, bytes]:
    """(the evaluation LR, the file an archive would hold: the preset's JPEG, else no bytes)."""
    lr = resample.downscale_bicubic(np.ascontiguousarray(hr), scale)
    lr, data = degradations.apply_preset_file(lr, preset, PRESET_SEED, index)
    return lr, data or b""


class Routed:
    """`--model auto` as the job runs it: each LR (with its file) is estimated and routed by
    routing.choose to the clean default or `real` at a denoise level; `routes` counts them."""

    def __init__(self, scale: int) -> None:
        from sr_batch import routing

        self.scale, self.routing = scale, routing
        clean = registry.resolve_model(None, scale)
        self.runners = {"clean": _runner(clean, scale)}
        try:
            real = registry.resolve_model("real", scale)
        except SrBatchError:  # no `real` at this scale: the job gives every image the clean model
            real = None
        if real is not None:
            for level in routing.DENOISE_LEVELS:
                self.runners[f"real dn{level:g}"] = _runner(real, scale, level)
        self.routes: dict[str, int] = {}

    def route(self, lr: np.ndarray, data: bytes) -> str:
        """The runner key the job would give this LR file, counted in `routes`."""
        choice = self.routing.choose(estimate(data, lr), self.scale)
        key = choice.key if choice.key in self.runners else "clean"
        self.routes[key] = self.routes.get(key, 0) + 1
        return key

    def __call__(self, lr: np.ndarray, data: bytes) -> np.ndarray:
        return self.runners[self.route(lr, data)](lr)


def _runner(spec, scale: int, denoise: float | None = None) -> "Upscale":
    model = registry.load_keras_model(spec, scale, denoise=denoise)
    return model_upscale(model, scale, spec.receptive_radius)[0]


def score(upscale: Upscale, images: list[np.ndarray], scale: int, preset: str = "clean",
          ssim: bool = True, blockiness: bool = True) -> dict:
    """Mean Y-PSNR (and Y-SSIM) of `upscale` (uint8 LR -> uint8 SR) over HR images, and of
    bicubic on the same degraded LR; and how much of the LR's 8x8 JPEG grid each output shows
    (`quality.grid_blockiness`, mean over the images)."""
    ours = {"psnr_y": [], "ssim_y": [], "blockiness": []}
    theirs = {"psnr_y": [], "ssim_y": [], "blockiness": []}
    for index, image in enumerate(images):
        hr = quality.crop_to_multiple(image, scale)
        lr, data = degraded_lr_file(hr, scale, preset, index)
        sr = upscale(lr, data) if isinstance(upscale, Routed) else upscale(lr)
        for result, sr in ((ours, sr), (theirs, resample.upscale_bicubic(lr, scale))):
            result["psnr_y"].append(quality.psnr_y(sr, hr, border=scale))
            if blockiness:
                result["blockiness"].append(quality.grid_blockiness(sr, scale))
            if ssim:
                result["ssim_y"].append(quality.ssim_y(sr, hr, border=scale))
    scores = {"psnr_y": round(float(np.mean(ours["psnr_y"])), 3),
              "psnr_y_bicubic": round(float(np.mean(theirs["psnr_y"])), 3), "images": len(images)}
    if blockiness:
        scores.update(blockiness=round(float(np.nanmean(ours["blockiness"])), 3),
                      blockiness_bicubic=round(float(np.nanmean(theirs["blockiness"])), 3))
    if ssim:
        scores.update(ssim_y=round(float(np.mean(ours["ssim_y"])), 4),
                      ssim_y_bicubic=round(float(np.mean(theirs["ssim_y"])), 4))
    return scores


def whole_image_upscale(model) -> Upscale:
    """uint8 LR -> uint8 SR with one model call on the whole image (training's validation)."""
    def upscale(lr: np.ndarray) -> np.ndarray:
        rgb = np.repeat(lr[..., None], 3, axis=2) if lr.ndim == 2 else lr
        output = np.asarray(model(rgb[None].astype(np.float32) / 255.0, training=False))[0]
        return np.clip(np.rint(output * 255.0), 0, 255).astype(np.uint8)

    return upscale


def bicubic_upscale(scale: int) -> Upscale:
    return lambda lr: resample.upscale_bicubic(lr, scale)


def model_upscale(model, scale: int, radius: int, tile: int = SPEED_TILE,
                  batch: int = SPEED_BATCH, ensemble: bool = False) -> tuple[Upscale, Callable]:
    """(uint8 LR -> uint8 SR through the job's tiled Upscaler, the batch function it uses)."""
    run, _ = make_tf_batch_fn(model, tile)
    if ensemble:
        run = self_ensemble(run)
    upscaler = Upscaler(run, scale, tile, radius, batch)

    def upscale(lr: np.ndarray) -> np.ndarray:
        image = lr[..., None] if lr.ndim == 2 else lr
        out = to_integer(upscaler.upscale([image])[0].pixels, np.uint8)
        return out[..., 0] if lr.ndim == 2 else out

    return upscale, run


def measure_mp_per_s(run_batch, scale: int, tile: int = SPEED_TILE, batch: int = SPEED_BATCH,
                     batches: int = SPEED_BATCHES) -> float:
    """Output megapixels per second of `run_batch` on (batch, tile, tile, 3) float32 tiles."""
    tiles = np.random.default_rng(0).random((batch, tile, tile, 3), dtype=np.float32)
    run_batch(tiles)  # warm-up: traces and allocates
    began = time.perf_counter()
    for _ in range(batches):
        run_batch(tiles)
    seconds = time.perf_counter() - began
    return batches * batch * (tile * scale) ** 2 / seconds / 1e6


def measure_bicubic_mp_per_s(scale: int, side: int = 512, repeats: int = 5) -> float:
    """Output megapixels per second of Pillow bicubic on a uint8 RGB image."""
    image = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    resample.upscale_bicubic(image, scale)
    began = time.perf_counter()
    for _ in range(repeats):
        resample.upscale_bicubic(image, scale)
    return repeats * (side * scale) ** 2 / (time.perf_counter() - began) / 1e6


@dataclass
class Row:
    """One line of the evaluation table: a model (or bicubic) at one scale, on one preset."""

    name: str
    scale: int
    params: int
    flops_per_pixel: int
    mp_per_s: float
    scores: dict = field(default_factory=dict)
    """dataset -> {"psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic", "images"}."""
    self_ensemble: bool = False
    precision: str = "float32"
    preset: str = "clean"
    denoise: float | None = None
    routes: dict = field(default_factory=dict)
    """`auto`: how many images took each route."""

    @property
    def label(self) -> str:
        return (self.name + (f" dn{self.denoise:g}" if self.denoise is not None else "")
                + (" +SE" if self.self_ensemble else "")
                + (" bf16" if self.precision == "bfloat16" else ""))


@dataclass(frozen=True)
class Variant:
    """How one model is run for a row: self-ensemble, precision, denoise strength."""

    self_ensemble: bool = False
    precision: str = "float32"
    denoise: float | None = None


def evaluate_models(folders: list[str], scale: int, models: list[str] | None = None,
                    ensemble: bool = False, speed: bool = True, bfloat16: bool = False,
                    presets: tuple[str, ...] = ("clean",),
                    denoise: tuple[float, ...] = ()) -> list[Row]:
    """Rows for bicubic and every model (default: the zoo's at `scale`) on each HR folder, for
    each preset; `ensemble`, `bfloat16` and `denoise` values add rows per model."""
    from sr_batch.models.architectures import conv_macs_per_output_pixel
    from sr_batch.models.data import dataset_name, load_images

    datasets = {dataset_name(folder): load_images([folder]) for folder in folders}
    bicubic_speed = round(measure_bicubic_mp_per_s(scale), 2) if speed else float("nan")
    rows = []
    for preset in presets:
        scores = {name: score(bicubic_upscale(scale), images, scale, preset)
                  for name, images in datasets.items()}
        rows.append(Row(registry.BICUBIC, scale, 0, 0, bicubic_speed, scores, preset=preset))
    names = models if models is not None else [s.name for s in registry.list_models() if s.scale == scale]
    for name in names:
        if name == "auto":
            routed = Routed(scale)
            for preset in presets:
                routed.routes = {}
                scores = {ds: score(routed, images, scale, preset) for ds, images in datasets.items()}
                rows.append(Row("auto", scale, 0, 0, float("nan"), scores, preset=preset))
                log.info("auto x%d %s: %s; routes %s", scale, preset, scores, routed.routes)
                rows[-1].routes = dict(sorted(routed.routes.items()))
            continue
        spec = registry.resolve_model(name, scale)
        if spec.is_bicubic:
            continue
        variants = [Variant()] + [Variant(self_ensemble=True)] * ensemble + [Variant(precision="bfloat16")] * bfloat16
        if spec.denoise_uri is not None:  # an interpolated pair: one row per strength asked
            variants = [Variant(denoise=value) for value in (denoise or (registry.DEFAULT_DENOISE,))]
        for variant in variants:
            model = registry.load_keras_model(spec, scale, denoise=variant.denoise)
            full = registry.complete_spec(spec, model) if spec.params is None else spec
            radius = full.receptive_radius
            if radius is None:  # a user file: measure it, with a margin for dead ReLUs
                from sr_batch import tiling

                radius = tiling.receptive_radius_from_impulse(
                    lambda b: np.asarray(model(b, training=False)), scale) + 2
            flops = 2 * conv_macs_per_output_pixel(model) * (8 if variant.self_ensemble else 1)
            upscale, run = model_upscale(registry.with_precision(model, variant.precision), scale,
                                         radius, ensemble=variant.self_ensemble)
            mp_per_s = round(measure_mp_per_s(run, scale), 2) if speed else float("nan")
            for preset in presets:
                scores = {ds: score(upscale, images, scale, preset) for ds, images in datasets.items()}
                rows.append(Row(full.name, scale, int(full.params), flops, mp_per_s, scores,
                                variant.self_ensemble, variant.precision, preset, variant.denoise))
                log.info("%s x%d %s: %s, %.2f MP/s", rows[-1].label, scale, preset, scores, mp_per_s)
    return rows


# The mixed set `--model auto` is measured on: every HR image as each kind of LR an archive
# holds, drawn per image from these ranges (seeded): a clean downscale (PNG), a JPEG at a
# quality a camera or the web would use, a noisy scan or phone picture (PNG).
MIXED_JPEG_QUALITY = (30, 90)
MIXED_NOISE_SIGMA = (3.0, 20.0)
MIXED_KINDS = ("clean", "jpeg", "noisy")


def mixed_lr(hr: np.ndarray, scale: int, kind: str, index: int) -> bytes:
    """The LR file (bytes, as an archive would hold it) of one HR image for one kind."""
    import io

    from PIL import Image

    lr = degraded_lr(hr, scale, "clean", index)
    rng = np.random.default_rng([PRESET_SEED, index, MIXED_KINDS.index(kind)])
    buffer = io.BytesIO()
    image = Image.fromarray(lr)
    if kind == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG",
                                  quality=int(rng.integers(MIXED_JPEG_QUALITY[0], MIXED_JPEG_QUALITY[1] + 1)))
    elif kind == "noisy":
        noisy = degradations.add_gaussian_noise(lr.astype(np.float32) / 255, rng.uniform(*MIXED_NOISE_SIGMA), rng)
        Image.fromarray(degradations.to_uint8(noisy).reshape(lr.shape)).save(buffer, format="PNG")
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate_mixed(folders: list[str], scale: int, denoise: tuple[float, ...] = (0.0, 0.5, 1.0)) -> list[dict]:
    """Y-PSNR/SSIM per kind of LR (clean, jpeg, noisy, all) of bicubic, the clean default, `real`
    at each `denoise`, and `--model auto` routing each image as the job does."""
    from sr_batch import decode as image_codec
    from sr_batch.models.data import load_images

    clean_spec = registry.resolve_model(None, scale)
    real_spec = registry.resolve_model("real", scale)
    routed = Routed(scale)  # the clean default and `real` at every level the rules use
    runners: dict[str, Upscale] = {"bicubic": bicubic_upscale(scale), clean_spec.name: routed.runners["clean"]}
    for level in denoise:
        runners[f"real dn{level:g}"] = (routed.runners.get(f"real dn{level:g}")
                                        or _runner(real_spec, scale, level))
    hrs = [quality.crop_to_multiple(image, scale) for folder in folders for image in load_images([folder])]
    results: dict[tuple[str, str], list] = {}
    routes: dict[str, int] = {}
    for index, hr in enumerate(hrs):
        for kind in MIXED_KINDS:
            data = mixed_lr(hr, scale, kind, index)
            lr = image_codec.decode_image(data, 10**9).pixels
            lr = lr[..., 0] if lr.shape[2] == 1 else lr
            key = routed.route(lr, data)
            routes[f"{kind}: {key}"] = routes.get(f"{kind}: {key}", 0) + 1
            for name, upscale in [*runners.items(), ("auto", routed.runners[key])]:
                sr = upscale(lr)
                for key in ((kind, name), ("all", name)):
                    results.setdefault(key, []).append((quality.psnr_y(sr, hr, border=scale),
                                                        quality.ssim_y(sr, hr, border=scale)))
    rows = [{"kind": kind, "model": name, "psnr_y": round(float(np.mean([p for p, _ in v])), 3),
             "ssim_y": round(float(np.mean([q for _, q in v])), 4), "images": len(v), "scale": scale}
            for (kind, name), v in results.items()]
    log.info("auto's routes: %s", routes)
    return rows + [{"kind": "routes", "model": key, "images": n, "scale": scale} for key, n in sorted(routes.items())]


def format_mixed(rows: list[dict]) -> str:
    """One line per model, Y-PSNR (SSIM) per kind of LR."""
    kinds = [*MIXED_KINDS, "all"]
    models = list(dict.fromkeys(r["model"] for r in rows if r["kind"] != "routes"))
    by = {(r["kind"], r["model"]): r for r in rows}
    lines = [f"{'model':<16}" + "".join(f"{k:>20}" for k in kinds)]
    for model in models:
        lines.append(f"{model:<16}" + "".join(
            f"{by[k, model]['psnr_y']:>11.2f} ({by[k, model]['ssim_y']:.4f})" for k in kinds))
    lines.append("auto's routes: " + ", ".join(f"{r['model']} {r['images']}" for r in rows if r["kind"] == "routes"))
    lines.append(f"Mixed set: each HR image as a clean Pillow-bicubic LR (PNG), a JPEG at quality "
                 f"{MIXED_JPEG_QUALITY[0]}-{MIXED_JPEG_QUALITY[1]} and a PNG with Gaussian noise of sigma "
                 f"{MIXED_NOISE_SIGMA[0]:g}-{MIXED_NOISE_SIGMA[1]:g} levels (seeded per image); Y-PSNR dB (Y-SSIM), "
                 "BT.601, border = scale")
    return "\n".join(lines)


def format_table(rows: list[Row]) -> str:
    """Plain-text tables, one per preset: model, params, FLOPs/px, MP/s, then PSNR / SSIM per
    dataset, and the gain over bicubic on the same LR."""
    blocks = []
    for preset in dict.fromkeys(row.preset for row in rows):
        group = [row for row in rows if row.preset == preset]
        datasets = list(group[0].scores)
        head = f"{'model':<20} {'scale':>5} {'params':>9} {'FLOPs/px':>9} {'MP/s':>7}"
        head += "".join(f"  {ds + ' PSNR/SSIM (gain) blocks':>37}" for ds in datasets)
        lines = [f"preset {preset}: {degradations.preset(preset).description}", head, "-" * len(head)]
        for row in group:
            line = (f"{row.label:<20} {'x' + str(row.scale):>5} {row.params:>9,} "
                    f"{_kilo(row.flops_per_pixel):>9} {row.mp_per_s:>7.2f}")
            for ds in datasets:
                s = row.scores[ds]
                gain = s["psnr_y"] - s["psnr_y_bicubic"]
                line += f"  {s['psnr_y']:>9.2f} / {s['ssim_y']:.4f} ({gain:+.2f}) {s.get('blockiness', math.nan):6.3f}"
            lines.append(line)
            if row.routes:
                lines.append("    routes: " + ", ".join(f"{key} {n}" for key, n in row.routes.items()))
        blocks.append("\n".join(lines))
    blocks.append("Y-PSNR (dB) / Y-SSIM on BT.601 luma, border = scale, HR cropped to a multiple of the "
                  "scale, LR by Pillow BICUBIC then the preset; gain = over bicubic of the same LR; "
                  "blocks = the LR's 8x8 grid in the output (quality.grid_blockiness; ~1.0 clean); "
                  "MP/s = forward pass over 16 tiles of 128 px")
    return "\n\n".join(blocks)


def _kilo(flops: int) -> str:
    return "-" if flops == 0 else f"{flops / 1000:.1f}k"


USAGE = """Y-PSNR / Y-SSIM of zoo models and bicubic on HR folders, with params, FLOPs and speed.

Examples (the docs' tables):

    python jobs/evaluate.py datasets/Set5/HR datasets/Set14/HR --scale 2 --self-ensemble
    python jobs/evaluate.py datasets/Set5/HR datasets/Set14/HR --scale 4 \\
        --preset clean --preset jpeg50 --preset realistic \\
        --model residual --model quality --model real --denoise 0,0.5,1
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", metavar="HR_FOLDER", help="folders (fsspec URIs) of HR images")
    parser.add_argument("--scale", type=int, required=True, help="upscaling factor, e.g. 2")
    parser.add_argument("--model", dest="models", action="append", default=None, metavar="NAME|PATH",
                        help="a zoo name, .keras file or auto (routed per image as the job does); repeat for "
                             "several (default: every zoo model at --scale)")
    parser.add_argument("--preset", dest="presets", action="append", default=None, metavar="NAME",
                        help="degrade the LR with a named, seeded preset; repeat for several "
                             f"(default: clean; {', '.join(degradations.PRESETS)}; also jpegQ, noiseS, "
                             "blurS with any number, e.g. jpeg35, noise7)")
    parser.add_argument("--denoise", default=None, metavar="S[,S...]",
                        help="denoise strengths in [0, 1] for models that have them (`real`); "
                             f"default {registry.DEFAULT_DENOISE:g}")
    parser.add_argument("--mixed", action="store_true",
                        help="measure --model auto instead: a mixed set (each image as a clean, a JPEG "
                             "and a noisy LR) with bicubic, the clean default, real at each --denoise and auto")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="also measure each model with the 8-way flip/rotation self-ensemble")
    parser.add_argument("--bfloat16", action="store_true",
                        help="also measure each model with --precision bfloat16 (its PSNR cost and speed)")
    parser.add_argument("--no-speed", action="store_true", help="skip the throughput measurement")
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow CPU threads (default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--update-cards", action="store_true",
                        help="write the measured numbers into the zoo's model cards and index")
    parser.add_argument("--set-defaults", action="store_true",
                        help="after --update-cards: per scale, make the best model at >= "
                             f"{cards.DEFAULT_MIN_MP_PER_S:g} MP/s the default")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The evaluation command line (`python jobs/evaluate.py`, `sr-batch evaluate`); the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from sr_batch.runtime import configure_tensorflow

    configure_tensorflow(args.threads)
    try:
        presets = tuple(args.presets or ("clean",))
        for name in presets:
            degradations.preset(name)  # an unknown name stops here, before any work
        denoise = tuple(check_denoise(float(v)) for v in args.denoise.split(",")) if args.denoise else ()
        if args.mixed:
            mixed = evaluate_mixed(args.folders, args.scale, denoise or (0.0, 0.5, 1.0))
            print(format_mixed(mixed))
            if args.json:
                storage.write_bytes_atomic(storage.to_uri(args.json), (json.dumps(mixed, indent=2) + "\n").encode())
            return 0
        rows = evaluate_models(args.folders, args.scale, args.models, args.self_ensemble,
                               not args.no_speed, args.bfloat16, presets, denoise)
    except (SrBatchError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json:
        storage.write_bytes_atomic(storage.to_uri(args.json),
                                   (json.dumps([asdict(r) for r in rows], indent=2) + "\n").encode())
    if args.update_cards:
        print("updated cards: " + ", ".join(cards.update_cards(rows)), file=sys.stderr)
        if args.set_defaults:
            print(f"defaults: {cards.pick_defaults()}", file=sys.stderr)
    return 0
