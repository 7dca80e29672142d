"""Evaluation metrics shipped as local ``evaluate`` modules (loaded by path, never from the Hub).

- ``load_metric("lt_accuracy")``: top1, many / medium / few (mean of per-class accuracies), per_class.
- ``load_metric("open_set")``: AUROC, FPR at 95% TPR, OLTR F-measure.

``compute`` writes nothing to disk (``keep_in_memory=True``) but still goes through Arrow: call it once per
evaluation, on the main process, after gathering predictions. Shot groups: ``ccsam_zoo.data.shot_groups``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

__all__ = ["METRICS", "load_metric"]

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
