"""Recipes: every shipped recipe resolves; overrides are typed; bad keys name the closest valid key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ccsam_zoo.training import METHODS, RecipeError, apply_overrides, list_recipes, load_recipe
from ccsam_zoo.training.config import stage_methods
from tests.conftest import REPO

SHIPPED = ["cifar10_lt", "cifar100_lt", "imagenet_lt", "places_lt", "inat2018", "cifar10_lt_cpu", "quickstart"]


def test_all_recipes_shipped_and_complete():
    assert set(SHIPPED) <= set(list_recipes())
    for name in SHIPPED:
        r = load_recipe(name)
        for key in ("source", "imbalance_ratio"):
            assert key in r["data"]
        for stage in ("stage1", "stage2"):
            assert isinstance(r[stage]["epochs"], int)
        assert r["method"] in METHODS and isinstance(r["seed"], int)
        assert r["name"] == name


def test_paper_hyperparameters_in_cifar_recipes():
    r = load_recipe("cifar10_lt")
    assert r["model"]["arch"] == "resnet32_cifar"
    assert (r["stage1"]["epochs"], r["stage2"]["epochs"], r["stage1"]["batch_size"]) == (200, 30, 64)
    assert r["stage1"]["milestones"] == [160, 180] and r["stage1"]["weight_decay"] == pytest.approx(2e-4)
    s1, s2 = stage_methods(load_recipe("cifar100_lt"))
    assert s1 == {"name": "ccsam", "preset": "official", "flat_ratio": 0.5}
    assert s2 == {"name": "ccsam_adv", "preset": "official", "up_limit": 0.3}
    assert load_recipe("places_lt")["model"] == {
        **load_recipe("places_lt")["model"],
        "arch": "resnet152",
        "pretrained": True,
    }


def test_overrides_are_parsed_as_yaml():
    r = apply_overrides(
        load_recipe("cifar10_lt"),
        [
            "data.source=/data/cifar10",
            "data.imbalance_ratio=200",
            "method=ce",
            "stage1.epochs=30",
            "stage1.milestones=[20, 25]",
            "stage1.method.scale=1e-2",
            "train.tracker=null",
        ],
    )
    assert r["data"]["source"] == "/data/cifar10" and r["data"]["imbalance_ratio"] == 200
    assert r["method"] == "ce" and r["stage1"]["epochs"] == 30 and r["stage1"]["milestones"] == [20, 25]
    assert r["stage1"]["method"]["scale"] == pytest.approx(1e-2) and r["train"]["tracker"] is None
    assert stage_methods(r)[0] == {"name": "ce", "scale": 1e-2}


@pytest.mark.parametrize(
    "override, closest",
    [("stage1.epoch=3", "stage1.epochs"), ("data.imbalance=10", "data.imbalance_ratio"), ("sed=1", "seed")],
)
def test_unknown_key_names_the_closest(override, closest):
    with pytest.raises(RecipeError, match=f"did you mean '{closest}'"):
        apply_overrides(load_recipe("quickstart"), [override])


def test_unknown_recipe_and_method():
    with pytest.raises(RecipeError, match="Did you mean 'cifar10_lt'.*Shipped recipes"):
        load_recipe("cifar10-lt")
    with pytest.raises(RecipeError, match="unknown method 'ccsm'. Did you mean 'ccsam'"):
        apply_overrides(load_recipe("quickstart"), ["method=ccsm"])
    with pytest.raises(RecipeError, match="key=value"):
        apply_overrides(load_recipe("quickstart"), ["stage1.epochs"])


def test_help_lists_recipes_and_bad_recipe_exits_cleanly():
    out = subprocess.run([sys.executable, "recipes/train.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for name in SHIPPED:
        assert name in out.stdout
    bad = subprocess.run(
        [sys.executable, "recipes/train.py", "--recipe", "nope"], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "unknown recipe 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_switching_method_drops_the_old_methods_keys_in_any_order():
    base = load_recipe("cifar10_lt_cpu")
    assert stage_methods(base)[1] == {"name": "ccsam_adv", "preset": "paper"}
    for order in (["method=ce", "stage2.method.bn=train"], ["stage2.method.bn=train", "method=ce"]):
        s1, s2 = stage_methods(apply_overrides(base, order))
        assert s1 == {"name": "ce"} and s2 == {"name": "crt", "bn": "train"}
    # same method: the recipe's keys stay
    assert stage_methods(apply_overrides(base, ["method=ccsam"]))[1]["preset"] == "paper"


def test_cli_needs_a_recipe_or_a_run_to_resume(tmp_path):
    none = subprocess.run([sys.executable, "recipes/train.py"], cwd=REPO, capture_output=True, text=True)
    assert none.returncode == 2 and "--resume RUN_DIR" in none.stderr
    empty = subprocess.run(
        [sys.executable, "recipes/train.py", "--resume", str(tmp_path)], cwd=REPO, capture_output=True, text=True
    )
    assert empty.returncode == 1 and "no recipe.yaml there" in empty.stderr and "Traceback" not in empty.stderr


def test_recipe_is_checked_and_resolved_once_into_a_frozen_object(tmp_path, monkeypatch):
    import dataclasses

    import ccsam_zoo.training.trainer
    from ccsam_zoo.training import Recipe
    from ccsam_zoo.training.cli import main
    from ccsam_zoo.training.config import resolve_recipe, save_recipe

    plain = apply_overrides(load_recipe("cifar10_lt"), ["method=ldam_drw"])
    recipe = Recipe.build(plain)
    assert recipe.model["head"] == "cosine" and recipe.stage1["gamma"] == 0.01  # method-dependent defaults
    assert dict(recipe.stage1_method) == {"name": "ldam_drw"} and recipe.stage2_method["name"] == "none"
    assert recipe["stage1"] is recipe.stage1 and recipe.stage1["milestones"] == (160, 180)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.seed = 1
    with pytest.raises(TypeError):
        recipe.stage1["lr"] = 1.0
    assert recipe.to_dict() == resolve_recipe(plain) and Recipe.build(recipe) is recipe
    save_recipe(recipe.to_dict(), tmp_path / "recipe.yaml")
    assert Recipe.build(load_recipe(tmp_path / "recipe.yaml")) == recipe  # recipe.yaml round-trips
    with pytest.raises(RecipeError, match="stage1.lr=0 is not valid"):
        Recipe.build(apply_overrides(load_recipe("quickstart"), ["stage1.lr=0"]))

    seen = []
    monkeypatch.setattr(ccsam_zoo.training.trainer, "train", lambda r, out, **kw: seen.append(r) or {})
    assert main(["--recipe", "quickstart", "--output-dir", str(tmp_path / "run")]) == 0
    assert isinstance(seen[0], Recipe) and seen[0] == Recipe.build(load_recipe("quickstart"))


@pytest.mark.parametrize("overrides", [["method=ccsam_block"], ["method=ccsam", "stage1.method.mode=block"]])
def test_compile_with_block_mode_is_refused_before_training(overrides):
    """Block mode differentiates the clean pass once per class; torch.compile's backward refuses that mid-epoch
    (a RuntimeError from inside torch after minutes of compilation): the recipe check names the fix instead."""
    from ccsam_zoo.training import Recipe

    refused = r"model.compile=true cannot train stage1.method.mode=block.*set model.compile=false"
    with pytest.raises(RecipeError, match=refused):
        Recipe.build(apply_overrides(load_recipe("quickstart"), [*overrides, "model.compile=true"]))
    assert Recipe.build(apply_overrides(load_recipe("quickstart"), [*overrides, "model.compile=false"]))
    assert Recipe.build(apply_overrides(load_recipe("quickstart"), ["method=sam", "model.compile=true"]))
    # a run folder saved with the refused pair resumes with the fix: compile changes speed, not the recipe's numbers
    from ccsam_zoo.training.config import recipe_differences, resolve_recipe

    saved = resolve_recipe(apply_overrides(load_recipe("quickstart"), [*overrides, "model.compile=true"]))
    fixed = resolve_recipe(apply_overrides(load_recipe("quickstart"), [*overrides, "model.compile=false"]))
    assert recipe_differences(saved, fixed) == []
