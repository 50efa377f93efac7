"""Fit NIQE's pristine model on image folders: `python jobs/fit_niqe.py --help` (see sr_batch/niqe_fit.py)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing the package (as Ray's working_dir does).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sr_batch.niqe_fit import main  # noqa: E402 - after the path setup

if __name__ == "__main__":
    sys.exit(main())
