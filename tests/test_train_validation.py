"""Training settings that cannot work are refused before any work, with one ``error:`` line and the fix;
runs that go wrong say so and stop (issue 25)."""

from __future__ import annotations

import pytest

from ccsam_zoo.training.cli import main
from ccsam_zoo.training.config import RecipeError, apply_overrides, check_recipe, load_recipe

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _error(capsys, argv: list[str], code: int = 1) -> str:
    """Run the training command line in-process; assert one ``error:`` line and no traceback; return it."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage1.lr=0", "stage1.lr=0 is not valid: expected a number > 0; e.g. stage1.lr=0.1"),
        ("stage2.lr=0", "stage2.lr=0 is not valid: expected a number > 0; e.g. stage2.lr=0.01"),
        ("stage1.momentum=5", "stage1.momentum=5 is not valid: expected a number >= 0 and < 1 (0.9 is usual"),
        (
            "stage1.warmup_epochs=50",
            "stage1.warmup_epochs=50 with stage1.epochs=30: the warm-up would take the whole stage",
        ),
        ("stage1.warmup_epochs=30", "set stage1.warmup_epochs < 30, e.g. stage1.warmup_epochs=3"),
        ("stage2.warmup_epochs=9", "stage2.warmup_epochs=9 with stage2.epochs=5"),
        ("stage1.method.mixup_alpha=-1", "stage1.method: ccsam: mixup_alpha must be a finite number >= 0, got -1"),
        ("stage1.method.scale=-1", "stage1.method: ccsam: scale must be a finite number >= 0, got -1"),
        ("stage1.method.flat_ratio=1.5", "flat_ratio must be a finite number >= 0 and <= 1, got 1.5"),
        ("stage2.method.div=0", "stage2.method: ccsam_adv: div must be a finite number > 0, got 0"),
        ("stage2.method.adv_lambda=-0.5", "adv_lambda must be a finite number >= 0, got -0.5"),
        ("stage2.method.up_limit=.nan", "up_limit must be a finite number >= 0, got nan"),
        (
            "data.max_count=50",
            "data.max_count=50 sets the head class's size of the long-tailed profile, but data.imbalance_ratio is "
            "null (the training split is used as it is): set data.imbalance_ratio (e.g. 100), or remove "
            "data.max_count",
        ),
        ("name=../../x", "name='../../x' is not valid: expected a name of letters, digits, '.', '_' and '-'"),
        ("name=/tmp/abs", "name='/tmp/abs' is not valid"),
        ("name=a/b", "no path separators"),
        ("name=..", "name='..' is not valid"),
    ],
)
def test_settings_that_cannot_train_are_refused_before_any_work(capsys, tmp_path, override, message):
    out = tmp_path / "run"
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(out), "--set", override])
    assert message in err
    assert not out.exists()


@pytest.mark.parametrize("method, key", [("sam", "rho"), ("ldam_drw", "max_m"), ("mixup_crt", "alpha"),
                                         ("balanced_softmax", "tau")])
def test_every_negative_method_number_is_refused(method, key):
    recipe = apply_overrides(load_recipe("quickstart"), [f"method={method}", f"stage1.method.{key}=-0.1"])
    with pytest.raises(RecipeError, match=rf"stage1.method: \w+: {key} must be a finite number >= 0, got -0.1"):
        check_recipe(recipe)


def test_sensible_edges_are_accepted():
    base = load_recipe("quickstart")
    # warm-up of 1 epoch is no warm-up (lr * 1 / 1): a 1-epoch stage keeps it
    check_recipe(apply_overrides(base, ["stage1.epochs=1", "stage1.warmup_epochs=1", "stage1.milestones=[]"]))
    # a stage that does not train may keep any warm-up; momentum 0 is plain SGD
    check_recipe(apply_overrides(base, ["stage2.epochs=0", "stage2.warmup_epochs=9", "stage1.momentum=0"]))
    # cifar*_lt: imbalance_ratio null means 100, so max_count applies
    cifar = apply_overrides(load_recipe("cifar10_lt"), ["data.imbalance_ratio=null", "data.max_count=1000"])
    check_recipe(cifar)


def test_recipe_file_named_with_spaces_gets_a_safe_name(tmp_path):
    path = tmp_path / "my recipe (v2).yaml"
    path.write_text("stage1: {epochs: 3, warmup_epochs: 1}\n")
    assert load_recipe(path)["name"] == "my-recipe-v2"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "the recipe is empty (or only comments); write its settings (key: value)"),
        ("# only a comment\n\n", "the recipe is empty (or only comments)"),
        ("- a\n- b\n", "a recipe must be a YAML mapping (key: value lines), got a list"),
        ("42\n", "a recipe must be a YAML mapping (key: value lines), got a int"),
    ],
)
def test_empty_or_non_mapping_recipe_file_is_an_error(capsys, tmp_path, text, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    err = _error(capsys, ["--recipe", str(path), "--output-dir", str(tmp_path / "run")])
    assert err.startswith(f"error: {path}: {message}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "val, message",
    [
        # the embedded subset: IR 100 from 500, every class's images are its subset (imbalance_ratio null)
        (1000, "data.val_per_class=1000 leaves class 0 ('airplane') 1 of its 500 training images (499 go to "
               "validation, fewer than the 1000 asked): a class gives at most half of its training images to the "
               "validation split; set data.val_per_class <= 2"),
        (3, "data.val_per_class=3 leaves class 9 ('truck') 2 of its 5 training images (3 go to validation)"),
    ],
)
def test_validation_split_that_empties_a_class_is_refused(capsys, tmp_path, val, message):
    out = tmp_path / "run"
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(out), "--set", f"data.val_per_class={val}"])
    assert message in err
    assert not out.exists()
