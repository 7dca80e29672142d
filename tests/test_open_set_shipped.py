"""The shipped model's open-set statistics and default score (docs/RESULTS.md, section 2)."""

from __future__ import annotations

import json

import pytest
import torch

import ccsam_zoo
from ccsam_zoo.hub.registry import ASSETS_DIR
from ccsam_zoo.inference import SCORES
from ccsam_zoo.inference.open_set import select_default_score

FOLDER = ASSETS_DIR / "ccsam-cifar10-lt-cpu"
# the default this folder stores, chosen by open_set.DEFAULT_RULE on its stored selection metrics
DEFAULT_SCORE = json.loads((FOLDER / "ccsam_zoo.json").read_text())["open_set"]["score"]


@pytest.fixture(scope="module")
def clf():
    return ccsam_zoo.from_pretrained("ccsam-cifar10-lt-cpu")


def test_shipped_statistics_and_thresholds(clf):
    extras = json.loads((FOLDER / "ccsam_zoo.json").read_text())
    size = (FOLDER / "open_set_stats.safetensors").stat().st_size
    assert extras["open_set_stats"]["bytes"] == size < 1_000_000
    assert sum(p.stat().st_size for p in FOLDER.iterdir()) < 3_000_000
    assert clf.available_scores() == SCORES and clf.default_score() == DEFAULT_SCORE
    assert select_default_score(extras["open_set"]["selection"]) == (DEFAULT_SCORE, True)
    assert set(clf.open_set["thresholds"]) == set(SCORES) and clf.open_set["tpr"] == 0.95
    assert clf.open_set_stats.num_train == sum(extras["class_counts"])


def test_shipped_default_rejects_noise_and_constant_images(clf):
    g = torch.Generator().manual_seed(123)
    noise = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    constant = torch.randint(0, 256, (16, 3, 1, 1), generator=g, dtype=torch.uint8).expand(16, 3, 32, 32)
    res = clf.predict(torch.cat([noise, constant]), open_set=True)
    assert all(r["label"] == "unknown" and r["score_type"] == DEFAULT_SCORE for r in res)
    # the old default accepted noise: the cosine score of most of these images clears its own threshold
    cos = clf.predict(noise, open_set=True, score="cosine")
    assert sum(r["known"] for r in cos) >= 8


@pytest.mark.slow
def test_shipped_default_beats_msp_on_the_report_half(clf, cifar10_dir, ood_dir):
    """Report half of tinyimagenet_ood (seed 0 permutation) against the CIFAR-10 test split, sklearn's AUROC."""
    from sklearn.metrics import roc_auc_score

    from ccsam_zoo.data import build_benchmark

    bench = build_benchmark("cifar10_lt", str(cifar10_dir), 100, open_source=str(ood_dir))
    report = torch.randperm(len(bench.open), generator=torch.Generator().manual_seed(0))[len(bench.open) // 2 :]
    opened = (bench.open.images[report], torch.full((len(report),), -1))
    auroc = {}
    known = clf._collect(bench.test, 500, None, ["msp", DEFAULT_SCORE])
    unknown = clf._collect(opened, 500, None, ["msp", DEFAULT_SCORE])
    for s in ("msp", DEFAULT_SCORE):
        y = [1] * len(known[s]) + [0] * len(unknown[s])
        auroc[s] = roc_auc_score(y, torch.cat([known[s], unknown[s]]).numpy())
    assert auroc[DEFAULT_SCORE] > auroc["msp"] + 0.03, auroc
