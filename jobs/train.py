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

import os
import sys
from pathlib import Path

# Run from a checkout without installing the package (as Ray's working_dir does).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sr_batch.train import main  # noqa: E402 - after the path and log-level setup

if __name__ == "__main__":
    sys.exit(main())
