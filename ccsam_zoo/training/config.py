"""Recipes: YAML files with a fixed schema, dotted ``--set`` overrides and a saved resolved copy."""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from ..ccsam.presets import METHODS

__all__ = [
    "RECIPE_DIR",
    "METHODS",
    "Recipe",
    "RecipeError",
    "list_recipes",
    "load_recipe",
    "apply_overrides",
    "stage_methods",
    "save_recipe",
    "resolve_recipe",
    "check_recipe",
    "check_values",
    "recipe_differences",
]

# The shipped recipes are package data (ccsam_zoo/recipes/*.yaml); CCSAM_RECIPES points at another folder.
RECIPE_DIR = Path(os.environ.get("CCSAM_RECIPES") or Path(__file__).resolve().parents[1] / "recipes")

# The schema: every recipe is this dict with some values replaced. Keys outside it are errors.
DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "description": "",
    "seed": 42,
    "method": "ccsam",
    "model": {
        "arch": "resnet32_cifar",
        "pretrained": False,
        "pretrained_file": None,  # local .safetensors with ImageNet weights (Places-LT: ResNet-152)
        "head": None,  # None: "cosine" for method=ldam_drw (LDAM's normalised classifier), else "linear"
        "norm": "batchnorm",  # CIFAR ResNets only; "groupnorm" makes 1- and 2-process runs comparable exactly
        "sync_bn": False,  # SyncBatchNorm over the global batch when several processes train (CUDA only)
        "channels_last": False,
        "compile": False,
        "drop_rate": 0.0,
    },
    "data": {
        "name": "cifar10_lt",
        "source": None,
        "imbalance_ratio": 100,
        "profile": "exp",
        "selection": "first",  # "first" n per class in source order, or "shuffle": seeded per-class shuffle
        "seed": 0,  # of "shuffle": 42 = the authors' CC-SAM subset, 0 = kaidic/LDAM-DRW's
        "max_count": None,
        "shot_rule": "paper",
        "shot_thresholds": [100, 20],
        "val_per_class": 0,
        "val_rule": "fill",  # "left_out": only images the LT subset leaves out (a class may get none)
        "num_workers": 0,
        "device_resident": False,  # uint8 fast path: keep the training images on the accelerator's device
        "image_size": None,
        "augment": True,
        "autoaugment": False,
        "cutout": False,
    },
    "stage1": {
        "epochs": 200,
        "batch_size": 64,
        "optimizer": "momentum",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "decay_bias_and_bn": True,
        "schedule": "step",
        "warmup_epochs": 5,
        "milestones": [160, 180],
        "gamma": None,  # None: 0.01 for method=ldam_drw (LDAM: x0.01 at 160, x0.0001 at 180), else 0.1
        "method": {},
    },
    "stage2": {
        "epochs": 30,
        "batch_size": 64,
        "optimizer": "momentum",
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 2e-4,
        "schedule": "constant",
        "warmup_epochs": 0,
        "milestones": [],
        "gamma": 0.1,
        "init": None,
        "init_from": "last",  # "best": start from the stage-1 epoch of best validation score (eval.select_on=val)
        "sampler": "class_balanced",
        "method": {},
    },
    "eval": {"every": 0, "batch_size": 256, "select_on": "last"},
    "train": {
        "mixed_precision": "no",
        "grad_accum": 1,
        "checkpoint_every": 1,
        "keep_checkpoints": 1,
        "log_every": 20,
        "drop_last": False,
        "tracker": None,
        "prototypes": True,
        "calibrate_tpr": 0.95,
    },
}

# Keys whose values are free-form dicts (validated by the algorithm's builders, not here).
_FREE = {"stage1.method", "stage2.method"}


class RecipeError(ValueError):
    """A recipe name, file or key that does not exist, or a value of the wrong type."""


# ------------------------------------------------------------------------------------------ value schema
# The type and range of every schema key, checked before any work (``check_values``): (kind, detail, nullable).
# kinds: int (whole number >= detail), num ((low, high or None, low exclusive, high exclusive)), bool, str,
# enum (choices or a function returning them), list_int (whole numbers >= 0), pair (two whole numbers
# many >= few >= 0), source (string or mapping), dict, bool_or_int (cutout), bool_or_str (autoaugment).
def _benchmarks() -> tuple[str, ...]:
    from ..data._names import BENCHMARKS

    return tuple(BENCHMARKS)


