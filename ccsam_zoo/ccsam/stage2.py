"""Stage 2 of CC-SAM: classifier re-training with adversarial features (paper Eq. 12-14).

Eq. 12 (the feature shift) and Eq. 14's weight ``a_t`` live in ``adversarial.py``; here the progressive mix
``progressive_mix`` (Eq. 14) and the ``CCSAMAdv`` method on a frozen backbone and class-balanced batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _dist
from .adversarial import adversarial_class_weights, adversarial_features, progressive_weight
from .baselines import Stage2Method, _accuracy
from .losses import logit_norm

__all__ = ["CCSAMAdv", "progressive_mix"]


def progressive_mix(clean: torch.Tensor, adversarial: torch.Tensor, a_t: float) -> torch.Tensor:
    """Eq. 14: ``L = (1 - a_t) L_S + a_t L_A`` (``a_t = progressive_weight(epoch, T, up_limit)``)."""
    return (1 - a_t) * clean + a_t * adversarial


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
        tau = cfg["logit_norm_tau"]  # LogitNorm: every CE below (the adversarial direction's too) on normalised logits
        z, logits = net(images)
        clean = F.cross_entropy(logit_norm(logits, tau), labels)
        a_t = progressive_weight(self.epoch, self.total_epochs, cfg["up_limit"])
        out = {"adv_weight": torch.tensor(a_t)}
        loss = clean
        if a_t > 0:
            head = base.head
            zl = z.detach().requires_grad_(True)
            g = torch.autograd.grad(F.cross_entropy(logit_norm(head(zl), tau), labels, reduction="sum"), zl)[0]
            cw = self.class_weights.to(z.device) if cfg["class_weight"] == "log" else None
            reduce = None
            if cfg["global_stats"] and _dist.world_size(accelerator) > 1:
                reduce = lambda t: _dist.all_reduce_sum(t, accelerator)  # noqa: E731
            z_adv = adversarial_features(z, g, labels, lam=cfg["adv_lambda"], norm=cfg["adv_norm"], class_weights=cw,
                                         num_classes=self.num_classes, all_reduce=reduce)
            adv = F.cross_entropy(logit_norm(head(z_adv), tau), labels, reduction="none")
            if cfg["weight_loss"]:
                adv = adv * cw.to(adv)[labels]
            adv = adv.mean()
            loss = progressive_mix(clean, adv, a_t)  # Eq. 14
            out["loss_adv"] = adv.detach()
        _dist.backward(loss, accelerator)
        return {"loss": loss.detach(), "loss_clean": clean.detach(), "acc": _accuracy(logits, labels), **out}
