"""Aliases, run folders and the offline Hugging Face cache (laid out by hand, HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from huggingface_hub import constants

import ccsam_zoo  # noqa: F401
from ccsam_zoo.hub import (
    CheckpointError,
    from_pretrained,
    list_pretrained,
    register_pretrained,
    registry,
    save_pretrained,
)

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
REPO = "some-org/tiny-ccsam"


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("resnet20_cifar", num_classes=3).eval()


def info(stage: str) -> dict:
    return dict(
        class_names=["a", "b", "c"], class_counts=[300, 30, 3], stage=stage, method={"name": "ccsam"},
        recipe={"method": "ccsam", "data": {"name": "cifar10_lt", "imbalance_ratio": 100}},
        metrics={"top1": 0.5, "many": 0.6, "medium": 0.5, "few": 0.4, "per_class": [0.6, 0.5, 0.4]},
        dataset="cifar10_lt IR100", data_fingerprint="fp", prototypes=None, open_set=None, paper_results=None,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, nn.Module, nn.Module]:
    run = tmp_path_factory.mktemp("run")
    s1, s2 = make_model(1), make_model(2)
    save_pretrained(s1, run / "stage1", info=info("stage1"))
    save_pretrained(s2, run / "stage2", info=info("stage2"))
    return run, s1, s2


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private HF cache, offline mode, and a registry restored after each test."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    # the models shipped in the package: their aliases point at an empty place unless a test restores them
    for alias, entry in list(registry._REGISTRY.items()):
        if entry.shipped:
            registry._REGISTRY[alias] = dataclasses.replace(entry, local_dir=tmp_path / "assets" / alias)
    return cache


def _unchained(err: BaseException) -> bool:
    """One exception in the traceback: no "direct cause" / "during handling" chain."""
    import traceback

    text = "".join(traceback.format_exception(err))
    return text.count("Traceback (most recent call last)") == 1


def add_to_cache(cache: Path, repo_id: str, branches: dict[str, Path]) -> None:
    """Lay out ``models--ORG--NAME/{blobs, refs/<branch>, snapshots/<sha>}`` as huggingface_hub does."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    for branch, folder in branches.items():
        sha = hashlib.sha1(f"{repo_id}@{branch}".encode()).hexdigest()
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / branch).write_text(sha)
        snap = root / "snapshots" / sha
        snap.mkdir(parents=True)
        (root / "blobs").mkdir(exist_ok=True)
        for f in folder.iterdir():
            data = f.read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            os.symlink(os.path.relpath(blob, snap), snap / f.name)


# --------------------------------------------------------------------------------------------- registry


def test_builtin_aliases():
    rows = {r.alias: r for r in list_pretrained()}
    assert rows["ccsam-cifar100-lt"].repo_id == "ccsam-zoo/ccsam-cifar100-lt-ir100-resnet32"
    assert rows["ccsam-cifar100-lt"].revision == "main"
    assert rows["ccsam-cifar100-lt:stage1"].revision == "stage1"
    for alias, dataset in [("ccsam-cifar100-lt", "cifar100_lt"), ("ccsam-imagenet-lt", "imagenet_lt"),
                           ("ccsam-places-lt", "places_lt"), ("ccsam-inat2018", "inat2018")]:
        assert rows[alias].repo_id.startswith("ccsam-zoo/") and rows[alias].dataset == dataset
        assert rows[alias].available_locally is False
    cpu = rows["ccsam-cifar10-lt-cpu"]
    assert cpu.repo_id is None and cpu.available_locally is False and cpu.status == "missing"


def test_builtin_statuses_are_honest():
    """Nothing was ever uploaded under the reserved Hub names: they say so; the shipped models say shipped."""
    rows = {r.alias: r for r in list_pretrained()}
    assert rows["ccsam-cifar10-lt"].status == "missing"  # its shipped folder is hidden by the fixture
    registry._REGISTRY.update({a: e for a, e in registry._builtin_entries().items() if e.shipped})
    rows = {r.alias: r for r in list_pretrained()}
    for alias in ("ccsam-cifar100-lt", "ccsam-imagenet-lt", "ccsam-places-lt", "ccsam-inat2018"):
        assert rows[alias].status == rows[f"{alias}:stage1"].status == "not published", alias
        assert not rows[alias].available_locally
    assert rows["ccsam-cifar10-lt-cpu"].status == "shipped" and rows["ccsam-cifar10-lt-cpu"].available_locally
    assert rows["ccsam-cifar10-lt-cpu:stage1"].status == "not shipped"  # the package holds stage 2 only
    for alias in ("ccsam-cifar10-lt", "ce-crt-cifar10-lt"):  # the full-protocol models ship both stages
        assert rows[alias].status == rows[f"{alias}:stage1"].status == "shipped", alias
        assert rows[alias].recipe == "cifar10_lt" and rows[alias].architecture == "resnet32_cifar"
        assert rows[alias].repo_id is None  # nothing of it is on the Hub
    mixup = rows["mixup-crt-cifar10-lt"]  # a baseline: its stage-2 model only
    assert mixup.status == "shipped" and rows["mixup-crt-cifar10-lt:stage1"].status == "not shipped"
    assert mixup.method == "mixup_crt" and mixup.recipe == "cifar10_lt" and mixup.repo_id is None