def _selections() -> tuple[str, ...]:
    from ..data._names import SELECTIONS

    return tuple(SELECTIONS)


def _profiles() -> tuple[str, ...]:
    from ..data.counts import PROFILES

    return tuple(PROFILES)


def _shot_rules() -> tuple[str, ...]:
    from ..data.counts import SHOT_RULES

    return tuple(SHOT_RULES)


def _optimizers() -> tuple[str, ...]:
    from timm.optim import list_optimizers

    return tuple(list_optimizers())


_COMMON_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "lamb", "lars")  # no timm import

def _schedules() -> tuple[str, ...]:
    from .schedule import SCHEDULES

    return tuple(SCHEDULES)


_RATE = ("num", (0.0, None, False, False), False)
_STAGE = {
    "epochs": ("int", 0, False),
    "batch_size": ("int", 1, False),
    "optimizer": ("enum", _optimizers, False),
    "lr": ("num", (0.0, None, True, False), False),  # lr 0 trains nothing
    "momentum": ("num", (0.0, 1.0, False, True), False),  # >= 1 diverges (a geometric sum of all gradients)
    "weight_decay": _RATE,
    "decay_bias_and_bn": ("bool", None, False),
    "schedule": ("enum", _schedules, False),
    "warmup_epochs": ("int", 0, False),
    "milestones": ("list_int", None, False),
    "gamma": ("num", (0.0, None, True, False), True),
    "method": ("dict", None, False),
    "init": ("str", None, True),
    "sampler": ("enum", ("shuffle", "class_balanced"), False),
}
_SPEC: dict[str, tuple[str, Any, bool]] = {
    "name": ("name", None, False),
    "description": ("str", None, True),
    "seed": ("int", 0, False),
    "model.arch": ("str", None, False),
    "model.pretrained": ("bool", None, False),
    "model.pretrained_file": ("str", None, True),
    "model.head": ("enum", ("linear", "cosine"), True),
    "model.norm": ("enum", ("batchnorm", "groupnorm"), False),
    "model.channels_last": ("bool", None, False),
    "model.compile": ("bool", None, False),
    "model.drop_rate": ("num", (0.0, 1.0, False, True), False),
    "data.name": ("enum", _benchmarks, False),
    "data.source": ("source", None, True),
    "data.imbalance_ratio": ("num", (1.0, None, False, False), True),
    "data.profile": ("enum", _profiles, False),
    "data.selection": ("enum", _selections, False),
    "data.seed": ("int", 0, False),
    "data.max_count": ("int", 1, True),
    "data.shot_rule": ("enum", _shot_rules, False),
    "data.shot_thresholds": ("pair", None, False),
    "data.val_per_class": ("int", 0, False),
    "data.val_rule": ("enum", ("fill", "left_out"), False),
    "data.num_workers": ("int", 0, False),
    "data.device_resident": ("bool", None, False),
    "data.image_size": ("int", 1, True),
    "data.augment": ("bool", None, False),
    "data.autoaugment": ("bool_or_str", None, False),
    "data.cutout": ("bool_or_int", None, False),
    **{f"{stage}.{k}": v for stage in ("stage1", "stage2") for k, v in _STAGE.items()},
    "eval.every": ("int", 0, False),
    "eval.batch_size": ("int", 1, False),
    "eval.select_on": ("enum", ("last", "val"), False),
    "stage2.init_from": ("enum", ("last", "best"), False),
    "train.mixed_precision": ("enum", ("no", "fp16", "bf16"), False),
    "train.grad_accum": ("int", 1, False),
    "train.checkpoint_every": ("int", 0, False),
    "train.keep_checkpoints": ("int", 0, False),
    "train.log_every": ("int", 1, False),
    "train.drop_last": ("bool", None, False),
    "train.tracker": ("str", None, True),
    "train.prototypes": ("bool", None, False),
    "train.calibrate_tpr": ("num", (0.0, 1.0, True, False), False),
}
_HINTS = {
    "data.imbalance_ratio": " (n_max / n_min: an imbalance factor of 0.01 is data.imbalance_ratio=100)",
    "train.keep_checkpoints": " (0 keeps every checkpoint)",
    "stage1.momentum": " (0.9 is usual; 1 or more diverges)",
    "stage2.momentum": " (0.9 is usual; 1 or more diverges)",
    "train.checkpoint_every": " (0: only at the end of each stage)",
    "eval.every": " (0: only at the end of each stage)",
}


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _choices(spec: tuple[str, Any, bool]) -> tuple[str, ...]:
    return tuple(spec[1]() if callable(spec[1]) else spec[1])


