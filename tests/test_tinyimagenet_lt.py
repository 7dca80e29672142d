"""Tiny-ImageNet-LT: the OLTR loader's class-name files, the real split files, the 64-px ResNets, the recipes, the
reserved aliases' pointer, and one tiny training epoch of the recipe on a slice of the real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import ccsam_zoo  # noqa: F401  (registers the 64-px ResNets)
from ccsam_zoo.data import build_benchmark
from ccsam_zoo.training import RecipeError, apply_overrides, load_recipe
from ccsam_zoo.training.config import check_recipe


# ------------------------------------------------------------------------------------ class-name files
def _write_tiny_oltr(root: Path, prefix: str, wnids: list[str], layout: str = "train/{w}/images/{i}.JPEG") -> None:
    """Tiny-ImageNet layout: every class's images under a folder named after its wnid, plus the split files."""
    counts = [4, 2, 1][: len(wnids)]
    rows: dict[str, list[str]] = {"train": [], "val": [], "test": [], "open": []}
    for c, (w, n) in enumerate(zip(wnids, counts)):
        for i in range(n + 2):
            rel = layout.format(w=w, i=i)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 64), (30 * c, i, 0)).save(root / rel, "JPEG")
            split = "train" if i < n else ("val" if i == n else "test")
            rows[split].append(f"{rel} {c}")
    (root / "other").mkdir()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(root / "other" / "x.JPEG", "JPEG")
    rows["open"].append("other/x.JPEG -1")
    for split, lines in rows.items():
        (root / f"{prefix}_{split}.txt").write_text("\n".join(lines) + "\n")


def test_classes_txt_words_first_synonym_and_duplicates(tmp_path):
    wnids = ["n03355925", "n02012849", "n03126707"]
    _write_tiny_oltr(tmp_path, "TinyImageNet_LT", wnids)
    # label<TAB>wnid<TAB>words; two classes both called "crane" (as in ImageNet): disambiguated by their words
    (tmp_path / "classes.txt").write_text(
        "0\tn03355925\tflagpole, flagstaff\n1\tn02012849\tcrane\n2\tn03126707\tcrane, derrick\n"
    )
    bench = build_benchmark("tinyimagenet_lt", str(tmp_path))
    assert bench.class_names == ["flagpole", "crane", "crane, derrick"]
    assert bench.class_counts == [4, 2, 1] and len(bench.val) == 3 and len(bench.test) == 3
    assert bench.open.labels.tolist() == [-1]
    # the ImageNet-LT pipeline at the native 64 px: timm transforms, ImageNet statistics
    assert not bench.is_tensor and bench.input_size == (3, 64, 64)
    assert bench.mean == pytest.approx((0.485, 0.456, 0.406)) and bench.options["pipeline"] == "timm"
    x, y = bench.train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and int(y) == 0
    # the same words twice: the wnid tells them apart
    (tmp_path / "classes.txt").write_text("0\tn03355925\tflagpole\n1\tn02012849\tcrane\n2\tn03126707\tcrane\n")
    names = build_benchmark("tinyimagenet_lt", str(tmp_path)).class_names
    assert names == ["flagpole", "crane (n02012849)", "crane (n03126707)"]


def test_imagenet_words_txt_matched_by_wnid_in_the_paths(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    _write_tiny_oltr(tmp_path, "ImageNet_LT", wnids, layout="train/{w}/{w}_{i}.JPEG")
    # words.txt covers many more wnids than the benchmark's, in another order, tab-separated
    (tmp_path / "words.txt").write_text(
        "n00001740\tentity\nn01484850\tgreat white shark, white shark, man-eater\n"
        "n01443537\tgoldfish, Carassius auratus\nn01440764\ttench, Tinca tinca\n"
    )
    bench = build_benchmark("imagenet_lt", str(tmp_path), image_size=32)
    assert bench.class_names == ["tench", "goldfish", "great white shark"]
    # Kaggle's LOC_synset_mapping.txt (space-separated), when there is no words.txt
    (tmp_path / "words.txt").unlink()
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark\n"
    )
    assert build_benchmark("imagenet_lt", str(tmp_path), image_size=32).class_names[0] == "tench"
    # without any names file: the parent folders (the wnids), as before
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    assert build_benchmark("imagenet_lt", str(tmp_path), image_size=32).class_names == wnids


