"""Checkpoint folders: a valid timm checkpoint (config.json + model.safetensors) plus ccsam_zoo extras.

Layout of one stage folder::

    config.json               timm schema (architecture, num_classes, num_features, global_pool,
                              model_args, label_names, pretrained_cfg) written by timm.models.save_for_hf
    model.safetensors         the timm model's own state dict
    ccsam_zoo.json            extras: classes, counts, shot groups, stage, method, recipe, metrics, ...
    prototypes.safetensors    optional, {"prototypes": C x D float32}
    open_set_stats.safetensors optional, training statistics of the open-set scores (inference.OpenSetStats)
    per_class_accuracy.png    when the metrics have per-class accuracies
    README.md                 the model card (card.render_model_card)

Only safetensors are ever read; nothing here calls ``torch.load`` or unpickles anything.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._fs import apply_umask
from .._lazy import lazy_module
from ..jsonio import jsonable

torch = lazy_module("torch")  # imported on first use: `ccsam-zoo list` stays fast
nn = lazy_module("torch.nn")

__all__ = ["CheckpointError", "LoadedCheckpoint", "save_pretrained", "load_checkpoint", "read_extras"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EXTRAS_NAME = "ccsam_zoo.json"
PROTOTYPES_NAME = "prototypes.safetensors"
OPEN_SET_STATS_NAME = "open_set_stats.safetensors"
CARD_NAME = "README.md"
PLOT_NAME = "per_class_accuracy.png"
FORMAT_VERSION = 1
# The open-set score names a checkpoint may record (= inference.SCORES, kept import-free so that reading
# ccsam_zoo.json does not import torch; tests/test_cli_edges.py checks that the two agree).
OPEN_SET_SCORES = (
    "msp", "max_logit", "energy", "mahalanobis", "knn", "cosine", "euclidean", "reachability", "hybrid",
    "layer_stats", "msp+layer_stats", "max_logit+layer_stats", "energy+layer_stats",
)  # fmt: skip

# info keys of save_pretrained: the ARCHITECTURE.md contract, then optional extras used by the card.
INFO_KEYS = (
    "class_names", "class_counts", "shot_thresholds", "shot_rule", "stage", "method", "recipe", "metrics",
    "dataset", "data_fingerprint", "prototypes", "open_set", "paper_results",
)
OPEN_SET_STATS_KEY = "open_set_stats"  # optional info key: an inference.OpenSetStats (or None)
OPTIONAL_INFO_KEYS = (
    "data_config", "base_model", "license", "limitations", "data_source", "repo_id", "shot_groups", OPEN_SET_STATS_KEY,
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or loaded; the message names the file and the problem."""


@dataclass
class LoadedCheckpoint:
    """What ``load_checkpoint`` read: the timm model (eval, CPU) and the folder's metadata."""

    model: nn.Module
    folder: Path
    config: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    prototypes: torch.Tensor | None = None
    open_set_stats: tuple[dict[str, torch.Tensor], dict[str, str]] | None = None  # (tensors, metadata)

    @property
    def class_names(self) -> list[str]:
        names = self.extras.get("class_names") or self.config.get("label_names")
        return [str(n) for n in names] if names else [str(i) for i in range(self.model.num_classes)]


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


def _write_prototypes(path: Path, prototypes: Any, num_classes: int, num_features: int) -> dict[str, Any]:
    from safetensors.torch import save_file

    p = torch.as_tensor(prototypes).detach().to("cpu", torch.float32).contiguous()
    if p.ndim != 2 or p.shape[0] != num_classes:
        raise ValueError(f"info['prototypes'] must be a C x D tensor with C={num_classes}, got {tuple(p.shape)}")
    if p.shape[1] != num_features:
        raise ValueError(f"info['prototypes'] has D={p.shape[1]} but the model's features have {num_features}")
    save_file({"prototypes": p}, str(path), metadata={"format": "pt"})
    return {"file": PROTOTYPES_NAME, "shape": list(p.shape)}