def _expected(spec: tuple[str, Any, bool]) -> str:
    kind, detail, nullable = spec
    if kind == "int":
        text = f"a whole number >= {detail}"
    elif kind == "num":
        low, high, low_open, high_open = detail
        text = f"a number {'>' if low_open else '>='} {low:g}"
        if high is not None:
            text += f" and {'<' if high_open else '<='} {high:g}"
    elif kind == "bool":
        text = "true or false"
    elif kind == "str":
        text = "a string"
    elif kind == "name":
        text = (
            "a name of letters, digits, '.', '_' and '-' that starts with a letter or digit (at most 100 "
            "characters; it names the run folder runs/<name>-<method>, so no path separators)"
        )
    elif kind == "enum":
        choices = _choices(spec)
        shown = ", ".join(choices[:12]) + (f", ... ({len(choices)} in all)" if len(choices) > 12 else "")
        text = f"one of {shown}"
    elif kind == "list_int":
        text = "a list of whole numbers >= 0, e.g. [160, 180]"
    elif kind == "pair":
        text = "two whole numbers [many, few] with many >= few >= 0, e.g. [100, 20]"
    elif kind == "source":
        text = "a path, a Hub id or a mapping"
    elif kind == "dict":
        text = "a mapping of method settings, e.g. {preset: paper}"
    elif kind == "bool_or_int":
        text = "false, true (16) or a whole number >= 0 (the Cutout size)"
    else:  # bool_or_str
        text = "true, false, an AutoAugment policy name (cifar10, imagenet, svhn) or rand-mM-nN (RandAugment)"
    return f"null or {text}" if nullable else text


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _valid(spec: tuple[str, Any, bool], v: Any) -> bool:
    kind, detail, nullable = spec
    if v is None:
        return nullable
    if kind == "int":
        return _is_int(v) and v >= detail
    if kind == "num":
        low, high, low_open, high_open = detail
        if not _is_num(v) or v < low or (low_open and v == low):
            return False
        return high is None or v < high or (v == high and not high_open)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "str":
        return isinstance(v, str)
    if kind == "name":
        return isinstance(v, str) and _SAFE_NAME.fullmatch(v) is not None
    if kind == "enum":
        return isinstance(v, str) and ((detail is _optimizers and v in _COMMON_OPTIMIZERS) or v in _choices(spec))
    if kind == "list_int":
        return isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)
    if kind == "pair":
        return isinstance(v, list) and len(v) == 2 and all(_is_int(x) and x >= 0 for x in v) and v[0] >= v[1]
    if kind == "source":
        return isinstance(v, (str, dict))
    if kind == "dict":
        return isinstance(v, dict)
    if kind == "bool_or_int":
        return isinstance(v, bool) or (_is_int(v) and v >= 0)
    return isinstance(v, (bool, str))  # bool_or_str


def _check_value(key: str, value: Any, where: str = "") -> None:
    spec = _SPEC.get(key)
    if spec is None or _valid(spec, value):
        return
    example = _flat_defaults().get(key)
    fix = ""
    if example is not None and spec[0] not in ("dict", "enum"):
        fix = f"; e.g. {key}={example if isinstance(example, str) else _yaml_text(example)}"
    close = ""
    if spec[0] == "enum" and isinstance(value, str):
        match = difflib.get_close_matches(value, _choices(spec), n=1)
        close = f"; did you mean {match[0]!r}?" if match else ""
    raise RecipeError(
        f"{where}{key}={_yaml_text(value)} is not valid: expected {_expected(spec)}{_HINTS.get(key, '')}{close or fix}"
    )