def test_shipped_entries_name_the_recipe_and_method_that_trained_them():
    """The registry's recipe / method / architecture of every shipped model = what its folder says; the hint's
    `--set method=M` rule relies on every built-in recipe training method `ccsam`."""
    import json

    from ccsam_zoo.training.config import list_recipes, load_recipe

    assert {load_recipe(n)["method"] for n in list_recipes()} == {"ccsam"}
    for alias, entry in registry._builtin_entries().items():
        if not entry.shipped:
            continue
        folder = entry.local_dir / "stage2" if (entry.local_dir / "stage2").is_dir() else entry.local_dir
        extras = json.loads((folder / "ccsam_zoo.json").read_text())
        assert extras["recipe"]["name"] == entry.recipe and extras["recipe"]["method"] == entry.method, alias
        assert extras["architecture"] == entry.architecture, alias
    hint = registry._recipe_args(registry._builtin_entries()["ce-crt-cifar10-lt"])
    assert hint == "--recipe cifar10_lt --set method=ce"


def test_shipped_run_folder_layout_resolves_both_stages_and_names_them_in_cards(tmp_path, run_dir):
    """A shipped alias whose folder holds stage1/ and stage2/: NAME is stage 2, NAME:stage1 stage 1; cards say so."""
    import shutil

    from ccsam_zoo.hub.card import _shipped_alias

    run, s1, s2 = run_dir
    folder = tmp_path / "assets" / "tiny-shipped"
    shutil.copytree(run, folder)
    registry._REGISTRY["tiny-shipped"] = registry._Entry("tiny-shipped", None, "main", folder, shipped=True)
    rows = {r.alias: r for r in list_pretrained()}
    assert rows["tiny-shipped"].status == rows["tiny-shipped:stage1"].status == "shipped"
    for name, model in (("tiny-shipped", s2), ("tiny-shipped:stage1", s1)):
        with torch.no_grad():
            assert torch.equal(from_pretrained(name).model(X), model(X)), name
    assert _shipped_alias(folder / "stage2") == _shipped_alias(folder) == "tiny-shipped"
    assert _shipped_alias(folder / "stage1") == "tiny-shipped:stage1"
    assert _shipped_alias(run / "stage1") is None


def test_alias_names_tell_the_truth_about_the_backbone():
    """Each reserved repo name states the backbone that the alias's recipe trains (recipes/*.yaml model.arch)."""
    from ccsam_zoo.training.config import load_recipe

    for row in list_pretrained():
        if row.recipe is None or row.alias.endswith(":stage1"):
            continue
        arch = load_recipe(row.recipe)["model"]["arch"]
        assert row.architecture == arch, row
        if row.repo_id:
            assert row.repo_id.endswith("-" + arch.removesuffix("_cifar").replace("_", "-")), row
    assert {r.alias: r.repo_id for r in list_pretrained()}["ccsam-imagenet-lt"] == (
        "ccsam-zoo/ccsam-imagenet-lt-resnext50-32x4d"
    )


def test_unpublished_alias_is_one_short_message():
    with pytest.raises(CheckpointError) as err:
        from_pretrained("ccsam-imagenet-lt")
    msg = str(err.value)
    assert msg.startswith("model 'ccsam-imagenet-lt' is not published yet")
    assert "--recipe imagenet_lt` (resnext50_32x4d on ImageNet-LT)" in msg and "resnet50" not in msg
    assert len(msg) < 400 and "\n" not in msg
    assert _unchained(err.value)


def test_unknown_alias_lists_known_ones():
    with pytest.raises(CheckpointError) as err:
        from_pretrained("ccsam-cifar10-l")
    msg = str(err.value)
    assert "unknown model 'ccsam-cifar10-l'" in msg and "Did you mean 'ccsam-cifar10-lt'" in msg
    for alias in ("ccsam-cifar100-lt", "ccsam-imagenet-lt", "ccsam-places-lt", "ccsam-inat2018"):
        assert alias in msg
    assert "ccsam-cifar10-lt-cpu" in msg


def test_bundled_cpu_model_not_available():
    with pytest.raises(CheckpointError) as err:
        from_pretrained("ccsam-cifar10-lt-cpu")
    msg = str(err.value)
    assert "not available" in msg and "ccsam-cifar10-lt-cpu" in msg
    assert "ccsam-zoo train --recipe cifar10_lt_cpu" in msg


