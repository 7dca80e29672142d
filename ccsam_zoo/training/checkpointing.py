"""Atomic Accelerate checkpoints of the training state, and finding the one to resume from."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

__all__ = ["save_training_state", "latest_checkpoint", "read_trainer_state"]

_STATE_FILE = "trainer_state.json"


def save_training_state(
    accelerator: Accelerator, output_dir: Path, stage: str, epoch: int, trainer_state: dict[str, Any], keep: int = 1
) -> Path:
    """Save model/optimizer/RNG state with Accelerate into ``checkpoints/{stage}-epoch{E}``.

    The state goes into a temporary folder that is renamed when complete, so a crash at any moment
    leaves either the previous checkpoint or the new one, never a half-written folder that loads.
    """
    root = output_dir / "checkpoints"
    final = root / f"{stage}-epoch{epoch:04d}"
    tmp = root / f".tmp-{stage}-epoch{epoch:04d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / _STATE_FILE).write_text(json.dumps({**trainer_state, "stage": stage, "epoch": epoch}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_order)
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _order(path: Path) -> tuple[int, int]:
    stage, epoch = path.name.split("-epoch")
    return (1 if stage == "stage2" else 0, int(epoch))


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The most advanced complete checkpoint under ``output_dir/checkpoints`` (None if there is none)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / _STATE_FILE).exists()]
    return max(done, key=_order) if done else None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer's own bookkeeping stored beside Accelerate's state."""
    return json.loads((checkpoint / _STATE_FILE).read_text())
