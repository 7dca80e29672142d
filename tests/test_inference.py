"""Classifier: prototypes, open-set scores, calibration, predict on every input kind, bad inputs, evaluation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.inference import Classifier, compute_prototypes, evaluate_model, open_set_score, threshold_at_tpr
from ccsam_zoo.models import CIFAR_MEAN, CIFAR_STD

NAMES = ["airplane", "automobile", "bird", "cat"]
MEAN = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR_STD).view(3, 1, 1)


def _model(num_classes: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = timm.create_model("resnet20_cifar", num_classes=num_classes)
    with torch.no_grad():
        m.fc.weight.mul_(0.02)  # keep softmax away from saturation so probabilities are informative
    return m.eval()


@pytest.fixture(scope="module")
def clf() -> Classifier:
    m = _model()
    return Classifier(m, class_names=NAMES, class_counts=[500, 120, 40, 10], pretrained_cfg=dict(m.pretrained_cfg))


def _norm(u8: torch.Tensor) -> torch.Tensor:
    """Independent preprocessing of a 32x32 uint8 batch (resize / crop are identities at 32 px)."""
    return (u8.float() / 255.0 - MEAN) / STD


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def _softmax(clf: Classifier, u8: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clf.model(_norm(u8)).softmax(dim=1)


def _check_result(r: dict, probs: torch.Tensor, k: int = 3) -> None:
    order = probs.argsort(descending=True)[:k]
    assert [name for name, _ in r["top_k"]] == [NAMES[i] for i in order]
    assert [p for _, p in r["top_k"]] == pytest.approx(probs[order].tolist(), abs=1e-5)
    assert r["label"] == NAMES[order[0]] and r["probability"] == pytest.approx(float(probs[order[0]]), abs=1e-5)


# ------------------------------------------------------------------------------------------ prototypes / scores
def test_compute_prototypes_matches_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 8)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    got = compute_prototypes(torch.from_numpy(z), torch.from_numpy(y), 3).numpy()
    for c in range(3):
        zc = z[y == c] / np.linalg.norm(z[y == c], axis=1, keepdims=True)
        m = zc.mean(axis=0)
        np.testing.assert_allclose(got[c], m / np.linalg.norm(m), atol=1e-6)


def test_compute_prototypes_missing_class_warns_and_is_ignored():
    z, y = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.warns(UserWarning, match="no samples for classes"):
        p = compute_prototypes(z, y, 2)
    assert torch.all(p[1] == 0)
    s = open_set_score("cosine", features=z, prototypes=p)
    torch.testing.assert_close(s, F.normalize(z, dim=1) @ p[0])


def test_scores_match_hand_formulas():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(7, 5))
    logits = rng.normal(size=(7, 3)) * 3
    p = rng.normal(size=(3, 5))
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    zh = z / np.linalg.norm(z, axis=1, keepdims=True)
    cos = np.array([max(float(zh[i] @ p[c]) for c in range(3)) for i in range(7)])
    dist = np.array([min(float(np.linalg.norm(zh[i] - p[c])) for c in range(3)) for i in range(7)])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    msp = (e / e.sum(axis=1, keepdims=True)).max(axis=1)
    want = {
        "cosine": cos,
        "euclidean": -dist,
        "reachability": 10.0 / dist,
        "msp": msp,
        "hybrid": ((cos + 1) / 2 + (msp - 1 / 3) / (1 - 1 / 3)) / 2,
    }
    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in dict(z=z, logits=logits, p=p).items()}
    for name, ref in want.items():
        got = open_set_score(name, features=t["z"], logits=t["logits"], prototypes=t["p"]).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="fit_prototypes"):
        open_set_score("cosine", features=t["z"], logits=t["logits"])
    with pytest.raises(ValueError, match="unknown open-set score"):
        open_set_score("entropy", logits=t["logits"])


@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5])
def test_threshold_at_tpr_hits_target(tpr):
    rng = np.random.default_rng(2)
    for s in (rng.normal(size=1000), np.round(rng.normal(size=333), 1)):  # continuous and heavily tied
        thr = threshold_at_tpr(s, tpr)
        rate = float(np.mean(s >= thr))
        assert rate >= tpr
        assert float(np.mean(s > thr)) < tpr  # the largest such threshold
        if len(np.unique(s)) == len(s):
            assert rate < tpr + 1.0 / len(s) + 1e-12


# ------------------------------------------------------------------------------------------ classifier basics
def test_forward_features_device(clf):
    x = _norm(_images(4))
    with torch.no_grad():
        torch.testing.assert_close(clf(x), clf.model(x))
        z = clf.features(x)
    assert z.shape == (4, 64) and clf.device == torch.device("cpu") and not clf.training
    clf.train()
    assert not clf.training and not clf.model.training
    assert clf.class_names == NAMES and clf.class_counts == [500, 120, 40, 10]
    with pytest.raises(ValueError, match="class names"):
        Classifier(_model(), class_names=["a"], pretrained_cfg={})


def test_fit_prototypes_every_data_form(clf):
    u8, y = _images(24, seed=3), torch.arange(24) % 4
    with torch.no_grad():
        want = compute_prototypes(clf.features(_norm(u8)), y, 4)

    class Split(torch.utils.data.Dataset):  # a tensor split: .images uint8 + .labels
        images, labels = u8, y

        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return self.images[i], self.labels[i]

    class Normalised(torch.utils.data.Dataset):  # yields already-normalised tensors
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return _norm(u8[i : i + 1])[0], int(y[i])

    loader = torch.utils.data.DataLoader(Normalised(), batch_size=8)
    for data in ((u8, y), Split(), Normalised(), loader):
        got = clf.fit_prototypes(data, batch_size=8)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert clf.prototypes.shape == (4, 64)


def test_calibrate_and_open_set_predict(clf):
    u8, y = _images(40, seed=4), torch.arange(40) % 4
    clf.fit_prototypes((u8, y))
    cal = clf.calibrate((u8, y), score="cosine", tpr=0.9)
    with torch.no_grad():
        s = open_set_score("cosine", features=clf.features(_norm(u8)), prototypes=clf.prototypes)
    assert cal["score"] == "cosine" and cal["tpr"] == 0.9
    assert cal["threshold"] == pytest.approx(threshold_at_tpr(s, 0.9))
    # every score this model can compute gets its own threshold at the same TPR
    assert set(cal["thresholds"]) == {"msp", "max_logit", "energy", "cosine", "euclidean", "reachability", "hybrid"}
    assert cal["thresholds"]["cosine"] == cal["threshold"] and clf.open_set["threshold"] == cal["threshold"]
    with torch.no_grad():
        logits = clf.model(_norm(u8))
    assert cal["thresholds"]["max_logit"] == pytest.approx(threshold_at_tpr(logits.amax(1), 0.9), abs=1e-5)
    res = clf.predict(u8, open_set=True)
    known = [r["known"] for r in res]
    assert np.mean(known) >= 0.9
    for r, si in zip(res, s.tolist()):
        assert r["score"] == pytest.approx(si, abs=1e-5) and r["score_type"] == "cosine"
        assert r["threshold"] == cal["threshold"] and r["known"] == (r["score"] >= r["threshold"])
        assert (r["label"] == "unknown") == (not r["known"])
    # images (not a dataset) work as calibration input too
    assert clf.calibrate(list(u8), score="cosine", tpr=0.9)["threshold"] == pytest.approx(cal["threshold"], abs=1e-6)
    # OLTR's fixed softmax threshold
    want = {"score": "msp", "threshold": 0.1, "tpr": None, "thresholds": {"msp": 0.1}}
    assert clf.calibrate(score="msp", threshold=0.1) == want
    res = clf.predict(u8[:3], open_set=True)
    assert all(r["score_type"] == "msp" and r["threshold"] == 0.1 for r in res)
    res = clf.predict(u8[:3], open_set=True, score="msp", threshold=1.01)
    assert all(r["label"] == "unknown" and not r["known"] for r in res)
    with pytest.raises(ValueError, match=r"no open-set threshold for score 'euclidean'.*calibrate.*--threshold"):
        clf.predict(u8[:1], open_set=True, score="euclidean")


def test_open_set_without_prototypes_says_how_to_fit(clf):
    bare = Classifier(_model(), class_names=NAMES, pretrained_cfg={})
    with pytest.raises(ValueError, match=r"clf\.fit_prototypes\(train_dataset\)"):
        bare.predict(_images(1), open_set=True, score="cosine")
    with pytest.raises(ValueError, match="fit_prototypes"):
        bare.calibrate(_images(2), score="cosine")
    # without prototypes or statistics the default is msp with OLTR's fixed threshold (it needs nothing)
    r = bare.predict(_images(1), open_set=True)[0]
    assert r["score_type"] == "msp" and r["threshold"] == 0.1


# ------------------------------------------------------------------------------------------ predict inputs
def _png(path, arr: np.ndarray, mode: str | None = None) -> str:
    Image.fromarray(arr, mode=mode).save(path)
    return str(path)


def test_predict_every_input_kind(clf, tmp_path):
    u8 = _images(6, seed=5)
    probs = _softmax(clf, u8)
    hwc = u8.permute(0, 2, 3, 1).numpy()
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = [_png(folder / f"{i}.png", hwc[i]) for i in range(3)]
    (folder / "notes.txt").write_text("not an image")  # ignored by folder expansion
    cases = {
        "paths": (paths, [0, 1, 2]),
        "dir": ([str(folder)], [0, 1, 2]),
        "pil": ([Image.fromarray(hwc[i]) for i in range(3)], [0, 1, 2]),
        "numpy_hwc_uint8": ([hwc[3], hwc[4]], [3, 4]),
        "numpy_bhwc": (hwc[:2], [0, 1]),
        "numpy_float": ([hwc[5].astype(np.float32) / 255.0], [5]),
        "tensor_chw_uint8": (u8[2], [2]),
        "tensor_bchw_uint8": (u8, list(range(6))),
        "tensor_bchw_float": (u8.float() / 255.0, list(range(6))),
        "mixed": ([paths[0], u8[1], Image.fromarray(hwc[2])], [0, 1, 2]),
    }
    for name, (inp, idx) in cases.items():
        res = clf.predict(inp, top_k=3, batch_size=4)
        assert len(res) == len(idx), name
        for r, i in zip(res, idx):
            _check_result(r, probs[i])
            assert sum(p for _, p in r["top_k"]) <= 1 + 1e-6
    assert [r["source"] for r in clf.predict([str(folder)])] == paths
    assert [r["source"] for r in clf.predict(u8[:3])] == [0, 1, 2]
    full = clf.predict(u8[:1], top_k=100)[0]["top_k"]
    assert len(full) == 4 and sum(p for _, p in full) == pytest.approx(1.0, abs=1e-5)


def test_predict_converts_modes(clf, tmp_path):
    gray = np.random.default_rng(6).integers(0, 256, (32, 32), dtype=np.uint8)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    ref = clf.predict(Image.fromarray(rgb), top_k=4)[0]["top_k"]
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 7, np.uint8)], axis=2)
    i16 = Image.fromarray(gray.astype(np.uint16) * 257)  # 16-bit grayscale, full range
    i16_path = tmp_path / "g16.png"
    i16.save(i16_path)
    assert Image.open(i16_path).mode.startswith("I")
    pal = Image.fromarray(gray, mode="P")
    pal.putpalette([v for i in range(256) for v in (i, i, i)])  # palette image with a gray palette
    inputs = [
        Image.fromarray(gray, mode="L"),
        Image.fromarray(rgba, mode="RGBA"),
        i16,
        str(i16_path),
        gray,  # HW numpy
        gray.astype(np.uint16) * 257,  # 16-bit numpy
        torch.from_numpy(gray)[None],  # 1-channel tensor
        torch.from_numpy(rgba).permute(2, 0, 1),  # RGBA tensor
        pal,
    ]
    for n, r in enumerate(clf.predict(inputs, top_k=4)):
        assert [c for c, _ in r["top_k"]] == [c for c, _ in ref], n
        assert [p for _, p in r["top_k"]] == pytest.approx([p for _, p in ref], abs=2e-3), n


def test_predict_tiny_and_huge_images(clf, tmp_path):
    tiny = clf.predict([np.full((1, 1, 3), 200, np.uint8), np.zeros((3, 500, 3), np.uint8)])
    assert len(tiny) == 2 and all(0 < r["probability"] <= 1 for r in tiny)
    big = np.random.default_rng(7).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    big = np.kron(big, np.ones((100, 100, 1), np.uint8))  # 4000 x 3000
    jpg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    Image.fromarray(big).save(jpg, quality=90)
    Image.fromarray(big).save(png, compress_level=1)
    res = clf.predict([str(jpg), str(png), Image.fromarray(big)])
    assert [r["label"] for r in res] == [res[2]["label"]] * 3


def test_exif_orientation_is_applied(tmp_path):
    from ccsam_zoo.inference._images import open_image

    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert open_image(tmp_path / "rot.jpg", 32).size == (20, 40)


# ------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_give_clear_errors(clf, tmp_path, monkeypatch):
    good = _png(tmp_path / "ok.png", np.zeros((32, 32, 3), np.uint8))
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello, I am text")
    trunc = tmp_path / "trunc.jpg"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    trunc.write_bytes(buf.getvalue()[:300])
    with pytest.raises(FileNotFoundError, match="missing.png"):
        clf.predict([str(tmp_path / "missing.png")])
    with pytest.raises(ValueError, match="fake.jpg"):
        clf.predict([good, str(fake)])
    with pytest.raises(ValueError, match="trunc.jpg"):
        clf.predict([str(trunc)])
    with pytest.raises(ValueError, match="no images given"):
        clf.predict([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        clf.predict(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        clf.predict(np.full((8, 8, 3), 3.0, np.float32))
    with pytest.raises(ValueError, match="CHW"):
        clf.predict(torch.zeros(32, 32, 7))
    with pytest.raises(ValueError, match="unsupported"):
        clf.predict([{"not": "an image"}])
    with pytest.raises(ValueError, match="top_k"):
        clf.predict(good, top_k=0)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match="decompression bomb"):
        clf.predict(good)  # 1024 px > 2 x 500
    monkeypatch.undo()
    res = clf.predict([good, str(fake), str(tmp_path / "missing.png"), good], skip_bad=True)
    assert [("error" in r) for r in res] == [False, True, True, False]
    assert "fake.jpg" in res[1]["error"] and "missing.png" in res[2]["error"]
    assert res[1]["source"] == str(fake)


# ------------------------------------------------------------------------------------------ evaluation on real data
def _decode(parquet, rows):
    import pyarrow.parquet as pq

    col = pq.read_table(parquet, columns=["img", "label"])
    imgs = col.column("img").take(rows).to_pylist()
    labels = col.column("label").take(rows).to_pylist()
    arr = np.stack([np.asarray(Image.open(io.BytesIO(d["bytes"])).convert("RGB").resize((32, 32))) for d in imgs])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def test_evaluate_model_on_real_slice(cifar10_dir, ood_dir):
    from sklearn.metrics import roc_auc_score

    rows = [c * 1000 + i for c in range(4) for i in range(50)]  # test split is sorted by class
    known, y = _decode(cifar10_dir / "test.parquet", rows)
    from ccsam_zoo.data.sources import EMBEDDED_DIR  # CIFAR-10-LT subset, rows sorted by class: 500, 299, ...

    train, ty = _decode(EMBEDDED_DIR / "train.parquet", [o + i for o in (0, 500, 799, 978) for i in range(25)])
    ood, _ = _decode(ood_dir / "test.parquet", list(range(200)))
    m = _model(seed=1)
    counts = [500, 80, 40, 10]  # many, medium, medium, few
    clf = Classifier(m, class_names=NAMES, class_counts=counts, pretrained_cfg=dict(m.pretrained_cfg))
    clf.fit_prototypes((train, ty))
    res = evaluate_model(clf, (known, y), open_dataset=(ood, torch.zeros(200)), batch_size=128)
    with torch.no_grad():
        x = _norm(torch.cat([known, ood]))
        z, logits = clf.features(x), clf.model(x)
    pred = logits[:200].argmax(1)
    assert res["top1"] == pytest.approx(float((pred == y).float().mean()))
    per_class = [float((pred[y == c] == c).float().mean()) for c in range(4)]
    assert res["per_class"] == pytest.approx(per_class)
    assert res["many"] == pytest.approx(per_class[0]) and res["few"] == pytest.approx(per_class[3])
    assert res["medium"] == pytest.approx((per_class[1] + per_class[2]) / 2)
    is_known = np.r_[np.ones(200), np.zeros(200)]
    assert set(res["open_set"]) == {"cosine", "euclidean", "reachability", "msp", "max_logit", "energy", "hybrid"}
    for name, m_ in res["open_set"].items():
        s = open_set_score(name, features=z, logits=logits, prototypes=clf.prototypes).numpy()
        assert m_["auroc"] == pytest.approx(roc_auc_score(is_known, s), abs=1e-6), name
        assert 0.0 <= m_["fpr95"] <= 1.0 and 0.0 <= m_["f_measure"] <= 1.0
    assert res["open_set"]["msp"]["threshold_source"] == "oltr"
    assert res["open_set"]["cosine"]["threshold_source"] == "test_tpr"
    # cosine, euclidean and reachability rank identically with unit prototypes (up to float32 near-ties)
    a = res["open_set"]
    assert a["cosine"]["auroc"] == pytest.approx(a["euclidean"]["auroc"], abs=1e-3)
    assert a["cosine"]["auroc"] == pytest.approx(a["reachability"]["auroc"], abs=1e-3)
    closed_only = evaluate_model(clf, (known, y))
    assert "open_set" not in closed_only and closed_only["num_samples"] == 200
