"""Class prototypes and open-set scores: pure functions on features, logits and prototypes.

Every score is oriented HIGHER = MORE LIKELY KNOWN. ``z`` are penultimate features (``forward_head(...,
pre_logits=True)``), ``z_hat = z / ||z||``; prototypes are unit vectors (``compute_prototypes``).

- ``cosine``: ``max_c <z_hat, p_c>`` in [-1, 1] (default).
- ``euclidean``: ``-min_c ||z_hat - p_c||_2`` in [-2, 0]. With unit prototypes ``||z_hat - p||^2 = 2 - 2 cos``,
  so it ranks samples exactly like ``cosine`` (same AUROC / FPR95); only the threshold scale differs.
- ``reachability``: OLTR's reachability (Liu et al. 2019, ``MetaEmbeddingClassifier``):
  ``10 / min_c ||z - c||_2`` (Euclidean, not squared, ``scale = 10``) computed here on ``z_hat`` and the unit
  prototypes (OLTR uses raw features and raw centroids; ours are the stored normalised prototypes). The
  distance is clamped at 1e-6. Also a monotone function of ``cosine``.
- ``msp``: maximum softmax probability (Hendrycks & Gimpel 2017; OLTR rejects below 0.1).
- ``hybrid``: ``(cos01 + msp01) / 2`` with fixed (batch-independent) min-max maps of each score's range:
  ``cos01 = (cosine + 1) / 2`` and ``msp01 = (msp - 1/C) / (1 - 1/C)``; both in [0, 1].

Prototype rows that are all zero (a class without training samples) are ignored by every score.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

__all__ = ["SCORES", "PROTOTYPE_SCORES", "compute_prototypes", "open_set_score", "threshold_at_tpr"]

SCORES = ("cosine", "euclidean", "reachability", "msp", "hybrid")
PROTOTYPE_SCORES = ("cosine", "euclidean", "reachability", "hybrid")
OLTR_MSP_THRESHOLD = 0.1
_REACH_SCALE = 10.0


def class_feature_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of L2-normalised features (float64) and per-class counts; for streaming accumulation."""
    labels = torch.as_tensor(labels, device=features.device).long().reshape(-1)
    if features.ndim != 2 or features.shape[0] != labels.numel():
        raise ValueError(
            f"features must be [N, D] with N = len(labels), got {tuple(features.shape)} and {labels.numel()}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    z = F.normalize(features.detach().double(), dim=1)
    sums = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes)
    return sums, counts


def prototypes_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Unit prototypes from per-class sums (zero rows, with a warning, for classes without samples)."""
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        warnings.warn(f"no samples for classes {missing[:20]}: their prototypes are zero and ignored", stacklevel=3)
    return F.normalize(sums, dim=1).float()


def compute_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class prototypes ``[C, D]``: the mean of the L2-normalised features of each class, re-normalised.

    Accumulated in float64, returned as float32 on the features' device.
    """
    return prototypes_from_sums(*class_feature_sums(features, labels, num_classes))


def _normalised_prototypes(prototypes: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = prototypes.to(device=features.device, dtype=torch.float32)
    if p.ndim != 2 or p.shape[1] != features.shape[1]:
        raise ValueError(f"prototypes must be [C, {features.shape[1]}], got {tuple(p.shape)}")
    valid = p.norm(dim=1) > 0
    return F.normalize(p, dim=1), valid


def _max_cosine(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    p, valid = _normalised_prototypes(prototypes, features)
    cos = F.normalize(features.float(), dim=1) @ p.T
    return cos.masked_fill(~valid, float("-inf")).amax(dim=1)


def _min_distance(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    p, valid = _normalised_prototypes(prototypes, features)
    d = torch.cdist(F.normalize(features.float(), dim=1), p)
    return d.masked_fill(~valid, float("inf")).amin(dim=1)


def _msp(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(dim=1).amax(dim=1)


def open_set_score(
    name: str,
    *,
    features: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    prototypes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score ``name`` (one of ``SCORES``) per sample, shape ``[N]``, higher = more likely known."""
    if name not in SCORES:
        raise ValueError(f"unknown open-set score {name!r}; choose one of {', '.join(SCORES)}")
    if name in ("msp", "hybrid") and logits is None:
        raise ValueError(f"score {name!r} needs logits")
    if name in PROTOTYPE_SCORES:
        if prototypes is None:
            raise ValueError(
                f"score {name!r} needs class prototypes: fit them with clf.fit_prototypes(train_dataset) "
                "(or use score='msp')"
            )
        if features is None:
            raise ValueError(f"score {name!r} needs features")
    if name == "cosine":
        return _max_cosine(features, prototypes)
    if name == "euclidean":
        return -_min_distance(features, prototypes)
    if name == "reachability":
        return _REACH_SCALE / _min_distance(features, prototypes).clamp_min(1e-6)
    if name == "msp":
        return _msp(logits)
    c = logits.shape[1]
    msp01 = (_msp(logits) - 1.0 / c) / (1.0 - 1.0 / c) if c > 1 else logits.new_ones(logits.shape[0]).float()
    cos01 = (_max_cosine(features, prototypes) + 1.0) / 2.0
    return (cos01.to(msp01.device) + msp01) / 2.0


def threshold_at_tpr(scores, tpr: float = 0.95) -> float:
    """Largest threshold ``t`` with ``mean(scores >= t) >= tpr`` on known-class scores."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise ValueError("cannot calibrate a threshold on zero known-class samples")
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    if not torch.isfinite(s).all():
        raise ValueError("known-class scores contain NaN or infinite values")
    k = max(1, math.ceil(round(tpr * s.numel(), 9)))
    return float(torch.sort(s, descending=True).values[k - 1])
