"""The long-tailed subset rule a model's recipe recorded, as ``build_benchmark`` keyword arguments.

A data fingerprint covers the data copy (its files), the subset rule (imbalance ratio, per-class profile and
maximum, which images: ``selection`` and its ``seed``, the validation split) and the image size. Rebuilding a
model's benchmark with the rule its recipe recorded (``ccsam_zoo.json`` -> ``recipe.data``) from the same copy
gives the fingerprint its card shows; ``ccsam-zoo evaluate`` and the bench scripts that calibrate or select
shipped models do this. Importable without torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SUBSET_KEYS", "recorded_subset_rule"]

# build_benchmark keyword -> default when the recipe does not say (build_benchmark's own defaults).
SUBSET_KEYS: dict[str, Any] = {
    "imbalance_ratio": None,
    "max_count": None,
    "profile": "exp",
    "selection": "first",
    "seed": 0,
    "val_per_class": 0,
    "val_rule": "fill",
    "shot_thresholds": (100, 20),
    "shot_rule": "paper",
}


def recorded_subset_rule(recipe: Any, benchmark: str | None = None) -> dict[str, Any]:
    """``build_benchmark`` keyword arguments of the subset rule in ``recipe["data"]`` (a resolved recipe, e.g.
    ``clf.meta["recipe"]``), with build_benchmark's defaults for what it leaves out.

    Returns ``{}`` when the recipe records no data section, or records another benchmark than ``benchmark``
    (the rule of CIFAR-10-LT says nothing about another data set).
    """
    data = recipe.get("data") if isinstance(recipe, dict) else None
    if not isinstance(data, dict) or not data:
        return {}
    if benchmark is not None and data.get("name") not in (None, benchmark):
        return {}
    out = {key: default if data.get(key) is None else data[key] for key, default in SUBSET_KEYS.items()}
    out["shot_thresholds"] = tuple(int(x) for x in out["shot_thresholds"])
    return out
