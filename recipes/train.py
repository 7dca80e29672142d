#!/usr/bin/env python
"""Train a published recipe in two stages (CC-SAM or a baseline).

The thin entry the README shows; the installed package has the same command as ``ccsam-zoo train`` and
``python -m ccsam_zoo.train`` (``accelerate launch -m ccsam_zoo.train``; ``-q`` keeps accelerate's launcher from
adding a traceback of its own to an error). The recipes are package data
(``ccsam_zoo/recipes/*.yaml``; ``CCSAM_RECIPES=DIR`` points at another folder).

    accelerate launch -q recipes/train.py --recipe places_lt --set data.source=IMAGE_ROOT:SPLIT_DIR
    python recipes/train.py --recipe cifar10_lt_cpu --set method=ce stage1.epochs=30
    ACCELERATE_USE_CPU=1 accelerate launch -q --multi_gpu --num_processes 2 recipes/train.py --recipe quickstart
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from ccsam_zoo.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
