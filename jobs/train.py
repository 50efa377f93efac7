"""Train a zoo model on HR image folders.

Example (how the shipped default x2 model was made, ~8 minutes on 2 CPU cores):

    python jobs/train.py --arch residual --scale 2 \
        --train /work/shared/datasets/T91/HR /work/shared/datasets/BSDS200/HR \
        --val /work/shared/datasets/Set5/HR --eval /work/shared/datasets/Set14/HR \
        --steps 6000 --batch-size 32 --patch-size 64 --threads 2 \
        --out sr_batch/models/weights/residual_x2.keras --checkpoint-dir runs-local/residual_x2 \
        --name residual --make-default

Rerun the same command to resume from the checkpoint after an interruption.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Run from a checkout without installing the package (as Ray's working_dir does).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", required=True, help="basic, residual or subpixel")
    parser.add_argument("--scale", type=int, required=True, help="upscaling factor, e.g. 2")
    parser.add_argument("--train", nargs="+", required=True, help="folders (fsspec URIs) of HR training images")
    parser.add_argument("--val", help="folder of HR validation images (Y-PSNR logged every epoch)")
    parser.add_argument("--eval", nargs="*", default=[], help="extra HR folders measured once at the end")
    parser.add_argument("--out", required=True, help="output .keras file (fsspec URI); a .json sidecar goes next to it")
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps in total (default 6000)")
    parser.add_argument("--epoch-steps", type=int, default=500, help="steps between validation/checkpoints (default 500)")
    parser.add_argument("--batch-size", type=int, default=16, help="HR patches per step (default 16)")
    parser.add_argument("--patch-size", type=int, default=64, help="HR patch side, a multiple of scale (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate, cosine-decayed (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seeds weights and batches (default 0)")
    parser.add_argument("--loss", default="l1", choices=["l1", "l2"], help="pixel loss (default l1)")
    parser.add_argument("--checkpoint-dir", help="folder for a resumable checkpoint; rerun the same command to resume")
    parser.add_argument("--name", help="register the result in the package zoo under this name (--out must be in the weights folder)")
    parser.add_argument("--make-default", action="store_true", help="make the registered model the default for its scale")
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow CPU threads; 0 lets TF decide")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from sr_batch.errors import SrBatchError
    from sr_batch.train import TrainConfig, train

    try:
        config = TrainConfig(
            arch=args.arch, scale=args.scale, train=tuple(args.train), val=args.val, eval=tuple(args.eval),
            out=args.out, steps=args.steps, epoch_steps=args.epoch_steps, batch_size=args.batch_size,
            patch_size=args.patch_size, lr=args.lr, seed=args.seed, loss=args.loss,
            checkpoint_dir=args.checkpoint_dir, name=args.name, make_default=args.make_default,
        )
        train(config)
    except SrBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
