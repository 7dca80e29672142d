"""Rough edges of ``ccsam-zoo`` (issue 25): each one a clear error that names the flag and the fix, or a documented
behaviour: flags that need --open-set, data that is not what --data names or what the model knows, an impossible
--val-per-class, --plot into a folder, sharpness ranges, the model's recorded subset rule, a fast card, the legend.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import timm
import torch

import ccsam_zoo  # noqa: F401
from ccsam_zoo.cli import _STATUS_HELP, STATUSES, main
from ccsam_zoo.data.sources import EMBEDDED_DIR

CLASS_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> str:
    """The one error line (evaluate's progress lines, "loading ..." / "evaluating ...", may come before it)."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("loading ", "evaluating "))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def copy10(tmp_path_factory):
    """A small CIFAR-10 copy (train/test parquet: the embedded subset's images, 3 test images per class)."""
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("copy") / "cifar10"
    folder.mkdir()
    shutil.copy(EMBEDDED_DIR / "train.parquet", folder / "train.parquet")
    test = pq.read_table(EMBEDDED_DIR / "test.parquet")
    pq.write_table(test.take([c * 100 + i for c in range(10) for i in range(3)]), folder / "test.parquet")
    return folder


def _save(folder, names=CLASS_NAMES, recipe=None, fingerprint=None):
    from ccsam_zoo.hub import save_pretrained

    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=len(names)).eval()
    info = dict(class_names=list(names), class_counts=[500, 299, 179, 107, 64, 38, 23, 13, 8, 5][: len(names)],
                shot_thresholds=[100, 20], shot_rule="paper", stage="stage2", method={"name": "ce"},
                recipe=recipe or {}, metrics={}, dataset="cifar10_lt", data_fingerprint=fingerprint)  # fmt: skip
    return save_pretrained(model, folder, info=info)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("ckpt") / "stage2")


# ------------------------------------------------------------------------------------ flags that need others
@pytest.mark.parametrize("flags, named", [
    (["--threshold", "0.5"], "--threshold"),
    (["--score", "msp"], "--score"),
    (["--score", "msp", "--threshold", "0.5"], "--score and --threshold"),
])  # fmt: skip
def test_predict_score_or_threshold_without_open_set_is_a_usage_error(capsys, flags, named):
    rc, out, err = _run(capsys, "predict", "--model", "ccsam-cifar10-lt-cpu", "x.png", *flags)
    assert rc == 2 and out == ""
    verb = "need" if " and " in named else "needs"
    assert _one_line(err) == f"ccsam-zoo predict: error: {named} {verb} --open-set (add --open-set, or drop {named})"


def test_evaluate_plot_or_scores_without_open_data_is_a_usage_error(capsys, ckpt, copy10):
    argv = ["evaluate", "--model", ckpt, "--data", "cifar10_lt", "--source", copy10]
    rc, out, err = _run(capsys, *argv, "--plot", "h.png")
    assert rc == 2 and out == "" and "--plot is about open-set scores: it needs --open-data" in _one_line(err)
    rc, out, err = _run(capsys, *argv, "--scores", "msp")
    assert rc == 2 and "--scores is about open-set scores: it needs --open-data" in _one_line(err)


# ------------------------------------------------------------------------------- the data is not what it says
def test_evaluate_refuses_a_cifar10_copy_named_cifar100_lt(capsys, copy10):
    rc, out, err = _run(capsys, "evaluate", "--model", "ccsam-cifar10-lt-cpu", "--data", "cifar100_lt",
                        "--source", copy10, "--json")  # fmt: skip
    assert rc == 1 and out == ""
    assert _one_line(err) == (
        f"error: --data cifar100_lt has 100 classes but --data-source {copy10} holds 10: pass a copy of "
        "cifar100_lt's data with --data-source, or name the benchmark that data belongs to with --data"
    )


