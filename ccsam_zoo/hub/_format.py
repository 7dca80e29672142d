"""The checkpoint folder's file format: file names, reading / writing its JSON and safetensors parts, validation.

The lowest module of ``hub``: the loader (``loading.py``), the writer (``checkpoint.py``), the card renderer
(``card.py``) and the alias registry (``registry.py``) all import it, and it imports none of them. Only
safetensors are ever read; nothing here calls ``torch.load`` or unpickles anything.

Layout of one stage folder::

    config.json               timm schema (architecture, num_classes, num_features, global_pool,
                              model_args, label_names, pretrained_cfg) written by timm.models.save_for_hf
    model.safetensors         the timm model's own state dict
    ccsam_zoo.json            extras: classes, counts, shot groups, stage, method, recipe, metrics, ...
    prototypes.safetensors    optional, {"prototypes": C x D float32}
    open_set_stats.safetensors optional, training statistics of the open-set scores (inference.OpenSetStats)
    per_class_accuracy.png    when the metrics have per-class accuracies
    README.md                 the model card (card.render_model_card)

Limits of ``config.json``'s ``pretrained_cfg`` (the eval transform is built from it, so a wrong value would
resize every image to an absurd size or normalise with the wrong number of channels):

- ``input_size``: ``[C, H, W]`` with ``C`` 1 or 3 and ``1 <= H, W <= MAX_INPUT_SIDE`` (1024, the largest
  input of any timm pretrained config);
- ``mean`` / ``std``: exactly ``C`` finite numbers (``std`` positive): one value is never broadcast;
- ``crop_pct``: in ``CROP_PCT_RANGE`` = [0.5, 1.5] (timm's pretrained configs use 0.875 to 1.15; the eval
  transform resizes the shorter side to ``H / crop_pct``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .._lazy import lazy_module
from ..jsonio import JSONNestingError
from ..jsonio import loads as _json_loads

torch = lazy_module("torch")  # imported on first use: `ccsam-zoo list` stays fast

# The open-set score names a checkpoint may record (= inference.SCORES, kept import-free so that reading
# ccsam_zoo.json does not import torch; tests/test_cli_edges.py checks that the two agree).
OPEN_SET_SCORES = (
    "msp", "max_logit", "energy", "mahalanobis", "knn", "cosine", "euclidean", "reachability", "hybrid",
    "layer_stats", "msp+layer_stats", "max_logit+layer_stats", "energy+layer_stats",
)  # fmt: skip

__all__ = [
    "CARD_NAME", "CONFIG_NAME", "EXTRAS_NAME", "OPEN_SET_STATS_NAME", "PLOT_NAME", "PROTOTYPES_NAME",
    "WEIGHTS_NAME", "FORMAT_VERSION", "CheckpointError", "check_config", "check_extras", "check_finite",
    "check_weights", "load_safetensors", "read_extras", "read_json", "write_open_set_stats", "write_prototypes",
]  # fmt: skip

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
EXTRAS_NAME = "ccsam_zoo.json"
PROTOTYPES_NAME = "prototypes.safetensors"
OPEN_SET_STATS_NAME = "open_set_stats.safetensors"
CARD_NAME = "README.md"
PLOT_NAME = "per_class_accuracy.png"
FORMAT_VERSION = 1

MAX_INPUT_SIDE = 1024
INPUT_CHANNELS = (1, 3)
CROP_PCT_RANGE = (0.5, 1.5)
# floating weights a checkpoint may hold (cast to the model's dtype on load); anything else is refused
WEIGHT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or loaded; the message names the file and the problem."""


# ------------------------------------------------------------------------------------------- reading


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; a missing, unreadable, too deeply nested or non-object file is a
    ``CheckpointError`` naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing {what}; a checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = _json_loads(path.read_text(encoding="utf-8"), str(path))
    except JSONNestingError as err:
        raise CheckpointError(f"{err}: the {what} is damaged, re-save or re-download it") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{path}: unreadable {what} ({err}); the file is corrupt, re-save or re-download it"
        ) from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} must hold a JSON object, got {type(data).__name__}")
    return data


