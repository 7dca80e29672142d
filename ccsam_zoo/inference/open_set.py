"""Open-set scores: pure functions on features, logits, prototypes and fitted training statistics.

Every score is oriented HIGHER = MORE LIKELY KNOWN. ``z`` are penultimate features (``forward_head(...,
pre_logits=True)``), ``z_hat = z / ||z||``; prototypes are unit vectors (``compute_prototypes``); ``stats`` is an
``OpenSetStats`` (``open_set_stats.py``) fitted once on the training images.

Logits only:

- ``msp``: maximum softmax probability (Hendrycks & Gimpel 2017; OLTR rejects below 0.1).
- ``max_logit``: ``max_c l_c`` (Hendrycks et al. 2022).
- ``energy``: negative free energy at temperature 1, ``logsumexp_c l_c`` (Liu et al. 2020).

Training statistics (``stats``):

- ``mahalanobis``: ``-min_c (z - mu_c)^T P (z - mu_c)`` with the class means ``mu_c`` of the raw features and
  the precision ``P`` of the shared (tied) within-class covariance (Lee et al. 2018, penultimate layer).
- ``knn``: ``-||z_hat - b_(k)||``, the distance to the k-th nearest L2-normalised training feature of a
  seeded subsample (the bank) of the training set (Sun et al. 2022).
- ``layer_stats``: far-OOD guard on the EARLY layers. Per early stage, the channel statistics of its feature map
  (mean and log std of every channel, correlations of the first channels; ``channel_statistics``) are scored
  by their Mahalanobis distance to the training images' mean (one covariance per stage, Lee et al.'s feature
  ensemble); each stage's distance becomes a log p-value against the training images, and the stages are
  combined by Fisher's method: ``sum_s log p_s``.
- ``msp+layer_stats``, ``max_logit+layer_stats``, ``energy+layer_stats``: Fisher's method again, with equal
  weights: ``log p(logit score) + log p(layer_stats)``, both p-values against the training images. Nothing is
  fitted on open-set data.

p-values are empirical: ``p(x) = (#{reference <= x} + 1) / (n + 1)``, so ``log p`` lies in ``[-log(n + 1), 0]``.

Prototypes:

- ``cosine``: ``max_c <z_hat, p_c>`` in [-1, 1].
- ``euclidean``: ``-min_c ||z_hat - p_c||_2`` in [-2, 0]. With unit prototypes ``||z_hat - p||^2 = 2 - 2 cos``,
  so it ranks samples exactly like ``cosine`` (same AUROC / FPR95); only the threshold scale differs.
- ``reachability``: OLTR's reachability (Liu et al. 2019, ``MetaEmbeddingClassifier``):
  ``10 / min_c ||z - c||_2`` (Euclidean, not squared, ``scale = 10``) computed here on ``z_hat`` and the unit
  prototypes (OLTR uses raw features and raw centroids; ours are the stored normalised prototypes). The
  distance is clamped at 1e-6. Also a monotone function of ``cosine``.
- ``hybrid``: ``(cos01 + msp01) / 2`` with fixed (batch-independent) min-max maps of each score's range:
  ``cos01 = (cosine + 1) / 2`` and ``msp01 = (msp - 1/C) / (1 - 1/C)``; both in [0, 1].

Prototype rows that are all zero (a class without training samples) are ignored by every score; so are the
class means of such classes in ``mahalanobis``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .open_set_stats import (  # the statistics module owns the math it needs; re-exported here
    OpenSetStats,
    class_feature_sums,
    log_pvalue,
    logit_score,
    mahalanobis_distances,
    prototypes_from_sums,
)

__all__ = [
    "DEFAULT_RULE",
    "DEFAULT_SCORE",
    "FALLBACK_SCORES",
    "SCORES",
    "class_thresholds_at_tpr",
    "compute_prototypes",
    "open_set_score",
    "score_requirements",
    "select_default_score",
    "threshold_at_tpr",
]

LOGIT_SCORES = ("msp", "max_logit", "energy")
PROTOTYPE_SCORES = ("cosine", "euclidean", "reachability", "hybrid")
COMBINED_SCORES = ("msp+layer_stats", "max_logit+layer_stats", "energy+layer_stats")
STATS_SCORES = ("mahalanobis", "knn", "layer_stats", *COMBINED_SCORES)
LAYER_SCORES = ("layer_stats", *COMBINED_SCORES)  # need the early-stage channel statistics
SCORES = (*LOGIT_SCORES, "mahalanobis", "knn", *PROTOTYPE_SCORES, *LAYER_SCORES)
# The default score of a checkpoint is chosen per checkpoint by ONE rule (DEFAULT_RULE, applied by
# bench/open_set_report.py when a model is shipped and stored as ccsam_zoo.json's open_set.score). A checkpoint
# without a stored choice, or whose stored choice it cannot compute, falls back along FALLBACK_SCORES (the first
# it can compute, preferring one with a calibrated threshold) and says so (``Classifier.default_score_source``).
DEFAULT_RULE = (
    "among the scores the checkpoint can compute, those that reject >= 99% of the SELECTION set's uniform-noise "
    "and constant images at their 95%-TPR threshold; of these, the highest AUROC on the selection half of "
    "tinyimagenet_ood against the validation images; scores within 0.1 point (0.001) of that best AUROC tie, and "
    "a tie goes to the first in SCORES order (fewer statistics needed first); if no score meets the noise guard, "
    "the same choice among all of them (flagged). Nothing of the report half is used."
)
JUNK_GUARD = ("uniform", "constant")  # selection far-OOD kinds the default must reject >= 99% of
JUNK_MIN_REJECTED = 0.99
AUROC_TIE = 0.001  # selection AUROCs this close to the best tie (float noise, equal-ranking scores)
FALLBACK_SCORES = ("max_logit+layer_stats", "cosine", "msp")
DEFAULT_SCORE = FALLBACK_SCORES[0]  # the first fallback (kept for the old import path)
OLTR_MSP_THRESHOLD = 0.1
_REACH_SCALE = 10.0


def score_requirements(name: str) -> str:
    """What a score needs besides logits, in words (for error messages)."""
    if name in PROTOTYPE_SCORES:
        return "class prototypes"
    if name == "mahalanobis":
        return "the training class means and shared precision matrix"
    if name == "knn":
        return "the bank of normalised training features"
    if name in LAYER_SCORES:
        return "the early-layer statistics of the training images"
    return "logits only"


# ----------------------------------------------------------------------------------------------- prototypes


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


# ------------------------------------------------------------------------------------ statistics-based parts


def knn_distance(features: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Euclidean distance ``[N]`` from each L2-normalised feature to its k-th nearest bank row (unit rows)."""
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"knn needs 1 <= k <= bank size ({bank.shape[0]}), got k={k}")
    z = F.normalize(features.float(), dim=1)
    b = F.normalize(bank.to(z.device, torch.float32), dim=1)
    cos_k = (z @ b.T).topk(k, dim=1).values[:, -1]
    return (2.0 - 2.0 * cos_k).clamp_min(0.0).sqrt()