def test_evaluate_refuses_class_names_in_another_order(capsys, tmp_path, copy10):
    folder = _save(tmp_path / "swapped", names=CLASS_NAMES[1::-1] + CLASS_NAMES[2:])  # automobile, airplane, ...
    rc, out, err = _run(capsys, "evaluate", "--model", folder, "--data", "cifar10_lt", "--source", copy10)
    assert rc == 1 and out == ""
    line = _one_line(err)
    assert "class names of the model and of cifar10_lt" in line and "are in another order" in line
    assert "class 0 is 'automobile' in the model and 'airplane' in the data" in line
    folder = _save(tmp_path / "other", names=[f"c{i}" for i in range(10)])
    rc, _, err = _run(capsys, "evaluate", "--model", folder, "--data", "cifar10_lt", "--source", copy10)
    assert rc == 1 and "are different: class 0 is 'c0' in the model and 'airplane' in the data" in _one_line(err)


def test_evaluate_val_per_class_beyond_what_exists_names_the_maximum(capsys, ckpt, copy10):
    from ccsam_zoo.data import build_benchmark

    argv = ["evaluate", "--model", ckpt, "--data", "cifar10_lt", "--source", copy10, "--split", "val"]
    rc, out, err = _run(capsys, *argv, "--val-per-class", 100000)
    assert rc == 2 and out == ""
    line = _one_line(err)
    # the embedded copy's truck class has 5 images: 4 can be held out, one stays in training
    assert "--val-per-class 100000: class 9 ('truck') has only 4 images to hold out" in line
    assert line.endswith("use --val-per-class 4 or less")
    assert torch.bincount(build_benchmark("cifar10_lt", str(copy10), val_per_class=4).val.labels).min() == 4
    rc, out, err = _run(capsys, *argv, "--val-per-class", 4, "--json")
    assert rc == 0, err
    assert json.loads(out)["num_samples"] == 40


# ------------------------------------------------------------------------------------------------- --plot
def test_plot_into_a_folder_or_without_suffix_writes_and_prints_the_real_file(capsys, ckpt, copy10, ood_dir, tmp_path):
    import pyarrow.parquet as pq

    ood = tmp_path / "ood.parquet"
    pq.write_table(pq.read_table(ood_dir / "test.parquet").slice(0, 20), ood)
    argv = ["evaluate", "--model", ckpt, "--data", "cifar10_lt", "--source", copy10, "--open-data", ood,
            "--scores", "msp"]  # fmt: skip
    folder = tmp_path / "plots"
    folder.mkdir()
    rc, out, err = _run(capsys, *argv, "--plot", folder)
    assert rc == 0, err
    assert (folder / "open_set_histograms.png").stat().st_size > 0 and not (tmp_path / "plots.png").exists()
    assert f"score histograms: {folder / 'open_set_histograms.png'}" in out
    rc, out, err = _run(capsys, *argv, "--plot", tmp_path / "new" / "hist", "--json")
    assert rc == 0, err
    assert json.loads(out)["open_set_plot"] == str(tmp_path / "new" / "hist.png")
    assert (tmp_path / "new" / "hist.png").stat().st_size > 0 and not (tmp_path / "new" / "hist").exists()
    rc, _, err = _run(capsys, *argv, "--plot", tmp_path / "hist.txt")
    assert rc == 2 and "--plot" in err and "unknown image type '.txt'" in _one_line(err)


# ------------------------------------------------------------------------------------------ sharpness ranges
@pytest.mark.parametrize("flag, value, want", [
    ("--rho", "inf", "must be a finite number >= 0, got 'inf'"),
    ("--rho", "nan", "must be a finite number >= 0, got 'nan'"),
    ("--rho", "-0.1", "must be a finite number >= 0, got '-0.1'"),
    ("--two-d-extent", "nan", "must be a finite number > 0, got 'nan'"),
    ("--two-d-extent", "0", "must be a finite number > 0, got '0'"),
    ("--imbalance-ratio", "inf", "must be a finite number >= 1, got 'inf'"),
])  # fmt: skip
def test_sharpness_non_finite_or_out_of_range_numbers_name_the_flag(capsys, flag, value, want):
    rc, out, err = _run(capsys, "sharpness", "--model", "m", "--data", "cifar10_lt", flag, value)
    assert rc == 2 and out == "" and f"argument {flag}: {want}" in err and "Traceback" not in err


