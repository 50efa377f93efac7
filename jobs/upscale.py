"""Ray job entry point: `python jobs/upscale.py SOURCE --output OUT [options]`.

Submit unchanged with
    ray job submit --working-dir . -- python jobs/upscale.py SOURCE --output OUT
Same options as `sr-batch run`.
"""

import os
import sys

# Under `ray job submit --working-dir .` the project root is the working directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sr_batch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
