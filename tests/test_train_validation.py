"""Training settings that cannot work are refused before any work, with one ``error:`` line and the fix;
runs that go wrong say so and stop (issue 25)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from ccsam_zoo.training.cli import main
from ccsam_zoo.training.config import RecipeError, apply_overrides, check_recipe, load_recipe
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _error(capsys, argv: list[str], code: int = 1) -> str:
    """Run the training command line in-process; assert it ends with one ``error:`` line (after the run's own
    log lines, if it started) and shows no traceback; return that line."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.replace("\r", "\n").strip().splitlines()[-1].strip()
    assert last.startswith("error: ") and err.count("error: ") == 1, err
    return last


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


# ---------------------------------------------------------------------------------------------- runs that go wrong
# A small, fast run: ResNet-20 on an IR-10 cut of the embedded subset (50 .. 5 images per class), plain CE.
_SMALL = [
    "model.arch=resnet20_cifar",
    "method=ce",
    "data.imbalance_ratio=10",
    "data.max_count=50",
    "data.val_per_class=0",
    "stage1.warmup_epochs=0",
    "stage1.milestones=[]",
    "stage2.epochs=0",
    "train.prototypes=false",
    "train.checkpoint_every=0",
    "train.log_every=2",
]


def test_non_finite_loss_stops_at_once_naming_the_step_and_causes(capsys, tmp_path):
    out = tmp_path / "run"
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(out), "--set", *_SMALL, "stage1.lr=1e30"])
    assert err.startswith("error: stage1 diverged: the training loss became nan (epoch 1/30, between steps 1 and 2 of")
    assert "likely causes: a learning rate too high (stage1.lr=1e+30), momentum (stage1.momentum=0.9)" in err
    assert "change the setting and train again" in err
    assert not (out / "metrics.json").exists() and not (out / "stage1").exists()
    assert "stage1 epoch 1/30" not in (out / "train.log").read_text()  # stopped inside the first epoch


@pytest.mark.slow
def test_training_accuracy_at_chance_after_warm_up_stops_the_run(capsys, tmp_path):
    """Weight decay 5 collapses the weights: the model answers the commonest class (50 of 199 images: 25.1%)."""
    out = tmp_path / "run"
    sets = [*_SMALL, "stage1.epochs=50", "stage1.warmup_epochs=2", "stage1.weight_decay=5"]
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(out), "--set", *sets])
    assert err.startswith("error: stage1 is not learning: training top-1 stayed at chance (")
    assert "at epoch 7, <= 26.1%: always answering the commonest class gets 25.1%) for 5 epochs after the " \
        "warm-up (epochs 3-7); stopped. likely causes:" in err
    assert "the learning rate (stage1.lr=0.1: too high, or too low)" in err
    assert "weight decay (stage1.weight_decay=5)" in err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5, 6, 7]
    assert all(r["train_top1"] <= 26.1 for r in records[2:])
    assert not (out / "metrics.json").exists()


def test_model_that_cannot_take_the_image_size_says_the_size_it_needs(capsys, tmp_path):
    out = tmp_path / "run"
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(out), "--set", *_SMALL,
                          "model.arch=vit_tiny_patch16_224"])
    assert err == (
        "error: model.arch='vit_tiny_patch16_224' cannot take the data's 32x32 images (its input size is 224x224): "
        "Input height (32) doesn't match model (224).; set data.image_size=224 (images are resized), or choose a "
        "model without a fixed input size (e.g. a ResNet)"
    )
    assert not out.exists()


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """resnet18 weights as safetensors: intact, truncated, a pickle under a .safetensors name, one bad shape."""
    import timm
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights")
    state = timm.create_model("resnet18").state_dict()
    save_file(state, str(folder / "good.safetensors"))
    data = (folder / "good.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    torch.save({"w": torch.zeros(2)}, str(folder / "pickle.safetensors"))
    save_file({**state, "conv1.weight": torch.zeros(64, 3, 3, 3)}, str(folder / "shape.safetensors"))
    return folder


@pytest.mark.parametrize(
    "name, message",
    [
        ("truncated", "not a readable safetensors file (Error while deserializing header: incomplete metadata"),
        ("pickle", "not a readable safetensors file (Error while deserializing header: header too large"),
        ("shape", "its weights do not fit model.arch='resnet18' (size mismatch for conv1.weight: copying a param "
                  "with shape torch.Size([64, 3, 3, 3]) from checkpoint, the shape in current model is "
                  "torch.Size([64, 3, 7, 7])."),
    ],
)
def test_bad_pretrained_file_names_the_file_and_the_problem(capsys, tmp_path, weight_files, name, message):
    out, path = tmp_path / "run", weight_files / f"{name}.safetensors"
    sets = [*_SMALL, "model.arch=resnet18", "model.pretrained=true", f"model.pretrained_file={path}"]
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(out), "--set", *sets])
    assert err.startswith(f"error: model.pretrained_file={path}: {message}")
    assert not out.exists()


def test_os_errors_name_the_path_and_the_fix(capsys, tmp_path):
    long = tmp_path / ("x" * 300)
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(long / "run"), "--set", *_SMALL])
    assert err == f"error: {long}: a file or folder name is too long (at most 255 bytes each): choose a shorter path" \
        or err == f"error: {long / 'run'}: a file or folder name is too long (at most 255 bytes each): choose a " \
        "shorter path"
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere" / "x")
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(link), "--set", *_SMALL])
    assert err == f"error: {link}: it exists and is not a folder (a file, or a link to nothing): remove it or " \
        "choose another path"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_folder_is_one_line(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(locked / "run"), "--set", *_SMALL])
    finally:
        locked.chmod(0o700)
    assert err == f"error: {locked / 'run'}: permission denied: choose a folder you can write to (--output-dir) " \
        "or fix its permissions"


