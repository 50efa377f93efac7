"""Register a mild/strong pair of weights as one zoo model with --denoise (see models/cards.py).

    python jobs/register_pair.py real sr_batch/models/weights/real_mild_x4.keras \
        sr_batch/models/weights/real_strong_x4.keras
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sr_batch import storage  # noqa: E402
from sr_batch.models.cards import register_pair  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    entry = register_pair(sys.argv[1], storage.to_uri(sys.argv[2]), storage.to_uri(sys.argv[3]))
    print(f"registered {entry['name']} x{entry['scale']}: {entry['file']} (denoise 0) .. "
          f"{entry['denoise_file']} (denoise 1)")