# ------------------------------------------------------------------------------- the model's subset rule
def test_evaluate_uses_the_models_recorded_subset_rule(capsys, tmp_path, copy10, monkeypatch):
    """A model trained on (IR 20 from 100 images, seeded shuffle, seed 7): evaluate rebuilds that subset by
    default, so its fingerprint is the card's for the same copy; --imbalance-ratio still overrides."""
    from ccsam_zoo.data import build_benchmark

    rule = dict(imbalance_ratio=20, max_count=100, selection="shuffle", seed=7)
    recorded = build_benchmark("cifar10_lt", str(copy10), **rule).fingerprint
    default = build_benchmark("cifar10_lt", str(copy10)).fingerprint
    assert recorded != default  # the rule is in the fingerprint
    recipe = {"name": "cifar10_lt", "data": {"name": "cifar10_lt", "source": "PATH/TO/cifar10", **rule}}
    folder = _save(tmp_path / "ckpt", recipe=recipe, fingerprint=recorded)
    rc, out, err = _run(capsys, "evaluate", "--model", folder, "--data", "cifar10_lt", "--source", copy10, "--json")
    assert rc == 0, err
    rep = json.loads(out)
    card = json.loads((folder / "ccsam_zoo.json").read_text())["data_fingerprint"]
    assert rep["data_fingerprint"] == recorded == card
    assert rep["subset_rule"]["from"] == "the model's recipe" and rep["subset_rule"]["seed"] == 7
    rc, out, _ = _run(capsys, "evaluate", "--model", folder, "--data", "cifar10_lt", "--source", copy10)
    assert rc == 0 and f"fingerprint: {recorded[:12]} (the model's subset rule)" in out
    rc, out, _ = _run(capsys, "evaluate", "--model", folder, "--data", "cifar10_lt", "--source", copy10,
                      "--imbalance-ratio", 50, "--json")  # fmt: skip
    rep = json.loads(out)
    assert rc == 0 and rep["subset_rule"]["imbalance_ratio"] == 50
    other = build_benchmark("cifar10_lt", str(copy10), **{**rule, "imbalance_ratio": 50}).fingerprint
    assert rep["data_fingerprint"] == other != recorded
    # another benchmark than the recipe's: its rule does not apply
    from ccsam_zoo.data.subset_rule import recorded_subset_rule

    assert recorded_subset_rule(recipe, "cifar100_lt") == {} and recorded_subset_rule({}, "cifar10_lt") == {}
    assert recorded_subset_rule(recipe, "cifar10_lt")["selection"] == "shuffle"


def test_evaluate_val_split_of_a_model_never_holds_images_it_trained_on(capsys, tmp_path, copy10):
    """A model trained on its whole long-tailed subset (no validation split): ``--split val`` holds only the images
    its subset left out (a class with none left out gets none), unless ``--val-rule fill`` is asked for."""
    import numpy as np
    import pyarrow.parquet as pq

    from ccsam_zoo.data.benchmarks import long_tailed_counts

    rule = dict(imbalance_ratio=20, max_count=100, selection="shuffle", seed=7)
    recipe = {"name": "cifar10_lt", "data": {"name": "cifar10_lt", "source": "PATH/TO/cifar10", **rule}}
    folder = _save(tmp_path / "ckpt", recipe=recipe)
    have = np.bincount(pq.read_table(copy10 / "train.parquet").column("label").to_numpy(), minlength=10)
    trained = np.array(long_tailed_counts(10, 100, 20, "exp"))
    left_out = np.minimum(10, have - trained)
    assert left_out.min() == 0 and left_out.max() == 10  # the copy's truck class has nothing left out
    argv = ["evaluate", "--model", folder, "--data", "cifar10_lt", "--source", copy10, "--split", "val",
            "--val-per-class", 10, "--json"]  # fmt: skip
    rc, out, err = _run(capsys, *argv)
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["subset_rule"]["val_rule"] == "left_out" and rep["num_samples"] == left_out.sum()
    assert rep["per_class"][9] is None  # no image to score, not 0%
    argv[argv.index("--val-per-class") + 1] = 4  # fill keeps one training image of truck's 5
    rc, out, err = _run(capsys, *argv, "--val-rule", "fill")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["subset_rule"]["val_rule"] == "fill" and rep["num_samples"] == 40 and rep["per_class"][9] is not None


