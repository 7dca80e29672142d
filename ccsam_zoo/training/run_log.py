"""Run logging: ``log.jsonl`` (machine-readable), ``train.log`` (text), trackers; main process only."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from accelerate import Accelerator

__all__ = ["RunLog"]


class RunLog:
    """Appends records to ``log.jsonl`` and lines to ``train.log``; forwards scalars to trackers."""

    def __init__(self, output_dir: Path, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.jsonl = output_dir / "log.jsonl"
        self.logger = logging.getLogger("ccsam_zoo.train")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        if self.main:
            output_dir.mkdir(parents=True, exist_ok=True)
            for handler in list(self.logger.handlers):
                self.logger.removeHandler(handler)
            fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
            for handler in (logging.FileHandler(output_dir / "train.log"), logging.StreamHandler()):
                handler.setFormatter(fmt)
                self.logger.addHandler(handler)
        self._step = 0

    def info(self, message: str) -> None:
        if self.main:
            self.logger.info(message)

    def record(self, **fields: Any) -> None:
        """One JSON line; numeric fields also go to the trackers (tensorboard when enabled)."""
        if not self.main:
            return
        fields = {"time": round(time.time(), 3), **fields}
        with self.jsonl.open("a") as f:
            f.write(json.dumps(fields) + "\n")
        scalars = {
            f"{fields.get('stage', 'train')}/{k}": v
            for k, v in fields.items()
            if isinstance(v, (int, float)) and k not in ("time", "epoch", "step")
        }
        if scalars and self.accelerator.trackers:
            self._step += 1
            self.accelerator.log(scalars, step=self._step)
