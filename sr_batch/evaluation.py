"""Measure zoo models the SR literature's way, each beside bicubic on the same pixels.

Convention (as papers since SRCNN): HR cropped to a multiple of the scale; LR
made from it by Pillow's BICUBIC; PSNR and SSIM on BT.601 Y with `scale`
pixels shaved on every side; the output rounded to uint8 as the pipeline
writes it. The metric functions are `sr_batch.quality`'s, the ones the job's
stats use. Models run the way the job runs them: fixed tiles, overlap = the
receptive radius, one traced function.

Speed is the forward pass alone: output megapixels per second over batches of
fixed tiles, after a warm-up batch, on this machine's TensorFlow threads.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from sr_batch import quality, resample, storage
from sr_batch.errors import SrBatchError
from sr_batch.models import registry
from sr_batch.upscaler import Upscaler, make_tf_batch_fn, self_ensemble, to_integer

log = logging.getLogger(__name__)

# Throughput tiles: 128 input px, 16 per batch, as the job's CPU defaults run them.
SPEED_TILE = 128
SPEED_BATCH = 16
# Timed batches after one warm-up; enough for a stable mean on a quiet machine.
SPEED_BATCHES = 3
# A model is eligible as a scale's default at or above this output rate (the floor).
DEFAULT_MIN_MP_PER_S = 5.0

Upscale = Callable[[np.ndarray], np.ndarray]


@dataclass
class Row:
    """One line of the evaluation table: a model (or bicubic) at one scale."""

    name: str
    scale: int
    params: int
    flops_per_pixel: int
    mp_per_s: float
    scores: dict = field(default_factory=dict)
    """dataset -> {"psnr_y", "ssim_y", "images"}."""
    self_ensemble: bool = False
    precision: str = "float32"

    @property
    def label(self) -> str:
        return (self.name + (" +SE" if self.self_ensemble else "")
                + (" bf16" if self.precision == "bfloat16" else ""))


def score(upscale: Upscale, images: list[np.ndarray], scale: int) -> dict:
    """Mean Y-PSNR and Y-SSIM of `upscale` (uint8 LR -> uint8 SR) over HR images, in the convention."""
    psnrs, ssims = [], []
    for image in images:
        hr = quality.crop_to_multiple(image, scale)
        lr = resample.downscale_bicubic(np.ascontiguousarray(hr), scale)
        sr = upscale(lr)
        psnrs.append(quality.psnr_y(sr, hr, border=scale))
        ssims.append(quality.ssim_y(sr, hr, border=scale))
    return {"psnr_y": round(float(np.mean(psnrs)), 3), "ssim_y": round(float(np.mean(ssims)), 4),
            "images": len(images)}


def bicubic_upscale(scale: int) -> Upscale:
    return lambda lr: resample.upscale_bicubic(lr, scale)


def model_upscale(model, scale: int, radius: int, tile: int = SPEED_TILE,
                  batch: int = SPEED_BATCH, ensemble: bool = False) -> tuple[Upscale, Callable]:
    """(uint8 LR -> uint8 SR through the job's tiled Upscaler, the batch function it uses)."""
    run, _ = make_tf_batch_fn(model, tile)
    if ensemble:
        run = self_ensemble(run)
    upscaler = Upscaler(run, scale, tile, radius, batch)
    return (lambda lr: to_integer(upscaler.upscale([lr])[0].pixels, np.uint8)), run


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


def evaluate(folders: list[str], scale: int, models: list[str] | None = None,
             ensemble: bool = False, speed: bool = True, bfloat16: bool = False) -> list[Row]:
    """Rows for bicubic and every model (default: the zoo's at `scale`) on each HR folder;
    `ensemble` and `bfloat16` add a row per model with the self-ensemble, in bfloat16."""
    from sr_batch.models.architectures import conv_macs_per_output_pixel
    from sr_batch.train import dataset_name, load_images

    datasets = {dataset_name(folder): load_images([folder]) for folder in folders}
    rows = [Row(registry.BICUBIC, scale, 0, 0,
                round(measure_bicubic_mp_per_s(scale), 2) if speed else float("nan"),
                {name: score(bicubic_upscale(scale), images, scale) for name, images in datasets.items()})]
    names = models if models is not None else [s.name for s in registry.list_models() if s.scale == scale]
    for name in names:
        spec = registry.resolve_model(name, scale)
        if spec.is_bicubic:
            continue
        model = registry.load_keras_model(spec, scale)
        spec = registry.complete_spec(spec, model) if spec.params is None else spec
        radius = spec.receptive_radius
        if radius is None:  # a user file: measure it, with a margin for dead ReLUs
            from sr_batch import tiling

            radius = tiling.receptive_radius_from_impulse(
                lambda b: np.asarray(model(b, training=False)), scale) + 2
        flops = 2 * conv_macs_per_output_pixel(model)
        variants = [(False, "float32")] + [(True, "float32")] * ensemble + [(False, "bfloat16")] * bfloat16
        for with_ensemble, precision in variants:
            upscale, run = model_upscale(registry.with_precision(model, precision), scale, radius,
                                         ensemble=with_ensemble)
            mp_per_s = round(measure_mp_per_s(run, scale), 2) if speed else float("nan")
            scores = {ds: score(upscale, images, scale) for ds, images in datasets.items()}
            rows.append(Row(spec.name, scale, int(spec.params), flops * (8 if with_ensemble else 1),
                            mp_per_s, scores, with_ensemble, precision))
            log.info("%s x%d: %s, %.2f MP/s", rows[-1].label, scale, scores, mp_per_s)
    return rows


def format_table(rows: list[Row]) -> str:
    """A plain-text table: model, params, FLOPs/px, MP/s, then PSNR / SSIM per dataset."""
    datasets = list(rows[0].scores) if rows else []
    head = f"{'model':<16} {'scale':>5} {'params':>9} {'FLOPs/px':>9} {'MP/s':>7}"
    head += "".join(f"  {ds + ' PSNR/SSIM':>22}" for ds in datasets)
    lines = [head, "-" * len(head)]
    for row in rows:
        line = (f"{row.label:<16} {'x' + str(row.scale):>5} {row.params:>9,} "
                f"{_kilo(row.flops_per_pixel):>9} {row.mp_per_s:>7.2f}")
        for ds in datasets:
            s = row.scores[ds]
            line += f"  {s['psnr_y']:>13.2f} / {s['ssim_y']:.4f}"
        lines.append(line)
    lines.append("Y (BT.601) PSNR dB / SSIM; border = scale px shaved; HR cropped to a multiple of scale; "
                 "LR = Pillow BICUBIC; FLOPs = 2 x conv multiply-adds per output pixel; "
                 f"MP/s = output megapixels/s of the forward pass ({SPEED_BATCH} tiles of {SPEED_TILE} px); "
                 "+SE = 8-way self-ensemble; bf16 = --precision bfloat16")
    return "\n".join(lines)


def _kilo(flops: int) -> str:
    return "-" if flops == 0 else f"{flops / 1000:.1f}k"


def update_cards(rows: list[Row]) -> list[str]:
    """Write each zoo row's measured scores and speed into its JSON card and the index entry."""
    index = registry.read_index()
    updated = []
    by_key = {(r.name, r.scale): r for r in rows if not r.self_ensemble and r.precision == "float32"}
    ensembles = {(r.name, r.scale): r for r in rows if r.self_ensemble}
    bf16 = {(r.name, r.scale): r for r in rows if r.precision == "bfloat16"}
    bicubic = {r.scale: r for r in rows if r.name == registry.BICUBIC}
    for entry in index["models"]:
        row = by_key.get((entry["name"], int(entry["scale"])))
        if row is None:
            continue
        base = bicubic[row.scale]
        evaluation = {ds: {**s, "psnr_y_bicubic": base.scores[ds]["psnr_y"],
                           "ssim_y_bicubic": base.scores[ds]["ssim_y"]} for ds, s in row.scores.items()}
        card = {"net_channels": _net_channels(entry["arch"]),
                "flops_per_pixel": row.flops_per_pixel, "mp_per_s": row.mp_per_s,
                "metric": ("Y (BT.601) PSNR/SSIM, border = scale, HR cropped to a multiple of scale, "
                           "LR by Pillow BICUBIC, output rounded to uint8; jobs/evaluate.py"),
                "eval": evaluation}
        if "Set5" in evaluation:
            card.update(set5_psnr_y=evaluation["Set5"]["psnr_y"],
                        set5_psnr_y_bicubic=evaluation["Set5"]["psnr_y_bicubic"])
        se = ensembles.get((entry["name"], int(entry["scale"])))
        if se is not None:
            card["self_ensemble"] = {"mp_per_s": se.mp_per_s, "eval": se.scores}
        low = bf16.get((entry["name"], int(entry["scale"])))
        if low is not None:
            card["bfloat16"] = {"mp_per_s": low.mp_per_s, "eval": low.scores}
        entry.update(card)
        sidecar_path = registry.WEIGHTS_DIR / entry["file"].replace(".keras", ".json")
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
        sidecar.update(card)
        storage.write_bytes_atomic(storage.to_uri(str(sidecar_path)),
                                   (json.dumps(sidecar, indent=2) + "\n").encode("utf-8"))
        updated.append(f"{entry['name']} x{entry['scale']}")
    storage.write_bytes_atomic(storage.to_uri(str(registry.INDEX_PATH)),
                               (json.dumps(index, indent=2) + "\n").encode("utf-8"))
    return updated


def _net_channels(arch: str) -> str:
    from sr_batch.models.architectures import Y_ONLY

    return "Y (luma; chroma is the bicubic upscale)" if arch in Y_ONLY else "RGB"


def pick_defaults(min_mp_per_s: float = DEFAULT_MIN_MP_PER_S) -> dict[str, str]:
    """Per scale, the zoo model with the best Set5 Y-PSNR among those at or above the speed floor.

    Where no model reaches the floor, the fastest one: a default must exist.
    """
    index = registry.read_index()
    measured = [e for e in index["models"] if "mp_per_s" in e and "set5_psnr_y" in e]
    defaults = {}
    for scale in sorted({str(e["scale"]) for e in measured}, key=int):
        entries = [e for e in measured if str(e["scale"]) == scale]
        eligible = [e for e in entries if e["mp_per_s"] >= min_mp_per_s]
        chosen = (max(eligible, key=lambda e: e["set5_psnr_y"]) if eligible
                  else max(entries, key=lambda e: e["mp_per_s"]))
        defaults[scale] = chosen["name"]
    index["default"] = defaults
    storage.write_bytes_atomic(storage.to_uri(str(registry.INDEX_PATH)),
                               (json.dumps(index, indent=2) + "\n").encode("utf-8"))
    return index["default"]


USAGE = """Y-PSNR / Y-SSIM of every zoo model and bicubic on HR folders, with params, FLOPs and speed.

Example (the README table's numbers):

    python jobs/evaluate.py /work/shared/datasets/Set5/HR /work/shared/datasets/Set14/HR \\
        --scale 2 --self-ensemble --threads 2
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", metavar="HR_FOLDER", help="folders (fsspec URIs) of HR images")
    parser.add_argument("--scale", type=int, required=True, help="upscaling factor, e.g. 2")
    parser.add_argument("--model", dest="models", action="append", default=None, metavar="NAME|PATH",
                        help="a zoo name or .keras file; repeat for several (default: every zoo model at --scale)")
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
                             f"{DEFAULT_MIN_MP_PER_S:g} MP/s the default")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The evaluation command line (`python jobs/evaluate.py`, `sr-batch evaluate`); the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    from sr_batch.actor import configure_tensorflow

    configure_tensorflow(args.threads)
    try:
        rows = evaluate(args.folders, args.scale, args.models, args.self_ensemble, not args.no_speed,
                        args.bfloat16)
    except SrBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows))
    if args.json:
        storage.write_bytes_atomic(storage.to_uri(args.json),
                                   (json.dumps([asdict(r) for r in rows], indent=2) + "\n").encode())
    if args.update_cards:
        print("updated cards: " + ", ".join(update_cards(rows)), file=sys.stderr)
        if args.set_defaults:
            print(f"defaults: {pick_defaults()}", file=sys.stderr)
    return 0
