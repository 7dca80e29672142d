"""Evaluation metrics shipped as local ``evaluate`` modules (loaded by path, never from the Hub).

- ``load_metric("lt_accuracy")``: top1, many / medium / few (mean of per-class accuracies), per_class.
- ``load_metric("open_set")``: AUROC, FPR at 95% TPR, OLTR F-measure.
- ``shot_groups(class_counts)``: "many" / "medium" / "few" per class, by training count.

``compute`` writes nothing to disk (``keep_in_memory=True``) but still goes through Arrow: call it once per
evaluation, on the main process, after gathering predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRICS", "load_metric", "shot_groups"]

_HERE = Path(__file__).resolve().parent
METRICS = ("lt_accuracy", "open_set")


def load_metric(name: str, **kwargs) -> evaluate.EvaluationModule:
    """Load a shipped metric module by path (offline). ``kwargs`` go to ``evaluate.load``."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; shipped metrics: {', '.join(METRICS)}")
    script = _HERE / name / f"{name}.py"
    if not script.is_file():
        raise FileNotFoundError(f"metric script {script} is missing: reinstall ccsam_zoo")
    import evaluate

    kwargs.setdefault("keep_in_memory", True)
    return evaluate.load(str(script), **kwargs)


def shot_groups(class_counts, many: int = 100, few: int = 20, rule: str = "paper") -> list[str]:
    """Shot group of each class by its TRAINING count.

    ``rule="paper"``: many ``n > many``, few ``n < few``; ``rule="authors"``: many ``n >= many``, few ``n <= few``;
    the rest is medium. Same rule as the lt_accuracy metric.
    """
    if rule not in ("paper", "authors"):
        raise ValueError(f"rule must be 'paper' or 'authors', got {rule!r}")
    if few > many:
        raise ValueError(f"few threshold ({few}) must not exceed many threshold ({many})")
    out = []
    for n in class_counts:
        n = int(n)
        if rule == "paper":
            out.append("many" if n > many else "few" if n < few else "medium")
        else:
            out.append("many" if n >= many else "few" if n <= few else "medium")
    return out
