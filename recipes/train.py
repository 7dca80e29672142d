#!/usr/bin/env python
"""Train a published recipe in two stages (CC-SAM or a baseline).

    accelerate launch recipes/train.py --recipe places_lt
    python recipes/train.py --recipe cifar10_lt_cpu --set method=ce stage1.epochs=30
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 recipes/train.py --recipe quickstart
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from ccsam_zoo.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
