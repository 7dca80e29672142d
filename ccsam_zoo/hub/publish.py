"""``push_to_hub``: stage 2 to a repo's ``main`` branch and stage 1 to its ``stage1`` branch, one commit each."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._format import (
    CARD_NAME,
    CONFIG_NAME,
    EXTRAS_NAME,
    OPEN_SET_STATS_NAME,
    PLOT_NAME,
    PROTOTYPES_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    read_extras,
)
from .card import metrics_percent, portable_extras, render_model_card
from .loading import load_checkpoint

__all__ = ["push_to_hub"]

# (stage folder, branch) in upload order: main first, so the stage1 branch can be created from it.
_STAGES = (("stage2", "main"), ("stage1", "stage1"))
# Files this package writes; stale copies of these (and only these) are deleted from the branch.
_MANAGED = {CONFIG_NAME, WEIGHTS_NAME, EXTRAS_NAME, PROTOTYPES_NAME, CARD_NAME, PLOT_NAME, "pytorch_model.bin"}
_MANAGED.add(OPEN_SET_STATS_NAME)


def _stage_folders(run_dir: Path) -> list[tuple[str, Path, str]]:
    if (run_dir / CONFIG_NAME).is_file():  # a single checkpoint folder: its stage picks the branch
        stage = read_extras(run_dir).get("stage") or 2
        return [(f"stage{stage}", run_dir, "main" if stage == 2 else "stage1")]
    found = [(name, run_dir / name, branch) for name, branch in _STAGES if (run_dir / name).is_dir()]
    if not found:
        raise CheckpointError(
            f"{run_dir}: nothing to upload: expected stage1/ and/or stage2/ checkpoint folders (or a checkpoint "
            f"folder with {CONFIG_NAME})"
        )
    return found


def commit_message_for(extras: dict[str, Any], stage: str) -> str:
    """E.g. ``Upload CC-SAM stage 2 (ccsam, cifar10_lt IR100): top-1 83.1%``."""
    recipe = extras.get("recipe") or {}
    method = recipe.get("method") if isinstance(recipe, dict) else None
    if not method:
        m = extras.get("method")
        method = m.get("name") if isinstance(m, dict) else m
    dataset = extras.get("dataset") or extras.get("dataset_name") or "unknown data"
    number = stage.removeprefix("stage")
    msg = f"Upload CC-SAM stage {number} ({method or 'unknown method'}, {dataset})"
    top1 = metrics_percent(extras.get("metrics") or {}).get("top1")
    return msg + (f": top-1 {top1:.1f}%" if top1 is not None else "")


def _description(extras: dict[str, Any]) -> str:
    m = metrics_percent(extras.get("metrics") or {})
    parts = [f"{k} {m[k]:.2f}" for k in ("top1", "many", "medium", "few") if m.get(k) is not None]
    lines = [f"Test accuracy (%): {', '.join(parts)}." if parts else "No test metrics recorded."]
    if extras.get("data_fingerprint"):
        lines.append(f"Data fingerprint: {extras['data_fingerprint']}.")
    if extras.get("ccsam_zoo_version"):
        lines.append(f"Written by ccsam_zoo {extras['ccsam_zoo_version']}.")
    return "\n".join(lines)


def _existing_files(api: Any, repo_id: str, branch: str, token: str | None) -> list[str]:
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        return list(api.list_repo_files(repo_id, revision=branch, token=token))
    except (RevisionNotFoundError, EntryNotFoundError):
        return []


def _portable_extras_bytes(path: Path) -> bytes | None:
    """``ccsam_zoo.json`` as uploaded: the recipe's local paths become placeholders (None: nothing to change)."""
    import json

    text = path.read_text(encoding="utf-8")
    extras = json.loads(text)
    portable = portable_extras(extras)
    return None if portable == extras else (json.dumps(portable, indent=2) + "\n").encode("utf-8")


def _operations(folder: Path, card: str, existing: list[str]) -> list[Any]:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    ops: list[Any] = []
    for path in files:
        if path.name == CARD_NAME:
            continue
        content: Any = str(path)
        if path.name == EXTRAS_NAME:  # no path of this machine goes to the Hub
            content = _portable_extras_bytes(path) or content
        ops.append(CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=content))
    ops.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode("utf-8")))
    uploaded = {op.path_in_repo for op in ops}
    ops.extend(CommitOperationDelete(path_in_repo=p) for p in sorted(existing) if p in _MANAGED and p not in uploaded)
    return ops


def push_to_hub(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> dict[str, Any]:
    """Upload a run's checkpoints: ``stage2/`` to branch main, ``stage1/`` to branch "stage1".

    Each stage folder is loaded first (strictly) so a broken checkpoint is never published. The card is
    re-rendered for ``repo_id`` and the branch. One commit per stage; files this package manages that the
    new folder no longer has are deleted in the same commit. ``token`` is passed to huggingface_hub as is
    (None: the usual login / HF_TOKEN); ``api``: an ``HfApi``-like client (tests pass a fake one).
    Returns ``{"stage2": CommitInfo, "stage1": CommitInfo}`` for the stages uploaded.
    """
    from huggingface_hub import HfApi

    from .. import __version__

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run folder")
    stages = _stage_folders(run_dir)
    checked = [(stage, folder, branch, load_checkpoint(folder).extras) for stage, folder, branch in stages]
    if api is None:
        api = HfApi(library_name="ccsam_zoo", library_version=__version__)
    url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    full_id = getattr(url, "repo_id", None)
    repo_id = full_id if isinstance(full_id, str) and full_id else repo_id
    results: dict[str, Any] = {}
    for stage, folder, branch, extras in checked:
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True, token=token)
        card = render_model_card(folder, repo_id=repo_id, revision=branch)
        ops = _operations(folder, card, _existing_files(api, repo_id, branch, token))
        results[stage] = api.create_commit(
            repo_id,
            ops,
            commit_message=commit_message or commit_message_for(extras, stage),
            commit_description=_description(extras),
            revision=branch,
            token=token,
        )
    return results
