"""Train a zoo model on HR image folders: `python jobs/train.py --help` (see sr_batch/models/training.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Run from a checkout without installing the package (as Ray's working_dir does).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from sr_batch.models.training import main  # noqa: E402 - after the path and log-level setup

if __name__ == "__main__":
    sys.exit(main())
