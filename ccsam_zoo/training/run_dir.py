"""The run folder: refuse to mix two runs in one folder, clear it on request, remove interrupted writes.

``check_run_dir`` only reads (it runs on every process before anything is written); ``prepare_run_dir``
writes (main process only).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import yaml

__all__ = ["RunDirError", "check_run_dir", "prepare_run_dir", "remove_leftovers"]

# What a run writes into its folder (anything else there is the user's and is never deleted).
RUN_FILES = frozenset(
    {
        "recipe.yaml",
        "log.jsonl",
        "train.log",
        "metrics.json",
        "train_indices.json",
        "training_curves.png",
        "per_class_accuracy.png",
        "checkpoints",
        "stage1",
        "stage2",
    }
)
_STAGE_TMP = (".stage1.", ".stage2.")  # save_pretrained's .stageN.tmp-* / .stageN.old-* folders


class RunDirError(ValueError):
    """The output folder cannot take this run (exists with another run, is a file, ...)."""


def _shown(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _tracker_dir(folder: Path) -> str | None:
    """The tracker's sub-folder of an earlier run (``train.tracker`` writes under the recipe's name)."""
    try:
        recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
        return str(recipe["name"]) if recipe.get("train", {}).get("tracker") else None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def _entries(folder: Path) -> tuple[list[str], list[str]]:
    """(entries a run writes, other entries) of an existing folder."""
    tracker = _tracker_dir(folder)
    ours, other = [], []
    for p in sorted(folder.iterdir()):
        name = p.name + ("/" if p.is_dir() else "")
        if p.name in RUN_FILES or p.name.startswith(_STAGE_TMP) or p.name == tracker:
            ours.append(name)
        else:
            other.append(name)
    return ours, other


def check_run_dir(folder: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Raise ``RunDirError`` (with the fix) when ``folder`` cannot take a run; writes nothing.

    A new run needs a missing or empty folder; ``overwrite`` accepts a folder holding only a run's files
    (it is cleared by ``prepare_run_dir``); ``resume`` needs an existing run folder (its ``recipe.yaml``).
    """
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite deletes it: give only one of them")
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunDirError(
                f"--output-dir {folder}: {parent} is a file, not a folder; choose a folder path (it is created)"
            )
        if parent.exists():
            break
    if resume:
        if not folder.is_dir():
            raise RunDirError(f"--resume {folder}: no such folder; give the folder of the run to continue")
        if not (folder / "recipe.yaml").is_file():
            raise RunDirError(f"--resume {folder}: no recipe.yaml there; is it a run folder?")
        return
    if not folder.exists() or not any(folder.iterdir()):
        return
    ours, other = _entries(folder)
    if not overwrite:
        what = "a run" if "recipe.yaml" in ours else "files"
        raise RunDirError(
            f"--output-dir {folder} already holds {what} ({_shown(ours + other)}): add --resume to continue that "
            "run, --overwrite to delete it and start again, or choose another --output-dir"
        )
    if other:
        raise RunDirError(
            f"--overwrite: {folder} holds files that no run writes ({_shown(other)}); they are not deleted: "
            "choose another --output-dir, or move them away first"
        )


def prepare_run_dir(folder: Path, *, overwrite: bool = False) -> None:
    """Create the folder; with ``overwrite`` first delete an earlier run's files (only those)."""
    if overwrite and folder.is_dir():
        ours, _ = _entries(folder)
        for name in ours:
            path = folder / name.rstrip("/")
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete what interrupted writes leave: ``checkpoints/.tmp-*`` and ``.stageN.tmp-*`` folders, and
    ``.stageN.old-*`` copies whose ``stageN/`` is in place. Returns the paths removed."""
    removed = []
    candidates = list((folder / "checkpoints").glob(".tmp-*")) if (folder / "checkpoints").is_dir() else []
    for p in folder.glob(".stage*.*-*") if folder.is_dir() else []:
        stage = p.name[1:].split(".")[0]
        if ".tmp-" in p.name or (".old-" in p.name and (folder / stage / "config.json").is_file()):
            candidates.append(p)
    for p in candidates:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                continue
        removed.append(p)
    return removed
