"""Atomic Accelerate checkpoints of the training state, and finding the one to resume from.

Each checkpoint's ``trainer_state.json`` is written last and lists the size and sha256 of every file of
the checkpoint, so a truncated or damaged checkpoint is found before it is loaded (``choose_checkpoint``)
and the previous complete one is used instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .._fs import apply_umask
from .run_log import epochs_from_one

__all__ = [
    "CheckpointBroken",
    "choose_checkpoint",
    "latest_checkpoint",
    "load_training_state",
    "read_trainer_state",
    "save_training_state",
    "set_aside",
    "verify_checkpoint",
]

_STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^stage[12]-epoch\d+$")


class CheckpointBroken(ValueError):
    """Every checkpoint of a run is incomplete or damaged: nothing to resume from."""


def save_training_state(
    accelerator: Accelerator, output_dir: Path, stage: str, epoch: int, trainer_state: dict[str, Any], keep: int = 1
) -> Path:
    """Save model/optimizer/RNG state with Accelerate into ``checkpoints/{stage}-epoch{E}``, ``epoch`` = E the
    number of epochs done (epochs are numbered from 1, as in the progress line and ``log.jsonl``).

    The state goes into a temporary folder that is renamed when complete, so a crash at any moment
    leaves either the previous checkpoint or the new one, never a half-written folder that loads.
    ``keep`` > 0 keeps that many of the newest checkpoints (0: all).
    """
    root = output_dir / "checkpoints"
    final = root / f"{stage}-epoch{epoch:04d}"
    tmp = root / f".tmp-{stage}-epoch{epoch:04d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank's random_states_<i>.pkl is in place
    if accelerator.is_main_process:
        files = {p.name: _describe(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        state = {**trainer_state, "stage": stage, "epoch": epoch, "epoch_base": 1, "files": files}
        (tmp / _STATE_FILE).write_text(json.dumps(state, indent=1))
        apply_umask(tmp)  # safetensors writes 0600 files: use the user's umask like every other file
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted((p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)), key=_order)
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_training_state(accelerator: Accelerator, checkpoint: Path) -> str | None:
    """``accelerator.load_state(checkpoint)``; returns None when the random state of this process was restored
    too, else what went wrong (Accelerate logs "Could not load random states" at INFO and carries on: the
    model and optimizer are restored, but the run is not an exact continuation)."""
    import logging

    import torch

    rng_file = checkpoint / f"random_states_{accelerator.process_index}.pkl"
    heard: list[str] = []

    class _Listen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            heard.append(record.getMessage())

    logger = logging.getLogger("accelerate.checkpointing")
    level, propagate, handler = logger.level, logger.propagate, _Listen()
    logger.setLevel(logging.INFO)
    logger.propagate = False  # its INFO lines stay quiet, as before
    logger.addHandler(handler)
    before = torch.get_rng_state()
    try:
        accelerator.load_state(str(checkpoint))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    if not rng_file.is_file():
        return f"{rng_file} is missing (was the run saved with fewer processes?)"
    if any("Could not load random states" in m for m in heard) or torch.equal(before, torch.get_rng_state()):
        return f"{rng_file} could not be loaded"
    return None


def _describe(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _order(path: Path) -> tuple[int, int]:
    stage, epoch = path.name.split("-epoch")
    return (1 if stage == "stage2" else 0, int(epoch))


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None when the checkpoint is complete and intact, else what is wrong with it."""
    state_file = checkpoint / _STATE_FILE
    if not state_file.is_file():
        return f"no {_STATE_FILE} (the write did not finish)"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{_STATE_FILE} is unreadable ({err})"
    if not isinstance(state, dict) or "epoch" not in state or "stage" not in state:
        return f"{_STATE_FILE} lacks the stage and epoch"
    files = state.get("files")
    if not isinstance(files, dict):  # written before the file list existed: check what can be checked
        return None if any(checkpoint.glob("model*.safetensors")) else "no model weights"
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, {expected.get('bytes')} were written (truncated or replaced)"
        if _describe(path)["sha256"] != expected.get("sha256"):
            return f"{name} does not match its sha256 (the file is damaged)"
    return None