def _yaml_text(value: Any) -> str:
    if isinstance(value, (str, float)):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _flat_defaults() -> dict[str, Any]:
    return _flatten(DEFAULTS)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in _FREE:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_values(recipe: dict[str, Any], where: str = "") -> None:
    """Raise ``RecipeError`` naming the first key whose value has the wrong type or range."""
    for key, value in _flatten(recipe).items():
        _check_value(key, value, where)


# Where the data of the benchmarks that are not downloaded comes from (shown when data.source is missing).
_DATA_HELP = {
    "places_lt": (
        "IMAGE_ROOT:SPLIT_DIR",
        "IMAGE_ROOT holds the Places-365 images (Places365-Standard, http://places2.csail.mit.edu) and SPLIT_DIR "
        "the OLTR split files Places_LT_train.txt, Places_LT_test.txt (and Places_LT_val.txt, Places_LT_open.txt) "
        "from https://github.com/zhmiao/OpenLongTailRecognition-OLTR",
    ),
    "imagenet_lt": (
        "IMAGE_ROOT:SPLIT_DIR",
        "IMAGE_ROOT holds the ImageNet-2012 (ILSVRC2012) images and SPLIT_DIR the OLTR split files "
        "ImageNet_LT_train.txt, ImageNet_LT_test.txt (and ImageNet_LT_val.txt, ImageNet_LT_open.txt) from "
        "https://github.com/zhmiao/OpenLongTailRecognition-OLTR",
    ),
    "tinyimagenet_lt": (
        "IMAGE_ROOT:SPLIT_DIR",
        "IMAGE_ROOT holds the Tiny-ImageNet images (the images/ folder) and SPLIT_DIR TinyImageNet_LT_train.txt, "
        "TinyImageNet_LT_test.txt (and _val.txt, _open.txt, classes.txt), e.g. "
        "../shared/data/tinyimagenet_lt/images:../shared/data/tinyimagenet_lt",
    ),
    "inat2018": (
        "IMAGE_ROOT:ANNOTATION_DIR",
        "IMAGE_ROOT holds the iNaturalist 2018 images and ANNOTATION_DIR train2018.json and val2018.json, both "
        "from https://github.com/visipedia/inat_comp/tree/master/2018",
    ),
    "imagefolder": ("FOLDER", "FOLDER holds train/ and test/ with one sub-folder of images per class"),
    "parquet": ("FOLDER", "FOLDER holds train.parquet and test.parquet"),
}
_FIXED_IMBALANCE = ("imagenet_lt", "places_lt", "inat2018", "tinyimagenet_lt")
_DEFAULT_IMBALANCE = ("cifar10_lt", "cifar100_lt")  # imbalance_ratio null means 100 (the data layer's default)


