"""bench/ship_model.py and the held-out calibration of bench/open_set_report.py (paper-protocol recipes)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from ccsam_zoo.data import build_benchmark
from tests.conftest import REPO
from tests.training_utils import write_cifar10_slice

pytestmark = pytest.mark.usefixtures("one_thread")


def _bench_module(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def test_heldout_images_are_training_images_outside_the_subset(cifar10_dir, tmp_path):
    """Every held-out image is a training-parquet image (decoded here with PIL) that the LT subset did not take."""
    source = write_cifar10_slice(cifar10_dir, tmp_path / "c10", 30, 2)
    bench = build_benchmark("cifar10_lt", str(source), 10, selection="shuffle", seed=42)
    report = _bench_module("open_set_report")
    held = report._heldout(bench, "cifar10_lt", str(source), {}, per_class=5)

    table = pq.read_table(source / "train.parquet").to_pylist()
    pixels = [np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in table]
    by_digest = {_digest(p): r["label"] for p, r in zip(pixels, table)}
    test_digests = {
        _digest(np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")))
        for r in pq.read_table(source / "test.parquet").to_pylist()
    }
    train_digests = {_digest(img.permute(1, 2, 0).numpy()) for img in bench.train.images}
    held_digests = [_digest(img.permute(1, 2, 0).numpy()) for img in held.images]

    assert all(d in by_digest for d in held_digests)  # from the training parquet
    assert not set(held_digests) & train_digests  # never trained on
    assert not set(held_digests) & test_digests  # never a test image
    assert [by_digest[d] for d in held_digests] == held.labels.tolist()
    counts = np.bincount(held.labels.numpy(), minlength=10).tolist()
    assert counts == [min(5, 30 - n) for n in bench.class_counts]  # class 0: all 30 in the subset, none held out
    assert counts[0] == 0 and counts[-1] == 5


def test_report_without_a_validation_split_names_the_option(tmp_path):
    report = _bench_module("open_set_report")
    args = report.parse_args(["--model", str(tmp_path / "nothing")])
    assert args.heldout_per_class == 0
    with pytest.raises(Exception, match="not a checkpoint folder|no such folder"):
        report.run(args)


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_ship_a_tiny_run_into_a_registered_folder(cifar10_dir, ood_dir, tmp_path, monkeypatch):
    """Train a tiny run without a val split, ship it: both stages load by alias, calibrated, with honest notes."""
    import dataclasses
    import json

    import ccsam_zoo
    from ccsam_zoo.hub import registry
    from ccsam_zoo.training import apply_overrides, load_recipe, train
    from tests.training_utils import tiny_overrides

    source = write_cifar10_slice(cifar10_dir, tmp_path / "c10", 60, 20)
    run = tmp_path / "run"
    recipe = apply_overrides(load_recipe("cifar10_lt"), tiny_overrides(source, "ce", **{"data.val_per_class": 0}))
    train(recipe, run)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    cpu = registry._REGISTRY["ccsam-cifar10-lt-cpu"]
    registry._REGISTRY["tiny-ce"] = dataclasses.replace(cpu, alias="tiny-ce", local_dir=tmp_path / "assets" / "tiny-ce")
    data = tmp_path / "data"  # 1,000 of the 10,000 open-set images: the same code path, a fifth of the time
    (data / "tinyimagenet_ood").mkdir(parents=True)
    pq.write_table(pq.read_table(ood_dir / "test.parquet").slice(0, 1000), data / "tinyimagenet_ood" / "test.parquet")
    monkeypatch.setenv("CCSAM_DATA", str(data))
    ship = _bench_module("ship_model")
    out = ship.ship(run, "tiny-ce", [1, 2], heldout=10, data_source=str(source), hardware="a test machine")
    assert out["weights"] == "last"  # no validation split: the last epoch of each stage

    folder = tmp_path / "assets" / "tiny-ce"
    assert out["total_bytes"] == sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert {"metrics.json", "recipe.yaml", "log.jsonl", "stage1", "stage2"} <= {p.name for p in folder.iterdir()}
    counts = json.loads((folder / "stage2" / "ccsam_zoo.json").read_text())["class_counts"]
    held = [min(10, 60 - n) for n in counts]  # unused training images per class, at most 10
    for name, stage in (("tiny-ce", "stage2"), ("tiny-ce:stage1", "stage1")):
        clf = ccsam_zoo.from_pretrained(name)
        assert clf.meta["path"] == str(folder / stage)
        assert clf.open_set["calibration"] == (
            f"{sum(held)} known validation images (training images outside the model's subset, at most 10 per "
            f"class: {held})"
        )
        text = (folder / stage / "README.md").read_text()
        assert f'ccsam_zoo.from_pretrained("{name}")' in text and "This model has an open-set threshold" in text
        assert "**Protocol**: NOT the paper's full protocol" in text and "**Hardware**: a test machine." in text
        assert "**Seeds**: 1 (seed 42)" in text
    assert (run / "open_set_report-stage2.json").is_file()

    # choosing between the two stages without the test split (bench/heldout_selection.py)
    import timm
    import torch

    chosen = _bench_module("heldout_selection").select([str(run / "stage1"), str(run / "stage2")], str(source), 10)
    bench = build_benchmark("cifar10_lt", str(source), 10, selection="shuffle", seed=42)
    for stage in ("stage1", "stage2"):
        row = chosen["models"][str(run / stage)]
        assert row["heldout_counts"] == held
        seen = [a for a in row["heldout_per_class"] if a is not None]
        assert len(seen) == sum(1 for n in held if n) and row["heldout_mean"] == pytest.approx(sum(seen) / len(seen),
                                                                                               abs=0.01)  # fmt: skip
        model = timm.create_model(f"local-dir:{run / stage}", pretrained=True).eval()  # plain timm on the subset
        cfg = model.pretrained_cfg
        x = (bench.train.images.float() / 255 - torch.tensor(cfg["mean"])[:, None, None]) / torch.tensor(cfg["std"])[
            :, None, None]  # fmt: skip
        with torch.no_grad():
            pred = model(x).argmax(1)
        per_class = [100 * float((pred[bench.train.labels == c] == c).float().mean()) for c in range(10)]
        assert row["train_per_class"] == pytest.approx(per_class, abs=0.01)
        assert row["eligible"] == (min(per_class) >= 50)
    eligible = [m for m, r in chosen["models"].items() if r["eligible"]]
    best = max(eligible, key=lambda m: chosen["models"][m]["heldout_mean"]) if eligible else None
    assert chosen["selected"] == best


@pytest.mark.parametrize(
    ("sets", "mixup"),
    [
        (["method=mixup_crt"], "mixup alpha 1"),  # mixup's own alpha key, default 1.0 (Zhang et al.)
        (["method=mixup_crt", "stage1.method.alpha=0.2"], "mixup alpha 0.2"),
        (["method=ccsam"], "mixup alpha 1"),  # the authors' stage 1 mixes by default
        (["method=ccsam", "stage1.method.mixup_alpha=0.0"], "no mixup"),  # issue 22's ccsam_strong
        (["method=ce"], "no mixup"),
    ],
)
def test_card_augmentation_line_names_the_mixup_the_stage1_method_resolves_to(sets, mixup):
    """The card's augmentation line reads mixup from the resolved stage-1 method, not only a recipe key: a
    mixup run whose recipe leaves alpha at its default still mixes."""
    from ccsam_zoo.training import apply_overrides, load_recipe

    ship = _bench_module("ship_model")
    recipe = apply_overrides(load_recipe("cifar10_lt"), [*sets, "data.autoaugment=cifar10", "data.cutout=16"])
    strong = "pad-4 random crop + horizontal flip, AutoAugment's CIFAR-10 policy per image, Cutout (one 16x16 hole)"
    assert ship.augmentation_text(recipe) == f"{strong}, {mixup}"


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_accelerate_state")
def test_ship_the_validation_selected_epochs_of_a_strong_augmentation_run(cifar10_dir, ood_dir, tmp_path, monkeypatch):
    """An eval.select_on=val run ships each stage's validation-selected weights, says which epoch and which
    augmentation in its notes, and keeps the last epoch's numbers beside them in metrics.json."""
    import dataclasses
    import json

    import ccsam_zoo
    from ccsam_zoo.hub import registry
    from ccsam_zoo.training import apply_overrides, load_recipe, train
    from tests.training_utils import tiny_overrides

    source = write_cifar10_slice(cifar10_dir, tmp_path / "c10", 60, 20)
    run = tmp_path / "run"
    sets = {"stage1.epochs": 3, "stage2.epochs": 2, "eval.every": 1, "eval.select_on": "val", "data.val_rule":
            "left_out", "stage2.init_from": "best", "data.autoaugment": "cifar10", "data.cutout": 16}  # fmt: skip
    metrics = train(apply_overrides(load_recipe("cifar10_lt"), tiny_overrides(source, "ce", **sets)), run)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    cpu = registry._REGISTRY["ccsam-cifar10-lt-cpu"]
    registry._REGISTRY["tiny-sel"] = dataclasses.replace(cpu, alias="tiny-sel",
                                                         local_dir=tmp_path / "assets" / "tiny-sel")  # fmt: skip
    data = tmp_path / "data"
    (data / "tinyimagenet_ood").mkdir(parents=True)
    pq.write_table(pq.read_table(ood_dir / "test.parquet").slice(0, 500), data / "tinyimagenet_ood" / "test.parquet")
    monkeypatch.setenv("CCSAM_DATA", str(data))
    ship = _bench_module("ship_model")
    out = ship.ship(run, "tiny-sel", [1, 2], heldout=0, data_source=str(source))

    folder = tmp_path / "assets" / "tiny-sel"
    assert out["weights"] == "selected"
    shipped = json.loads((folder / "metrics.json").read_text())
    for n in (1, 2):
        best, last = metrics[f"stage{n}_best"], metrics[f"stage{n}"]
        assert (folder / f"stage{n}" / "model.safetensors").read_bytes() == (
            run / f"stage{n}-best" / "model.safetensors").read_bytes()  # fmt: skip
        assert shipped[f"stage{n}"]["epoch"] == best["epoch"] and shipped[f"stage{n}"]["selection"] == "val"
        assert shipped[f"stage{n}_last"]["epoch"] == last["epoch"] and f"stage{n}_best" not in shipped
        text = (folder / f"stage{n}" / "README.md").read_text()
        assert (f"the validation-selected epoch {best['epoch']} (balanced accuracy {best['val_bacc']:.2f}% on the "
                "validation split: at most 5 images per class, the training images the long-tailed subset leaves "
                "out)") in text  # fmt: skip
        assert ("**Augmentation**: pad-4 random crop + horizontal flip, AutoAugment's CIFAR-10 policy per image, "
                "Cutout (one 16x16 hole), no mixup.") in text  # fmt: skip
        assert "last epoch, no checkpoint selection" not in text
    clf = ccsam_zoo.from_pretrained("tiny-sel")
    calibration = clf.open_set["calibration"]  # calibrated on the run's own validation split, named as such
    n, per_class = re.fullmatch(
        r"(\d+) known validation images \(the model's own validation split, images it never trained on: \[(.*)\]\)",
        calibration).groups()  # fmt: skip
    assert clf.open_set["threshold"] is not None and int(n) == sum(int(c) for c in per_class.split(", ")) > 0
    (tmp_path / "no-best").mkdir()  # a finished run that did not select on a validation split
    (tmp_path / "no-best" / "metrics.json").write_text(json.dumps({"stage1": last, "stage2": last}))
    with pytest.raises(SystemExit, match="no validation-selected weights .* ship --weights last"):
        ship.ship(tmp_path / "no-best", "tiny-sel", [1, 2], 0, str(source), weights="selected")


