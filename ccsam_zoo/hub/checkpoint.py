"""Checkpoint folders: a valid timm checkpoint (config.json + model.safetensors) plus ccsam_zoo extras.

Layout of one stage folder::

    config.json               timm schema (architecture, num_classes, num_features, global_pool,
                              model_args, label_names, pretrained_cfg) written by timm.models.save_for_hf
    model.safetensors         the timm model's own state dict
    ccsam_zoo.json            extras: classes, counts, shot groups, stage, method, recipe, metrics, ...
    prototypes.safetensors    optional, {"prototypes": C x D float32}
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

torch = lazy_module("torch")  # imported on first use: `ccsam-zoo list` stays fast
nn = lazy_module("torch.nn")

__all__ = ["CheckpointError", "LoadedCheckpoint", "save_pretrained", "load_checkpoint", "read_extras"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EXTRAS_NAME = "ccsam_zoo.json"
PROTOTYPES_NAME = "prototypes.safetensors"
CARD_NAME = "README.md"
PLOT_NAME = "per_class_accuracy.png"
FORMAT_VERSION = 1

# info keys of save_pretrained: the ARCHITECTURE.md contract, then optional extras used by the card.
INFO_KEYS = (
    "class_names", "class_counts", "shot_thresholds", "shot_rule", "stage", "method", "recipe", "metrics",
    "dataset", "data_fingerprint", "prototypes", "open_set", "paper_results",
)
OPTIONAL_INFO_KEYS = ("data_config", "base_model", "license", "limitations", "data_source", "repo_id", "shot_groups")


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

    @property
    def class_names(self) -> list[str]:
        names = self.extras.get("class_names") or self.config.get("label_names")
        return [str(n) for n in names] if names else [str(i) for i in range(self.model.num_classes)]


# ----------------------------------------------------------------------------------------------- saving


def _is_timm_model(model: Any) -> bool:
    return isinstance(getattr(model, "pretrained_cfg", None), dict) and hasattr(model, "get_classifier")


def _unwrap(model: nn.Module) -> nn.Module:
    """The timm model inside DDP / ``FeaturesAndLogits`` / ``Classifier`` wrappers."""
    for _ in range(8):
        compiled = getattr(model, "_orig_mod", None)  # torch.compile forwards attributes: unwrap it first
        if isinstance(compiled, nn.Module):
            model = compiled
            continue
        if _is_timm_model(model):
            return model
        inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "model", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    raise ValueError(
        f"save_pretrained needs a timm model (with .pretrained_cfg), got {type(model).__name__}: "
        "create it with timm.create_model(...) after `import ccsam_zoo`"
    )


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: tensors / numpy to lists, tuples to lists, NaN to None, paths to str."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and type(value).__module__.startswith("numpy"):
        return _jsonable(value.tolist())
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


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
        from ..metrics import shot_groups

        groups = shot_groups(counts, thresholds[0], thresholds[1], rule if rule in ("paper", "authors") else "paper")
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
    return _jsonable(extras)


def _write_prototypes(path: Path, prototypes: Any, num_classes: int, num_features: int) -> dict[str, Any]:
    from safetensors.torch import save_file

    p = torch.as_tensor(prototypes).detach().to("cpu", torch.float32).contiguous()
    if p.ndim != 2 or p.shape[0] != num_classes:
        raise ValueError(f"info['prototypes'] must be a C x D tensor with C={num_classes}, got {tuple(p.shape)}")
    if p.shape[1] != num_features:
        raise ValueError(f"info['prototypes'] has D={p.shape[1]} but the model's features have {num_features}")
    save_file({"prototypes": p}, str(path), metadata={"format": "pt"})
    return {"file": PROTOTYPES_NAME, "shape": list(p.shape)}


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
    prototypes (C x D tensor or None), open_set ({score, threshold, tpr} or None), paper_results
    (None: looked up from the published table); optional: data_config (timm data config overrides),
    base_model, license, limitations (list of str), data_source, repo_id (used in the card's usage lines).
    Returns the folder's path.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf  # the config half of timm.models.save_for_hf

    model = _unwrap(model)
    folder = Path(folder).expanduser().resolve()
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
        (tmp / EXTRAS_NAME).write_text(json.dumps(extras, indent=2) + "\n", encoding="utf-8")
        from .card import plot_per_class_accuracy, render_model_card

        plot_per_class_accuracy(tmp, extras)
        (tmp / CARD_NAME).write_text(render_model_card(tmp, repo_id=info.get("repo_id")), encoding="utf-8")
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
    return LoadedCheckpoint(model=model, folder=folder, config=config, extras=extras, prototypes=protos)
