"""Model selection on a validation split carved from the training images the long-tailed subset leaves out."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

import ccsam_zoo  # noqa: F401  (registers the CIFAR ResNets)
from ccsam_zoo.data.benchmarks import _select
from ccsam_zoo.data.counts import long_tailed_counts
from ccsam_zoo.training import RecipeError, apply_overrides, load_recipe
from ccsam_zoo.training.config import check_recipe, resolve_recipe
from ccsam_zoo.training.evaluation import balanced_accuracy
from tests.training_utils import tiny_overrides, write_cifar10_slice

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _base(per_class: int, classes: int = 10) -> SimpleNamespace:
    labels = np.repeat(np.arange(classes), per_class)
    rng = np.random.RandomState(3)
    labels = labels[rng.permutation(len(labels))]  # classes interleaved, as in the CIFAR files
    return SimpleNamespace(class_names=[f"c{i}" for i in range(classes)], train=SimpleNamespace(labels=labels))


def test_left_out_rule_keeps_the_subset_and_skips_classes_with_nothing_left():
    # CIFAR-10 at IR 100 with the authors' seeded subset: 5000 per class, the head class keeps all 5000
    base = _base(5000)
    counts = long_tailed_counts(10, 5000, 100, "exp")
    assert counts[0] == 5000  # airplane: nothing left over
    plain, none = _select(base, "cifar10_lt", 100, 5000, "exp", "shuffle", 42, 0)
    train, val = _select(base, "cifar10_lt", 100, 5000, "exp", "shuffle", 42, 100, "left_out")
    assert none is None and np.array_equal(train, plain)  # the training subset is untouched
    labels = base.train.labels
    val_counts = np.bincount(labels[val], minlength=10)
    assert val_counts.tolist() == [0] + [100] * 9  # airplane has none, every other class 100
    assert not set(val.tolist()) & set(train.tolist())
    # "fill" (the older rule) moves 100 head-class images out of the subset instead
    train_fill, val_fill = _select(base, "cifar10_lt", 100, 5000, "exp", "shuffle", 42, 100, "fill")
    assert np.bincount(labels[val_fill], minlength=10).tolist() == [100] * 10
    assert np.bincount(labels[train_fill], minlength=10)[0] == 4900
    # a class with fewer left over than asked gives what it has
    small = _base(60)
    _, val_small = _select(small, "x", 10, 60, "exp", "first", 0, 50, "left_out")
    left = [60 - n for n in long_tailed_counts(10, 60, 10, "exp")]
    assert np.bincount(small.train.labels[val_small], minlength=10).tolist() == [min(n, 50) for n in left]


def test_left_out_rule_without_any_left_over_image_is_a_clear_error():
    with pytest.raises(ValueError, match="val_rule='left_out' found no training image left out.*use val_rule='fill'"):
        _select(_base(10), "x", None, None, "exp", "first", 0, 5, "left_out")


def test_balanced_accuracy_skips_classes_without_images():
    assert balanced_accuracy({"per_class": [None, 50.0, 100.0, 0.0]}) == pytest.approx(50.0)
    with pytest.raises(ValueError, match="validation split is empty"):
        balanced_accuracy({"per_class": [None, None]})


@pytest.mark.parametrize(
    "sets,message",
    [
        (["eval.select_on=val", "data.val_per_class=0"], "eval.select_on=val needs a validation split: set data.val"),
        (["eval.select_on=val", "data.val_per_class=10", "eval.every=0"], "eval.select_on=val needs eval.every >= 1"),
        (["stage2.init_from=best"], "stage2.init_from=best needs eval.select_on=val"),
        (["eval.select_on=best"], "eval.select_on=.best. is not valid: expected one of last, val"),
        (["data.val_rule=some"], "data.val_rule=.some. is not valid: expected one of fill, left_out"),
    ],
)
def test_selection_settings_are_checked(sets, message):
    with pytest.raises(RecipeError, match=message):
        recipe = apply_overrides(load_recipe("cifar10_lt"), sets)
        check_recipe(recipe)
        resolve_recipe(recipe)


def _independent_val_bacc(folder: Path, source: Path, rows: list[int]) -> float:
    """Balanced accuracy of a saved checkpoint on training-parquet rows, with plain timm + PIL + numpy."""
    import pyarrow.parquet as pq
    from PIL import Image

    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    table = pq.read_table(source / "train.parquet").take(rows).to_pylist()
    x = np.stack([np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in table])
    x = (x / 255.0 - np.array(cfg["mean"])) / np.array(cfg["std"])
    y = np.array([r["label"] for r in table])
    with torch.no_grad():
        pred = model(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2)).argmax(1).numpy()
    return 100.0 * float(np.mean([(pred[y == c] == c).mean() for c in np.unique(y)]))


@pytest.mark.slow
def test_val_selection_keeps_the_argmax_epoch_and_reports_both(cifar10_dir, tmp_path):
    from ccsam_zoo.training import train

    source = write_cifar10_slice(cifar10_dir, tmp_path / "cifar10", 120, 30)
    sets = {"stage1.epochs": 3, "stage2.epochs": 2, "eval.every": 1, "eval.select_on": "val",
            "data.val_rule": "left_out", "stage2.init_from": "best", "train.prototypes": "false"}
    recipe = apply_overrides(load_recipe("cifar10_lt"), tiny_overrides(source, method="ce", **sets))
    out = tmp_path / "run"
    metrics = train(recipe, out)

    assert set(metrics) == {"stage1", "stage1_best", "stage2", "stage2_best"}
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert not any("test_top1" in r for r in records)  # the test split is never looked at during training
    chosen = json.loads((out / "train_indices.json").read_text())
    for stage, epochs in (("stage1", 3), ("stage2", 2)):
        scores = [r["val_bacc"] for r in records if r.get("stage") == stage and "val_bacc" in r]
        assert len(scores) == epochs  # every epoch validated (eval.every=1)
        best = int(np.argmax(scores))  # the first of equal scores
        sel, last = metrics[f"{stage}_best"], metrics[stage]
        assert (sel["epoch"], sel["selection"], sel["split"]) == (best + 1, "val", "test")
        assert (last["epoch"], last["selection"], last["split"]) == (epochs, "last", "test")
        assert sel["val_bacc"] == pytest.approx(scores[best], abs=1e-4)
        assert last["val_bacc"] == pytest.approx(scores[-1], abs=1e-4)
        assert 0 <= sel["top1"] <= 100 and len(sel["per_class"]) == 10
        # the saved folder holds that epoch's weights: its validation score, recomputed independently
        recomputed = _independent_val_bacc(out / f"{stage}-best", source, chosen["val_indices"])
        assert recomputed == pytest.approx(scores[best], abs=1e-4)
        saved = json.loads((out / f"{stage}-best" / "ccsam_zoo.json").read_text())["metrics"]
        assert saved["epoch"] == best + 1 and saved["top1"] == pytest.approx(sel["top1"], abs=1e-4)
    # stage 2 started from the validation-best stage-1 weights (the backbone is frozen in stage 2)
    best1, s2 = load_file(out / "stage1-best/model.safetensors"), load_file(out / "stage2/model.safetensors")
    convs = [k for k in best1 if k.endswith("conv1.weight")]
    assert convs and all(torch.equal(best1[k], s2[k]) for k in convs)
    # head class: no validation images under val_rule=left_out (120 of 120 kept)
    labels = json.loads((out / "train_indices.json").read_text())["class_counts"]
    assert labels[0] == 120
    assert not list((out / "checkpoints").glob("*-best-epoch*"))  # the temporary best-weight files are gone


@pytest.mark.slow
def test_val_selection_survives_an_interruption(cifar10_dir, tmp_path, monkeypatch):
    """A run stopped after a checkpoint and resumed selects the same epoch, with the same weights and numbers."""
    from accelerate.state import AcceleratorState, PartialState

    from ccsam_zoo.training import train
    from ccsam_zoo.training import trainer as trainer_module

    source = write_cifar10_slice(cifar10_dir, tmp_path / "cifar10", 120, 30)
    sets = {"stage1.epochs": 3, "stage2.epochs": 1, "eval.every": 1, "eval.select_on": "val",
            "data.val_rule": "left_out", "stage2.init_from": "best", "train.prototypes": "false"}
    recipe = apply_overrides(load_recipe("cifar10_lt"), tiny_overrides(source, method="ce", **sets))
    whole = train(recipe, tmp_path / "whole")

    real = trainer_module._train_epoch

    def stop_at_epoch_2(ctx, stage, *args):
        if stage == "stage1" and args[-2] == 2:  # (net, method, optimizer, loader, epoch, epochs)
            raise KeyboardInterrupt("stopped")
        return real(ctx, stage, *args)

    for state in (AcceleratorState, PartialState):
        state._reset_state() if state is PartialState else state._reset_state(reset_partial_state=True)
    monkeypatch.setattr(trainer_module, "_train_epoch", stop_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, tmp_path / "cut")
    assert list((tmp_path / "cut" / "checkpoints").glob("stage1-best-epoch*.safetensors"))  # kept for the resume
    monkeypatch.setattr(trainer_module, "_train_epoch", real)
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    resumed = train(recipe, tmp_path / "cut", resume=True)
    for key in ("stage1", "stage1_best", "stage2", "stage2_best"):
        assert resumed[key]["epoch"] == whole[key]["epoch"]
        assert resumed[key]["top1"] == pytest.approx(whole[key]["top1"], abs=1e-4)
        assert resumed[key]["val_bacc"] == pytest.approx(whole[key]["val_bacc"], abs=1e-4)
    a = load_file(tmp_path / "whole/stage1-best/model.safetensors")
    b = load_file(tmp_path / "cut/stage1-best/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
