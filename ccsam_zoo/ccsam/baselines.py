"""The baselines, each as its own paper and reference code define it, behind the trainer's method contract.

Stage 1: ``ce``; ``balanced_softmax`` (Ren et al. 2020); ``ldam_drw`` (kaidic/LDAM-DRW); ``mixup`` (Zhang et al.
2018); ``sam`` (davda54/sam). Stage 2: ``crt`` (Kang et al. 2020: fresh classifier, class-balanced batches, frozen
backbone); ``none``.

The contract: ``method.set_epoch(epoch, total_epochs)`` (0-based epoch); ``method.forward_backward(net, images,
labels, accelerator) -> dict`` runs the forward pass(es) and backward pass(es) (``accelerator.backward``) and
leaves gradients in ``.grad``; the trainer steps the optimizer. ``net`` is the (prepared) ``FeaturesAndLogits``;
``accelerator`` may be None (plain PyTorch, one process). Returned values are detached scalars: always ``loss``
and ``acc`` (top-1 of the clean logits; lam-weighted under mixup), plus per method ``loss_clean``,
``loss_perturbed``, ``eps_ratio``, ``eps_capped`` / ``eps_classes``, ``loss_adv``, ``adv_weight``. Methods carry
``name``, ``cfg`` (resolved), ``sampler`` ("shuffle" / "class_balanced") and ``active`` (False for ``none``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.heads import NormedLinear
from . import _dist
from .block import sam_perturbation
from .losses import (
    as_float,
    drw_weights,
    ldam_logits,
    ldam_margins,
    log_prior,
    logit_norm,
    mixup,
    outlier_exposure,
    patch_shuffle,
    soft_cross_entropy,
)

__all__ = ["Stage1Method", "Stage2Method", "BalancedSoftmax", "LDAMDRW", "Mixup", "SAM", "NoStage2"]


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(1) == labels).float().mean()


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
    """Plain cross-entropy (``ce``); the other stage-1 methods override ``loss`` or ``forward_backward``.

    Open-set options without outside images (``ce``, ``mixup``, ``ccsam``): ``logit_norm_tau`` (LogitNorm, Wei et
    al. 2022: CE on ``logits / (tau ||logits||)``); ``oe_weight`` > 0 (outlier exposure, Hendrycks et al. 2019, on
    synthetic outliers: ``oe_fraction`` of the batch's images patch-shuffled on an ``oe_grid`` x ``oe_grid`` grid,
    in the same forward as the batch, their CE to the uniform distribution added with weight ``oe_weight``).
    """

    name = "ce"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, net: nn.Module, accelerator: Any) -> torch.Tensor:
        return F.cross_entropy(logit_norm(logits, self.cfg.get("logit_norm_tau")), labels)

    def _forward(
        self, net: nn.Module, x: torch.Tensor, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``net(x)`` -> (features, logits, outlier logits or None): with ``oe_weight`` > 0 the patch-shuffled
        first ``oe_fraction`` of ``images`` go through the same forward (BatchNorm sees both, as in OE)."""
        if not self.cfg.get("oe_weight"):
            z, logits = net(x)
            return z, logits, None
        n = max(1, round(self.cfg["oe_fraction"] * images.shape[0]))
        z, logits = net(torch.cat([x, patch_shuffle(images[:n], self.cfg["oe_grid"])]))
        b = x.shape[0]
        return z[:b], logits[:b], logits[b:]

    def _oe(self, outlier_logits: torch.Tensor) -> torch.Tensor:
        """``oe_weight`` x the uniform-target CE of the outliers (on LogitNorm's logits when that is on too)."""
        return self.cfg["oe_weight"] * outlier_exposure(logit_norm(outlier_logits, self.cfg.get("logit_norm_tau")))

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        _, logits, outliers = self._forward(net, images, images)
        loss = self.loss(logits, labels, net, accelerator)
        out = {}
        if outliers is not None:
            oe = self._oe(outliers)
            loss, out["loss_oe"] = loss + oe, oe.detach()
        _dist.backward(loss, accelerator)
        return {"loss": loss.detach(), "acc": _accuracy(logits, labels), **out}


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
    """Mixup with ``lam ~ Beta(alpha, alpha)``; ``acc = lam acc(y_a) + (1 - lam) acc(y_b)``; ``logit_norm_tau``:
    the soft-target CE on LogitNorm's ``logits / (tau ||logits||)``; outlier exposure: outliers from the unmixed
    images."""

    name = "mixup"

    def forward_backward(
        self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor, accelerator: Any = None
    ) -> dict[str, torch.Tensor]:
        x, targets, y_a, y_b, lam = mixup(images, labels, self.cfg["alpha"], self.num_classes)
        _, logits, outliers = self._forward(net, x, images)  # outliers from the unmixed images
        loss = soft_cross_entropy(logit_norm(logits, self.cfg["logit_norm_tau"]), targets, "mean")
        out = {}
        if outliers is not None:
            oe = self._oe(outliers)
            loss, out["loss_oe"] = loss + oe, oe.detach()
        _dist.backward(loss, accelerator)
        acc = lam * _accuracy(logits, y_a) + (1 - lam) * _accuracy(logits, y_b)
        return {"loss": loss.detach(), "acc": acc, **out}


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

class Stage2Method(_Method):
    """Stage 2 on a frozen backbone, class-balanced batches: the ``crt`` baseline (plain CE on the head).

    ``bn="eval"`` puts the backbone's BatchNorm layers in eval mode at every call (frozen statistics);
    ``"train"`` leaves them as the trainer set them (the authors: running statistics drift). ``logit_norm_tau``
    (``crt``, ``ccsam_adv``): the classifier is re-trained with LogitNorm's CE on ``logits / (tau ||logits||)``.
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
        loss = F.cross_entropy(logit_norm(logits, self.cfg.get("logit_norm_tau")), labels)
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
