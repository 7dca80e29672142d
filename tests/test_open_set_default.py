"""One rule for the default open-set score, a visible fallback, and the CLI at parity with the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch

import ccsam_zoo
from ccsam_zoo.cli import main
from ccsam_zoo.hub.registry import ASSETS_DIR
from ccsam_zoo.inference import Classifier
from ccsam_zoo.inference.open_set import FALLBACK_SCORES, JUNK_GUARD, SCORES, select_default_score

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
SHIPPED = ("ccsam-cifar10-lt", "ce-crt-cifar10-lt", "mixup-crt-cifar10-lt", "ccsam-cifar10-lt-cpu")


def _sel(auroc: float, uniform: float = 1.0, constant: float = 1.0) -> dict[str, float]:
    return {"auroc": auroc, "uniform": uniform, "constant": constant}


# ------------------------------------------------------------------------------------------------ the rule
def test_rule_best_selection_auroc_among_scores_that_reject_junk():
    sel = {
        "msp": _sel(0.80, uniform=0.0),  # best AUROC but accepts noise: not a candidate
        "knn": _sel(0.70, uniform=0.985),  # just below the 99% guard
        "layer_stats": _sel(0.62),
        "energy+layer_stats": _sel(0.71),
        "max_logit+layer_stats": _sel(0.7049),
    }
    assert select_default_score(sel) == ("energy+layer_stats", True)
    sel["knn"]["uniform"] = 0.99  # exactly at the guard counts
    sel["knn"]["auroc"] = 0.72
    assert select_default_score(sel) == ("knn", True)


def test_rule_ties_within_a_tenth_of_a_point_go_to_the_first_in_scores_order():
    # cosine / euclidean / reachability rank identically: float noise must not decide
    sel = {"reachability": _sel(0.75061), "euclidean": _sel(0.75058), "cosine": _sel(0.75049), "msp": _sel(0.7, 0)}
    assert select_default_score(sel)[0] == "cosine"
    # order of the dict does not matter, SCORES order does (msp+layer_stats before max_logit+layer_stats)
    sel = {"max_logit+layer_stats": _sel(0.7612), "msp+layer_stats": _sel(0.7608)}
    assert select_default_score(sel)[0] == "msp+layer_stats"
    sel["max_logit+layer_stats"]["auroc"] = 0.7619  # 0.11 point better: a real difference
    assert select_default_score(sel)[0] == "max_logit+layer_stats"


def test_rule_without_a_guarded_score_takes_the_best_auroc_flagged_and_ignores_variants():
    sel = {"msp": _sel(0.66, 0.0, 0.01), "cosine": _sel(0.70, 0.2, 1.0), "energy": _sel(0.69, 0.0, 0.0)}
    sel["energy [prior-corrected]"] = _sel(0.95)  # a variant the library cannot compute: never the default
    assert select_default_score(sel) == ("cosine", False)
    with pytest.raises(ValueError, match="no selection metrics"):
        select_default_score({"energy [prior-corrected]": _sel(0.9)})


def _extras_files():
    out = []
    for alias in SHIPPED:
        for stage in ("stage2", "stage1", "."):
            f = ASSETS_DIR / alias / stage / "ccsam_zoo.json"
            if f.is_file():
                out.append((f"{alias}:{stage}" if stage != "." else alias, f))
    return out


@pytest.mark.parametrize("name,path", _extras_files(), ids=[n for n, _ in _extras_files()])
def test_every_shipped_default_follows_the_rule_from_stored_selection_metrics(name, path):
    """The stored default is the rule applied to the stored SELECTION metrics (no report-half number in them)."""
    open_set = json.loads(path.read_text())["open_set"]
    sel = open_set["selection"]
    assert set(sel) == set(open_set["thresholds"]) and set(sel) <= set(SCORES)
    for m in sel.values():
        assert set(m) == {"auroc", "fpr95", *JUNK_GUARD} and all(0.0 <= v <= 1.0 for v in m.values())
    assert select_default_score(sel)[0] == open_set["score"]
    assert open_set["threshold"] == open_set["thresholds"][open_set["score"]]


@pytest.mark.parametrize("alias", SHIPPED)
def test_shipped_alias_uses_its_stored_default(alias):
    clf = ccsam_zoo.from_pretrained(alias)
    assert clf.default_score() == clf.open_set["score"] and clf.default_score_source() == "checkpoint default"
    assert set(clf.open_set["selection"]) == set(clf.available_scores())


# --------------------------------------------------------------------------------------------- the fallback
def _tiny(prototypes: bool, open_set: dict | None) -> Classifier:
    torch.manual_seed(0)
    m = timm.create_model("resnet20_cifar", num_classes=4).eval()
    clf = Classifier(m, class_names=list("abcd"), pretrained_cfg=dict(m.pretrained_cfg), open_set=open_set)
    if prototypes:
        g = torch.Generator().manual_seed(0)
        imgs = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
        clf.fit_prototypes((imgs, torch.arange(16) % 4))
    return clf


def test_missing_statistics_fall_back_visibly():
    stored = {"score": "knn", "threshold": -0.5, "thresholds": {"knn": -0.5, "cosine": 0.25, "msp": 0.3}}
    clf = _tiny(True, stored)
    assert clf.default_score() == "cosine"  # knn needs the feature bank, which this model lacks
    src = clf.default_score_source()
    assert src.startswith("fallback (") and "'knn'" in src and "normalised training features" in src
    assert ", ".join(FALLBACK_SCORES) in src
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    res = clf.predict(images, open_set=True)
    assert {r["score_type"] for r in res} == {"cosine"} and {r["score_source"] for r in res} == {src}
    assert {r["threshold"] for r in res} == {0.25} and {r["threshold_source"] for r in res} == {"calibrated"}
    no_proto = _tiny(False, stored)  # next in the chain: msp, with its calibrated threshold (not OLTR's 0.1)
    res = no_proto.predict(images, open_set=True)
    assert {(r["score_type"], r["threshold"]) for r in res} == {("msp", 0.3)}
    with pytest.raises(ValueError, match=r"'knn' needs the bank of normalised training features .* msp, max_logit"):
        no_proto.predict(images, open_set=True, score="knn")
    ok = _tiny(True, {**stored, "score": "cosine", "tpr": 0.95})
    assert ok.default_score() == "cosine" and ok.default_score_source() == "checkpoint default"
    assert ok.predict(images, open_set=True)[0]["threshold_source"] == "calibrated at 95% TPR"


# ------------------------------------------------------------------------------------ CLI = Python API
@pytest.mark.parametrize("alias", ["ccsam-cifar10-lt", "ce-crt-cifar10-lt"])
def test_cli_predict_uses_every_stored_threshold_like_the_python_api(capsys, alias):
    clf = ccsam_zoo.from_pretrained(alias)
    stored = clf.open_set["thresholds"]
    images = sorted(str(p) for p in EXAMPLES.glob("*.png"))
    assert len(images) >= 6 and set(stored) == set(clf.available_scores())
    for score in [None, *stored]:
        argv = ["predict", "--model", alias, *images, "--open-set", "--json"] + (["--score", score] if score else [])
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 0, (score, err)
        got = json.loads(out)
        want = clf.predict(images, open_set=True, score=score)
        name = score or clf.open_set["score"]
        for g, w in zip(got, want, strict=True):
            assert (g["label"], g["known"], g["score_type"]) == (w["label"], w["known"], name), score
            assert g["score"] == pytest.approx(w["score"], rel=1e-9, abs=1e-12)
            assert g["threshold"] == stored[name] and g["threshold_source"] == "calibrated at 95% TPR"
            assert g["score_source"] == ("given" if score else "checkpoint default")


# ------------------------------------------------------------------------------------------- histograms
def test_histograms_label_the_axes_and_mark_the_default(tmp_path, monkeypatch):
    import numpy as np
    from matplotlib.figure import Figure

    from ccsam_zoo.inference import plot_score_histograms

    saved = []
    real_savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: (saved.append(self), real_savefig(self, *a, **k)))
    rng = np.random.default_rng(0)
    scores = {s: {"known": rng.normal(1, 1, 200), "open": rng.normal(0, 1, 100)} for s in ("msp", "knn", "energy")}
    path = plot_score_histograms(scores, tmp_path / "h.png", {"msp": 0.5, "knn": -0.2, "energy": 0.1}, default="knn")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    axes = [ax for ax in saved[0].axes if ax.get_visible() and ax.axison]
    assert [ax.get_title() for ax in axes] == ["knn (default)", "msp", "energy"]  # the default first
    for ax in axes:
        assert ax.get_xlabel() == "score (higher = more likely known)" and ax.get_ylabel() == "density"
    legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert legend == ["known (200)", "open (100)", "default threshold -0.2"]
    line = axes[0].lines[0]
    assert list(line.get_xdata()) == [-0.2, -0.2] and line.get_color() == "tab:red"
    assert [t.get_text() for t in axes[1].get_legend().get_texts()][-1] == "threshold 0.5"
