"""The shipped evaluate metric modules versus independent numpy / sklearn computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from ccsam_zoo.data import shot_groups
from ccsam_zoo.metrics import load_metric

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="module")
def lt_acc():
    return load_metric("lt_accuracy")


@pytest.fixture(scope="module")
def open_set():
    return load_metric("open_set")


def _reference_lt(preds, refs, counts, many, few, rule):
    """Independent loop implementation (OLTR's shot_acc shape, with the rule switch)."""
    per_class = []
    groups = {"many": [], "medium": [], "few": []}
    for c, n in enumerate(counts):
        mask = refs == c
        acc = float((preds[mask] == c).mean()) if mask.any() else None
        per_class.append(acc)
        if acc is None:
            continue
        if rule == "paper":
            g = "many" if n > many else ("few" if n < few else "medium")
        else:
            g = "many" if n >= many else ("few" if n <= few else "medium")
        groups[g].append(acc)
    out = {k: (float(np.mean(v)) if v else None) for k, v in groups.items()}
    out["top1"] = float((preds == refs).mean())
    out["per_class"] = per_class
    return out


@pytest.mark.parametrize("rule", ["paper", "authors"])
def test_lt_accuracy_matches_reference(lt_acc, rule):
    rng = np.random.default_rng(0)
    counts = [500, 100, 99, 50, 21, 20, 19, 3, 100, 20]  # exact thresholds exercise the rule
    refs = rng.integers(0, 10, 1000)
    preds = np.where(rng.random(1000) < 0.6, refs, rng.integers(0, 10, 1000))
    got = lt_acc.compute(predictions=preds, references=refs, class_counts=counts, rule=rule)
    want = _reference_lt(preds, refs, counts, 100, 20, rule)
    for k in ("top1", "many", "medium", "few"):
        assert got[k] == pytest.approx(want[k], abs=1e-12), k
    assert got["per_class"] == pytest.approx(want["per_class"])
    groups = shot_groups(counts, rule=rule)
    if rule == "paper":
        assert groups[1] == "medium" and groups[5] == "medium"
    else:
        assert groups[1] == "many" and groups[5] == "few"


def test_lt_accuracy_group_is_mean_of_class_accuracies(lt_acc):
    # class 0: 1/1 correct, class 1: 1/3 correct; both "many": mean of class accs = 2/3, pooled = 1/2
    got = lt_acc.compute(predictions=[0, 1, 0, 0], references=[0, 1, 1, 1], class_counts=[500, 500])
    assert got["many"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert got["top1"] == pytest.approx(0.5)


def test_lt_accuracy_empty_groups_are_none(lt_acc):
    rng = np.random.default_rng(1)
    refs = rng.integers(0, 10, 300)
    got = lt_acc.compute(predictions=refs, references=refs, class_counts=CIFAR10_LT_100)
    assert got["few"] is None  # CIFAR-10-LT IR100 has no few-shot class by count
    assert got["many"] == 1.0 and got["medium"] == 1.0 and got["top1"] == 1.0
    assert "few" not in shot_groups(CIFAR10_LT_100)


def test_lt_accuracy_class_without_test_samples(lt_acc):
    got = lt_acc.compute(predictions=[0, 0, 2], references=[0, 0, 2], class_counts=[10, 10, 10, 200])
    assert got["per_class"] == [1.0, None, 1.0, None]
    assert got["many"] is None and got["few"] == 1.0


def test_lt_accuracy_without_class_counts(lt_acc):
    got = lt_acc.compute(predictions=[0, 1, 2, -1], references=[0, 1, 2, 2])
    assert got["top1"] == 0.75 and got["many"] is None and got["per_class"] == [1.0, 1.0, 0.5]


def test_lt_accuracy_errors(lt_acc):
    with pytest.raises(ValueError, match="rule"):
        lt_acc.compute(predictions=[0], references=[0], class_counts=[1], rule="bogus")
    with pytest.raises(ValueError, match="out of range"):
        lt_acc.compute(predictions=[0], references=[3], class_counts=[1, 2])


def test_shot_groups():
    assert shot_groups([101, 100, 20, 19]) == ["many", "medium", "medium", "few"]
    assert shot_groups([101, 100, 20, 19], rule="authors") == ["many", "many", "few", "few"]
    assert shot_groups([50], thresholds=(40, 10)) == ["many"]
    with pytest.raises(ValueError, match="rule"):
        shot_groups([1], rule="x")


def _oltr_f_measure(preds, labels):
    """OLTR's utils.F_measure(openset=True), loop form (rejected samples carry pred -1)."""
    tp = fp = fn = 0.0
    for p, y in zip(preds, labels):
        tp += 1 if p == y and y != -1 else 0
        fp += 1 if p != y and y != -1 else 0
        fn += 1 if p != y and y == -1 else 0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall + 1e-12)


def _sk_fpr95(known, scores):
    fpr, tpr, _ = roc_curve(known, scores, drop_intermediate=False)
    return float(fpr[np.searchsorted(tpr, 0.95, side="left")])


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, False)])
def test_open_set_matches_sklearn_and_oltr(open_set, seed, ties):
    rng = np.random.default_rng(seed)
    n_known, n_open = 400, 300
    refs = np.concatenate([rng.integers(0, 5, n_known), -np.ones(n_open, dtype=np.int64)])
    preds = np.where(rng.random(refs.size) < 0.7, np.maximum(refs, 0), rng.integers(0, 5, refs.size))
    scores = np.concatenate([rng.normal(1.0, 1.0, n_known), rng.normal(0.0, 1.0, n_open)])
    if ties:
        scores = np.round(scores, 1)
    thr = 0.3
    got = open_set.compute(predictions=preds, references=refs, scores=scores, threshold=thr)
    known = (refs >= 0).astype(int)
    assert got["auroc"] == pytest.approx(roc_auc_score(known, scores), abs=1e-12)
    assert got["fpr95"] == pytest.approx(_sk_fpr95(known, scores), abs=1e-12)
    rejected_preds = np.where(scores < thr, -1, preds)
    assert got["f_measure"] == pytest.approx(_oltr_f_measure(rejected_preds, refs), abs=1e-9)
    assert got["rejected"] == pytest.approx(float((scores < thr).mean()))


def test_open_set_degenerate_cases(open_set):
    got = open_set.compute(predictions=[0, 1], references=[0, 1], scores=[0.5, 0.7])
    assert got["auroc"] is None and got["fpr95"] is None and got["f_measure"] is None
    perfect = open_set.compute(predictions=[0, 1, 0], references=[0, 1, -1], scores=[0.9, 0.8, 0.1], threshold=0.5)
    assert perfect["auroc"] == 1.0 and perfect["fpr95"] == 0.0 and perfect["f_measure"] == 1.0
    # everything rejected: no true positive, F = 0 (no division by zero)
    none_kept = open_set.compute(predictions=[0, 0], references=[0, -1], scores=[0.1, 0.1], threshold=0.5)
    assert none_kept["f_measure"] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        open_set.compute(predictions=[0, 0], references=[0, -1], scores=[float("nan"), 0.1])


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="lt_accuracy"):
        load_metric("accuracy")


@pytest.mark.parametrize("name", ["lt_accuracy", "open_set"])
def test_metric_scripts_are_package_data_with_one_import_per_line(name):
    import ast
    from importlib.resources import files

    script = files("ccsam_zoo.metrics").joinpath(f"{name}/{name}.py")
    assert script.is_file()
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert len(node.names) == 1, f"{name}.py line {node.lineno}: one import per line (evaluate's loader)"
