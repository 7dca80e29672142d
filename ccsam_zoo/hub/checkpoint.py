"""``save_pretrained``: write a checkpoint folder, a valid timm checkpoint (config.json + model.safetensors) plus
ccsam_zoo extras, atomically, with its model card.

The file format (names, reading / writing the JSON and safetensors parts, validation) lives in ``_format.py``,
loading in ``loading.py``; this module re-exports their public names (``CheckpointError``, ``load_checkpoint``,
``read_extras``, the file names) so ``ccsam_zoo.hub.checkpoint`` stays the one place to import them from.
Imports point one way: ``checkpoint`` -> ``card`` -> ``registry`` -> ``loading`` -> ``_format``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .._fs import apply_umask
from .._lazy import lazy_module
from ..jsonio import jsonable
from ._format import (
    CARD_NAME,
    CONFIG_NAME,
    EXTRAS_NAME,
    FORMAT_VERSION,
    OPEN_SET_SCORES,
    OPEN_SET_STATS_NAME,
    PLOT_NAME,
    PROTOTYPES_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    read_extras,
    write_open_set_stats,
    write_prototypes,
)
from .loading import LoadedCheckpoint, load_checkpoint

torch = lazy_module("torch")  # imported on first use: `ccsam-zoo list` stays fast
nn = lazy_module("torch.nn")

__all__ = [
    "CARD_NAME", "CONFIG_NAME", "EXTRAS_NAME", "FORMAT_VERSION", "OPEN_SET_SCORES", "OPEN_SET_STATS_NAME",
    "PLOT_NAME", "PROTOTYPES_NAME", "WEIGHTS_NAME", "CheckpointError", "LoadedCheckpoint", "load_checkpoint",
    "read_extras", "save_pretrained", "write_open_set_stats",
]  # fmt: skip

# info keys of save_pretrained: the ARCHITECTURE.md contract, then optional extras used by the card.
INFO_KEYS = (
    "class_names", "class_counts", "shot_thresholds", "shot_rule", "stage", "method", "recipe", "metrics",
    "dataset", "data_fingerprint", "prototypes", "open_set", "paper_results",
)
OPEN_SET_STATS_KEY = "open_set_stats"  # optional info key: an inference.OpenSetStats (or None)
OPTIONAL_INFO_KEYS = (
    "data_config", "base_model", "license", "limitations", "data_source", "repo_id", "shot_groups", OPEN_SET_STATS_KEY,
)


# ----------------------------------------------------------------------------------------------- saving


def _unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside DDP / ``torch.compile`` / ``FeaturesAndLogits`` / ``Classifier`` wrappers."""
    from ..models.heads import unwrap

    try:
        return unwrap(model)
    except ValueError:
        raise ValueError(
            f"save_pretrained needs a timm model (with .pretrained_cfg), got {type(model).__name__}: "
            "create it with timm.create_model(...) after `import ccsam_zoo`"
        ) from None


def stage_number(stage: Any) -> int | None:
    """1 or 2 from ``"stage1"``, ``"stage2"``, ``1``, ``"2"``; None when unknown."""
    if stage is None:
        return None
    m = re.search(r"(\d+)", str(stage))
    return int(m.group(1)) if m else None