def write_open_set_stats(folder: str | os.PathLike, stats: Any) -> dict[str, Any]:
    """Write ``stats`` (with ``to_tensors() -> (tensors, metadata)``) as ``open_set_stats.safetensors``.

    Returns the ``ccsam_zoo.json`` entry: file name, size in bytes and the fitted parts.
    """
    from safetensors.torch import save_file

    tensors, metadata = stats.to_tensors()
    path = Path(folder) / OPEN_SET_STATS_NAME
    save_file(tensors, str(path), metadata={"format": "pt", **metadata})
    return {"file": OPEN_SET_STATS_NAME, "bytes": path.stat().st_size, **metadata}


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
            extras["prototypes"] = _write_prototypes(
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


# ---------------------------------------------------------------------------------------------- loading


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing {what}; a checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: unreadable {what} ({err}); the file is corrupt, re-save or re-download it"
        ) from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must hold a JSON object, got {type(data).__name__}")
    return data


def _load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        hint = ""
        pickles = sorted(p.name for p in path.parent.glob("*.bin")) + sorted(p.name for p in path.parent.glob("*.pth"))
        if pickles:
            hint = f" (found {', '.join(pickles)}: pickle files are never loaded; convert them to safetensors)"
        raise CheckpointError(f"{path}: missing {what}{hint}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        size = path.stat().st_size
        raise CheckpointError(
            f"{path}: {what} is corrupt or truncated ({size} bytes): {err}; re-save or re-download the checkpoint"
        ) from err


def _non_finite(t: torch.Tensor) -> int:
    """Number of NaN / inf entries of a tensor (0 for integer and bool tensors)."""
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    if t.is_floating_point() and t.element_size() < 2:  # float8 types: isfinite may not be implemented
        t = t.float()
    return int((~torch.isfinite(t)).sum())


def _check_finite(tensors: dict[str, torch.Tensor], path: Path, effect: str, fix: str) -> None:
    """Refuse NaN / inf in ``tensors`` (they load silently and turn outputs into NaN)."""
    for key, t in tensors.items():
        bad = _non_finite(t)
        if bad:
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN / inf) of "
                f"{t.numel()}: {effect}. {fix}"
            )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config(config: dict[str, Any], path: Path) -> None:
    """Types of the ``config.json`` fields the loader and the eval transform use (CheckpointError naming the key)."""

    def bad(key: str, want: str) -> CheckpointError:
        value = config if key == "" else _get(config, key)
        return CheckpointError(
            f"{path}: {key!r} must be {want}, got {json.dumps(value)[:80]} ({type(value).__name__}); "
            "the config is damaged: re-save or re-download the checkpoint"
        )

    arch = config.get("architecture")
    if arch is not None and (not isinstance(arch, str) or not arch):
        raise bad("architecture", "a timm model name (a non-empty string)")
    num_classes = config.get("num_classes")
    if num_classes is not None and not (_is_int(num_classes) and num_classes >= 1):
        raise bad("num_classes", "a positive integer")
    for key in ("pretrained_cfg", "model_args"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise bad(key, "a JSON object")
    labels = config.get("label_names")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, (str, int)) for x in labels)):
        raise bad("label_names", "a list of class names")
    pcfg = config.get("pretrained_cfg") or {}
    arch2 = pcfg.get("architecture")
    if arch2 is not None and not isinstance(arch2, str):
        raise bad("pretrained_cfg.architecture", "a timm model name (a string)")
    size = pcfg.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 3 and all(_is_int(v) and v > 0 for v in size)):
        raise bad("pretrained_cfg.input_size", "[channels, height, width] (positive integers)")
    for key in ("mean", "std"):
        v = pcfg.get(key)
        if v is not None and not (isinstance(v, list) and v and all(_is_number(x) for x in v)):
            raise bad(f"pretrained_cfg.{key}", "a list of finite numbers (one per channel)")
    if isinstance(pcfg.get("std"), list) and any(x <= 0 for x in pcfg["std"]):
        raise bad("pretrained_cfg.std", "a list of positive numbers")
    crop = pcfg.get("crop_pct")
    if crop is not None and not (_is_number(crop) and 0 < crop <= 2):
        raise bad("pretrained_cfg.crop_pct", "a number in (0, 2] (usually 0.875 to 1.0)")
    for key in ("interpolation", "crop_mode"):
        if pcfg.get(key) is not None and not isinstance(pcfg[key], str):
            raise bad(f"pretrained_cfg.{key}", "a string")
    head = pcfg.get("classifier")
    names = [head] if isinstance(head, str) else head
    if head is not None and not (isinstance(names, list) and all(isinstance(h, str) for h in names)):
        raise bad("pretrained_cfg.classifier", "a module name (a string or a list of strings)")