def load_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (CPU); missing or corrupt files are ``CheckpointError``s naming it."""
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


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``{}`` when it has none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_extras(folder: str | os.PathLike) -> dict[str, Any]:
    """``ccsam_zoo.json`` of a checkpoint folder ({} for a plain timm checkpoint without it), checked."""
    path = Path(folder) / EXTRAS_NAME
    if not path.exists():
        return {}
    extras = read_json(path, "ccsam_zoo extras")
    version = extras.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is newer than this ccsam_zoo supports ({FORMAT_VERSION}); "
            "upgrade ccsam_zoo"
        )
    check_extras(extras, path)
    return extras


# ------------------------------------------------------------------------------------------- writing


def write_prototypes(path: Path, prototypes: Any, num_classes: int, num_features: int) -> dict[str, Any]:
    """Write ``{"prototypes": C x D float32}``; returns the ``ccsam_zoo.json`` entry."""
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


# ---------------------------------------------------------------------------------------- validation


def _non_finite(t: torch.Tensor) -> int:
    """Number of NaN / inf entries of a tensor (0 for integer and bool tensors)."""
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    if t.is_floating_point() and t.element_size() < 2:  # float8 types: isfinite is not implemented
        t = t.float()
    return int((~torch.isfinite(t)).sum())


def check_finite(tensors: dict[str, torch.Tensor], path: Path, effect: str, fix: str) -> None:
    """Refuse NaN / inf in ``tensors`` (they load silently and turn outputs into NaN)."""
    for key, t in tensors.items():
        bad = _non_finite(t)
        if bad:
            raise CheckpointError(
                f"{path}: tensor {key!r} holds {bad} non-finite value{'s' if bad > 1 else ''} (NaN / inf) of "
                f"{t.numel()}: {effect}. {fix}"
            )


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def check_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """Dtypes and BatchNorm variances of the weights ``state`` against the model's own ``expected`` state dict.

    A floating tensor of the model must be stored as float16 / bfloat16 / float32 / float64 (``load_state_dict``
    would cast bool, integer or float8 weights without a word); an integer buffer (``num_batches_tracked``) as
    an integer, a bool buffer as bool. A BatchNorm ``running_var`` must be >= 0 (a negative variance makes every
    output NaN).
    """
    for key, t in state.items():
        want = expected.get(key)
        if want is None:
            continue  # unexpected keys: load_state_dict(strict=True) names them
        have = _dtype_name(t.dtype)
        if want.is_floating_point() and have not in WEIGHT_DTYPES:
            raise CheckpointError(
                f"{path}: tensor {key!r} is stored as {have}, but the model's {key!r} is {_dtype_name(want.dtype)}; "
                f"weights must be floating point ({', '.join(WEIGHT_DTYPES)}) and are never cast from {have}: the "
                "file was altered or written by another tool, re-save (save_pretrained) or re-download it"
            )
        if not want.is_floating_point() and t.dtype != want.dtype and (
            t.is_floating_point() or t.is_complex() or torch.bool in (t.dtype, want.dtype)
        ):
            raise CheckpointError(
                f"{path}: tensor {key!r} is stored as {have}, but the model's {key!r} is "
                f"{_dtype_name(want.dtype)}; re-save (save_pretrained) or re-download the checkpoint"
            )
    for key, t in state.items():
        if key.endswith("running_var") and t.is_floating_point() and t.numel():
            low = float(t.float().min())
            if low < 0:
                bad = int((t < 0).sum())
                raise CheckpointError(
                    f"{path}: BatchNorm tensor {key!r} holds {bad} negative variance{'s' if bad > 1 else ''} "
                    f"(min {low:.4g}): a variance is >= 0, and a negative one makes the outputs NaN. The file was "
                    "altered: re-train, re-save or re-download the checkpoint"
                )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def check_config(config: dict[str, Any], path: Path) -> None:
    """Types and ranges of the ``config.json`` fields the loader and the eval transform use (``CheckpointError``
    naming the key; limits in the module docstring)."""

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
    if size is not None and size[0] not in INPUT_CHANNELS:
        raise bad("pretrained_cfg.input_size", "[channels, height, width] with 1 or 3 channels")
    if size is not None and max(size[1:]) > MAX_INPUT_SIDE:
        raise bad("pretrained_cfg.input_size", f"[channels, height, width] with sides of at most {MAX_INPUT_SIDE} px")
    channels = size[0] if size is not None else 3  # timm's default input_size is (3, 224, 224)
    for key in ("mean", "std"):
        v = pcfg.get(key)
        if v is not None and not (isinstance(v, list) and v and all(_is_number(x) for x in v)):
            raise bad(f"pretrained_cfg.{key}", "a list of finite numbers (one per channel)")
        if v is not None and len(v) != channels:
            raise bad(
                f"pretrained_cfg.{key}",
                f"a list of {channels} numbers, one per input channel (input_size[0] = {channels}); one value is "
                "never broadcast",
            )
    if isinstance(pcfg.get("std"), list) and any(x <= 0 for x in pcfg["std"]):
        raise bad("pretrained_cfg.std", "a list of positive numbers")
    crop = pcfg.get("crop_pct")
    lo, hi = CROP_PCT_RANGE
    if crop is not None and not (_is_number(crop) and lo <= crop <= hi):
        raise bad(
            "pretrained_cfg.crop_pct",
            f"a number in [{lo}, {hi}] (timm's models use 0.875 to 1.15; images are resized to input size / crop_pct)",
        )
    for key in ("interpolation", "crop_mode"):
        if pcfg.get(key) is not None and not isinstance(pcfg[key], str):
            raise bad(f"pretrained_cfg.{key}", "a string")
    head = pcfg.get("classifier")
    names = [head] if isinstance(head, str) else head
    if head is not None and not (isinstance(names, list) and all(isinstance(h, str) for h in names)):
        raise bad("pretrained_cfg.classifier", "a module name (a string or a list of strings)")


def check_extras(extras: dict[str, Any], path: Path) -> None:
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
