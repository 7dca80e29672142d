"""``python -m ccsam_zoo.train`` (and ``accelerate launch -m ccsam_zoo.train``): train a recipe in two stages.

    python -m ccsam_zoo.train --recipe quickstart --output-dir runs/quickstart
    accelerate launch -q -m ccsam_zoo.train --recipe places_lt --set data.source=IMAGE_ROOT:SPLIT_DIR

The same command line as ``ccsam-zoo train`` and ``recipes/train.py`` (``--help`` lists the recipes).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from ccsam_zoo.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="python -m ccsam_zoo.train"))
