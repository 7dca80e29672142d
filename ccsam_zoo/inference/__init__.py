"""Inference: the ``Classifier`` module, open-set scores and statistics, and model evaluation.

clf = Classifier(model, class_names=names, pretrained_cfg=model.pretrained_cfg)
clf.predict(["cat.jpg", "dog.png"], top_k=5)
clf.fit_open_set(train_set); clf.calibrate(held_out_known)   # prototypes + statistics, then thresholds
clf.predict(images, open_set=True)          # label "unknown" when the score is below the threshold
evaluate_model(clf, test_set, open_dataset=ood_set)
"""

from ._images import ImageInputError, LargeImageWarning
from .classifier import Classifier
from .evaluation import evaluate_model, plot_score_histograms
from .open_set import (
    DEFAULT_SCORE,
    SCORES,
    class_thresholds_at_tpr,
    compute_prototypes,
    open_set_score,
    threshold_at_tpr,
)
from .open_set_stats import OpenSetStats

__all__ = [
    "DEFAULT_SCORE",
    "SCORES",
    "Classifier",
    "ImageInputError",
    "LargeImageWarning",
    "OpenSetStats",
    "class_thresholds_at_tpr",
    "compute_prototypes",
    "evaluate_model",
    "open_set_score",
    "plot_score_histograms",
    "threshold_at_tpr",
]