def test_image_above_the_decompression_bomb_limit_is_an_error_naming_it(capsys, tmp_path, monkeypatch):
    """PIL warns (DecompressionBombWarning) above MAX_IMAGE_PIXELS: the run stops, naming the image. (With the
    limit this low the size probe fails too, so the images take the large-image path: decoded while training.)"""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 32x32 images (1024 pixels) are above it
    monkeypatch.setenv("CCSAM_CACHE", str(tmp_path / "cache"))  # decoded afresh, not read from the cache
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(tmp_path / "run"), "--set", *_SMALL])
    assert err.startswith("error: cannot decode image in ") and "train.parquet 'train/" in err
    assert "DecompressionBombWarning: Image size (1024 pixels) exceeds limit of 1000 pixels" in err
    assert err.endswith("PIL refuses images this large (a guard against decompression bombs): shrink or remove "
                        "that image, or raise PIL.Image.MAX_IMAGE_PIXELS in Python if you trust the file")
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---------------------------------------------------------------------------------------------- processes
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ccsam_zoo.train", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


@pytest.mark.slow
def test_ctrl_c_is_one_line_exit_130_and_leaves_the_last_checkpoint(tmp_path):
    from ccsam_zoo.training.checkpointing import choose_checkpoint

    run = tmp_path / "run"
    sets = [*_SMALL, "stage1.epochs=200", "train.checkpoint_every=1"]
    # Ctrl-C as a terminal delivers it: a test run started in the background of a non-interactive shell
    # (`cmd &`, nohup) passes SIGINT on as ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(
        _cli("--recipe", "quickstart", "--output-dir", str(run), "--set", *sets),
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "checkpoints" / "stage1-epoch0002").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.replace("\r", "\n").strip().splitlines()[-1].strip()
    assert re.fullmatch(rf"interrupted at epoch (\d+)/200 \(stage 1\); continue with --resume {re.escape(str(run))}",
                        last), last
    chosen, state, broken = choose_checkpoint(run)  # the newest checkpoint is intact
    assert chosen is not None and broken == [] and state["epoch"] >= 2
    # the epoch in progress: the one after the checkpoint's, or its own when stopped while saving it
    assert int(re.search(r"epoch (\d+)/", last).group(1)) in (state["epoch"], state["epoch"] + 1)


@pytest.mark.slow
def test_resume_whose_random_state_is_lost_warns_and_finishes(tmp_path):
    """A tiny run's checkpoint with an unloadable RNG file (intact: its sha256 rewritten): the resumed run
    says it is not exact (train.log and the console), then finishes."""
    import shutil

    from tests.test_run_safety import _rewrite_file

    run = tmp_path / "run"
    sets = [*_SMALL, "stage1.epochs=3", "train.checkpoint_every=1"]
    first = subprocess.run(_cli("--recipe", "quickstart", "--output-dir", str(run), "--set", *sets),
                           cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["stage1-epoch0003"]  # the end of stage 1
    # as if killed during epoch 3: the end-of-stage checkpoint made a mid-stage one, stage1/ not yet saved
    mid = ckpts / "stage1-epoch0002"
    (ckpts / "stage1-epoch0003").rename(mid)
    state = json.loads((mid / "trainer_state.json").read_text())
    state.update(epoch=2, stage1_done=False, metrics={}, history=state["history"][:2])
    (mid / "trainer_state.json").write_text(json.dumps(state))
    shutil.rmtree(run / "stage1")
    (run / "metrics.json").unlink()
    _rewrite_file(mid, "random_states_0.pkl", b"\x80not a pickle")
    again = subprocess.run(_cli("--resume", str(run)), cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    rng = ckpts / "stage1-epoch0002" / "random_states_0.pkl"
    warning = f"warning: the random state was not restored ({rng} could not be loaded): the run continues"
    assert warning in (run / "train.log").read_text() and warning in again.stderr
    assert "resuming from stage1-epoch0002" in again.stderr and (run / "metrics.json").is_file()
    epochs = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.slow
def test_accelerate_launch_quiet_prints_the_error_once_without_traceback(tmp_path):
    """``accelerate launch -q`` (the documented command): the error once, no launcher traceback, exit 1.
    Without -q accelerate 1.16 re-raises CalledProcessError with the child's stderr (its own traceback)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = subprocess.run([*launch, "recipes/train.py", "--recipe", "places_lt", "--output-dir", str(tmp_path / "r")],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.count("error: places_lt needs its data: set --set data.source=IMAGE_ROOT:SPLIT_DIR") == 1
    assert "Traceback" not in out.stderr and "CalledProcessError" not in out.stderr


@pytest.mark.parametrize(
    ("device", "precision", "caps", "slow"),
    [
        ("cpu", "bf16", {"avx512_bf16": False, "amx_bf16": False}, True),  # emulated: warn
        ("cpu", "bf16", {"avx512_bf16": True, "amx_bf16": False}, False),
        ("cpu", "bf16", {"avx512_bf16": False, "amx_bf16": True}, False),
        ("cpu", "no", {"avx512_bf16": False, "amx_bf16": False}, False),
        ("cuda", "bf16", {"avx512_bf16": False, "amx_bf16": False}, False),
        ("cpu", "bf16", {}, False),  # capabilities unknown: no claim
    ],
)
def test_bf16_on_a_cpu_without_native_bf16_is_flagged(monkeypatch, device, precision, caps, slow):
    import types

    import torch

    from ccsam_zoo.training import trainer

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    acc = types.SimpleNamespace(device=torch.device(device), mixed_precision=precision)
    assert trainer._slow_cpu_bf16(acc) is slow