def _check_extras(extras: dict[str, Any], path: Path) -> None:
    """Types of the ``ccsam_zoo.json`` fields that loading and prediction use."""

    def bad(key: str, want: str) -> CheckpointError:
        value = _get(extras, key)
        return CheckpointError(
            f"{path}: {key!r} must be {want}, got {json.dumps(value)[:80]} ({type(value).__name__}); "
            "the file is damaged: re-save or re-download the checkpoint"
        )

    names = extras.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(x, (str, int)) for x in names)):
        raise bad("class_names", "a list of class names")
    counts = extras.get("class_counts")
    if counts is not None and not (isinstance(counts, list) and all(_is_int(x) and x >= 0 for x in counts)):
        raise bad("class_counts", "a list of non-negative integers (training images per class) or null")
    thresholds = extras.get("shot_thresholds")
    if thresholds is not None and not (
        isinstance(thresholds, list) and len(thresholds) == 2 and all(_is_int(x) for x in thresholds)
    ):
        raise bad("shot_thresholds", "[many, few] (two integers)")
    for key in ("shot_rule", "dataset", "dataset_name", "data_fingerprint"):
        if extras.get(key) is not None and not isinstance(extras[key], str):
            raise bad(key, "a string")
    for key in ("metrics", "prototypes", "recipe"):
        if extras.get(key) is not None and not isinstance(extras[key], dict):
            raise bad(key, "a JSON object or null")
    open_set = extras.get("open_set")
    if open_set is None:
        return
    if not isinstance(open_set, dict):
        raise bad("open_set", "{score, threshold, tpr} or null")
    SCORES = OPEN_SET_SCORES  # noqa: N806  (torch-free: `ccsam-zoo card` reads this file without torch)
    if open_set.get("score") is not None and open_set["score"] not in SCORES:
        raise bad("open_set.score", f"one of {', '.join(SCORES)}")
    threshold = open_set.get("threshold")
    if threshold is not None and not _is_number(threshold):
        raise bad("open_set.threshold", "a finite number (NaN / inf would reject or accept every image) or null")
    thresholds = open_set.get("thresholds")
    if thresholds is not None and not (
        isinstance(thresholds, dict) and all(k in SCORES and _is_number(v) for k, v in thresholds.items())
    ):
        raise bad("open_set.thresholds", "{score name: finite number} or null")
    per_class = open_set.get("class_thresholds")
    if per_class is not None and not (isinstance(per_class, list) and all(_is_number(v) for v in per_class)):
        raise bad("open_set.class_thresholds", "a list of finite numbers (one per class) or null")
    for key in ("tpr", "min_per_class"):
        if open_set.get(key) is not None and not _is_number(open_set[key]):
            raise bad(f"open_set.{key}", "a finite number or null")


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def read_extras(folder: str | os.PathLike) -> dict[str, Any]:
    """``ccsam_zoo.json`` of a checkpoint folder ({} for a plain timm checkpoint without it)."""
    path = Path(folder) / EXTRAS_NAME
    if not path.exists():
        return {}
    extras = _read_json(path, "ccsam_zoo extras")
    version = extras.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is newer than this ccsam_zoo supports ({FORMAT_VERSION}); "
            "upgrade ccsam_zoo"
        )
    _check_extras(extras, path)
    return extras


def _classifier_rows(state: dict[str, torch.Tensor], classifier: Any) -> tuple[str, int] | None:
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    for name in names:
        w = state.get(f"{name}.weight") if name else None
        if w is not None and w.ndim >= 1:
            return f"{name}.weight", int(w.shape[0])
    return None


