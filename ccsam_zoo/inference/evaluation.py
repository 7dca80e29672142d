"""``evaluate_model``: closed-set long-tailed accuracy and open-set metrics of a ``Classifier``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .classifier import Classifier
from .open_set import OLTR_MSP_THRESHOLD, threshold_at_tpr

__all__ = ["evaluate_model", "plot_score_histograms"]


def _collect(clf: Classifier, data: Any, batch_size: int, transform, scores, progress: bool, desc: str) -> dict:
    """``clf._collect`` with a tqdm bar on stderr (images; the total when the data has a length)."""
    if not progress:
        return clf._collect(data, batch_size, transform, scores)
    from tqdm.auto import tqdm

    total = getattr(getattr(data, "dataset", None), "__len__", None) or getattr(data, "__len__", None)
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        total = data[0].__len__
    try:
        n = int(total()) if total is not None else None
    except TypeError:
        n = None
    with tqdm(total=n, desc=desc, unit="img", leave=False, dynamic_ncols=True) as bar:
        return clf._collect(data, batch_size, transform, scores, progress=bar.update)


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
    return_scores: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``clf`` on a labelled test set and, optionally, open-set images.

    ``dataset`` / ``open_dataset`` / ``calibration``: any data form ``Classifier.fit_prototypes`` accepts
    (the open set's labels are ignored). ``transform`` maps loaded float batches to model inputs (e.g.
    ``benchmark.batch_transform(train=False)``); uint8 batches are otherwise normalised with the checkpoint's
    config. Shot groups use ``class_counts`` (default ``clf.class_counts``) and the thresholds/rule.

    Returns ``top1``, ``many``, ``medium``, ``few``, ``per_class`` (lt_accuracy module), ``num_samples``; with
    ``open_dataset`` also ``num_open`` and ``open_set[score]`` = ``auroc``, ``fpr95``, ``f_measure``,
    ``precision``, ``recall``, ``rejected``, ``rejected_known``, ``rejected_open`` and
    ``rejected_known_by_group`` (many / medium / few, by the test image's true class; open_set module) plus
    ``threshold`` and ``threshold_source``, for each score (default: every score the classifier can compute,
    ``clf.available_scores()``). The threshold of a score is, in order: ``thresholds[score]`` ("given"), the
    checkpoint's calibrated threshold ("checkpoint"), the threshold at ``tpr`` on ``calibration`` data
    ("calibration"), 0.1 for msp ("oltr"), else the threshold keeping ``tpr`` of the known TEST images
    ("test_tpr": an oracle summary like FPR95, not a deployable threshold). ``default_score`` names the
    classifier's default (``Classifier.default_score``) and ``default_score_source`` why ("checkpoint default" or
    "fallback (...)"). With ``return_scores`` also ``scores[score] = {"known": array, "open": array}``. With
    ``progress`` a tqdm bar per data set on stderr. Rates are fractions in [0, 1] (the CLI reports them in %).
    """
    if scores is None:
        scores = clf.available_scores()
    for s in scores:
        clf._require(s)
    want = tuple(scores) if open_dataset is not None else ()
    closed = _collect(clf, dataset, batch_size, transform, want, progress, "known images")
    counts = class_counts if class_counts is not None else clf.class_counts
    from ccsam_zoo.data.counts import shot_groups

    groups = shot_groups(counts, (many_threshold, few_threshold), rule) if counts is not None else None
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

    opened = _collect(clf, open_dataset, batch_size, transform, want, progress, "open-set images")
    cal = None
    if calibration is not None:
        cal = _collect(clf, calibration, batch_size, transform, want, progress, "calibration images")
    predictions = torch.cat([closed["predictions"], opened["predictions"]]).numpy()
    references = torch.cat([closed["references"], torch.full_like(opened["references"], -1)]).numpy()
    result["num_open"] = int(opened["references"].numel())
    result["default_score"], result["default_score_source"] = clf._default_and_source()
    result["open_set"] = {}
    saved = clf.open_set or {}
    saved_thresholds = dict(saved.get("thresholds") or {})
    if saved.get("score") and saved.get("threshold") is not None:
        saved_thresholds.setdefault(saved["score"], saved["threshold"])
    for s in want:
        if thresholds and s in thresholds:
            thr, src = float(thresholds[s]), "given"
        elif saved_thresholds.get(s) is not None:
            thr, src = float(saved_thresholds[s]), "checkpoint"
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
            class_groups=groups,
        )
        result["open_set"][s] = {**m, "threshold": thr, "threshold_source": src}
    if return_scores:
        result["scores"] = {s: {"known": closed[s].numpy(), "open": opened[s].numpy()} for s in want}
    return result


def plot_score_histograms(
    scores: dict[str, dict[str, Any]],
    path: Any,
    thresholds: dict[str, float] | None = None,
    default: str | None = None,
) -> Path:
    """PNG of the known vs open score histograms, one panel per score (``return_scores`` form); returns the path.

    Labelled axes (score, density), each score's threshold as a dashed line and the ``default`` score's panel
    and threshold marked (``diagnostics.plots.plot_score_histograms``).
    """
    from ccsam_zoo.diagnostics.plots import plot_score_histograms as plot

    return plot(scores, path, thresholds=thresholds, default=default)
