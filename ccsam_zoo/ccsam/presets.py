"""Every method's settings in one place: the stage-1 / stage-2 method tables with their presets, their
validation, and the recipe-level ``method`` names (``METHODS``) that select both stages.

``stage1_defaults(name, preset)`` / ``stage2_defaults(...)`` list every key with its default. The official
presets follow the authors' CIFAR code (zzpustc/CC-SAM, file and line in docs/ALGORITHM_OPTIONS.md); the
paper presets follow Eq. 8-14 as written.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any

__all__ = [
    "ADV_NORMS",
    "KINDS",
    "METHODS",
    "NORMS",
    "STAGE1_METHODS",
    "STAGE2_METHODS",
    "resolve_method",
    "stage1_defaults",
    "stage2_defaults",
]

NORMS = ("per_tensor", "global")  # Eq. 8-9 gradient norm: per tensor (authors) or one global norm (paper)
# Eq. 9, the Table 2 "dir" / "mag" ablations, and "radius": SAM's step with Eq. 8's class dependence (block mode)
KINDS = ("ccsam", "direction", "magnitude", "radius")
ADV_NORMS = ("class", "batch", "sample")  # Eq. 12 normalisation: authors' per class, paper's batch, per sample

STAGE1_METHODS = ("ce", "sam", "balanced_softmax", "ldam_drw", "mixup", "ccsam")
STAGE2_METHODS = ("crt", "ccsam_adv", "none")

# open-set training options without outside images (ce, mixup, ccsam): outlier exposure (Hendrycks et al. 2019)
# on patch-shuffled training images, off by default (their code's weight: 0.5)
_OPEN_SET: dict[str, Any] = {"oe_weight": 0.0, "oe_fraction": 0.5, "oe_grid": 4}
_CCSAM_COMMON: dict[str, Any] = {
    "mode": "head",
    "blocks": 0,
    "params": None,
    "block_batch": "full",
    "groups": None,
    "max_ratio": None,
    "perturbation": "ccsam",
    "perturbed_targets": "first_label",
    "tau": 0.0,
    "global_stats": True,
    "eps": 1e-12,
    "logit_norm_tau": None,
    **_OPEN_SET,
}
_STAGE1: dict[str, dict[str | None, dict[str, Any]]] = {
    # logit_norm_tau: LogitNorm (Wei et al. 2022), CE on logits / (tau ||logits||); None = plain CE
    "ce": {None: {"logit_norm_tau": None, **_OPEN_SET}},
    "sam": {None: {"rho": 0.05, "adaptive": False, "global_stats": True}},
    "balanced_softmax": {None: {"tau": 1.0}},
    # kaidic/LDAM-DRW: drw_epoch None = 80% of the stage's epochs (160 of 200)
    "ldam_drw": {None: {"max_m": 0.5, "s": 30.0, "drw_epoch": None, "beta": 0.9999}},
    "mixup": {None: {"alpha": 1.0, "logit_norm_tau": None, **_OPEN_SET}},
    "ccsam": {
        # authors' CIFAR configs; flat_ratio None = 0.3 for <= 10 classes (CIFAR-10), else 0.5 (CIFAR-100)
        # g_c from the MIXED loss of each first-label class (train_cifar.py: torch.autograd.grad(loss_ori[idx]
        # .mean()) with loss_ori = mixup_criterion), the perturbed term plain CE on the first label
        "official": {"scale": 1e-6, "norm": "per_tensor", "flat_ratio": None, "class_weighting": "instance",
                     "mixup_alpha": 1.0, **_CCSAM_COMMON, "grad_targets": "mixed"},
        # Eq. 8-11 as written: s = 1, one gradient norm, pure perturbed objective, classes weighted equally
        "paper": {"scale": 1.0, "norm": "global", "flat_ratio": 1.0, "class_weighting": "class",
                  "mixup_alpha": 0.0, **_CCSAM_COMMON, "grad_targets": "first_label"},
        # a perturbation that acts (issue 22): SAM's step rho g_c / ||g_c|| (scale = rho) scaled per class by
        # Eq. 8's (n_c - 1)^(-1/4) (normalised to 1 at the geometric mean count), on the last stage and the head
        # (ResNet-32: layer3 + fc, 76% of the weights; params="." = the whole network), true per-class
        # gradients, the pure perturbed objective averaged over samples as plain SAM's, no mixup
        "block": {"scale": 0.1, "norm": "global", "flat_ratio": 1.0, "class_weighting": "instance",
                  "mixup_alpha": 0.0, **_CCSAM_COMMON, "mode": "block", "params": r"^(layer3|fc)\.",
                  "perturbation": "radius", "grad_targets": "first_label"},
    },
}
_STAGE2: dict[str, dict[str | None, dict[str, Any]]] = {
    "none": {None: {}},
    # Kang et al. (ICLR 2020): re-initialise the classifier, then class-balanced re-training (reinit=False keeps
    # the stage-1 classifier: "cRT without re-initialisation")
    "crt": {None: {"bn": "eval", "reinit": True, "logit_norm_tau": None}},
    "ccsam_adv": {
        # authors' code; up_limit None = 1.0 for <= 10 classes (CIFAR-10), else 0.3 (CIFAR-100)
        "official": {"adv_lambda": 1.0, "adv_norm": "class", "class_weight": "log", "div": 2.0,
                     "weight_loss": True, "up_limit": None, "bn": "train", "global_stats": True,
                     "logit_norm_tau": None},
        # Eq. 12-14 as written (unweighted, one gradient norm over the batch), frozen BatchNorm
        "paper": {"adv_lambda": 1.0, "adv_norm": "batch", "class_weight": "none", "div": 2.0,
                  "weight_loss": False, "up_limit": 1.0, "bn": "eval", "global_stats": True, "logit_norm_tau": None},
    },
}
_DEFAULT_PRESET = {"ccsam": "official", "ccsam_adv": "official"}
_CHOICES = {
    "norm": NORMS,
    "class_weighting": ("instance", "class"),
    "mode": ("head", "block"),
    "block_batch": ("full", "class"),
    "perturbation": KINDS,
    "perturbed_targets": ("first_label", "mixed"),
    "grad_targets": ("first_label", "mixed"),
    "adv_norm": ADV_NORMS,
    "class_weight": ("none", "log"),
    "bn": ("train", "eval"),
}
_NULLABLE = {"max_ratio", "params", "groups", "flat_ratio", "up_limit", "drw_epoch", "logit_norm_tau"}
_TYPES = {"params": str, "groups": int, "flat_ratio": float, "up_limit": float, "max_ratio": float, "drw_epoch": int,
          "logit_norm_tau": float}
# Ranges of the numeric keys (checked before any work): (low, high, low exclusive, high exclusive); every other
# number must be finite and >= 0 (a negative scale, rho, alpha, margin, ... cannot train).
_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    "flat_ratio": (0.0, 1.0, False, False),  # a mix of two losses
    "beta": (0.0, 1.0, False, True),  # effective number (1 - beta^n) / (1 - beta)
    "div": (0.0, None, True, False),  # a divisor
    "s": (0.0, None, True, False),  # LDAM's logit scale
    "eps": (0.0, None, True, False),  # a guard against division by zero
    "groups": (1.0, None, False, False),
    "max_ratio": (0.0, None, True, False),
    "logit_norm_tau": (0.0, None, True, False),  # LogitNorm's temperature (e.g. 0.04)
    "oe_fraction": (0.0, 1.0, True, False),  # the share of the batch patch-shuffled into outliers
    "oe_grid": (2.0, None, False, False),  # patches per side (it must divide the image size)
}
# What a number means, said in its range error where a bare interval would not tell the user enough.
_RANGE_HINTS = {
    "logit_norm_tau": "LogitNorm's temperature, e.g. 0.04",
    "oe_weight": "0 = off; 0.5 = Hendrycks et al.",
    "oe_fraction": "the share of the batch patch-shuffled into outliers",
    "oe_grid": "patches per side; it must divide the image size",
}


def _closest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {near[0]!r}?" if near else ""


def _check_value(method: str, key: str, value: Any, default: Any) -> None:
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ValueError(f"{method}: {key} must be one of {_CHOICES[key]}, got {value!r}")
        return
    if value is None:
        if key not in _NULLABLE:
            raise ValueError(f"{method}: {key} may not be None")
        return
    kind = _TYPES.get(key, type(default))
    ok = (
        isinstance(value, bool) if kind is bool
        else isinstance(value, int) and not isinstance(value, bool) if kind is int
        else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
        else isinstance(value, kind)
    )
    if not ok:
        hint = " (YAML reads 1e-6 as a string: write 1.0e-6)" if isinstance(value, str) else ""
        raise ValueError(f"{method}: {key} must be {kind.__name__}, got {value!r}{hint}")
    if kind in (int, float):
        low, high, low_open, high_open = _RANGES.get(key, (0.0, None, False, False))
        bad = not math.isfinite(value) or value < low or (low_open and value == low)
        bad = bad or (high is not None and (value > high or (high_open and value == high)))
        if bad:
            text = f"{'>' if low_open else '>='} {low:g}" + (
                f" and {'<' if high_open else '<='} {high:g}" if high is not None else ""
            )
            hint = f" ({_RANGE_HINTS[key]})" if key in _RANGE_HINTS else ""
            raise ValueError(f"{method}: {key} must be a finite number {text}{hint}, got {value!r}")


def resolve_method(table: dict, stage: str, cfg: dict[str, Any], num_classes: int | None) -> dict[str, Any]:
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError(f"{stage} cfg needs a 'name' (one of {tuple(table)})")
    name = cfg.pop("name")
    if name not in table:
        raise ValueError(f"unknown {stage} method {name!r}{_closest(str(name), list(table))} (valid: {tuple(table)})")
    presets = table[name]
    preset = cfg.pop("preset", _DEFAULT_PRESET.get(name))
    if preset not in presets:
        if None in presets:
            raise ValueError(f"{stage} method {name!r} has no presets (got preset={preset!r})")
        raise ValueError(f"{name}: unknown preset {preset!r}{_closest(str(preset), list(presets))}")
    merged = copy.deepcopy(presets[preset])
    for key, value in cfg.items():
        if key not in merged:
            valid = ["name", *(["preset"] if None not in presets else []), *merged]
            raise ValueError(f"{name}: unknown cfg key {key!r}{_closest(key, valid)} (valid keys: {valid})")
        _check_value(name, key, value, merged[key])
        merged[key] = value
    if num_classes is not None:
        auto = {"flat_ratio": (0.3, 0.5), "up_limit": (1.0, 0.3)}
        for key, (small, large) in auto.items():
            if key in merged and merged[key] is None:
                merged[key] = small if num_classes <= 10 else large
    out = {"name": name}
    if preset is not None:
        out["preset"] = preset
    return out | merged


def stage1_defaults(name: str, preset: str | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """The full stage-1 cfg of ``name`` (with ``preset``): every valid key and its default.

    Without ``num_classes``, ``flat_ratio`` of the "official" preset stays None (resolved at build time:
    0.3 for <= 10 classes, 0.5 otherwise).
    """
    cfg = {"name": name} | ({"preset": preset} if preset is not None else {})
    return resolve_method(_STAGE1, "stage-1", cfg, num_classes)


def stage2_defaults(name: str, preset: str | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """The full stage-2 cfg of ``name`` (``up_limit`` None in "official" = 1.0 for <= 10 classes, else 0.3)."""
    cfg = {"name": name} | ({"preset": preset} if preset is not None else {})
    return resolve_method(_STAGE2, "stage-2", cfg, num_classes)


# The recipe's ``method``: one name selecting both stages; ``stage{1,2}.method`` dicts override single keys.
METHODS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ccsam": ({"name": "ccsam", "preset": "official"}, {"name": "ccsam_adv", "preset": "official"}),
    "ccsam_paper": ({"name": "ccsam", "preset": "paper"}, {"name": "ccsam_adv", "preset": "paper"}),
    # issue 22: the class-conditional perturbation at SAM's size over the last stage + head (stage1 "block"
    # preset; stage1.method.scale is the radius rho), the paper's stage 2; compare with method=sam at the same rho
    "ccsam_block": ({"name": "ccsam", "preset": "block"}, {"name": "ccsam_adv", "preset": "paper"}),
    # the official stage 1 with a perturbation that is not numerically inert (s = 1e-2: ||eps_c|| ~ 0.5% of ||w||),
    # the paper's stage 2; on the full CIFAR-10-LT protocol s = 1e-2 cost 1.1 points against the authors' 1e-6
    # (docs/RESULTS.md section 0: the shipped ccsam-cifar10-lt is method=ccsam with stage2.method.preset=paper)
    "ccsam_rec": ({"name": "ccsam", "preset": "official", "scale": 1e-2}, {"name": "ccsam_adv", "preset": "paper"}),
    # paper Table 2 ablations: recommended direction with unit magnitude / Eq. 8 magnitude, random direction
    "ccsam_dir": (
        {"name": "ccsam", "preset": "official", "perturbation": "direction", "scale": 1.0},
        {"name": "crt"},
    ),
    "ccsam_mag": (
        {"name": "ccsam", "preset": "official", "perturbation": "magnitude", "scale": 1.0},
        {"name": "crt"},
    ),
    "ce": ({"name": "ce"}, {"name": "crt"}),
    "sam": ({"name": "sam"}, {"name": "crt"}),
    "balanced_softmax": ({"name": "balanced_softmax"}, {"name": "crt"}),
    # kaidic/LDAM-DRW: cosine head, lr x0.01 at each milestone, DRW, no re-training stage (resolve_recipe)
    "ldam_drw": ({"name": "ldam_drw"}, {"name": "none"}),
    "mixup_crt": ({"name": "mixup"}, {"name": "crt"}),
}
