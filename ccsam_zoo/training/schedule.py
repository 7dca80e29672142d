"""Learning-rate schedules as one pure function of the epoch (nanoGPT's ``get_lr``)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["SCHEDULES", "lr_at"]

SCHEDULES = ("step", "cosine", "constant")


def lr_at(epoch: int, cfg: dict[str, Any]) -> float:
    """Learning rate of 0-based ``epoch`` for a stage config (``lr``, ``schedule``, ``warmup_epochs``,
    ``milestones``, ``gamma``, ``epochs``).

    * warm-up: epochs ``0 .. W-1`` use ``lr * (epoch + 1) / W`` (kaidic/LDAM-DRW's ``adjust_learning_rate``);
    * ``step``: ``lr * gamma ** (number of milestones <= epoch)``: a milestone m means epochs ``0 .. m-1`` at
      the higher rate and epoch m on the lower one, warm-up epochs included in the count (the paper's and
      LDAM's "x0.1 at epochs 160 and 180" of 200);
    * ``cosine``: ``lr_min + (lr - lr_min) (1 + cos(pi epoch / epochs)) / 2`` with ``lr_min = lr / 1000``;
    * ``constant``: ``lr``.
    """
    lr, warm, kind = float(cfg["lr"]), int(cfg.get("warmup_epochs") or 0), cfg["schedule"]
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if epoch < warm:
        return lr * (epoch + 1) / warm
    if kind == "step":
        passed = sum(1 for m in cfg["milestones"] or [] if epoch >= m)
        return lr * float(cfg["gamma"]) ** passed
    if kind == "cosine":
        lr_min = lr * 1e-3
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * epoch / max(int(cfg["epochs"]), 1))) / 2
    return lr
