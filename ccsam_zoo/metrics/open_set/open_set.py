"""Open-set recognition metrics (OLTR protocol): AUROC, FPR at 95% TPR and the OLTR F-measure.

An ``evaluate`` metric module shipped with ccsam_zoo; load it by path with ``ccsam_zoo.metrics.load_metric``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Open-set metrics over a closed test set (labels >= 0, "known") plus open images (label -1, "open").
``scores`` are known-ness scores: HIGHER = MORE LIKELY KNOWN (e.g. max softmax probability, max cosine
similarity to a class prototype). Returns

- ``auroc``: area under the ROC curve of known (positive) versus open (negative) by ``scores``
  (``None`` when only one of the two kinds is present);
- ``fpr95``: the fraction of open samples with ``score >= t``, where ``t`` is the largest threshold keeping
  at least 95% of the known samples (``score >= t``); ``None`` when one kind is missing;
- with ``threshold`` (samples with ``score < threshold`` are rejected, i.e. predicted "open"), the OLTR
  F-measure ``f_measure = 2PR / (P + R)`` with ``P = TP / (TP + FP)``, ``R = TP / (TP + FN)`` and
  TP = known and correctly classified (not rejected), FP = known and misclassified OR rejected,
  FN = open and not rejected (as OLTR's ``utils.F_measure``); also ``precision``, ``recall``,
  ``rejected`` (fraction of all samples rejected), ``rejected_known`` and ``rejected_open`` (fraction of the
  known / open samples rejected) and, with ``class_groups`` (a group name per class, e.g. many / medium /
  few by training count), ``rejected_known_by_group``: the fraction of known samples of each group (by TRUE
  class) rejected, ``None`` for a group without known samples. Without ``threshold`` these are ``None``.
  ``threshold`` may be one value or one per class (class-conditional thresholds, applied by PREDICTED class).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[int]): closed-set predicted class (argmax) of every sample, known and open.
    references (list[int]): true class, -1 for open-set samples.
    scores (list[float]): known-ness score per sample, higher = more likely known.
    threshold (float or list[float], optional): reject samples with ``score < threshold`` (per predicted
        class when a list) for the F-measure and the rejection rates.
    class_groups (list[str], optional): group name of each class for ``rejected_known_by_group``.
Returns:
    dict with ``auroc``, ``fpr95``, ``f_measure``, ``precision``, ``recall``, ``rejected``, ``rejected_known``,
    ``rejected_open`` (float or None) and ``rejected_known_by_group`` (dict or None).
Example:
    >>> m = ccsam_zoo.metrics.load_metric("open_set")
    >>> m.compute(predictions=[0, 1, 0], references=[0, 1, -1], scores=[0.9, 0.8, 0.2], threshold=0.5)
"""

_CITATION = """
@inproceedings{liu2019oltr,
  title={Large-Scale Long-Tailed Recognition in an Open World},
  author={Liu, Ziwei and Miao, Zhongqi and Zhan, Xiaohang and Wang, Jiayun and Gong, Boqing and Yu, Stella X.},
  booktitle={CVPR}, year={2019}}
"""


def _auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC with ties counted as 1/2 (equals sklearn.metrics.roc_auc_score)."""
    both = np.concatenate([pos, neg])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size, dtype=np.float64)
    sorted_scores = both[order]
    # average ranks of tied values (1-based)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def _fpr_at_tpr(pos: np.ndarray, neg: np.ndarray, tpr: float = 0.95) -> float:
    k = int(np.ceil(round(tpr * pos.size, 9)))
    t = np.sort(pos)[::-1][max(k, 1) - 1]
    return float((neg >= t).mean())


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class OpenSet(evaluate.Metric):
    """AUROC, FPR at 95% TPR and the OLTR open-set F-measure."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                    "scores": datasets.Value("float64"),
                }
            ),
        )

    def _compute(self, predictions, references, scores, threshold=None, class_groups=None) -> dict:
        preds = np.asarray(predictions, dtype=np.int64).reshape(-1)
        refs = np.asarray(references, dtype=np.int64).reshape(-1)
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if refs.size == 0:
            raise ValueError("open_set: no samples to evaluate")
        if not np.isfinite(s).all():
            raise ValueError("open_set: scores contain NaN or infinite values")
        known = refs >= 0
        pos, neg = s[known], s[~known]
        out = {"auroc": None, "fpr95": None}
        if pos.size and neg.size:
            out["auroc"] = _auroc(pos, neg)
            out["fpr95"] = _fpr_at_tpr(pos, neg, 0.95)
        out.update(
            f_measure=None,
            precision=None,
            recall=None,
            rejected=None,
            rejected_known=None,
            rejected_open=None,
            rejected_known_by_group=None,
        )
        if threshold is not None:
            thr = np.asarray(threshold, dtype=np.float64)
            if thr.ndim == 1:
                if preds.size and (preds.min() < 0 or preds.max() >= thr.size):
                    raise ValueError(f"open_set: {thr.size} class thresholds but predictions outside [0, {thr.size})")
                thr = thr[preds]
            elif thr.ndim != 0:
                raise ValueError("open_set: threshold must be a number or a list with one value per class")
            rejected = s < thr
            tp = int(np.sum(known & ~rejected & (preds == refs)))
            fp = int(np.sum(known & (rejected | (preds != refs))))
            fn = int(np.sum(~known & ~rejected))
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn) if tp + fn else 0.0
            out.update(
                f_measure=2 * p * r / (p + r) if p + r else 0.0,
                precision=p,
                recall=r,
                rejected=float(rejected.mean()),
                rejected_known=float(rejected[known].mean()) if known.any() else None,
                rejected_open=float(rejected[~known].mean()) if (~known).any() else None,
            )
            if class_groups is not None:
                groups = np.asarray([str(g) for g in class_groups])
                if known.any() and refs[known].max() >= groups.size:
                    raise ValueError(f"open_set: {groups.size} class groups but references up to {refs[known].max()}")
                true_group = groups[refs[known]]
                rej_known = rejected[known]
                out["rejected_known_by_group"] = {
                    g: float(rej_known[true_group == g].mean()) if (true_group == g).any() else None
                    for g in dict.fromkeys(groups.tolist())
                }
        return out