def test_uncached_hub_alias_says_where_it_looked(_isolated):
    register_pretrained("mine", repo_id="me/my-model", recipe="cifar10_lt")
    assert {r.alias: r.status for r in list_pretrained()}["mine"] == "not cached"
    with pytest.raises(CheckpointError) as err:
        from_pretrained("mine")
    msg = str(err.value)
    assert "me/my-model" in msg and "'main'" in msg
    assert str(_isolated / "models--me--my-model") in msg
    assert "HF_HUB_OFFLINE=1" in msg and "--recipe cifar10_lt" in msg
    assert _unchained(err.value)


def test_missing_folder_and_non_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        from_pretrained(str(tmp_path / "nope" / "stage2"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        from_pretrained(tmp_path / "empty")


def test_register_local_run_folder(run_dir):
    run, s1, s2 = run_dir
    row = register_pretrained("my-run", local_dir=run, dataset="cifar10_lt")
    assert row.available_locally and row.repo_id is None
    with torch.no_grad():
        assert torch.equal(from_pretrained("my-run")(X), s2(X))
        assert torch.equal(from_pretrained("my-run:stage1")(X), s1(X))
        assert torch.equal(from_pretrained("my-run", revision="stage1")(X), s1(X))
    rows = {r.alias: r for r in list_pretrained()}
    assert rows["my-run"].available_locally and rows["my-run:stage1"].available_locally
    assert rows["my-run"].status == "local"
    with pytest.raises(CheckpointError, match=r"revision='v2' applies to Hub repos; 'my-run' is a local model"):
        from_pretrained("my-run", revision="v2")  # was silently ignored
    with pytest.raises(ValueError, match="already registered"):
        register_pretrained("my-run", local_dir=run)
    register_pretrained("my-run", local_dir=run / "stage2", overwrite=True)
    for bad in ("a:b", "org/name", ""):
        with pytest.raises(ValueError):
            register_pretrained(bad, repo_id="o/n")
    with pytest.raises(ValueError, match="repo_id"):
        register_pretrained("nothing")


def test_run_folder_picks_stage(run_dir):
    run, s1, s2 = run_dir
    with torch.no_grad():
        assert torch.equal(from_pretrained(run)(X), s2(X))
        assert torch.equal(from_pretrained(run, revision="stage1")(X), s1(X))
        assert torch.equal(from_pretrained(run, revision="stage2")(X), s2(X))
    assert from_pretrained(run).meta["stage"] == 2


# ----------------------------------------------------------------------------------------- offline cache


def test_offline_hub_cache(run_dir, _isolated):
    run, s1, s2 = run_dir
    add_to_cache(_isolated, REPO, {"main": run / "stage2", "stage1": run / "stage1"})
    with torch.no_grad():
        clf = from_pretrained(REPO)
        assert torch.equal(clf(X), s2(X))
        assert clf.meta["repo_id"] == REPO and clf.meta["source"] == "hub"
        assert torch.equal(from_pretrained(REPO, revision="stage1")(X), s1(X))
        assert torch.equal(from_pretrained(f"{REPO}:stage1")(X), s1(X))
        # timm's own hf-hub: loader on the same cache
        assert torch.equal(timm.create_model(f"hf-hub:{REPO}", pretrained=True).eval()(X), s2(X))
        assert torch.equal(timm.create_model(f"hf-hub:{REPO}@stage1", pretrained=True).eval()(X), s1(X))
    register_pretrained("tiny", repo_id=REPO, dataset="cifar10_lt", recipe="tiny")
    rows = {r.alias: r for r in list_pretrained()}
    assert rows["tiny"][:6] == ("tiny", REPO, "main", "cifar10_lt", True, "cached")
    assert rows["tiny:stage1"].available_locally
    with torch.no_grad():
        assert torch.equal(from_pretrained("tiny:stage1")(X), s1(X))
    with pytest.raises(CheckpointError, match=r"revision 'v9'.*--recipe tiny"):
        from_pretrained("tiny", revision="v9")
    with pytest.raises(ValueError, match="asks for revision"):
        from_pretrained("tiny:stage1", revision="main")


def test_offline_cache_only_stage2(run_dir, _isolated):
    run, _, s2 = run_dir
    add_to_cache(_isolated, REPO, {"main": run / "stage2"})
    register_pretrained("tiny2", repo_id=REPO)
    rows = {r.alias: r for r in list_pretrained()}
    assert rows["tiny2"].available_locally and not rows["tiny2:stage1"].available_locally
    with pytest.raises(CheckpointError, match="'stage1'"):
        from_pretrained("tiny2:stage1")
