"""Stage-1 / stage-2 training methods (CC-SAM and baselines) behind one small trainer contract.

``method = build_stage1(cfg, class_counts)``; ``method.set_epoch(epoch, total_epochs)`` (0-based epoch);
``method.forward_backward(net, images, labels, accelerator) -> dict[str, Tensor]`` runs the forward
pass(es) and backward pass(es) (``accelerator.backward``) and leaves gradients in ``.grad``; the trainer
steps the optimizer. ``net`` is the (prepared) ``FeaturesAndLogits``; ``accelerator`` may be None (plain
PyTorch, one process). Returned values are detached scalars: always ``loss`` (the objective that was
differentiated) and ``acc`` (top-1 of the clean logits; lam-weighted under mixup), plus per method
``loss_clean``, ``loss_perturbed``, ``eps_ratio`` (mean ||eps_c|| / ||w||), ``loss_adv``, ``adv_weight``.
Methods also carry ``name``, ``cfg`` (resolved), ``sampler`` ("shuffle" / "class_balanced": the data order
they assume) and ``active`` (False for stage-2 ``none``: skip the stage).

cfg keys (``stage1_defaults`` / ``stage2_defaults`` list them with their defaults):

* ``ce``; ``sam``: rho, adaptive (ASAM), global_stats; ``balanced_softmax``: tau (1 = Balanced Softmax);
  ``ldam_drw``: max_m, s, drw_epoch (0-based first DRW epoch, None = 80% of the stage), beta; ``mixup``: alpha.
* ``ccsam`` (presets "official" (default) / "paper"): scale (s of Eq. 8), norm ("per_tensor" | "global"),
  flat_ratio (None = 0.3 for <= 10 classes else 0.5), class_weighting ("instance" | "class"), mixup_alpha
  (0 = off), grad_targets (the loss whose class gradient is g_c: "mixed" = the mixup loss, authors;
  "first_label"), perturbed_targets ("first_label" | "mixed"), mode ("head" | "block"), blocks (last N timm blocks
  + head, block mode), params (regex instead of blocks), block_batch ("full" | "class"), groups (frequency
  groups instead of classes, block mode), max_ratio (cap on ||eps_c|| / ||w||, None = none), perturbation
  ("ccsam" | "direction" | "magnitude"), tau (logit adjustment of both terms, 0 = plain CE), global_stats
  (class statistics from the global batch under data parallelism), eps (gradient-norm floor).
* stage 2: ``crt``: bn ("eval" | "train"), reinit (re-initialise the classifier first: Kang et al.); ``none``;
  ``ccsam_adv`` (presets "official" (default) / "paper"):
  adv_lambda, adv_norm ("class" | "batch" | "sample"), class_weight ("log" | "none"), div, weight_loss,
  up_limit (None = 1.0 for <= 10 classes else 0.3), bn, global_stats.

Data parallelism (``global_stats=True``): head mode gathers z, r and labels (padded, uneven batches fine) so
every process uses the global-batch eps_c; per-sample loss weights are scaled so that DDP's gradient mean is
the global objective. Block mode and SAM run their passes under ``no_sync`` and all-reduce: class-sum
gradients (exact global class means), then all gradients (mean). Exact = identical to one process on the
global batch whenever each sample's loss does not depend on the other samples (no train-mode BatchNorm; with
BatchNorm every process normalises with its own batch, as plain DDP does). Stage 2 reduces its norms too.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.heads import NormedLinear, linear_head_params
from . import _dist
from .adversarial import ADV_NORMS, adversarial_class_weights, adversarial_features, progressive_weight
from .block import (
    TrunkCache,
    class_gradients,
    class_perturbations,
    frequency_groups,
    sam_perturbation,
    select_params,
)
from .head import head_perturbation
from .losses import as_float, drw_weights, ldam_logits, ldam_margins, log_prior, mixup, soft_cross_entropy
from .perturbation import KINDS, NORMS

__all__ = [
    "STAGE1_METHODS",
    "STAGE2_METHODS",
    "Stage1Method",
    "Stage2Method",
    "build_stage1",
    "build_stage2",
    "stage1_defaults",
    "stage2_defaults",
]

STAGE1_METHODS = ("ce", "sam", "balanced_softmax", "ldam_drw", "mixup", "ccsam")
STAGE2_METHODS = ("crt", "ccsam_adv", "none")

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
}
_STAGE1: dict[str, dict[str | None, dict[str, Any]]] = {
    "ce": {None: {}},
    "sam": {None: {"rho": 0.05, "adaptive": False, "global_stats": True}},
    "balanced_softmax": {None: {"tau": 1.0}},
    # kaidic/LDAM-DRW: drw_epoch None = 80% of the stage's epochs (160 of 200)
    "ldam_drw": {None: {"max_m": 0.5, "s": 30.0, "drw_epoch": None, "beta": 0.9999}},
    "mixup": {None: {"alpha": 1.0}},
    "ccsam": {
        # authors' CIFAR configs; flat_ratio None = 0.3 for <= 10 classes (CIFAR-10), else 0.5 (CIFAR-100)
        # g_c from the MIXED loss of each first-label class (train_cifar.py: torch.autograd.grad(loss_ori[idx]
        # .mean()) with loss_ori = mixup_criterion), the perturbed term plain CE on the first label
        "official": {"scale": 1e-6, "norm": "per_tensor", "flat_ratio": None, "class_weighting": "instance",
                     "mixup_alpha": 1.0, **_CCSAM_COMMON, "grad_targets": "mixed"},
        # Eq. 8-11 as written: s = 1, one gradient norm, pure perturbed objective, classes weighted equally
        "paper": {"scale": 1.0, "norm": "global", "flat_ratio": 1.0, "class_weighting": "class",
                  "mixup_alpha": 0.0, **_CCSAM_COMMON, "grad_targets": "first_label"},
    },
}
_STAGE2: dict[str, dict[str | None, dict[str, Any]]] = {
    "none": {None: {}},
    # Kang et al. (ICLR 2020): re-initialise the classifier, then class-balanced re-training (reinit=False keeps
    # the stage-1 classifier: "cRT without re-initialisation")
    "crt": {None: {"bn": "eval", "reinit": True}},
    "ccsam_adv": {
        # authors' code; up_limit None = 1.0 for <= 10 classes (CIFAR-10), else 0.3 (CIFAR-100)
        "official": {"adv_lambda": 1.0, "adv_norm": "class", "class_weight": "log", "div": 2.0,
                     "weight_loss": True, "up_limit": None, "bn": "train", "global_stats": True},
        # Eq. 12-14 as written (unweighted, one gradient norm over the batch), frozen BatchNorm
        "paper": {"adv_lambda": 1.0, "adv_norm": "batch", "class_weight": "none", "div": 2.0,
                  "weight_loss": False, "up_limit": 1.0, "bn": "eval", "global_stats": True},
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
_NULLABLE = {"max_ratio", "params", "groups", "flat_ratio", "up_limit", "drw_epoch"}
_TYPES = {"params": str, "groups": int, "flat_ratio": float, "up_limit": float, "max_ratio": float, "drw_epoch": int}


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


def _resolve(table: dict, stage: str, cfg: dict[str, Any], num_classes: int | None) -> dict[str, Any]:
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
    return _resolve(_STAGE1, "stage-1", cfg, num_classes)


def stage2_defaults(name: str, preset: str | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """The full stage-2 cfg of ``name`` (``up_limit`` None in "official" = 1.0 for <= 10 classes, else 0.3)."""
    cfg = {"name": name} | ({"preset": preset} if preset is not None else {})
    return _resolve(_STAGE2, "stage-2", cfg, num_classes)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == labels).float().mean()


def _sample_weights(
    labels: torch.Tensor, num_classes: int, weighting: str, accelerator: Any, global_stats: bool
) -> torch.Tensor:
    """Per-sample loss weights such that sum_i w_i l_i, averaged over processes (DDP), is the objective
    over the global batch: "instance" = mean over samples; "class" = mean over the P classes present of the
    class-mean losses (Eq. 10-11 sum over classes, divided by P to keep the gradient scale of a mean loss)."""
    counts = torch.bincount(labels, minlength=num_classes).double()
    world = 1
    if global_stats and _dist.world_size(accelerator) > 1:
        counts = _dist.all_reduce_sum(counts, accelerator)
        world = _dist.world_size(accelerator)
    if weighting == "instance":
        return torch.full(labels.shape, world / counts.sum().item(), dtype=torch.float64, device=labels.device)
    present = (counts > 0).sum()
    return world / (counts[labels] * present)


def _weighted(weights: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
    return (weights.to(losses.dtype) * losses).sum()


def _set_bn_eval(base: nn.Module) -> None:
    head_mods = set(map(id, base.head.modules())) if isinstance(base.head, nn.Module) else set()
    for m in base.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_mods:
            m.eval()


class _Method:
    """Shared state: resolved ``cfg``, training ``class_counts``, the epoch."""

    name = "method"
    sampler = "shuffle"  # the data order the method expects: "shuffle" or "class_balanced"
    active = True

    def __init__(self, cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> None:
        self.cfg = cfg
        self.class_counts = torch.as_tensor(class_counts, dtype=torch.long).cpu()
        if self.class_counts.dim() != 1 or (self.class_counts <= 0).any():
            raise ValueError("class_counts must be a list of positive training counts, one per class")
        self.num_classes = int(self.class_counts.numel())
        self.epoch, self.total_epochs = 0, 1

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """``epoch`` is 0-based (0 .. total_epochs - 1)."""
        self.epoch, self.total_epochs = int(epoch), int(total_epochs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg})"


class Stage1Method(_Method):
    """Plain cross-entropy (``ce``); the other stage-1 methods override ``loss`` or ``forward_backward``."""

    name = "ce"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, net: nn.Module, accelerator: Any) -> torch.Tensor:
        return F.cross_entropy(as_float(logits), labels)

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        _, logits = net(images)
        loss = self.loss(logits, labels, net, accelerator)
        _dist.backward(loss, accelerator)
        return {"loss": loss.detach(), "acc": _accuracy(logits, labels)}


class BalancedSoftmax(Stage1Method):
    """Logit-adjusted CE ``CE(logits + tau log prior)``; ``tau = 1`` is Balanced Softmax."""

    name = "balanced_softmax"

    def __init__(self, cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> None:
        super().__init__(cfg, class_counts)
        self.adjustment = log_prior(self.class_counts, cfg["tau"])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, net: nn.Module, accelerator: Any) -> torch.Tensor:
        x = as_float(logits)
        return F.cross_entropy(x + self.adjustment.to(x), labels)


class LDAMDRW(Stage1Method):
    """LDAM-DRW (kaidic/LDAM-DRW): margins ``max_m * n_c^(-1/4) / max_j n_j^(-1/4)``, ``CE(s (x - m_y), weight=DRW)``.

    ``x`` is the cosine ``logits / head.scale`` of a ``NormedLinear`` head (LDAM always uses its normalised
    classifier; a linear head is refused). DRW: effective-number weights (``beta``) from epoch ``drw_epoch``
    (0-based) on, uniform before.
    """

    name = "ldam_drw"

    def __init__(self, cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> None:
        super().__init__(cfg, class_counts)
        self.margins = ldam_margins(self.class_counts, cfg["max_m"])
        self.weights: torch.Tensor | None = None

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        super().set_epoch(epoch, total_epochs)
        self.weights = drw_weights(self.class_counts, self.cfg["beta"]) if epoch >= self.drw_epoch else None

    @property
    def drw_epoch(self) -> int:
        """First 0-based DRW epoch: ``drw_epoch``, or 80% of the stage (kaidic: 160 of 200) when None."""
        given = self.cfg["drw_epoch"]
        return int(given) if given is not None else round(0.8 * self.total_epochs)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, net: nn.Module, accelerator: Any) -> torch.Tensor:
        head = _dist.unwrap(net, accelerator).head
        if not isinstance(head, NormedLinear):
            raise ValueError(
                f"ldam_drw needs the normalised (cosine) classifier of kaidic/LDAM-DRW, got {type(head).__name__}: "
                "set model.head=cosine (the recipe default for method=ldam_drw)"
            )
        x = as_float(logits) / head.scale  # the cosine
        out = ldam_logits(x, labels, self.margins, self.cfg["s"])
        w = None if self.weights is None else self.weights.to(out)
        return F.cross_entropy(out, labels, weight=w)


class Mixup(Stage1Method):
    """Mixup with ``lam ~ Beta(alpha, alpha)``; ``acc = lam acc(y_a) + (1 - lam) acc(y_b)``."""

    name = "mixup"

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        x, targets, y_a, y_b, lam = mixup(images, labels, self.cfg["alpha"], self.num_classes)
        _, logits = net(x)
        loss = soft_cross_entropy(logits, targets, "mean")
        _dist.backward(loss, accelerator)
        acc = lam * _accuracy(logits, y_a) + (1 - lam) * _accuracy(logits, y_b)
        return {"loss": loss.detach(), "acc": acc}


class SAM(Stage1Method):
    """SAM / ASAM on all trainable parameters: ascent pass (``autograd.grad``, inside DDP ``no_sync``;
    with ``global_stats`` the ascent gradient is averaged over processes = SAM on the global batch, else
    per-process m-sharpness), descent pass at ``w + eps`` (DDP-synchronised backward), restore ``w``.
    BatchNorm running statistics are updated by the first pass only."""

    name = "sam"

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        base = _dist.unwrap(net, accelerator)
        params = [p for p in base.parameters() if p.requires_grad]
        with _dist.no_sync(net, accelerator):
            _, logits = net(images)
            clean = F.cross_entropy(as_float(logits), labels)
            # the ascent direction is normalised: the fp16 loss scale (against underflow) cancels
            grads = torch.autograd.grad(clean * _dist.grad_scale(accelerator), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        world = _dist.world_size(accelerator)
        if self.cfg["global_stats"] and world > 1:
            flat = _dist.all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]), accelerator) / world
            grads = list(torch.split(flat, [p.numel() for p in params]))
            grads = [g.view_as(p) for g, p in zip(grads, params)]
        eps = sam_perturbation(grads, params, self.cfg["rho"], self.cfg["adaptive"])
        saved = [p.detach().clone() for p in params]
        try:
            with torch.no_grad():
                for p, e in zip(params, eps):
                    p.add_(e.to(p.dtype))
            with _dist.frozen_bn_stats(base):
                _, logits2 = net(images)
                loss = F.cross_entropy(as_float(logits2), labels)
                _dist.backward(loss, accelerator)
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)
        return {"loss": loss.detach(), "loss_clean": clean.detach(), "acc": _accuracy(logits, labels)}


class CCSAM(Stage1Method):
    """Class-conditional SAM (Eq. 8-11); see ``stage1_defaults("ccsam", preset)`` for the keys.

    loss = (1 - flat_ratio) sum_i v_i l_i(w) + flat_ratio sum_i v_i l_i(w + eps_{y_i}), v from
    ``class_weighting``. ``mode="head"``: closed form, one forward + one backward. ``mode="block"``:
    true per-class gradients of the head plus the last ``blocks`` blocks (or ``params`` regex).
    """

    name = "ccsam"

    def __init__(self, cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> None:
        super().__init__(cfg, class_counts)
        if cfg["mode"] == "head" and (cfg["groups"] is not None or cfg["blocks"] or cfg["params"]):
            raise ValueError("ccsam: 'groups', 'blocks' and 'params' apply to mode='block' only")
        if cfg["blocks"] and cfg["params"]:
            raise ValueError("ccsam: give either 'blocks' (head + last N blocks) or 'params' (a regex), not both")
        if not 0.0 <= cfg["flat_ratio"] <= 1.0:
            raise ValueError(f"ccsam: flat_ratio must be in [0, 1], got {cfg['flat_ratio']}")
        self.adjustment = log_prior(self.class_counts, cfg["tau"]) if cfg["tau"] else None
        self.group_of, self.group_counts = (None, None)
        if cfg["groups"] is not None:
            self.group_of, self.group_counts = frequency_groups(self.class_counts, cfg["groups"])

    def _losses(self, logits, y, targets):  # per-sample CE (+ logit adjustment), soft when targets given
        lg = as_float(logits)
        if self.adjustment is not None:
            lg = lg + self.adjustment.to(lg)
        return soft_cross_entropy(lg, targets) if targets is not None else F.cross_entropy(lg, y, reduction="none")

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        targets, lam, y_b = None, 1.0, labels
        x = images
        if cfg["mixup_alpha"] > 0:
            x, targets, _, y_b, lam = mixup(images, labels, cfg["mixup_alpha"], self.num_classes)
        # g_c from the mixed loss (authors) or first-label CE; perturbed term: first-label CE (authors) or mixed
        g_targets = targets if cfg["grad_targets"] == "mixed" else None
        p_targets = targets if cfg["perturbed_targets"] == "mixed" else None
        weights = _sample_weights(labels, self.num_classes, cfg["class_weighting"], accelerator, cfg["global_stats"])
        run = self._head if cfg["mode"] == "head" else self._block
        out, logits = run(net, x, labels, targets, g_targets, p_targets, weights, accelerator)
        out["acc"] = lam * _accuracy(logits, labels) + (1 - lam) * _accuracy(logits, y_b)
        return out

    def _head(self, net, x, y, targets, g_targets, p_targets, weights, accelerator):
        cfg, f = self.cfg, self.cfg["flat_ratio"]
        W, b = linear_head_params(_dist.unwrap(net, accelerator).head)
        z, logits = net(x)
        clean = _weighted(weights, self._losses(logits, y, targets))
        loss = (1 - f) * clean
        out = {"loss_clean": clean.detach()}
        if f > 0:
            pert_logits, info = head_perturbation(
                z, y, W, b, self.class_counts.to(z.device), scale=cfg["scale"], norm=cfg["norm"],
                targets=g_targets, kind=cfg["perturbation"], max_ratio=cfg["max_ratio"], eps=cfg["eps"],
                logits=logits, logit_adjustment=self.adjustment,
                gather=_dist.padded_gather(accelerator) if cfg["global_stats"] else None,
            )
            pert = _weighted(weights, self._losses(pert_logits, y, p_targets))
            loss = loss + f * pert
            out |= {"loss_perturbed": pert.detach(), "eps_ratio": info["eps_ratio"].float(),
                    "eps_capped": info["capped"].float(), "eps_classes": info["classes"].float()}
        _dist.backward(loss, accelerator)
        return {"loss": loss.detach(), **out}, logits

    def _block(self, net, x, y, targets, g_targets, p_targets, weights, accelerator):
        cfg, f = self.cfg, self.cfg["flat_ratio"]
        base = _dist.unwrap(net, accelerator)
        if cfg["block_batch"] == "class" and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in base.modules()
        ):
            raise ValueError(
                "ccsam: block_batch='class' under train-mode BatchNorm normalises each class subset alone (not the "
                "same objective as the full batch); use block_batch='full' (default) or a GroupNorm model"
            )
        named = select_params(base.model, cfg["blocks"], cfg["params"])
        params = [p for _, p in named]
        prefix = {id(p): n for n, p in base.named_parameters()}
        names = [prefix[id(p)] for p in params]
        trainable = [p for p in base.parameters() if p.requires_grad]
        if self.group_of is not None:
            slots_all, slot_counts = self.group_of.to(y.device)[y], self.group_counts
        else:
            slots_all, slot_counts = y, self.class_counts
        n_slots = slot_counts.numel()
        global_stats = cfg["global_stats"] and _dist.world_size(accelerator) > 1
        reduce = (lambda t: _dist.all_reduce_sum(t, accelerator)) if global_stats else None
        cache = TrunkCache(base.model, params) if cfg["block_batch"] == "full" else None
        with _dist.no_sync(net, accelerator):
            with cache.record() if cache is not None else contextlib.nullcontext():
                _, logits = net(x)  # the clean pass: the only one that updates BatchNorm running statistics
            clean = _weighted(weights, self._losses(logits, y, targets))
            asc = self._losses(logits, y, g_targets)  # per-sample losses defining the class gradients g_c
            cnt = torch.bincount(slots_all, minlength=n_slots).float()
            gcnt = reduce(cnt) if reduce else cnt
            present = gcnt.nonzero().squeeze(1)  # same on every process
            slot_index = torch.full((n_slots,), -1, dtype=torch.long, device=y.device)
            slot_index[present] = torch.arange(present.numel(), device=y.device)
            slots = slot_index[slots_all]
            ls = _dist.grad_scale(accelerator)  # fp16: differentiate scaled losses, unscale the gradients
            grads = class_gradients(asc, slots, present.numel(), params, gcnt[present], reduce, loss_scale=ls)
            delta, ratio, capped = class_perturbations(
                grads, params, slot_counts.to(grads.device)[present], scale=cfg["scale"], norm=cfg["norm"],
                kind=cfg["perturbation"], max_ratio=cfg["max_ratio"], eps=cfg["eps"],
            )
            del asc
            leaves = cache.leaves if cache is not None else []
            acc_grads: list[torch.Tensor | None] = [None] * (len(trainable) + len(leaves))
            pert_total = torch.zeros((), device=y.device)
            sizes = [p.numel() for p in params]
            with _dist.frozen_bn_stats(base), cache.replay() if cache is not None else contextlib.nullcontext():
                for s in range(present.numel() if f > 0 else 0):
                    sel = slots == s
                    if not bool(sel.any()):
                        continue
                    eps_s = torch.split(delta[s], sizes)
                    moved = {n: p + e.view_as(p).to(p.dtype) for n, p, e in zip(names, params, eps_s)}
                    if cfg["block_batch"] == "full":
                        _, lo = torch.func.functional_call(base, moved, (x,))
                        lo = lo[sel]
                    else:
                        _, lo = torch.func.functional_call(base, moved, (x[sel],))
                    lt = None if p_targets is None else p_targets[sel]
                    pert = _weighted(weights[sel], self._losses(lo, y[sel], lt))
                    gs = torch.autograd.grad(f * ls * pert, trainable + leaves, allow_unused=True)
                    for k, g in enumerate(gs):
                        if g is not None:
                            g = as_float(g) / ls
                            acc_grads[k] = g if acc_grads[k] is None else acc_grads[k] + g
                    pert_total = pert_total + pert.detach()
            # one backward: the clean term, the perturbed gradients (constants) and the trunk through the leaves
            surrogate = sum((p * g.to(p.dtype)).sum() for p, g in zip(trainable, acc_grads) if g is not None)
            if cache is not None:
                surrogate = surrogate + cache.surrogate(acc_grads[len(trainable) :])
            total = surrogate if f == 1 else (1 - f) * clean + surrogate
            if isinstance(total, torch.Tensor) and total.requires_grad:
                _dist.backward(total, accelerator)
        _dist.average_gradients(trainable, accelerator)
        loss = (1 - f) * clean.detach() + f * pert_total
        out = {"loss": loss, "loss_clean": clean.detach(), "loss_perturbed": pert_total,
               "eps_ratio": ratio.mean().float(), "eps_capped": capped.sum().float(),
               "eps_classes": torch.tensor(float(capped.numel()))}
        return out, logits


class Stage2Method(_Method):
    """Stage 2 on a frozen backbone, class-balanced batches: the ``crt`` baseline (plain CE on the head).

    ``bn="eval"`` puts the backbone's BatchNorm layers in eval mode at every call (frozen statistics);
    ``"train"`` leaves them as the trainer set them (the authors: running statistics drift).
    """

    name = "crt"
    sampler = "class_balanced"

    def _prepare(self, net: nn.Module, accelerator: Any) -> nn.Module:
        base = _dist.unwrap(net, accelerator)
        if self.cfg.get("bn") == "eval":
            _set_bn_eval(base)
        return base

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        self._prepare(net, accelerator)
        _, logits = net(images)
        loss = F.cross_entropy(as_float(logits), labels)
        _dist.backward(loss, accelerator)
        return {"loss": loss.detach(), "acc": _accuracy(logits, labels)}


class NoStage2(Stage2Method):
    """``none``: no stage 2 (``active = False``: the trainer should skip it). ``forward_backward`` only
    evaluates the loss (no backward, no gradients)."""

    name = "none"
    active = False

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            _, logits = net(images)
            loss = F.cross_entropy(as_float(logits), labels)
        return {"loss": loss, "acc": _accuracy(logits, labels)}


class CCSAMAdv(Stage2Method):
    """Eq. 12-14: ``L = (1 - a_t) L_S + a_t L_A`` with adversarial features (``adversarial.py``).

    ``a_t = min((epoch + 1) / total_epochs, up_limit)``. ``class_weight="log"`` scales each sample's shift
    by ``w_c = log(n_max / n_c + 0.01) / div``; ``weight_loss`` multiplies its adversarial loss by ``w_c`` again.
    """

    name = "ccsam_adv"

    def __init__(self, cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> None:
        super().__init__(cfg, class_counts)
        self.class_weights = adversarial_class_weights(self.class_counts, cfg["div"])
        if cfg["weight_loss"] and cfg["class_weight"] == "none":
            raise ValueError("ccsam_adv: weight_loss=True needs class_weight='log'")

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        base = self._prepare(net, accelerator)
        z, logits = net(images)
        clean = F.cross_entropy(as_float(logits), labels)
        a_t = progressive_weight(self.epoch, self.total_epochs, cfg["up_limit"])
        out = {"adv_weight": torch.tensor(a_t)}
        loss = clean
        if a_t > 0:
            head = base.head
            zl = z.detach().requires_grad_(True)
            g = torch.autograd.grad(F.cross_entropy(as_float(head(zl)), labels, reduction="sum"), zl)[0]
            cw = self.class_weights.to(z.device) if cfg["class_weight"] == "log" else None
            reduce = None
            if cfg["global_stats"] and _dist.world_size(accelerator) > 1:
                reduce = lambda t: _dist.all_reduce_sum(t, accelerator)  # noqa: E731
            z_adv = adversarial_features(z, g, labels, lam=cfg["adv_lambda"], norm=cfg["adv_norm"], class_weights=cw,
                                         num_classes=self.num_classes, all_reduce=reduce)
            adv = F.cross_entropy(as_float(head(z_adv)), labels, reduction="none")
            if cfg["weight_loss"]:
                adv = adv * cw.to(adv)[labels]
            adv = adv.mean()
            loss = (1 - a_t) * clean + a_t * adv  # Eq. 14
            out["loss_adv"] = adv.detach()
        _dist.backward(loss, accelerator)
        return {"loss": loss.detach(), "loss_clean": clean.detach(), "acc": _accuracy(logits, labels), **out}


_STAGE1_CLASSES = {"ce": Stage1Method, "sam": SAM, "balanced_softmax": BalancedSoftmax, "ldam_drw": LDAMDRW,
                   "mixup": Mixup, "ccsam": CCSAM}
_STAGE2_CLASSES = {"crt": Stage2Method, "ccsam_adv": CCSAMAdv, "none": NoStage2}


def build_stage1(cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> Stage1Method:
    """Stage-1 method from ``cfg`` (``{"name": ..., ["preset": ...], overrides...}``); unknown keys raise
    ValueError naming the closest valid key."""
    resolved = _resolve(_STAGE1, "stage-1", cfg, len(class_counts))
    method = _STAGE1_CLASSES[resolved["name"]](resolved, class_counts)
    method.set_epoch(0, 1)
    return method


def build_stage2(cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> Stage2Method:
    """Stage-2 method from ``cfg`` (``crt``, ``ccsam_adv`` with presets "official" / "paper", ``none``)."""
    resolved = _resolve(_STAGE2, "stage-2", cfg, len(class_counts))
    method = _STAGE2_CLASSES[resolved["name"]](resolved, class_counts)
    method.set_epoch(0, 1)
    return method