def check_recipe(recipe: dict[str, Any]) -> None:
    """Everything about a recipe that can be checked before any work: value types and ranges, that the data
    is named, and combinations that cannot train. Raises ``RecipeError`` with the fix."""
    check_values(recipe)
    _check_method(recipe["method"])
    _check_stage_methods(recipe)
    d, s1, s2 = recipe["data"], recipe["stage1"], recipe["stage2"]
    if d["source"] is None and d["name"] in _DATA_HELP:
        form, where = _DATA_HELP[d["name"]]
        raise RecipeError(f"{d['name']} needs its data: set --set data.source={form} ({where})")
    if d["name"] in _FIXED_IMBALANCE and d["imbalance_ratio"] is not None:
        raise RecipeError(
            f"{d['name']}'s imbalance is fixed by its split files: remove data.imbalance_ratio "
            f"(or set data.imbalance_ratio=null)"
        )
    if d["max_count"] is not None and d["imbalance_ratio"] is None and d["name"] not in _DEFAULT_IMBALANCE:
        raise RecipeError(
            f"data.max_count={d['max_count']} sets the head class's size of the long-tailed profile, but "
            "data.imbalance_ratio is null (the training split is used as it is): set data.imbalance_ratio "
            "(e.g. 100), or remove data.max_count"
        )
    for stage, cfg in (("stage1", s1), ("stage2", s2)):
        # warm-up epoch e (0-based) runs at lr (e + 1) / W: W = 1 is no warm-up, W >= epochs never leaves it
        if cfg["epochs"] > 0 and cfg["warmup_epochs"] > 1 and cfg["warmup_epochs"] >= cfg["epochs"]:
            raise RecipeError(
                f"{stage}.warmup_epochs={cfg['warmup_epochs']} with {stage}.epochs={cfg['epochs']}: the warm-up "
                f"would take the whole stage (the full learning rate only in the last epoch, or never); set "
                f"{stage}.warmup_epochs < {cfg['epochs']}, e.g. {stage}.warmup_epochs={min(5, cfg['epochs'] // 10)}"
            )
    aa = d["autoaugment"]
    if isinstance(aa, str) and not re.fullmatch(r"cifar10|imagenet|svhn|rand-m(\d|10)-n[1-9]\d*", aa.lower()):
        raise RecipeError(
            f"data.autoaugment={aa!r}: use true, false, an AutoAugment policy (cifar10, imagenet, svhn) or "
            "rand-mM-nN (RandAugment: N ops of magnitude M out of 10, e.g. rand-m9-n2)"
        )
    if d["device_resident"] and d["num_workers"]:
        raise RecipeError("data.device_resident=true needs data.num_workers=0 (workers cannot share device tensors)")
    if s2["init"] and not (Path(str(s2["init"])).expanduser() / "model.safetensors").is_file():
        raise RecipeError(
            f"stage2.init={s2['init']}: no model.safetensors there; give a stage-1 checkpoint folder (RUN_DIR/stage1)"
        )
    file = recipe["model"]["pretrained_file"]
    if file and not (str(file).endswith(".safetensors") and Path(str(file)).expanduser().is_file()):
        raise RecipeError(f"model.pretrained_file={file}: expected an existing .safetensors file")
    trains_stage2 = s2["epochs"] > 0 and stage_methods(recipe)[1].get("name") != "none"
    if s1["epochs"] == 0 and not s2["init"]:
        if not trains_stage2:
            raise RecipeError("stage1.epochs=0 and no stage 2: nothing to train; set stage1.epochs >= 1")
        if not (recipe["model"]["pretrained"] or recipe["model"]["pretrained_file"]):
            raise RecipeError(
                "stage1.epochs=0 would re-train the classifier on a randomly initialised backbone: set "
                "stage1.epochs >= 1, or stage2.init=RUN_DIR/stage1 to start stage 2 from a trained stage 1"
            )


