"""Stage 2: robust classifier re-training with adversarial features (Eq. 12-14).

Eq. 12 ``z_adv = z + lambda * grad_z L / ||grad_z L||``. The per-sample feature gradients ``dl_i/dz_i``
come from ONE backward of ``sum_i l_i`` (each l_i depends on its own z_i only); every normalisation below
is invariant to the positive factors 1/B or 1/m_c of a mean loss, so they are not applied:

* ``"batch"``  (paper, literal reading: ``L_S`` is the batch loss and ``z`` the batch of features, so
  ``||grad_z L_S||_2`` is one norm over the whole B x D gradient: every sample moves by
  ``lambda g_i / ||G||_F``, the whole batch by ``lambda``);
* ``"sample"`` (each sample's own gradient normalised: every sample moves by ``lambda``);
* ``"class"``  (authors' code: per class c, ``G_c = d(mean_{S_c} l)/dZ`` normalised by its Frobenius norm
  over the rows of S_c).

The shift is a constant (detached): gradients of the adversarial loss reach the classifier only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .losses import as_float
from .presets import ADV_NORMS

__all__ = ["ADV_NORMS", "adversarial_class_weights", "adversarial_features", "progressive_weight"]



def adversarial_class_weights(class_counts: torch.Tensor | list[int], div: float = 2.0) -> torch.Tensor:
    """Authors' class weights ``w_c = log(n_max / n_c + 0.01) / div`` (head class: log(1.01)/2 = 0.005)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    return torch.log(n.max() / n + 0.01) / div


def progressive_weight(epoch: int, total_epochs: int, up_limit: float = 1.0) -> float:
    """Eq. 14: ``a_t = t / T`` with ``t = epoch + 1`` (epochs 0-based, t = 1..T), capped at ``up_limit``."""
    return min((epoch + 1) / max(total_epochs, 1), up_limit)


def adversarial_features(
    features: torch.Tensor,
    grads: torch.Tensor,
    labels: torch.Tensor,
    *,
    lam: float,
    norm: str = "batch",
    class_weights: torch.Tensor | None = None,
    num_classes: int | None = None,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Eq. 12: ``z + lam * w_{y_i} * g_i / N_i`` (detached), with ``N_i`` the ``norm`` of the module docstring.

    Args:
        features: z, B x D.
        grads: per-sample ``dl_i/dz_i``, B x D (any positive per-sample-constant or per-class-constant factor
            cancels only for the matching norm: pass plain per-sample gradients).
        labels: classes (for ``"class"`` norm and ``class_weights``).
        lam: lambda.
        norm: ``"class"``, ``"batch"`` or ``"sample"``.
        class_weights: optional C-vector multiplying each sample's shift (authors: ``adversarial_class_weights``).
        num_classes: C for the ``"class"`` norm (default: from ``class_weights`` or the labels).
        all_reduce: sums a tensor over processes (data parallelism): the ``"batch"`` / ``"class"`` norms then
            come from the global batch.
    """
    if norm not in ADV_NORMS:
        raise ValueError(f"adversarial norm must be one of {ADV_NORMS}, got {norm!r}")
    g = as_float(grads.detach())
    sq = g.square().sum(1)
    if norm == "sample":
        denom = sq.sqrt()
    elif norm == "batch":
        total = sq.sum()
        denom = (all_reduce(total) if all_reduce else total).sqrt().expand_as(sq)
    else:
        C = num_classes or (class_weights.numel() if class_weights is not None else int(labels.max()) + 1)
        per_class = torch.zeros(C, dtype=sq.dtype, device=sq.device).index_add_(0, labels, sq)
        denom = (all_reduce(per_class) if all_reduce else per_class).sqrt()[labels]
    step = lam * g / denom.clamp_min(eps)[:, None]
    if class_weights is not None:
        step = step * class_weights.to(step)[labels][:, None]
    return (as_float(features.detach()) + step).to(features.dtype)