def stage_log_pvalues(stage_features: list[torch.Tensor], stats: OpenSetStats) -> torch.Tensor:
    """``[N, S]`` log p-values of each early stage's channel statistics (Mahalanobis, against training)."""
    if len(stage_features) != len(stats.stage_names):
        raise ValueError(f"{len(stage_features)} stage feature tensors for {len(stats.stage_names)} fitted stages")
    cols = []
    for s, name in enumerate(stats.stage_names):
        d = mahalanobis_distances(stage_features[s], stats.stage_means[s][None, :], stats.stage_precisions[s])[:, 0]
        cols.append(log_pvalue(stats.references[f"stage:{name}"], -d))
    return torch.stack(cols, dim=1)


# --------------------------------------------------------------------------------------------------- scores


def _check_inputs(name, features, logits, prototypes, stats, stage_features) -> None:
    if name not in SCORES:
        raise ValueError(f"unknown open-set score {name!r}; choose one of {', '.join(SCORES)}")
    if (name in LOGIT_SCORES or name in COMBINED_SCORES or name == "hybrid") and logits is None:
        raise ValueError(f"score {name!r} needs logits")
    if name in PROTOTYPE_SCORES and prototypes is None:
        raise ValueError(
            f"score {name!r} needs class prototypes: fit them with clf.fit_prototypes(train_dataset) "
            "(or use score='msp')"
        )
    if name in STATS_SCORES and stats is None:
        raise ValueError(
            f"score {name!r} needs {score_requirements(name)}: fit them with clf.fit_open_set(train_dataset) "
            "(or use a logit score: msp, max_logit, energy)"
        )
    if name in ("mahalanobis", "knn", *PROTOTYPE_SCORES) and features is None:
        raise ValueError(f"score {name!r} needs features")
    if name in LAYER_SCORES and not stats.stage_names:
        raise ValueError(f"score {name!r} needs early-stage statistics and these statistics have none (no stages)")
    if name in LAYER_SCORES and stage_features is None:
        raise ValueError(f"score {name!r} needs the early-stage channel statistics (stage_features)")


