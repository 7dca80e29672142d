"""Long-tailed accuracy: top-1, many/medium/few-shot accuracy and per-class accuracy.

An ``evaluate`` metric module shipped with ccsam_zoo; load it by path with ``ccsam_zoo.metrics.load_metric``.
"""

import datasets
import evaluate
import numpy as np

from ccsam_zoo.data.counts import shot_groups

_DESCRIPTION = """
Accuracy for long-tailed recognition. Returns

- ``top1``: overall accuracy (fraction of correct predictions over all test samples, in [0, 1]);
- ``per_class``: accuracy of each class ``c`` in ``range(len(class_counts))`` (``None`` for a class with no
  test sample);
- ``many`` / ``medium`` / ``few``: the UNWEIGHTED MEAN OF PER-CLASS ACCURACIES over the classes of each shot
  group that have at least one test sample (not the pooled accuracy of the group's samples; on a balanced
  test set both agree). A group with no such class gives ``None``, never NaN.

Shot groups come from the TRAINING count ``n`` of each class (``class_counts``):

- ``rule="paper"`` (OLTR paper, ALGORITHM.md): many ``n > many_threshold``, few ``n < few_threshold``;
- ``rule="authors"`` (OLTR/CC-SAM code): many ``n >= many_threshold``, few ``n <= few_threshold``;

everything else is medium. Without ``class_counts`` the groups are ``None`` and the number of classes is
``max(references) + 1``. Predictions outside the class range (e.g. -1 for a rejected sample) count as wrong.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list[int]): predicted class indices.
    references (list[int]): true class indices in ``[0, num_classes)``.
    class_counts (list[int], optional): training images per class; defines ``num_classes`` and the groups.
    many_threshold (int, default 100), few_threshold (int, default 20): shot-group thresholds.
    rule (str, default "paper"): "paper" (strict > / <) or "authors" (>= / <=).
Returns:
    dict with ``top1`` (float), ``many``, ``medium``, ``few`` (float or None), ``per_class`` (list of float or None).
Example:
    >>> m = ccsam_zoo.metrics.load_metric("lt_accuracy")
    >>> m.compute(predictions=[0, 1, 1], references=[0, 1, 0], class_counts=[500, 10])
    {'top1': 0.666..., 'many': 0.5, 'medium': None, 'few': 1.0, 'per_class': [0.5, 1.0]}
"""

_CITATION = """
@inproceedings{zhou2023ccsam,
  title={Class-Conditional Sharpness-Aware Minimization for Deep Long-Tailed Recognition},
  author={Zhou, Zhipeng and Li, Lanqing and Zhao, Peilin and Heng, Pheng-Ann and Gong, Wei},
  booktitle={CVPR}, year={2023}}
@inproceedings{liu2019oltr,
  title={Large-Scale Long-Tailed Recognition in an Open World},
  author={Liu, Ziwei and Miao, Zhongqi and Zhan, Xiaohang and Wang, Jiayun and Gong, Boqing and Yu, Stella X.},
  booktitle={CVPR}, year={2019}}
"""

_RULES = ("paper", "authors")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LtAccuracy(evaluate.Metric):
    """Top-1, many/medium/few-shot (mean of per-class accuracies) and per-class accuracy."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(
        self,
        predictions,
        references,
        class_counts=None,
        many_threshold: int = 100,
        few_threshold: int = 20,
        rule: str = "paper",
    ) -> dict:
        if rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}, got {rule!r}")
        preds = np.asarray(predictions, dtype=np.int64).reshape(-1)
        refs = np.asarray(references, dtype=np.int64).reshape(-1)
        if refs.size == 0:
            raise ValueError("lt_accuracy: no predictions to evaluate")
        if refs.min() < 0:
            raise ValueError("lt_accuracy: references must be class indices >= 0 (open-set samples belong in open_set)")
        if class_counts is not None:
            counts = [int(c) for c in class_counts]
            num_classes = len(counts)
            if refs.max() >= num_classes:
                raise ValueError(
                    f"lt_accuracy: reference {int(refs.max())} out of range for {num_classes} classes (class_counts)"
                )
        else:
            counts, num_classes = None, int(refs.max()) + 1
        correct = preds == refs
        hits = np.bincount(refs[correct], minlength=num_classes)
        totals = np.bincount(refs, minlength=num_classes)
        per_class = [float(hits[c] / totals[c]) if totals[c] else None for c in range(num_classes)]
        out = {"top1": float(correct.mean()), "many": None, "medium": None, "few": None}
        if counts is not None:
            groups = shot_groups(counts, (many_threshold, few_threshold), rule)
            for name in ("many", "medium", "few"):
                accs = [per_class[c] for c in range(num_classes) if per_class[c] is not None and groups[c] == name]
                out[name] = float(np.mean(accs)) if accs else None
        out["per_class"] = per_class
        return out