def _scan(output_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest intact checkpoint (or None) and the newer ones found broken, as ``(path, problem)``."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None, []
    found = sorted((p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)), key=_order, reverse=True)
    broken: list[tuple[Path, str]] = []
    for candidate in found:
        problem = verify_checkpoint(candidate)
        if problem is None:
            return candidate, broken
        broken.append((candidate, problem))
    return None, broken


def _end_of_stage1(output_dir: Path) -> dict[str, Any] | None:
    """The trainer state at the end of stage 1, rebuilt from the saved ``stage1/`` folder and ``log.jsonl``
    (None when that folder is missing or damaged): where stage 2 starts again without a checkpoint."""
    from safetensors import safe_open

    folder = Path(output_dir) / "stage1"
    try:
        extras = json.loads((folder / "ccsam_zoo.json").read_text())
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            for key in f.keys():  # reads every tensor: a truncated file fails here
                f.get_tensor(key)
        metrics = extras["metrics"]
        epoch = int(metrics["epoch"])  # epochs done
    except Exception:  # noqa: BLE001  (any damage: no fallback)
        return None
    records = []
    log = Path(output_dir) / "log.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    shift = 0 if epochs_from_one(records) else 1  # a log written before epochs were numbered from 1
    history = [
        {**{k: v for k, v in r.items() if k != "time"}, "epoch": r["epoch"] + shift}
        for r in records
        if r.get("stage") == "stage1" and "loss" in r and isinstance(r.get("epoch"), int)
    ]
    state = {"metrics": {"stage1": metrics}, "history": history, "stage1_done": True, "stage": "stage1"}
    return {**state, "epoch": epoch, "recipe": extras.get("recipe")}


def choose_checkpoint(output_dir: Path) -> tuple[Path | None, dict[str, Any] | None, list[tuple[Path, str]]]:
    """Where a resumed run starts: ``(checkpoint to load or None, trainer state or None, broken checkpoints)``.

    The newest intact checkpoint wins; the newer broken ones are returned as ``(path, problem)`` to be set
    aside. When every checkpoint is broken, a run past stage 1 restarts stage 2 from its ``stage1/`` folder
    (the previous complete save, also with ``train.keep_checkpoints=1``); otherwise ``CheckpointBroken`` says
    which checkpoint is broken and what to do. Reads only.
    """
    chosen, broken = _scan(output_dir)
    if chosen is not None:
        return chosen, read_trainer_state(chosen), broken
    if not broken:
        return None, None, []
    path, problem = broken[0]
    state = _end_of_stage1(output_dir) if path.name.startswith("stage2") else None
    if state is not None:
        return None, state, broken
    raise CheckpointBroken(
        f"checkpoint {path} is broken: {problem}; there is no earlier intact checkpoint to fall back to "
        "(train.keep_checkpoints=1 keeps only the newest; 2 keeps a fallback). Nothing was changed: to train "
        "this run again from the start, rerun with --overwrite instead of --resume"
    )


def set_aside(checkpoint: Path) -> Path:
    """Move a broken checkpoint out of the way (``checkpoints/.broken-<name>``), kept for inspection."""
    target = checkpoint.with_name(f".broken-{checkpoint.name}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(checkpoint, target)
    return target


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The most advanced intact checkpoint under ``output_dir/checkpoints`` (None if there is none)."""
    return _scan(output_dir)[0]


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    """The trainer's own bookkeeping stored beside Accelerate's state, ``epoch`` = epochs done.

    A checkpoint written before epochs were numbered from 1 (no ``epoch_base``; its ``epoch`` and history
    0-based, its folder named one lower) is read in today's numbering, so such runs still resume."""
    state = json.loads((checkpoint / _STATE_FILE).read_text())
    state.pop("files", None)
    if state.pop("epoch_base", 0) != 1:
        state["epoch"] = int(state["epoch"]) + 1
        state["history"] = [
            {**r, "epoch": r["epoch"] + 1} if isinstance(r, dict) and isinstance(r.get("epoch"), int) else r
            for r in state.get("history", [])
        ]
    return state
