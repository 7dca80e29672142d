"""Open-set scores and statistics against independent numpy computations; calibration; checkpoints; outputs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import timm
import torch

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.inference import Classifier, OpenSetStats, class_thresholds_at_tpr, open_set_score
from ccsam_zoo.inference.open_set import log_pvalue
from ccsam_zoo.inference.open_set_stats import StatsAccumulator, channel_statistics

NAMES = ["airplane", "automobile", "bird", "cat"]


def _np_logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=1, keepdims=True)))[:, 0]


def _fit(z: np.ndarray, logits: np.ndarray, y: np.ndarray, stages: list[np.ndarray], **kw) -> OpenSetStats:
    """Statistics streamed in uneven batches (the result must not depend on the batching)."""
    acc = StatsAccumulator(int(y.max()) + 1, **kw)
    for lo, hi in ((0, 7), (7, 60), (60, len(y))):
        acc.update(torch.tensor(z[lo:hi]), torch.tensor(logits[lo:hi]), torch.tensor(y[lo:hi]),
                   [torch.tensor(s[lo:hi]) for s in stages])  # fmt: skip
    return acc.finish([f"s{i}" for i in range(len(stages))])[0]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n, d, c = 150, 5, 3
    y = np.arange(n) % c
    z = rng.normal(size=(n, d)) + 2.0 * np.eye(c, d)[y]
    logits = rng.normal(size=(n, c)) * 3
    stages = [rng.normal(size=(n, 4)), rng.gamma(2.0, size=(n, 6))]
    return dict(z=z, y=y, logits=logits, stages=stages, n=n, c=c)


def test_logit_scores_match_numpy(data):
    lg = data["logits"]
    e = np.exp(lg - lg.max(axis=1, keepdims=True))
    want = {"msp": (e / e.sum(1, keepdims=True)).max(1), "max_logit": lg.max(1), "energy": _np_logsumexp(lg)}
    for name, ref in want.items():
        got = open_set_score(name, logits=torch.tensor(lg, dtype=torch.float32)).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)


def test_mahalanobis_matches_numpy_covariance_and_solve(data):
    z, y, c = data["z"], data["y"], data["c"]
    stats = _fit(z, data["logits"], y, data["stages"])
    means = np.stack([z[y == k].mean(0) for k in range(c)])
    centred = z - means[y]
    cov = np.cov(centred.T, bias=True)  # tied (shared) covariance of the class-centred features
    np.testing.assert_allclose(stats.class_means.numpy(), means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.precision.numpy() @ cov, np.eye(z.shape[1]), atol=1e-4)
    q = np.random.default_rng(1).normal(size=(9, z.shape[1])) * 2
    dist = np.stack([np.einsum("nd,nd->n", q - means[k], np.linalg.solve(cov, (q - means[k]).T).T) for k in range(c)])
    got = open_set_score("mahalanobis", features=torch.tensor(q, dtype=torch.float32), stats=stats).numpy()
    np.testing.assert_allclose(got, -dist.min(0), rtol=1e-4, atol=1e-4)


def test_knn_matches_brute_force_sort(data):
    z, y = data["z"], data["y"]
    stats = _fit(z, data["logits"], y, data["stages"], bank_size=40, reference_size=60, k=3, seed=5)
    bank = stats.bank.float().numpy()
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert bank.shape == (40, z.shape[1]) and stats.k == 3
    # the bank is a subsample of the normalised training features (stored as float16)
    nearest = np.abs(bank[:, None, :] - unit[None]).max(2).min(1)
    assert nearest.max() < 2e-3
    q = np.random.default_rng(2).normal(size=(11, z.shape[1]))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    want = -np.sort(np.linalg.norm(qn[:, None, :] - bn[None], axis=2), axis=1)[:, 2]
    got = open_set_score("knn", features=torch.tensor(q, dtype=torch.float32), stats=stats).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_channel_statistics_match_numpy():
    x = np.random.default_rng(3).gamma(1.5, size=(2, 20, 3, 4)).astype(np.float32)
    got = channel_statistics(torch.tensor(x), corr_channels=5).numpy()
    flat = x.reshape(2, 20, -1)
    mean, std = flat.mean(2), flat.std(2)
    corr = np.stack([np.corrcoef(flat[b, :5]) for b in range(2)])
    iu = np.triu_indices(5, 1)
    want = np.concatenate([mean, np.log(std + 1e-3), corr[:, iu[0], iu[1]]], axis=1)
    assert got.shape == (2, 20 + 20 + 10)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_layer_stats_fisher_and_combined_scores(data):
    z, y, logits, stages = data["z"], data["y"], data["logits"], data["stages"]
    stats = _fit(z, logits, y, stages, reference_size=100, seed=7)
    ref = stats.references
    assert all(len(ref[k]) == 100 for k in ("max_logit", "stage:s0", "stage:s1", "layer_stats"))

    def pval(reference: np.ndarray, x: np.ndarray) -> np.ndarray:  # brute-force count
        return np.log(((reference[None, :] <= x[:, None]).sum(1) + 1) / (len(reference) + 1))

    q = [np.random.default_rng(4).normal(size=(6, s.shape[1])) * 3 for s in stages]
    fisher = 0.0
    for i, s in enumerate(stages):
        mu, prec = stats.stage_means[i].double().numpy(), stats.stage_precisions[i].double().numpy()
        np.testing.assert_allclose(mu, s.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prec @ np.cov(s.T, bias=True), np.eye(s.shape[1]), atol=1e-4)
        d = np.einsum("nd,de,ne->n", q[i] - mu, prec, q[i] - mu)
        fisher = fisher + pval(ref[f"stage:s{i}"].double().numpy(), -d)
    ql = np.random.default_rng(5).normal(size=(6, data["c"])) * 3
    kw = dict(logits=torch.tensor(ql, dtype=torch.float32), stats=stats, stage_features=[torch.tensor(a) for a in q])
    np.testing.assert_allclose(open_set_score("layer_stats", **kw).numpy(), fisher, atol=1e-9)
    combined = pval(ref["max_logit"].double().numpy(), ql.astype(np.float32).max(1).astype(np.float64))
    combined += pval(ref["layer_stats"].double().numpy(), fisher)
    np.testing.assert_allclose(open_set_score("max_logit+layer_stats", **kw).numpy(), combined, atol=1e-9)
    # p-values are floored at 1 / (n + 1) and capped at 1
    r = torch.tensor([1.0, 2.0, 3.0])
    assert log_pvalue(r, torch.tensor([0.0, 2.0, 9.0])).exp().tolist() == pytest.approx([0.25, 0.75, 1.0])


def test_statistics_round_trip_through_tensors(data):
    stats = _fit(data["z"], data["logits"], data["y"], data["stages"], bank_size=32, reference_size=64)
    tensors, meta = stats.to_tensors()
    assert tensors["bank"].dtype == torch.float16 and meta["stages"] == "s0,s1"
    back = OpenSetStats.from_tensors(tensors, meta)
    q = torch.tensor(data["z"][:5], dtype=torch.float32)
    for name in ("mahalanobis", "knn"):
        torch.testing.assert_close(
            open_set_score(name, features=q, stats=back), open_set_score(name, features=q, stats=stats)
        )
    assert back.nbytes() == stats.nbytes() == sum(t.numel() * t.element_size() for t in tensors.values())
    with pytest.raises(ValueError, match="lack tensors"):
        OpenSetStats.from_tensors({k: v for k, v in tensors.items() if k != "precision"}, meta)


def test_class_thresholds_fall_back_for_rare_predictions():
    s = torch.arange(100, dtype=torch.float64)
    pred = torch.cat([torch.zeros(90), torch.ones(10)]).long()  # class 2 never predicted
    t = class_thresholds_at_tpr(s, pred, 3, tpr=0.9, min_count=20)
    assert t[0] == 9.0  # keeps 81 of the 90 class-0 scores 0..89
    assert t[1] == t[2] == 10.0  # too few: the global threshold (keeps 90 of 100)


# --------------------------------------------------------------------------------------------- classifier level
def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, 3, 1, 1), generator=g).expand(n, 3, 32, 32)
    noise = torch.randint(-40, 40, (n, 3, 32, 32), generator=g)
    return (base + noise).clamp(0, 255).to(torch.uint8)  # smooth-ish coloured images


@pytest.fixture(scope="module")
def fitted() -> Classifier:
    torch.manual_seed(0)
    m = timm.create_model("resnet20_cifar", num_classes=4).eval()
    with torch.no_grad():
        m.fc.weight.mul_(0.05)
    clf = Classifier(m, class_names=NAMES, class_counts=[60, 30, 20, 10], pretrained_cfg=dict(m.pretrained_cfg))
    clf.fit_open_set((_images(120, 0), torch.arange(120) % 4), batch_size=50, bank_size=64, reference_size=100)
    return clf


def test_calibration_hits_its_tpr_on_known_validation_images(fitted):
    val, y = _images(80, 1), torch.arange(80) % 4
    cal = fitted.calibrate((val, y), tpr=0.9, per_class=True, min_per_class=5)
    assert cal["score"] == "max_logit+layer_stats" and set(cal["thresholds"]) == set(fitted.available_scores())
    got = fitted._collect((val, y), 64, None, fitted.available_scores())
    for name, thr in cal["thresholds"].items():
        s = got[name]
        assert float((s >= thr).double().mean()) >= 0.9, name  # hits the TPR ...
        assert float((s > thr).double().mean()) < 0.9, name  # ... with the largest such threshold
    pred = got["predictions"]
    for c, thr in enumerate(cal["class_thresholds"]):
        sc = got[cal["score"]][pred == c]
        if len(sc) >= 5:
            assert float((sc >= thr).double().mean()) >= 0.9
    fitted.open_set = None


def test_checkpoint_without_statistics_gives_a_clear_error(fitted, tmp_path):
    from ccsam_zoo.hub import CheckpointError, from_pretrained, save_pretrained

    info = dict(class_names=NAMES, class_counts=[60, 30, 20, 10], stage="stage2", method={"name": "ce"},
                recipe={}, metrics={}, dataset="toy", prototypes=fitted.prototypes,
                open_set={"score": "cosine", "threshold": 0.5, "tpr": 0.95})  # fmt: skip
    save_pretrained(fitted.model, tmp_path / "bare", info=info)
    bare = from_pretrained(tmp_path / "bare")
    assert bare.open_set_stats is None and "mahalanobis" not in bare.available_scores()
    for score in ("mahalanobis", "knn", "max_logit+layer_stats"):
        with pytest.raises(
            ValueError, match=rf"'{re.escape(score)}' needs .*open_set_stats\.safetensors.*fit_open_set"
        ):
            bare.predict(_images(1, 2), open_set=True, score=score, threshold=0.0)
    # with the statistics: saved, listed in ccsam_zoo.json and loaded back to identical scores
    save_pretrained(fitted.model, tmp_path / "full", info={**info, "open_set_stats": fitted.open_set_stats})
    entry = json.loads((tmp_path / "full" / "ccsam_zoo.json").read_text())["open_set_stats"]
    size = (tmp_path / "full" / "open_set_stats.safetensors").stat().st_size
    assert entry["file"] == "open_set_stats.safetensors" and entry["bytes"] == size
    full = from_pretrained(tmp_path / "full")
    x = full.preprocess(_images(3, 3))
    for score in ("mahalanobis", "knn", "layer_stats", "max_logit+layer_stats"):
        torch.testing.assert_close(full.open_set_scores(x, score), fitted.open_set_scores(x, score))
    (tmp_path / "full" / "open_set_stats.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"open_set_stats\.safetensors"):
        from_pretrained(tmp_path / "full")


def test_rejected_prediction_reports_nearest_class_score_and_threshold(fitted):
    imgs = _images(4, 4)
    with torch.no_grad():
        probs = fitted(fitted.preprocess(imgs)).softmax(1)
    kept = fitted.predict(imgs, open_set=True, score="msp", threshold=0.0)
    rejected = fitted.predict(imgs, open_set=True, score="msp", threshold=1.01, top_k=2)
    for r, k, p in zip(rejected, kept, probs):
        assert r["label"] == "unknown" and r["known"] is False and r["class_index"] is None
        assert r["probability"] is None and r["score_type"] == "msp" and r["threshold"] == 1.01
        assert r["nearest_class"] == NAMES[int(p.argmax())] == k["label"] and r["nearest_index"] == int(p.argmax())
        assert r["nearest_probability"] == pytest.approx(float(p.max()), abs=1e-5) == r["score"]
        assert k["known"] is True and "nearest_class" not in k and k["class_index"] == r["nearest_index"]
