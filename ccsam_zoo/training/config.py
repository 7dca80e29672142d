"""Recipes: YAML files with a fixed schema, dotted ``--set`` overrides and a saved resolved copy."""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from ..ccsam.presets import METHODS

__all__ = [
    "RECIPE_DIR",
    "METHODS",
    "RecipeError",
    "list_recipes",
    "load_recipe",
    "apply_overrides",
    "stage_methods",
    "save_recipe",
    "resolve_recipe",
]

RECIPE_DIR = Path(os.environ.get("CCSAM_RECIPES", Path(__file__).resolve().parents[2] / "recipes"))

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


def list_recipes() -> list[str]:
    """Names of the recipes shipped in ``recipes/``."""
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
    return RecipeError(f"unknown recipe key '{key}'{hint} (valid keys: see recipes/README.md)")


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
            out[k] = copy.deepcopy(v)
    return out


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
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping")
    recipe = _merge(DEFAULTS, raw)
    recipe.setdefault("name", path.stem)
    if recipe["name"] == "custom":
        recipe["name"] = path.stem
    _check_method(recipe["method"])
    return recipe


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text) if text != "" else ""
    if isinstance(value, str):  # PyYAML reads 1e-2 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML: 1e-2, true, [160, 180], null).

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
        parts = key.strip().split(".")
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
        value = _parse_value(text)
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


def stage_methods(recipe: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stage-1 and stage-2 method configs: the ``method`` preset, then the recipe's overrides."""
    s1, s2 = METHODS[recipe["method"]]
    s1 = {**s1, **recipe["stage1"]["method"]}
    s2 = {**s2, **recipe["stage2"]["method"]}
    return s1, s2


_SELECT_ON = ("last",)  # model selection: the last epoch (the test split is never used to select)


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
            "(the last epoch; the test split is never used for selection)"
        )
    return out


def save_recipe(recipe: dict[str, Any], path: Path) -> None:
    """Write the resolved recipe as YAML."""
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