def open_set_score(
    name: str,
    *,
    features: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
    prototypes: torch.Tensor | None = None,
    stats: OpenSetStats | None = None,
    stage_features: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Score ``name`` (one of ``SCORES``) per sample, shape ``[N]``, higher = more likely known.

    ``stage_features``: ``channel_statistics`` of each of ``stats.stage_names`` (the ``layer_stats`` scores).
    """
    _check_inputs(name, features, logits, prototypes, stats, stage_features)
    if name in LOGIT_SCORES:
        return logit_score(name, logits)
    if name == "mahalanobis":
        d = mahalanobis_distances(features, stats.class_means, stats.precision)
        d = d.masked_fill(~stats.valid_classes.to(d.device)[None, :], float("inf"))
        return -d.amin(dim=1)
    if name == "knn":
        return -knn_distance(features, stats.bank, stats.k)
    if name in LAYER_SCORES:
        fisher = stage_log_pvalues(stage_features, stats).sum(dim=1)
        if name == "layer_stats":
            return fisher
        base = name.split("+")[0]
        base_logp = log_pvalue(stats.references[base], logit_score(base, logits).to(fisher.device))
        return base_logp + log_pvalue(stats.references["layer_stats"], fisher)
    if name == "cosine":
        return _max_cosine(features, prototypes)
    if name == "euclidean":
        return -_min_distance(features, prototypes)
    if name == "reachability":
        return _REACH_SCALE / _min_distance(features, prototypes).clamp_min(1e-6)
    c = logits.shape[1]
    msp = logit_score("msp", logits)
    msp01 = (msp - 1.0 / c) / (1.0 - 1.0 / c) if c > 1 else logits.new_ones(logits.shape[0]).float()
    cos01 = (_max_cosine(features, prototypes) + 1.0) / 2.0
    return (cos01.to(msp01.device) + msp01) / 2.0


# ------------------------------------------------------------------------------------------ default rule


def select_default_score(selection: dict[str, dict[str, float]]) -> tuple[str, bool]:
    """The default score by ``DEFAULT_RULE`` from SELECTION-set metrics only; returns ``(score, guard_met)``.

    ``selection[score]`` holds ``auroc`` (selection half against the validation images, a fraction) and the
    share of each ``JUNK_GUARD`` kind rejected at the score's validation threshold (``uniform``, ``constant``).
    Scores outside ``SCORES`` (variants such as class-conditional thresholds) are not candidates.
    """
    cands = [s for s in SCORES if s in selection]
    if not cands:
        raise ValueError(f"no selection metrics for any of {', '.join(SCORES)}")

    def guarded(s: str) -> bool:
        return all(selection[s].get(k, 0.0) >= JUNK_MIN_REJECTED for k in JUNK_GUARD)

    pool = [s for s in cands if guarded(s)] or cands
    best = max(float(selection[s]["auroc"]) for s in pool)
    pick = next(s for s in pool if float(selection[s]["auroc"]) >= best - AUROC_TIE)  # SCORES order breaks ties
    return pick, guarded(pick)


# ----------------------------------------------------------------------------------------------- thresholds


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


def class_thresholds_at_tpr(
    scores, predictions, num_classes: int, tpr: float = 0.95, min_count: int = 10
) -> list[float]:
    """Class-conditional thresholds: ``threshold_at_tpr`` over the known images PREDICTED as each class.

    At test time the threshold of an image is that of its predicted class (its true class is unknown). Classes
    with fewer than ``min_count`` such images get the global threshold (tail classes: too few to estimate).
    """
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    pred = torch.as_tensor(predictions).long().flatten()
    if pred.numel() != s.numel():
        raise ValueError(f"{s.numel()} scores but {pred.numel()} predictions")
    overall = threshold_at_tpr(s, tpr)
    out = []
    for c in range(num_classes):
        sc = s[pred == c]
        out.append(threshold_at_tpr(sc, tpr) if sc.numel() >= max(min_count, 1) else overall)
    return out
