"""``evaluate_model``: closed-set long-tailed accuracy and open-set metrics of a ``Classifier``."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
import torch.nn as nn

from .classifier import Classifier
from .open_set import OLTR_MSP_THRESHOLD, PROTOTYPE_SCORES, SCORES, threshold_at_tpr

__all__ = ["evaluate_model"]


@cache
def _metric(name: str):
    from ccsam_zoo.metrics import load_metric

    return load_metric(name)


def evaluate_model(
    clf: Classifier,
    dataset: Any,
    open_dataset: Any = None,
    *,
    batch_size: int = 256,
    transform: nn.Module | None = None,
    scores: tuple[str, ...] | None = None,
    thresholds: dict[str, float] | None = None,
    calibration: Any = None,
    tpr: float = 0.95,
    class_counts: list[int] | None = None,
    many_threshold: int = 100,
    few_threshold: int = 20,
    rule: str = "paper",
) -> dict[str, Any]:
    """Evaluate ``clf`` on a labelled test set and, optionally, open-set images.

    ``dataset`` / ``open_dataset`` / ``calibration``: any data form ``Classifier.fit_prototypes`` accepts
    (the open set's labels are ignored). ``transform`` maps loaded float batches to model inputs (e.g.
    ``benchmark.batch_transform(train=False)``); uint8 batches are otherwise normalised with the checkpoint's
    config. Shot groups use ``class_counts`` (default ``clf.class_counts``) and the thresholds/rule.

    Returns ``top1``, ``many``, ``medium``, ``few``, ``per_class`` (lt_accuracy module), ``num_samples``; with
    ``open_dataset`` also ``num_open`` and ``open_set[score]`` = ``auroc``, ``fpr95``, ``f_measure``,
    ``precision``, ``recall``, ``rejected`` (open_set module) plus ``threshold`` and ``threshold_source``,
    for each score (default: every score the classifier supports; prototype scores need prototypes).
    The F-measure threshold of a score is, in order: ``thresholds[score]`` ("given"), the checkpoint's
    calibrated threshold ("checkpoint"), the threshold at ``tpr`` on ``calibration`` data ("calibration"),
    0.1 for msp ("oltr"), else the threshold keeping ``tpr`` of the known TEST images ("test_tpr": an
    oracle summary like FPR95, not a deployable threshold).
    """
    if scores is None:
        scores = tuple(s for s in SCORES if clf.prototypes is not None or s not in PROTOTYPE_SCORES)
    for s in scores:
        if s not in SCORES:
            raise ValueError(f"unknown open-set score {s!r}; choose from {', '.join(SCORES)}")
    want = tuple(scores) if open_dataset is not None else ()
    closed = clf._collect(dataset, batch_size, transform, want)
    counts = class_counts if class_counts is not None else clf.class_counts
    result: dict[str, Any] = dict(
        _metric("lt_accuracy").compute(
            predictions=closed["predictions"].numpy(),
            references=closed["references"].numpy(),
            class_counts=counts if counts is not None else [0] * clf.num_classes,
            many_threshold=many_threshold,
            few_threshold=few_threshold,
            rule=rule,
        )
    )
    if counts is None:
        result.update(many=None, medium=None, few=None)
    result["num_samples"] = int(closed["references"].numel())
    if open_dataset is None:
        return result

    opened = clf._collect(open_dataset, batch_size, transform, want)
    cal = clf._collect(calibration, batch_size, transform, want) if calibration is not None else None
    predictions = torch.cat([closed["predictions"], opened["predictions"]]).numpy()
    references = torch.cat([closed["references"], torch.full_like(opened["references"], -1)]).numpy()
    result["num_open"] = int(opened["references"].numel())
    result["open_set"] = {}
    saved = clf.open_set or {}
    for s in want:
        if thresholds and s in thresholds:
            thr, src = float(thresholds[s]), "given"
        elif saved.get("score") == s and saved.get("threshold") is not None:
            thr, src = float(saved["threshold"]), "checkpoint"
        elif cal is not None:
            thr, src = threshold_at_tpr(cal[s], tpr), "calibration"
        elif s == "msp":
            thr, src = OLTR_MSP_THRESHOLD, "oltr"
        else:
            thr, src = threshold_at_tpr(closed[s], tpr), "test_tpr"
        m = _metric("open_set").compute(
            predictions=predictions,
            references=references,
            scores=torch.cat([closed[s], opened[s]]).double().numpy(),
            threshold=thr,
        )
        result["open_set"][s] = {**m, "threshold": thr, "threshold_source": src}
    return result