@pytest.mark.slow  # decodes the 60,000 CIFAR-10 images once (about 12 s)
def test_shipped_models_record_the_rule_that_gives_their_card_fingerprint(cifar10_dir):
    """The flagship's recorded rule on the project's copy rebuilds its card's fingerprint (what evaluate does)."""
    from ccsam_zoo.data import build_benchmark
    from ccsam_zoo.data.subset_rule import recorded_subset_rule
    from ccsam_zoo.hub.registry import ASSETS_DIR

    extras = json.loads((ASSETS_DIR / "ccsam-cifar10-lt" / "stage2" / "ccsam_zoo.json").read_text())
    rule = recorded_subset_rule(extras["recipe"], "cifar10_lt")
    assert rule["selection"] == "shuffle" and rule["seed"] == 42 and rule["imbalance_ratio"] == 100
    assert build_benchmark("cifar10_lt", str(cifar10_dir), **rule).fingerprint == extras["data_fingerprint"]


# ------------------------------------------------------------------------------------------- card and list
def test_card_prints_without_importing_torch():
    """``ccsam-zoo card ALIAS`` renders text: no torch / timm / datasets import (it took 4-8 s with them)."""
    code = ("import sys, io, contextlib\nfrom ccsam_zoo.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out: rc = main(['card', 'ccsam-cifar10-lt'])\n"
            "heavy = [m for m in ('torch', 'timm', 'datasets', 'matplotlib') if m in sys.modules]\n"
            "print(rc, heavy, out.getvalue().startswith('---'))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split("\n")[0] == "0 [] True", res.stderr


def test_checkpoint_score_names_are_the_library_scores():
    from ccsam_zoo.cli import _SCORES
    from ccsam_zoo.hub.checkpoint import OPEN_SET_SCORES
    from ccsam_zoo.inference import SCORES

    assert tuple(OPEN_SET_SCORES) == tuple(SCORES) == tuple(_SCORES)


def test_list_legend_explains_every_status_list_can_show(capsys, tmp_path):
    from ccsam_zoo.hub import list_pretrained, register_pretrained
    from ccsam_zoo.hub.registry import _REGISTRY

    gone = tmp_path / "gone"
    _save(tmp_path / "here" / "stage2")
    try:
        register_pretrained("edge-local", local_dir=tmp_path / "here")
        register_pretrained("edge-missing", local_dir=gone)
        register_pretrained("edge-hub", repo_id="someone/not-downloaded")
        seen = {r.status for r in list_pretrained()}
        rc, out, _ = _run(capsys, "list")
    finally:
        for alias in ("edge-local", "edge-missing", "edge-hub"):
            _REGISTRY.pop(alias, None)
    assert {"shipped", "local", "missing", "not cached", "not published", "not shipped"} <= seen <= set(STATUSES)
    legend = out[out.rindex("\n\n") + 2:]  # the last paragraph (after the reserved names' pointers)
    assert legend.strip() == _STATUS_HELP
    for status in STATUSES:
        assert f"{status}: " in legend, status
    assert "recipes/train.py" not in out and "ccsam-zoo train --recipe RECIPE" in legend


@pytest.mark.parametrize("rho", [float("inf"), float("nan"), -1.0])
def test_worst_case_sharpness_refuses_a_non_finite_or_negative_rho(rho):
    from ccsam_zoo.diagnostics.sharpness import worst_case_sharpness

    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    images, labels = torch.rand(4, 3, 32, 32), torch.arange(4)
    with pytest.raises(ValueError, match=r"rho must be a finite number >= 0, got"):
        worst_case_sharpness(model, images, labels, [100] * 10, rho=rho, steps=1)
