"""Register a mild/strong pair of weights as one zoo model with --denoise (see models/cards.py).

    python jobs/register_pair.py real sr_batch/models/weights/real_mild_x4.keras \
        sr_batch/models/weights/real_strong_x4.keras [--float16]

--float16 first rewrites both files with float16 weights (half the bytes; they run in float32).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sr_batch import storage  # noqa: E402
from sr_batch.models.cards import register_pair, store_float16  # noqa: E402

if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--float16"]
    if len(args) != 3:
        sys.exit(__doc__)
    name, mild, strong = args[0], storage.to_uri(args[1]), storage.to_uri(args[2])
    if "--float16" in sys.argv:
        for uri in (mild, strong):
            store_float16(uri)
    entry = register_pair(name, mild, strong)
    print(f"registered {entry['name']} x{entry['scale']}: {entry['file']} (denoise 0) .. "
          f"{entry['denoise_file']} (denoise 1)")