def list_recipes() -> list[str]:
    """Names of the shipped recipes (``ccsam_zoo/recipes/*.yaml``, or ``$CCSAM_RECIPES``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def _flat_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        keys.append(key)
        if isinstance(v, dict) and key not in _FREE:
            keys.extend(_flat_keys(v, key + "."))
    return keys


def _unknown_key(key: str) -> RecipeError:
    close = difflib.get_close_matches(key, _flat_keys(DEFAULTS), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    section = key.split(".")[0] if "." in key else ""
    if isinstance(DEFAULTS.get(section), dict):
        valid = f"keys of {section}: {', '.join(DEFAULTS[section])}"
    else:
        valid = f"top-level keys: {', '.join(DEFAULTS)}"
    return RecipeError(f"unknown recipe key '{key}'{hint} ({valid})")


def _merge(base: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in new.items():
        key = f"{prefix}{k}"
        if k not in out:
            if prefix[:-1] in _FREE:
                out[k] = v
                continue
            raise _unknown_key(key)
        if isinstance(out[k], dict) and key not in _FREE:
            if not isinstance(v, dict):
                raise RecipeError(f"recipe key '{key}' is a section; give '{key}.<name>=value'")
            out[k] = _merge(out[k], v, key + ".")
        else:
            out[k] = _coerce(key, copy.deepcopy(v))
    return out


def _coerce(key: str, value: Any) -> Any:
    """YAML 1.1 reads ``no`` as false: give the string back to keys whose choices include "no"."""
    spec = _SPEC.get(key)
    if spec is not None and spec[0] == "enum" and isinstance(value, bool) and not callable(spec[1]):
        word = {False: "no", True: "yes"}[value]
        if word in spec[1]:
            return word
    return value


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"cannot read recipe {path}: {err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = getattr(err, "context", None)
        raise RecipeError(
            f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")
            + "; fix the file (recipes are plain YAML mappings: key: value)"
        ) from None


def load_recipe(name_or_path: str | Path) -> dict[str, Any]:
    """Load a shipped recipe by name or a YAML file by path, merged over the schema's defaults."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = RECIPE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(str(name_or_path), list_recipes(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RecipeError(
            f"unknown recipe '{name_or_path}': not a shipped recipe nor a YAML file.{hint} "
            f"Shipped recipes: {', '.join(list_recipes())}"
        )
    if path.is_dir():
        raise RecipeError(f"recipe {path} is a folder; give a YAML file or a shipped recipe name")
    raw = _read_yaml(path)
    if raw is None:
        raise RecipeError(
            f"{path}: the recipe is empty (or only comments); write its settings (key: value), e.g. start from "
            "a shipped recipe: ccsam_zoo/recipes/quickstart.yaml"
        )
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{path}: a recipe must be a YAML mapping (key: value lines), got a {type(raw).__name__}"
        )
    recipe = _merge(DEFAULTS, raw)
    if recipe["name"] == "custom":  # named after the file, made a safe folder name
        recipe["name"] = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip(".-_")[:100] or "custom"
    _check_method(recipe["method"])
    check_values(recipe, where=f"{path}: ")
    return recipe


def _parse_value(text: str, key: str | None = None) -> Any:
    """A ``--set`` value: YAML, except that string keys keep the text as typed (``mixed_precision=no``)."""
    spec = _SPEC.get(key or "")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(
            f"--set {key}={text}: not a valid YAML value ({problem}); quote it or fix the brackets"
        ) from None
    if spec is not None and spec[0] in ("str", "enum", "source", "bool_or_str") and value is not None:
        if not isinstance(value, (str, dict, list)) and not (spec[0] == "bool_or_str" and isinstance(value, bool)):
            return text.strip()
    if isinstance(value, str):  # PyYAML reads 1e-2 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML: 1e-2, true, [160, 180], null).

    Each value is checked against the schema's type and range (``RecipeError`` naming the key and the fix).
    ``method=X`` is applied first and, when it changes the method, clears the recipe's
    ``stage1.method`` / ``stage2.method`` keys (they were written for the old method); other
    ``stage{1,2}.method.*`` overrides given alongside it still apply.
    """
    out = copy.deepcopy(recipe)
    overrides = sorted(overrides, key=lambda item: item.split("=", 1)[0].strip() != "method")
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override '{item}' must look like key=value, e.g. stage1.epochs=30")
        key, text = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        node, schema = out, DEFAULTS
        for i, part in enumerate(parts[:-1]):
            prefix = ".".join(parts[: i + 1])
            if part not in node or not isinstance(node[part], dict):
                raise _unknown_key(key)
            node = node[part]
            if prefix in _FREE:
                schema = None
                # free-form dict: create nested keys as given
                for rest in parts[i + 1 : -1]:
                    node = node.setdefault(rest, {})
                break
            schema = schema.get(part, {}) if isinstance(schema, dict) else None
        last = parts[-1]
        if schema is not None and last not in node:
            raise _unknown_key(key)
        if schema is not None and isinstance(node[last], dict) and key not in _FREE:
            raise RecipeError(f"recipe key '{key}' is a section; give '{key}.<name>=value'")
        value = _parse_value(text, key)
        _check_value(key, value)
        if parts == ["method"] and value != out["method"]:
            out["stage1"]["method"], out["stage2"]["method"] = {}, {}
        node[last] = value
    _check_method(out["method"])
    return out


def _check_method(method: str) -> None:
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), list(METHODS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"unknown method '{method}'.{hint} Valid methods: {', '.join(METHODS)}")


def _check_stage_methods(recipe: dict[str, Any]) -> None:
    """``stage1.method.*`` / ``stage2.method.*`` keys and values, checked by the method tables (no torch)."""
    from ..ccsam.presets import _STAGE1, _STAGE2, resolve_method

    resolved = []
    for (table, stage), cfg in zip(((_STAGE1, "stage-1"), (_STAGE2, "stage-2")), stage_methods(recipe)):
        try:
            resolved.append(resolve_method(table, stage, cfg, None))
        except ValueError as err:
            key = "stage1.method" if stage == "stage-1" else "stage2.method"
            raise RecipeError(f"{key}: {err}") from None
    if recipe["model"]["compile"] and resolved[0].get("mode") == "block":
        # block mode differentiates the clean graph once per class (autograd.grad, retain_graph=True), which a
        # compiled backward with donated buffers refuses; forced to allow it, it ran 2x slower than eager
        raise RecipeError(
            f"model.compile=true cannot train stage1.method.mode=block (method={recipe['method']}): its per-class "
            "gradients differentiate the clean pass once per class, which torch.compile's backward refuses; "
            "set model.compile=false (eager is the faster one for this step)"
        )


def stage_methods(recipe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage-1 and stage-2 method configs: the ``method`` preset, then the recipe's overrides."""
    s1, s2 = METHODS[recipe["method"]]
    s1 = {**s1, **recipe["stage1"]["method"]}
    s2 = {**s2, **recipe["stage2"]["method"]}
    return s1, s2


