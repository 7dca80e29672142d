"""Run logging: ``log.jsonl`` (machine-readable), ``train.log`` (text), trackers; main process only."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "RESUMING",
    "RunLog",
    "drop_records_after",
    "epochs_from_one",
    "readable_metrics",
    "resume_count",
    "stage_seconds",
]

_STAGES = {"stage1": 0, "stage2": 1}
RESUMING = "resuming from "  # how the trainer's train.log line for each --resume starts; resume_count counts them


def epochs_from_one(records: list[Any]) -> bool:
    """Whether ``log.jsonl`` records number epochs from 1 (today's logs) rather than 0 (logs written before:
    each stage's first record had epoch 0)."""
    return not any(isinstance(r, dict) and r.get("epoch") == 0 and "stage" in r for r in records)


def drop_records_after(path: Path, stage: str | None, epoch: int) -> int:
    """Remove the epoch records of ``log.jsonl`` past ``(stage, epoch)`` (``epoch`` = epochs done; all of them
    when ``stage`` is None): a resumed run redoes those epochs, and its curves must show each epoch once.
    A log that numbered epochs from 0 is renumbered from 1 on the way. Returns how many records went."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    limit = (_STAGES.get(stage, -1), epoch) if stage is not None else None
    parsed: list[tuple[str, Any]] = []
    for line in path.read_text().splitlines():
        try:
            parsed.append((line, json.loads(line)))
        except json.JSONDecodeError:  # a line cut by a kill
            dropped += 1
    shift = 0 if epochs_from_one([r for _, r in parsed]) else 1
    for line, record in parsed:
        if not isinstance(record, dict):
            kept.append(line)
            continue
        if shift and isinstance(record.get("epoch"), int) and "stage" in record:
            record = {**record, "epoch": record["epoch"] + shift}
            line = json.dumps(record)
        key = (_STAGES.get(record.get("stage"), -1), record.get("epoch"))
        if isinstance(key[1], int) and (limit is None or key > limit):
            dropped += 1
            continue
        kept.append(line)
    if dropped or shift:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
    return dropped


def stage_seconds(run: Path) -> tuple[dict[str, float], float | None]:
    """Per stage: summed epoch seconds from ``log.jsonl``; and the wall time its epochs span."""
    records: dict[tuple[str, int], dict[str, Any]] = {}
    try:
        lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}, None
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("stage"), str) and isinstance(rec.get("epoch"), int):
            records[(rec["stage"], rec["epoch"])] = rec  # an epoch redone after a resume: the last record counts
    stages: dict[str, float] = {}
    starts, ends = [], []
    for (stage, _), rec in sorted(records.items()):
        seconds, t = rec.get("seconds"), rec.get("time")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            continue
        stages[stage] = stages.get(stage, 0.0) + float(seconds)
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            starts.append(float(t) - float(seconds))
            ends.append(float(t))
    wall = max(ends) - min(starts) if starts else None
    return stages, wall


def resume_count(run: Path) -> int:
    """How many times the run was continued with ``--resume``: the trainer's "resuming from" lines in ``train.log``."""
    try:
        lines = (run / "train.log").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return 0
    return sum(1 for line in lines if line.partition(" ")[2].startswith(RESUMING))


def _round(value: Any, digits: int) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    return value


def readable_metrics(metrics: dict[str, Any], class_names: list[str], digits: int = 4) -> dict[str, Any]:
    """``metrics.json``'s content: values rounded to ``digits`` decimals and, beside each stage's ``per_class``
    list (kept for code that reads it), ``per_class_by_name`` (class name -> accuracy %)."""
    out = {}
    for stage, m in metrics.items():
        m = _round(m, digits)
        if isinstance(m, dict) and isinstance(m.get("per_class"), list) and len(m["per_class"]) == len(class_names):
            seen: dict[str, int] = {}
            named = {}
            for c, (name, acc) in enumerate(zip(class_names, m["per_class"])):
                key = str(name) if str(name) not in seen else f"{name} ({c})"
                seen[key] = c
                named[key] = acc
            m = {**m, "per_class_by_name": named}
        out[stage] = m
    return out


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