def test_refresh_notes_rewrites_the_cards_and_keeps_the_weights(tmp_path, monkeypatch):
    """--refresh-notes: a shipped alias's cards gain a new side-by-side table; weights and metrics stay byte-equal."""
    import dataclasses
    import shutil

    from ccsam_zoo.hub import registry

    src = registry._REGISTRY["ce-crt-cifar10-lt"].local_dir
    folder = tmp_path / "copy-ce"
    shutil.copytree(src, folder)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry._REGISTRY["copy-ce"] = dataclasses.replace(registry._REGISTRY["ce-crt-cifar10-lt"], alias="copy-ce",
                                                        local_dir=folder)  # fmt: skip
    kept = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "README.md"}
    cards = {s: (folder / s / "README.md").read_text().splitlines() for s in ("stage1", "stage2")}
    protocol = {s: next(ln for ln in lines if ln.startswith("- **Protocol**")) for s, lines in cards.items()}
    summary = {
        "ce": {"stage1.top1": {"mean": 66.9}, "stage2.top1": {"mean": 69.8}, "stage2.many": {"mean": 75.2},
               "stage2.medium": {"mean": 47.9}, "train_s": {"mean": 8382.0}},
        "mixup_crt": {"stage1.top1": {"mean": 70.1}, "stage2.top1": {"mean": 73.4}, "train_s": None},
    }  # fmt: skip
    ship = _bench_module("ship_model")
    out = ship.refresh_notes("copy-ce", {"summary": summary}, "a second machine", "picked on held-out images")

    assert out["refreshed"] == ["stage1", "stage2"]
    for stage in ("stage1", "stage2"):
        text = (folder / stage / "README.md").read_text()
        assert "| ce | 66.90 | 69.80 | 75.20 | 47.90 | 139.7 |" in text
        assert "| mixup_crt | 70.10 | 73.40 | – | – | – |" in text
        assert "**Hardware**: a second machine." in text
        assert "- **Selection**: picked on held-out images." in text and protocol[stage] in text  # the model's own
        assert "the test split used for nothing but" not in text  # not claimed once a selection is stated
        gap = "Measured gap to the paper (CE, CIFAR-10-LT IR 100, ResNet-32: 70.70)"  # the paper has no CE + cRT row
        assert (gap in text) == (stage == "stage1")
        assert f'ccsam_zoo.from_pretrained("copy-ce{":stage1" if stage == "stage1" else ""}")' in text
    assert {p: p.read_bytes() for p in kept} == kept
    # runs that selected epochs on a validation split: last / selected columns and the selection score
    summary["strong"] = {"stage1.top1": {"mean": 71.84}, "stage1_best.top1": {"mean": 72.04},
                         "stage2.top1": {"mean": 79.38}, "stage2_best.top1": {"mean": 79.82},
                         "stage2_best.many": {"mean": 79.25}, "stage2_best.medium": {"mean": 82.1},
                         "stage2_best.val_bacc": {"mean": 80.22}, "train_s": {"mean": 15042.0}}  # fmt: skip
    ship.refresh_notes("copy-ce", {"summary": summary}, "a second machine", "picked on held-out images")
    text = (folder / "stage2" / "README.md").read_text()
    assert "| Run | Stage 1 | Stage 2 | Many | Medium | Val (stage 2) | Train (min) |" in text
    assert "| strong | 71.84 / 72.04 | 79.38 / 79.82 | 79.25 | 82.10 | 80.22 | 250.7 |" in text
    assert "| ce | 66.90 / – | 69.80 / – | 75.20 | 47.90 | – | 139.7 |" in text  # no selection: its last epoch
    strong = bool(yaml.safe_load((folder / "recipe.yaml").read_text())["data"].get("autoaugment"))
    section = "sections 0 and 0b" if strong else "section 0"  # issue 22's strong augmentation: section 0b too
    assert f"Full tables and commands: docs/RESULTS.md, {section}." in text
    with pytest.raises(SystemExit, match="not a shipped alias"):
        ship.refresh_notes("ccsam-imagenet-lt", None, None)