def test_places_categories_file(tmp_path):
    _write_tiny_oltr(tmp_path, "Places_LT", ["n00000001", "n00000002", "n00000003"])
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n/b/bakery/shop 1\n/c/canal/natural 2\n")
    assert build_benchmark("places_lt", str(tmp_path), image_size=32).class_names == [
        "airfield", "bakery/shop", "canal/natural",
    ]  # fmt: skip


def test_bad_class_name_files_say_what_to_fix(tmp_path):
    _write_tiny_oltr(tmp_path, "TinyImageNet_LT", ["n00000001", "n00000002", "n00000003"])
    (tmp_path / "classes.txt").write_text("0\tn00000001\tcat\n1\tn00000002\tdog\n")
    with pytest.raises(ValueError, match=r"classes.txt names no class for label\(s\) \[2\] of the 3 classes"):
        build_benchmark("tinyimagenet_lt", str(tmp_path))
    (tmp_path / "classes.txt").write_text("0\tn00000001\tcat\njust some words here\n")
    with pytest.raises(ValueError, match=r"classes.txt:2: expected 'label<TAB>wnid<TAB>words'.*remove classes.txt"):
        build_benchmark("tinyimagenet_lt", str(tmp_path))
    (tmp_path / "classes.txt").unlink()
    (tmp_path / "words.txt").write_text("n00000001\tcat\nn00000002\tdog\n")
    with pytest.raises(ValueError, match=r"words.txt: no words for class 2 \(wnid 'n00000003'"):
        build_benchmark("tinyimagenet_lt", str(tmp_path))


def test_pipeline_choice(tmp_path):
    _write_tiny_oltr(tmp_path, "TinyImageNet_LT", ["n00000001", "n00000002", "n00000003"])
    fast = build_benchmark("tinyimagenet_lt", str(tmp_path), pipeline="tensor")
    assert fast.is_tensor and fast.train.images.dtype == torch.uint8 and fast.train.images.shape[1:] == (3, 64, 64)
    assert fast.fingerprint != build_benchmark("tinyimagenet_lt", str(tmp_path)).fingerprint
    with pytest.raises(ValueError, match="unknown pipeline 'fast': use one of"):
        build_benchmark("tinyimagenet_lt", str(tmp_path), pipeline="fast")
    with pytest.raises(ValueError, match="pipeline='tensor' holds images of at most 64 px.*image_size=96"):
        build_benchmark("tinyimagenet_lt", str(tmp_path), pipeline="tensor", image_size=96)


# ------------------------------------------------------------------------------------------ real data
@pytest.fixture(scope="module")
def tin_dir(data_dir) -> Path:
    path = data_dir / "tinyimagenet_lt"
    if not (path / "TinyImageNet_LT_train.txt").is_file():
        pytest.skip(f"Tiny-ImageNet-LT not found at {path}")
    return path


def test_real_split_files(tin_dir):
    bench = build_benchmark("tinyimagenet_lt", f"{tin_dir / 'images'}:{tin_dir}")
    assert (len(bench.train), len(bench.val), len(bench.test), len(bench.open)) == (10547, 2000, 5000, 2000)
    assert max(bench.class_counts) == 480 and min(bench.class_counts) == 5
    assert {g: bench.shot_groups.count(g) for g in ("many", "medium", "few")} == {"many": 34, "medium": 36, "few": 30}
    rows = [line.split("\t") for line in (tin_dir / "classes.txt").read_text().splitlines()]
    assert bench.class_names == [words.split(",")[0].strip() for _, _, words in rows]
    assert bench.class_names[1] == "fountain" and bench.open.labels.eq(-1).all()
    labels = np.loadtxt(tin_dir / "TinyImageNet_LT_train.txt", dtype=str)[:, 1].astype(int)
    assert bench.class_counts == np.bincount(labels, minlength=100).tolist()