_SELECT_ON = ("last", "val")  # the last epoch, or the best validation epoch (the test split never selects)


def _check_selection(recipe: dict[str, Any]) -> None:
    """``eval.select_on=val`` needs a validation split and periodic evaluation; ``stage2.init_from=best`` needs
    ``select_on=val`` and its own stage 1."""
    ev, d, s2 = recipe["eval"], recipe["data"], recipe["stage2"]
    if ev["select_on"] == "val":
        if not d["val_per_class"] and d["name"] not in ("imagenet_lt", "places_lt"):
            raise RecipeError(
                "eval.select_on=val needs a validation split: set data.val_per_class=N (e.g. 100, with "
                "data.val_rule=left_out to keep the training subset as it is)"
            )
        if not ev["every"]:
            raise RecipeError("eval.select_on=val needs eval.every >= 1 (validate every N epochs)")
    if s2.get("init_from", "last") == "best":
        if ev["select_on"] != "val":
            raise RecipeError("stage2.init_from=best needs eval.select_on=val (the best stage-1 epoch on validation)")
        if s2["init"]:
            raise RecipeError("stage2.init names the stage-1 weights: drop stage2.init_from=best (or stage2.init)")


def resolve_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """Fill the method-dependent defaults (``model.head``, ``stage1.gamma``) and check method/recipe pairs.

    ``method=ldam_drw`` is kaidic/LDAM-DRW: the normalised (cosine) classifier and lr x0.01 at each milestone;
    a linear head is refused. Idempotent.
    """
    out = copy.deepcopy(recipe)
    ldam = out["method"] == "ldam_drw"
    if out["model"]["head"] is None:
        out["model"]["head"] = "cosine" if ldam else "linear"
    if out["stage1"]["gamma"] is None:
        out["stage1"]["gamma"] = 0.01 if ldam else 0.1
    if ldam and out["model"]["head"] != "cosine":
        raise RecipeError(
            f"method=ldam_drw needs the cosine head (kaidic/LDAM-DRW's NormedLinear), got model.head="
            f"{out['model']['head']!r}: remove that setting or set model.head=cosine"
        )
    if ldam and not str(out["model"]["arch"]).endswith("_cifar"):
        raise RecipeError(
            f"method=ldam_drw needs a cosine classifier, available on the CIFAR ResNets (*_cifar), not "
            f"model.arch={out['model']['arch']!r}"
        )
    if out["eval"]["select_on"] not in _SELECT_ON:
        raise RecipeError(
            f"eval.select_on={out['eval']['select_on']!r} is not implemented: use one of {_SELECT_ON} "
            "(the last epoch, or the best validation epoch; the test split is never used for selection)"
        )
    _check_selection(out)
    return out


