"""Stage 1 of CC-SAM: class-conditional sharpness-aware minimisation (paper Eq. 8-11).

Eq. 8-9 (radius and perturbation per class) live in ``perturbation.py``; the head's closed form in ``head.py``;
true per-class gradients of several layers in ``block.py``. Here: Eq. 10-11, the objective over classes
(``class_weights``, ``ccsam_objective``), and the ``CCSAM`` method that composes them.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.heads import linear_head_params
from . import _dist
from .baselines import Stage1Method, _accuracy
from .block import TrunkCache, class_gradients, class_perturbations, frequency_groups, select_params
from .head import head_perturbation
from .losses import as_float, log_prior, logit_norm, mixup, soft_cross_entropy
from .perturbation import radius_reference

__all__ = ["CCSAM", "ccsam_objective", "class_weights"]


def class_weights(
    labels: torch.Tensor, num_classes: int, weighting: str, accelerator: Any, global_stats: bool
) -> torch.Tensor:
    """Eq. 10-11 weights: per-sample loss weights such that sum_i w_i l_i, averaged over processes (DDP), is the
    objective over the global batch. "class" (Eq. 10-11: the sum over classes of the class-mean losses, divided by
    the P classes present to keep the gradient scale of a mean loss); "instance" (authors: mean over samples)."""
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


def ccsam_objective(clean: torch.Tensor, perturbed: torch.Tensor, flat_ratio: float) -> torch.Tensor:
    """Eq. 10-11 with the authors' mix: ``(1 - flat_ratio) L(w) + flat_ratio sum_c L_c(w + eps_c)``
    (``flat_ratio = 1``: the paper's pure class-conditional objective; 0.3 / 0.5: the authors' CIFAR configs)."""
    return (1 - flat_ratio) * clean + flat_ratio * perturbed


class CCSAM(Stage1Method):
    """Class-conditional SAM (Eq. 8-11); see ``stage1_defaults("ccsam", preset)`` for the keys.

    One step: (mixup), the clean forward, g_c per class (from ``grad_targets``), eps_c (Eq. 8-9), the class
    losses at w + eps_c, then ``ccsam_objective`` (Eq. 10-11): ``(1 - flat_ratio) sum_i v_i l_i(w) +
    flat_ratio sum_i v_i l_i(w + eps_{y_i})`` with v from ``class_weights``. ``mode="head"``: closed form, one
    forward + one backward. ``mode="block"``: true per-class gradients of the head plus the last ``blocks``
    blocks (or ``params`` regex). ``logit_norm_tau``: every loss of the step (the clean term, the class gradients
    g_c and the perturbed term) is CE on LogitNorm's ``logits / (tau ||logits||)`` (Wei et al. 2022).
    ``oe_weight`` > 0 (head mode): patch-shuffled outliers share the clean forward, and ``oe_weight`` x their
    uniform-target CE is added to Eq. 10-11's objective (their features and logits take no part in eps_c).
    """

    name = "ccsam"

    def __init__(self, cfg: dict[str, Any], class_counts: torch.Tensor | list[int]) -> None:
        super().__init__(cfg, class_counts)
        if cfg["mode"] == "head" and (cfg["groups"] is not None or cfg["blocks"] or cfg["params"]):
            raise ValueError("ccsam: 'groups', 'blocks' and 'params' apply to mode='block' only")
        if cfg["mode"] == "block" and cfg["oe_weight"]:
            raise ValueError("ccsam: outlier exposure (oe_weight > 0) applies to mode='head' only; set oe_weight=0")
        if cfg["blocks"] and cfg["params"]:
            raise ValueError("ccsam: give either 'blocks' (head + last N blocks) or 'params' (a regex), not both")
        if cfg["perturbation"] == "radius" and cfg["mode"] != "block":
            raise ValueError("ccsam: perturbation='radius' (SAM's step per class) needs mode='block'")
        if not 0.0 <= cfg["flat_ratio"] <= 1.0:
            raise ValueError(f"ccsam: flat_ratio must be in [0, 1], got {cfg['flat_ratio']}")
        if cfg["tau"] and cfg["logit_norm_tau"] is not None:
            raise ValueError(
                "ccsam: logit adjustment (tau) and LogitNorm (logit_norm_tau) cannot be combined; set tau=0 or "
                "logit_norm_tau=null"
            )
        self.adjustment = log_prior(self.class_counts, cfg["tau"]) if cfg["tau"] else None
        self.ref_count = radius_reference(self.class_counts)  # n_ref of perturbation="radius"
        self.group_of, self.group_counts = (None, None)
        if cfg["groups"] is not None:
            self.group_of, self.group_counts = frequency_groups(self.class_counts, cfg["groups"])

    def _losses(self, logits, y, targets):  # per-sample CE (+ logit adjustment | LogitNorm), soft with targets
        lg = logit_norm(logits, self.cfg["logit_norm_tau"])
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
        weights = class_weights(labels, self.num_classes, cfg["class_weighting"], accelerator, cfg["global_stats"])
        run = self._head if cfg["mode"] == "head" else self._block
        out, logits = run(net, x, images, labels, targets, g_targets, p_targets, weights, accelerator)
        out["acc"] = lam * _accuracy(logits, labels) + (1 - lam) * _accuracy(logits, y_b)
        return out

    def _head(self, net, x, images, y, targets, g_targets, p_targets, weights, accelerator):
        cfg, f = self.cfg, self.cfg["flat_ratio"]
        W, b = linear_head_params(_dist.unwrap(net, accelerator).head)
        z, logits, outliers = self._forward(net, x, images)
        clean = _weighted(weights, self._losses(logits, y, targets))
        pert = torch.zeros_like(clean)
        out = {"loss_clean": clean.detach()}
        if f > 0:
            pert_logits, info = head_perturbation(
                z, y, W, b, self.class_counts.to(z.device), scale=cfg["scale"], norm=cfg["norm"],
                targets=g_targets, kind=cfg["perturbation"], max_ratio=cfg["max_ratio"], eps=cfg["eps"],
                logits=logits, logit_adjustment=self.adjustment, logit_norm_tau=cfg["logit_norm_tau"],
                gather=_dist.padded_gather(accelerator) if cfg["global_stats"] else None,
            )
            pert = _weighted(weights, self._losses(pert_logits, y, p_targets))
            out |= {"loss_perturbed": pert.detach(), "eps_ratio": info["eps_ratio"].float(),
                    "eps_capped": info["capped"].float(), "eps_classes": info["classes"].float()}
        loss = ccsam_objective(clean, pert, f)  # Eq. 10-11
        if outliers is not None:  # outlier exposure on patch-shuffled images, outside the class objective
            oe = self._oe(outliers)
            loss, out["loss_oe"] = loss + oe, oe.detach()
        _dist.backward(loss, accelerator)
        return {"loss": loss.detach(), **out}, logits

    def _block(self, net, x, images, y, targets, g_targets, p_targets, weights, accelerator):
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
                kind=cfg["perturbation"], max_ratio=cfg["max_ratio"], eps=cfg["eps"], ref_count=self.ref_count,
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
        loss = ccsam_objective(clean.detach(), pert_total, f)  # Eq. 10-11 (its gradient: the surrogate above)
        out = {"loss": loss, "loss_clean": clean.detach(), "loss_perturbed": pert_total,
               "eps_ratio": ratio.mean().float(), "eps_capped": capped.sum().float(),
               "eps_classes": torch.tensor(float(capped.numel()))}
        return out, logits
