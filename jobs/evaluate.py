"""Y-PSNR / Y-SSIM of every zoo model and bicubic on HR folders, with params, FLOPs and speed.

Example (the README table's numbers, ~1 minute per scale on 2 CPU cores):

    python jobs/evaluate.py datasets/Set5/HR datasets/Set14/HR \
        --scale 2 --self-ensemble --threads 2
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run from a checkout without installing the package (as Ray's working_dir does).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sr_batch.models.evaluation import main  # noqa: E402 - after the path and log-level setup

if __name__ == "__main__":
    sys.exit(main())