# Keys a resumed run may change: where the data is read from, speed and bookkeeping; never the numbers.
RESUMABLE_KEYS = (
    "description",
    "data.source",
    "data.num_workers",
    "data.device_resident",
    "model.compile",
    "eval.batch_size",
    "train.log_every",
    "train.tracker",
    "train.checkpoint_every",
    "train.keep_checkpoints",
)


def recipe_differences(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = RESUMABLE_KEYS) -> list[str]:
    """``key: old -> new`` for every key where two recipes differ once resolved (method-dependent defaults
    filled, keys missing from an older recipe taken from the schema's defaults), except ``ignore``."""

    def flat(recipe: dict[str, Any]) -> dict[str, Any]:
        full = _merge(DEFAULTS, {k: v for k, v in recipe.items() if k in DEFAULTS})
        try:
            full = resolve_recipe(full)
        except RecipeError:
            pass
        return _flatten(full)

    a, b = flat(old), flat(new)
    return [
        f"{k}: {_yaml_text(a.get(k))} -> {_yaml_text(b.get(k))}"
        for k in sorted(a.keys() | b.keys(), key=list({**a, **b}).index)
        if a.get(k) != b.get(k) and k not in ignore
    ]


def save_recipe(recipe: dict[str, Any], path: Path) -> None:
    """Write the resolved recipe as YAML."""
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


# ------------------------------------------------------------------------------------------ the resolved recipe
def _frozen(value: Any) -> Any:
    """A read-only copy: mappings become ``MappingProxyType``, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def thawed(value: Any) -> Any:
    """A plain ``dict`` / ``list`` copy of a frozen recipe value (for YAML, JSON and the data/method builders)."""
    if isinstance(value, Mapping):
        return {k: thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thawed(v) for v in value]
    return value


@dataclass(frozen=True)
class Recipe:
    """A recipe checked and resolved once, at the door (``Recipe.build``), then only read: what the trainer
    gets. The top-level keys are typed fields; each section is a read-only mapping of the schema's keys
    (``recipe.stage1["lr"]``; ``recipe["stage1"]`` works too); lists are tuples. ``stage1_method`` /
    ``stage2_method`` are the methods' configs (the ``method`` preset with the recipe's overrides), resolved
    once. ``to_dict()`` is the plain form that ``recipe.yaml``, checkpoints and resume comparisons use."""

    name: str
    description: str | None
    seed: int
    method: str
    model: Mapping[str, Any]
    data: Mapping[str, Any]
    stage1: Mapping[str, Any]
    stage2: Mapping[str, Any]
    eval: Mapping[str, Any]
    train: Mapping[str, Any]
    stage1_method: Mapping[str, Any]
    stage2_method: Mapping[str, Any]

    @classmethod
    def build(cls, recipe: Mapping[str, Any]) -> Recipe:
        """Check (``check_recipe``: types, ranges, combinations) and resolve (``resolve_recipe``) a recipe
        dict as ``load_recipe`` / ``apply_overrides`` return it; ``RecipeError`` with the fix."""
        if isinstance(recipe, Recipe):
            return recipe
        plain = thawed(recipe)
        check_recipe(plain)
        resolved = resolve_recipe(plain)
        s1, s2 = stage_methods(resolved)
        return cls(
            **{k: _frozen(resolved[k]) for k in DEFAULTS},
            stage1_method=_frozen(s1),
            stage2_method=_frozen(s2),
        )

    def __getitem__(self, key: str) -> Any:
        if key not in DEFAULTS:
            raise KeyError(key)
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe as plain dicts and lists (a fresh copy)."""
        return {k: thawed(getattr(self, k)) for k in DEFAULTS}

    def stage_method(self, stage: str) -> dict[str, Any]:
        """``stage1_method`` / ``stage2_method`` as a plain dict (a fresh copy) for the method builders."""
        return thawed(self.stage1_method if stage == "stage1" else self.stage2_method)