# ------------------------------------------------------------------------------------------ models
@pytest.mark.parametrize(
    "arch, final, conv1",
    [("resnet50_64px", 2, (64, 3, 7, 7)), ("resnet50_64px_nomaxpool", 4, (64, 3, 7, 7)),
     ("resnext50_32x4d_64px_s1", 8, (64, 3, 3, 3))],
)  # fmt: skip
def test_64px_resnets(arch, final, conv1, one_thread):
    model = timm.create_model(arch, num_classes=7).eval()
    base = timm.create_model(arch.split("_64px")[0], num_classes=7)
    assert model.state_dict().keys() == base.state_dict().keys()  # timm's weights, timm's names
    assert tuple(model.conv1.weight.shape) == conv1 and model.num_features == 2048
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.forward_features(x).shape == (2, 2048, final, final) and model(x).shape == (2, 7)
    assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.pretrained_cfg["crop_pct"] == 0.875
    features = timm.create_model(arch, features_only=True).eval()
    with torch.no_grad():
        maps = features(x)
    assert [m.shape[-1] for m in maps] == [64 // r for r in features.feature_info.reduction()]
    if arch == "resnet50_64px":  # timm's stem: the very same network as timm's resnet50
        base.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert torch.equal(base.eval()(x), model(x))


# ------------------------------------------------------------------------------------------ recipes
def test_recipes_are_relative_and_fixed_imbalance():
    full, cpu = load_recipe("tinyimagenet_lt"), load_recipe("tinyimagenet_lt_cpu")
    for r in (full, cpu):
        assert r["data"]["name"] == "tinyimagenet_lt" and r["data"]["imbalance_ratio"] is None
        assert r["data"]["source"].startswith("../shared/data/tinyimagenet_lt/")
        assert r["method"] == "ccsam" and r["stage2"]["method"] == {"preset": "paper"}
        check_recipe(r)
    assert full["model"]["arch"] == "resnet50_64px_s1" and cpu["model"]["arch"] == "resnet50_64px"
    with pytest.raises(RecipeError, match="imbalance is fixed by its split files"):
        check_recipe(apply_overrides(cpu, ["data.imbalance_ratio=10"]))
    with pytest.raises(RecipeError, match="tinyimagenet_lt needs its data: set --set data.source=IMAGE_ROOT:SPLIT_DIR"):
        check_recipe(apply_overrides(cpu, ["data.source=null"]))


def _slice(tin_dir: Path, out: Path, train: int, other: int, open_: int) -> Path:
    """The first ``train`` training images of every class (``other`` of val / test) and ``open_`` open images."""
    out.mkdir()
    for split, n in (("train", train), ("val", other), ("test", other), ("open", open_)):
        seen: dict[str, int] = {}
        keep = []
        for line in (tin_dir / f"TinyImageNet_LT_{split}.txt").read_text().splitlines():
            label = line.rsplit(maxsplit=1)[1]
            seen[label] = seen.get(label, 0) + 1
            if (split == "open" and len(keep) < n) or (split != "open" and seen[label] <= n):
                keep.append(line)
        (out / f"TinyImageNet_LT_{split}.txt").write_text("\n".join(keep) + "\n")
    (out / "classes.txt").write_text((tin_dir / "classes.txt").read_text())
    return out


@pytest.mark.slow
def test_recipe_trains_one_tiny_epoch_on_real_data(tin_dir, tmp_path, one_thread):
    """The CPU recipe, 1 + 1 epochs on 2 images per class, through the OLTR loader; the run loads with class
    words and predicts open-set on real images."""
    from accelerate.state import AcceleratorState, PartialState

    from ccsam_zoo import from_pretrained
    from ccsam_zoo.training.trainer import train

    splits = _slice(tin_dir, tmp_path / "splits", train=2, other=1, open_=20)
    recipe = apply_overrides(
        load_recipe("tinyimagenet_lt_cpu"),
        [f"data.source={tin_dir / 'images'}:{splits}", "stage1.batch_size=50", "stage2.batch_size=50",
         "eval.batch_size=100", "stage1.epochs=1", "stage2.epochs=1", "stage1.warmup_epochs=0", "eval.every=0"],
    )  # fmt: skip
    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState._reset_state()
    train(recipe, tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) >= {"stage1", "stage2"}
    clf = from_pretrained(tmp_path / "run")
    assert clf.class_names[1] == "fountain" and len(clf.class_names) == 100
    root = tin_dir / "images"
    paths = [root / line.split()[0] for line in (splits / "TinyImageNet_LT_test.txt").read_text().splitlines()[:3]]
    paths.append(root / (splits / "TinyImageNet_LT_open.txt").read_text().split()[0])
    preds = clf.predict([Image.open(p).convert("RGB") for p in paths], open_set=True)
    assert len(preds) == 4
    for p in preds:
        assert isinstance(p["known"], bool) and p["score_type"] and p["threshold"] is not None
        assert p["label"] in clf.class_names if p["known"] else p["nearest_class"] in clf.class_names


# ------------------------------------------------------------------------------------------ aliases
@pytest.fixture
def registry_env(tmp_path, monkeypatch):
    """Offline, an empty CCSAM_ASSETS and a registry rebuilt from it (restored after the test)."""
    from huggingface_hub import constants

    from ccsam_zoo.hub import registry

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("CCSAM_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setattr(registry, "_REGISTRY", {**registry._REGISTRY, **registry._builtin_entries()})
    return registry, tmp_path / "assets"


def test_reserved_names_point_to_the_nearest_trained_model(registry_env):
    from ccsam_zoo import from_pretrained, list_pretrained
    from ccsam_zoo.hub import CheckpointError

    rows = {r.alias: r for r in list_pretrained()}
    for alias in ("ccsam-imagenet-lt", "ccsam-places-lt", "ccsam-inat2018"):
        assert rows[alias].status == "not published" and rows[alias].nearest == "ccsam-tinyimagenet-lt", alias
    assert rows["ccsam-cifar100-lt"].nearest is None
    with pytest.raises(CheckpointError) as err:
        from_pretrained("ccsam-places-lt")
    msg = str(err.value)
    assert msg.startswith("model 'ccsam-places-lt' is not published yet") and len(msg) < 400
    assert msg.endswith("nearest trained model of this code path: 'ccsam-tinyimagenet-lt'")


def test_optional_asset_alias_not_installed_then_local(registry_env, one_thread):
    from ccsam_zoo import from_pretrained, list_pretrained, save_pretrained
    from ccsam_zoo.hub import CheckpointError

    registry, assets = registry_env
    rows = {r.alias: r for r in list_pretrained()}
    for alias, method in (("ccsam-tinyimagenet-lt", "ccsam"), ("ce-crt-tinyimagenet-lt", "ce")):
        row = rows[alias]
        assert (row.status, row.available_locally, row.method) == ("not installed", False, method)
        assert (row.recipe, row.dataset) == ("tinyimagenet_lt_cpu", "tinyimagenet_lt")
        assert row.architecture == "resnet50_64px"
    with pytest.raises(CheckpointError, match=r"'ce-crt-tinyimagenet-lt' is not installed: .* looked for in .*assets"
                       r"/ce-crt-tinyimagenet-lt.*--recipe tinyimagenet_lt_cpu --set method=ce"):  # fmt: skip
        from_pretrained("ce-crt-tinyimagenet-lt")
    # a (tiny) checkpoint folder put there makes the alias usable, stage 2 only
    model = timm.create_model("resnet20_cifar", num_classes=2, widths=(4, 6, 8)).eval()
    save_pretrained(model, assets / "ccsam-tinyimagenet-lt" / "stage2", info=dict(class_names=["fountain", "fur coat"]))
    registry._REGISTRY.update(registry._builtin_entries())
    rows = {r.alias: r for r in list_pretrained()}
    assert rows["ccsam-tinyimagenet-lt"].status == "local" and rows["ccsam-tinyimagenet-lt"].available_locally
    assert rows["ccsam-tinyimagenet-lt:stage1"].status == "not installed"
    assert from_pretrained("ccsam-tinyimagenet-lt").class_names == ["fountain", "fur coat"]


def test_cli_list_names_the_nearest_model(capsys):
    from ccsam_zoo.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "ccsam-imagenet-lt, ccsam-places-lt, ccsam-inat2018: nothing trained yet; the nearest trained model of " \
        "that code path is ccsam-tinyimagenet-lt" in out  # fmt: skip
    assert "ce-crt-tinyimagenet-lt" in out


# ------------------------------------------------------------------------------------------ GPU script
def test_gpu_script_names_missing_data(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.run(
        [sys.executable, "bench/gpu/reproduce_tinyimagenet_lt.py", "--data", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and "needs TinyImageNet_LT_*.txt and images/" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(tin_dir, tmp_path):
    """The GPU script's CPU path: both runs on a 1-image-per-class slice, then the open-set report of both."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    data = _slice(tin_dir, tmp_path / "data", train=1, other=1, open_=10)
    (data / "images").symlink_to(tin_dir / "images")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "bench/gpu/reproduce_tinyimagenet_lt.py", "--data", str(data), "--out", str(out),
         "--stage1-epochs", "1", "--stage2-epochs", "1", "--precision", "no", "--workers", "0",
         "--set", "model.arch=resnet50_64px", "stage1.batch_size=50", "stage2.batch_size=50", "eval.batch_size=100"],
        cwd=REPO, capture_output=True, text=True, timeout=1800, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    result = json.loads((out / "gpu_results.json").read_text())
    assert set(result["runs"]) == {"ccsam", "ce"} and result["device"].startswith("cpu")
    for name, run in result["runs"].items():
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert run["returncode"] == 0 and run["stage2"]["top1"] == metrics["stage2"]["top1"]
        report = run["report"]
        assert report["num_test"] == 100 and report["num_open"] == 10
        assert 0.0 <= report["f_measure_msp_0.1"] <= 1.0 and 0.0 <= report["auroc_default"] <= 1.0
        assert report["top1"] == pytest.approx(metrics["stage2"]["top1"], abs=0.01)  # the same test split, in %


def test_report_times_of_a_resumed_run_count_each_epoch_once(tmp_path):
    """bench/tinyimagenet_lt_report.py: summed epoch seconds (an epoch redone after a resume counts once); a wall
    time only for a run that never resumed (a resume rewrites recipe.yaml and its span holds the pause)."""
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("tin_report", REPO / "bench" / "tinyimagenet_lt_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    run = tmp_path / "run"
    (run / "stage2").mkdir(parents=True)
    rows = [("stage1", 1, 300.0, 30.0), ("stage1", 2, 320.0, 28.0), ("stage1", 2, 310.0, 29.0),  # redone
            ("stage1", 3, 305.0, 31.0), ("stage2", 1, 90.0, 120.0)]  # fmt: skip
    t = 1000.0
    lines = []
    for stage, epoch, seconds, speed in rows:
        t += seconds
        lines.append(json.dumps({"time": t, "stage": stage, "epoch": epoch, "seconds": seconds, "img_per_s": speed}))
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    (run / "recipe.yaml").write_text("name: tinyimagenet_lt_cpu\n")
    (run / "stage2" / "ccsam_zoo.json").write_text("{}")
    (run / "train.log").write_text("10:00:00 stage1 epoch 2/3\n10:30:00 resuming from stage1-epoch0001\n")
    got = report._run_stats(run)
    assert got["stage1_train_s"] == 300.0 + 310.0 + 305.0 and got["stage2_train_s"] == 90.0
    assert got["train_s"] == 1005.0 and got["resumes"] == 1 and "wall_s" not in got
    assert got["stage1_img_per_s"] == 30.0 and got["stage2_img_per_s"] == 120.0  # medians of 30/29/31 and 120
    (run / "train.log").write_text("10:00:00 stage1 epoch 1/3\n")
    assert report._run_stats(run)["resumes"] == 0 and report._run_stats(run)["wall_s"] >= 0
