"""Inference: the ``Classifier`` module, class prototypes, open-set scores and model evaluation.

clf = Classifier(model, class_names=names, pretrained_cfg=model.pretrained_cfg)
clf.predict(["cat.jpg", "dog.png"], top_k=5)
clf.fit_prototypes(train_set); clf.calibrate(held_out_known, score="cosine", tpr=0.95)
clf.predict(images, open_set=True)          # label "unknown" when the score is below the threshold
evaluate_model(clf, test_set, open_dataset=ood_set)
"""

from ._images import ImageInputError
from .classifier import Classifier
from .evaluation import evaluate_model
from .open_set import SCORES, compute_prototypes, open_set_score, threshold_at_tpr

__all__ = [
    "SCORES",
    "Classifier",
    "ImageInputError",
    "compute_prototypes",
    "evaluate_model",
    "open_set_score",
    "threshold_at_tpr",
]