def _build_extras(model: nn.Module, info: dict[str, Any]) -> dict[str, Any]:
    num_classes = int(model.num_classes)
    class_names = [str(c) for c in info.get("class_names") or []]
    if not class_names:
        raise ValueError("info['class_names'] is required (one name per class)")
    if len(class_names) != num_classes:
        raise ValueError(f"info['class_names'] has {len(class_names)} names but the model has {num_classes} classes")
    counts = info.get("class_counts")
    if counts is not None:
        counts = [int(n) for n in counts]
        if len(counts) != num_classes:
            raise ValueError(f"info['class_counts'] has {len(counts)} entries but the model has {num_classes} classes")
    thresholds = [int(t) for t in info.get("shot_thresholds") or (100, 20)]
    rule = info.get("shot_rule") or "paper"
    groups = info.get("shot_groups")
    if groups is None and counts is not None:
        from ..data.counts import shot_groups

        groups = shot_groups(counts, tuple(thresholds), rule if rule in ("paper", "authors") else "paper")
    recipe = info.get("recipe") or {}
    data = recipe.get("data", {}) if isinstance(recipe, dict) else {}
    dataset = info.get("dataset")
    ir = data.get("imbalance_ratio")
    if ir is None and dataset:
        m = re.search(r"IR\s*(\d+(?:\.\d+)?)", str(dataset), re.IGNORECASE)
        ir = float(m.group(1)) if m else None
    if ir is None and counts and min(counts) > 0:
        ir = max(counts) / min(counts)
    if isinstance(ir, float) and ir.is_integer():
        ir = int(ir)
    open_set = info.get("open_set")
    if open_set is not None and not isinstance(open_set, dict):
        raise ValueError(f"info['open_set'] must be a dict {{score, threshold, tpr}} or None, got {type(open_set)}")
    from .. import __version__

    extras: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "ccsam_zoo_version": __version__,
        "architecture": model.pretrained_cfg.get("architecture"),
        "num_classes": num_classes,
        "class_names": class_names,
        "class_counts": counts,
        "shot_thresholds": thresholds,
        "shot_rule": rule,
        "shot_groups": groups,
        "stage": stage_number(info.get("stage")),
        "method": info.get("method"),
        "recipe": recipe,
        "metrics": info.get("metrics") or {},
        "dataset": dataset,
        "dataset_name": data.get("name") or (str(dataset).split()[0] if dataset else None),
        "imbalance_ratio": ir,
        "data_fingerprint": info.get("data_fingerprint"),
        "open_set": open_set,
        "paper_results": info.get("paper_results"),
        "prototypes": None,
    }
    for key in ("base_model", "license", "limitations", "data_source"):
        if info.get(key) is not None:
            extras[key] = info[key]
    unknown = sorted(set(info) - set(INFO_KEYS) - set(OPTIONAL_INFO_KEYS))
    if unknown:
        warnings.warn(f"save_pretrained: unknown info keys {unknown} kept under 'extra' in {EXTRAS_NAME}", stacklevel=3)
        extras["extra"] = {k: info[k] for k in unknown}
    if extras["paper_results"] is None:
        from .card import paper_result_for

        extras["paper_results"] = paper_result_for(extras)
    return jsonable(extras)


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors, none sharing memory (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr()
        if t.numel() and storage in seen:
            t = t.clone()
            storage = t.untyped_storage().data_ptr()
        seen.add(storage)
        out[key] = t
    return out


def _fsync_dir(folder: Path) -> None:
    """Flush the files of ``folder`` to disk before it is renamed into place (best effort)."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, folder: Path) -> None:
    """Move ``tmp`` to ``folder``; an existing ``folder`` is moved aside first, then deleted."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, old / folder.name)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old / folder.name, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_pretrained(model: nn.Module, folder: str | os.PathLike, *, info: dict[str, Any]) -> Path:
    """Write a checkpoint folder (timm schema + ccsam_zoo extras + card), atomically.

    Everything is written into a temporary folder beside ``folder`` and renamed into place at the end, so
    an interrupted save never leaves a half-written folder that loads. ``info`` keys: class_names,
    class_counts, shot_thresholds, shot_rule, stage, method, recipe, metrics, dataset, data_fingerprint,
    prototypes (C x D tensor or None), open_set ({score, threshold, tpr, ...} or None), paper_results
    (None: looked up from the published table); optional: open_set_stats (inference.OpenSetStats, written to
    open_set_stats.safetensors), data_config (timm data config overrides),
    base_model, license, limitations (list of str), data_source, repo_id (the Hub repo the card's usage
    lines load from; without it they load from ``folder``, as written).
    Returns the folder's path.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf  # the config half of timm.models.save_for_hf

    model = _unwrap(model)
    shown = Path(folder).expanduser()  # the path as the caller wrote it: the card's usage lines load from it
    folder = shown.resolve()
    extras = _build_extras(model, info)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        pretrained_cfg = {"tag": f"ccsam_zoo_stage{extras['stage']}" if extras["stage"] else "ccsam_zoo"}
        if info.get("license"):
            pretrained_cfg["license"] = info["license"]
        # what save_for_hf(safe_serialization=True) writes, with CPU contiguous tensors (channels_last, CUDA)
        save_file(_plain_state_dict(model), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        save_config_for_hf(
            model,
            str(tmp / CONFIG_NAME),
            model_config={"label_names": extras["class_names"], "pretrained_cfg": pretrained_cfg},
            data_config=info.get("data_config"),
        )
        if info.get("prototypes") is not None:
            extras["prototypes"] = write_prototypes(
                tmp / PROTOTYPES_NAME, info["prototypes"], int(model.num_classes), int(model.num_features)
            )
        if info.get(OPEN_SET_STATS_KEY) is not None:
            extras[OPEN_SET_STATS_KEY] = write_open_set_stats(tmp, info[OPEN_SET_STATS_KEY])
        (tmp / EXTRAS_NAME).write_text(json.dumps(extras, indent=2) + "\n", encoding="utf-8")
        from .card import plot_per_class_accuracy, render_model_card

        plot_per_class_accuracy(tmp, extras)
        card = render_model_card(tmp, repo_id=info.get("repo_id"), location=shown)
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        apply_umask(tmp)  # mkdtemp makes 0700, safetensors 0600: give the folder the user's umask
        _fsync_dir(tmp)
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