def load_checkpoint(folder: str | os.PathLike) -> LoadedCheckpoint:
    """Build the timm model of a checkpoint folder and load its weights strictly.

    The model comes back in eval mode on the CPU. Raises ``CheckpointError`` for a
    missing / corrupt file, an unknown architecture, or weights that do not match the config.
    """
    import timm

    import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)

    folder = Path(folder)
    cfg_path = folder / CONFIG_NAME
    config = _read_json(cfg_path, "timm config")
    _check_config(config, cfg_path)
    arch = config.get("architecture") or (config.get("pretrained_cfg") or {}).get("architecture")
    if not arch:
        raise CheckpointError(f"{cfg_path}: no 'architecture' key; not a timm checkpoint config")
    if not timm.is_model(arch):
        raise CheckpointError(
            f"{cfg_path}: unknown architecture {arch!r}: timm has no model of that name. Run `import ccsam_zoo` "
            "(it registers resnet*_cifar) or import the module that registers the architecture "
            "(@timm.models.register_model) before loading"
        )
    num_classes = config.get("num_classes")
    extras = read_extras(folder)
    state = _load_safetensors(folder / WEIGHTS_NAME, "model weights")
    _check_finite(
        state, folder / WEIGHTS_NAME, "every prediction would be NaN",
        "The training diverged or the file was altered: re-train, or re-download the checkpoint.",
    )  # fmt: skip
    classifier = (config.get("pretrained_cfg") or {}).get("classifier")
    rows = _classifier_rows(state, classifier)
    if num_classes is not None and rows is not None and rows[1] != int(num_classes):
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME}: the classifier {rows[0]} has {rows[1]} classes but {cfg_path} says "
            f"num_classes={num_classes}; the config and the weights come from different models"
        )
    try:
        model = timm.create_model(f"local-dir:{folder}", pretrained=False)
    except Exception as err:  # noqa: BLE001  (timm raises many types for bad configs)
        raise CheckpointError(f"{cfg_path}: cannot build {arch!r} from this config: {err}") from err
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = str(err).replace("\n", " ").replace("\t", "")
        raise CheckpointError(
            f"{folder / WEIGHTS_NAME}: weights do not match the {arch!r} model built from {cfg_path}: {msg}"
        ) from err
    model.eval()
    names = extras.get("class_names") or config.get("label_names")
    if names is not None and len(names) != model.num_classes:
        raise CheckpointError(
            f"{folder}: {len(names)} class names for a model with {model.num_classes} classes "
            f"({EXTRAS_NAME} / {CONFIG_NAME} disagree with the weights)"
        )
    protos = None
    if extras.get("prototypes") or (folder / PROTOTYPES_NAME).exists():
        tensors = _load_safetensors(folder / PROTOTYPES_NAME, "class prototypes")
        protos = tensors.get("prototypes")
        if protos is None or protos.ndim != 2 or protos.shape[0] != model.num_classes:
            shape = None if protos is None else tuple(protos.shape)
            raise CheckpointError(
                f"{folder / PROTOTYPES_NAME}: expected a 'prototypes' tensor of {model.num_classes} x D, got {shape}"
            )
        _check_finite(
            {"prototypes": protos}, folder / PROTOTYPES_NAME, "every prototype open-set score would be NaN",
            "Fit them again (clf.fit_prototypes(train_data)) and save the checkpoint again.",
        )  # fmt: skip
    stats = None
    if extras.get(OPEN_SET_STATS_KEY) or (folder / OPEN_SET_STATS_NAME).exists():
        from safetensors import safe_open

        tensors = _load_safetensors(folder / OPEN_SET_STATS_NAME, "open-set statistics")
        with safe_open(str(folder / OPEN_SET_STATS_NAME), framework="pt") as f:
            stats = (tensors, dict(f.metadata() or {}))
        _check_finite(
            tensors, folder / OPEN_SET_STATS_NAME, "every open-set score that uses them would be NaN",
            "Fit them again (clf.fit_open_set(train_data)) and save the checkpoint again.",
        )  # fmt: skip
    return LoadedCheckpoint(
        model=model, folder=folder, config=config, extras=extras, prototypes=protos, open_set_stats=stats
    )
