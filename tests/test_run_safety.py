"""A user's run is never silently corrupted, and a user's mistake is one clear line before any work.

Run folders: refuse a non-empty ``--output-dir`` unless ``--resume`` / ``--overwrite``; ``--resume`` keeps
the recipe; broken checkpoints are found before loading and the previous intact one is used; leftovers of
interrupted writes are removed; each epoch appears once in ``log.jsonl``; files follow the umask.
Errors: ``--set`` values, recipe YAML, missing data, bad labels, failed pushes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ccsam_zoo.training.checkpointing import (
    CheckpointBroken,
    choose_checkpoint,
    save_training_state,
    verify_checkpoint,
)
from ccsam_zoo.training.cli import main
from ccsam_zoo.training.config import RecipeError, load_recipe, recipe_differences, resolve_recipe, save_recipe
from ccsam_zoo.training.run_dir import RunDirError, check_run_dir, prepare_run_dir, remove_leftovers
from ccsam_zoo.training.run_log import drop_records_after
from tests.conftest import REPO
from tests.training_utils import start_run, wait_ok

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _error(capsys, argv: list[str], code: int = 1) -> str:
    """Run the training command line in-process; assert one ``error:`` line and no traceback; return it."""
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _run_folder(folder: Path, **changes) -> dict:
    """A run folder as a run leaves it (recipe.yaml, log.jsonl, train.log), without training."""
    folder.mkdir(parents=True, exist_ok=True)
    recipe = resolve_recipe(load_recipe("quickstart"))
    for key, value in changes.items():
        section, name = key.split("__")
        recipe[section][name] = value
    save_recipe(recipe, folder / "recipe.yaml")
    (folder / "log.jsonl").write_text('{"stage": "stage1", "epoch": 1, "loss": 1.0, "lr": 0.1}\n')
    (folder / "train.log").write_text("12:00:00 stage1 epoch 1/30 loss 1.0\n")
    return recipe


# ---------------------------------------------------------------------------------------------- folders
def test_existing_run_folder_is_refused_and_left_intact(capsys, tmp_path):
    run = tmp_path / "run"
    _run_folder(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(run)])
    assert "already holds a run (log.jsonl, recipe.yaml, train.log)" in err
    assert "--resume" in err and "--overwrite" in err and "another --output-dir" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_output_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(tmp_path / "notes.txt" / "run")])
    assert f"{tmp_path / 'notes.txt'} is a file, not a folder" in err
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(tmp_path / "notes.txt")])
    assert "is a file, not a folder" in err


def test_overwrite_deletes_a_run_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    _run_folder(run)
    (run / "checkpoints" / "stage1-epoch0003").mkdir(parents=True)
    (run / ".stage1.tmp-x1y2").mkdir()
    check_run_dir(run, overwrite=True)  # only a run's files: accepted
    prepare_run_dir(run, overwrite=True)
    assert run.is_dir() and not any(run.iterdir())

    _run_folder(run)
    (run / "my_notes.txt").write_text("keep me")
    with pytest.raises(RunDirError, match=r"holds files that no run writes \(my_notes.txt\); they are not deleted"):
        check_run_dir(run, overwrite=True)
    assert (run / "my_notes.txt").read_text() == "keep me" and (run / "recipe.yaml").is_file()


def test_resume_and_overwrite_exclude_each_other(capsys, tmp_path):
    assert main(["--resume", str(tmp_path), "--overwrite"]) == 2
    assert "give only one of them" in capsys.readouterr().err


def test_resume_refuses_a_changed_recipe_and_old_recipes_stay_resumable(capsys, tmp_path):
    run = tmp_path / "run"
    recipe = _run_folder(run)
    err = _error(capsys, ["--resume", str(run), "--set", "stage1.lr=0.2"])
    assert f"the recipe differs from {run / 'recipe.yaml'} (stage1.lr: 0.1 -> 0.2)" in err
    assert "start a new run" in err
    # a recipe.yaml written before later schema keys existed resumes: missing keys take their defaults
    older = {k: dict(v) if isinstance(v, dict) else v for k, v in recipe.items()}
    del older["train"]["calibrate_tpr"], older["model"]["norm"], older["model"]["head"], older["stage1"]["gamma"]
    assert recipe_differences(older, recipe) == []
    # bookkeeping keys may change on resume
    assert recipe_differences(recipe, {**recipe, "data": {**recipe["data"], "num_workers": 4}}) == []


def test_resume_refuses_a_checkpoint_written_by_another_recipe(tmp_path):
    from ccsam_zoo.training import train

    run = tmp_path / "run"
    recipe = _run_folder(run)
    other = {**recipe, "stage1": {**recipe["stage1"], "epochs": 7}}
    ckpt = run / "checkpoints" / "stage2-epoch0004"
    ckpt.mkdir(parents=True)
    state = {"metrics": {}, "history": [], "stage": "stage2", "epoch": 4, "recipe": other, "files": {}}
    (ckpt / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(RecipeError, match=rf"differs from checkpoint {ckpt} \(stage1.epochs: 7 -> 30\)"):
        train(recipe, run, resume=True)


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def saved_checkpoints(tmp_path):
    """Three real Accelerate checkpoints of a small model (keep_checkpoints=3)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model, opt = acc.prepare(model, opt)
    for epoch in range(1, 4):  # epochs done, numbered from 1
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
        save_training_state(acc, tmp_path, "stage1", epoch, {"metrics": {}, "history": []}, keep=3)
    return tmp_path


def test_truncated_or_damaged_checkpoint_falls_back_to_the_previous_one(saved_checkpoints):
    root = saved_checkpoints / "checkpoints"
    newest, middle = root / "stage1-epoch0003", root / "stage1-epoch0002"
    assert verify_checkpoint(newest) is None
    weights = newest / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    data = bytearray((middle / "optimizer.bin").read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    (middle / "optimizer.bin").write_bytes(bytes(data))
    chosen, state, broken = choose_checkpoint(saved_checkpoints)
    assert chosen == root / "stage1-epoch0001" and state["epoch"] == 1 and "files" not in state
    assert [(p.name, problem.split(" (")[0]) for p, problem in broken] == [
        ("stage1-epoch0003", f"model.safetensors has 100 bytes, {size} were written"),
        ("stage1-epoch0002", "optimizer.bin does not match its sha256"),
    ]


def test_no_intact_checkpoint_says_which_is_broken_and_what_to_do(saved_checkpoints):
    root = saved_checkpoints / "checkpoints"
    for p in root.iterdir():
        (p / "trainer_state.json").write_text("{ cut by a kil")
    with pytest.raises(CheckpointBroken) as err:
        choose_checkpoint(saved_checkpoints)
    msg = str(err.value)
    assert f"checkpoint {root / 'stage1-epoch0003'} is broken: trainer_state.json is unreadable" in msg
    assert "Nothing was changed" in msg and "--overwrite" in msg and "keep_checkpoints" in msg


def test_broken_stage2_checkpoint_restarts_stage2_from_the_stage1_folder(saved_checkpoints):
    """keep_checkpoints=1 keeps one checkpoint: for stage 2, the previous complete save is stage1/."""
    from safetensors.torch import save_file

    run = saved_checkpoints
    root = run / "checkpoints"
    for p in sorted(root.iterdir())[:-1]:
        __import__("shutil").rmtree(p)
    last = next(root.iterdir())
    last.rename(root / "stage2-epoch0001")
    (root / "stage2-epoch0001" / "model.safetensors").write_bytes(b"")
    (run / "stage1").mkdir()
    save_file({"w": torch.zeros(3)}, str(run / "stage1" / "model.safetensors"))
    metrics = {"top1": 40.0, "per_class": [40.0], "epoch": 30}
    (run / "stage1" / "ccsam_zoo.json").write_text(json.dumps({"metrics": metrics, "recipe": {"name": "x"}}))
    lines = [{"stage": "stage1", "epoch": e, "loss": 1.0, "lr": 0.1} for e in range(1, 31)]
    lines.append({"stage": "stage2", "epoch": 1, "loss": 1.0, "lr": 0.1})
    (run / "log.jsonl").write_text("".join(json.dumps({"time": 1.0, **r}) + "\n" for r in lines))
    chosen, state, broken = choose_checkpoint(run)
    assert chosen is None and [p.name for p, _ in broken] == ["stage2-epoch0001"]
    assert state["stage1_done"] and (state["stage"], state["epoch"]) == ("stage1", 30)
    assert state["metrics"] == {"stage1": metrics} and [r["epoch"] for r in state["history"]] == list(range(1, 31))
    # a log written when epochs were numbered from 0 gives the same state
    old = [{**r, "epoch": r["epoch"] - 1} for r in lines]
    (run / "log.jsonl").write_text("".join(json.dumps({"time": 1.0, **r}) + "\n" for r in old))
    assert choose_checkpoint(run)[1] == state


def _rewrite_file(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and its size/sha256 in trainer_state.json: intact, but not loadable."""
    import hashlib

    (checkpoint / name).write_bytes(data)
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))


def test_resume_whose_random_state_cannot_be_loaded_says_it_is_not_exact(saved_checkpoints):
    """Accelerate logs "Could not load random states" at INFO and carries on: load_training_state says so."""
    from accelerate import Accelerator

    from ccsam_zoo.training.checkpointing import load_training_state

    newest = saved_checkpoints / "checkpoints" / "stage1-epoch0003"

    def load() -> str | None:
        acc = Accelerator(cpu=True)
        model = torch.nn.Linear(8, 4)
        acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        torch.manual_seed(0)
        return load_training_state(acc, newest)

    assert load() is None
    _rewrite_file(newest, "random_states_0.pkl", b"not a pickle")
    assert verify_checkpoint(newest) is None  # intact: only loading it fails
    assert load() == f"{newest / 'random_states_0.pkl'} could not be loaded"
    (newest / "random_states_0.pkl").unlink()
    assert load() == f"{newest / 'random_states_0.pkl'} is missing (was the run saved with fewer processes?)"


def test_checkpoints_and_stage_folders_follow_the_umask(tmp_path):
    import timm
    from accelerate import Accelerator

    from ccsam_zoo.hub import save_pretrained

    old = os.umask(0o002)
    try:
        acc = Accelerator(cpu=True)
        net = acc.prepare(torch.nn.Linear(4, 2))
        folder = save_training_state(acc, tmp_path, "stage1", 1, {"metrics": {}, "history": []})
        model = timm.create_model("resnet20_cifar", num_classes=3)
        info = dict(class_names=["a", "b", "c"], class_counts=[5, 3, 1], stage="stage1", method={"name": "ce"})
        stage = save_pretrained(model, tmp_path / "stage1", info=info)
    finally:
        os.umask(old)
    del net
    modes = {p.name: p.stat().st_mode & 0o777 for p in [folder, *folder.iterdir(), stage, *stage.iterdir()]}
    assert modes["stage1"] == modes["stage1-epoch0001"] == 0o775
    assert modes["model.safetensors"] == modes["trainer_state.json"] == modes["config.json"] == 0o664, modes


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
    (tmp_path / "checkpoints" / ".tmp-stage1-epoch0004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "stage1-epoch0003").mkdir()
    (tmp_path / ".stage1.tmp-a1b2c3").mkdir()
    (tmp_path / ".stage2.old-d4e5").mkdir()  # its stage2/ is missing: the only copy, kept
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == [".stage1.tmp-a1b2c3", ".tmp-stage1-epoch0004"]
    assert (tmp_path / "checkpoints" / "stage1-epoch0003").is_dir() and (tmp_path / ".stage2.old-d4e5").is_dir()


def test_log_records_past_the_restored_epoch_are_dropped(tmp_path):
    log = tmp_path / "log.jsonl"
    records = [("stage1", e) for e in range(1, 7)] + [("stage2", 1), ("stage2", 2)]
    text = "".join(json.dumps({"time": 1.0, "stage": s, "epoch": e, "loss": 1.0}) + "\n" for s, e in records)
    log.write_text(text + '{"stage": "stage2", "ep')  # a line cut by a kill
    assert drop_records_after(log, "stage1", 4) == 5  # 4 epochs done: epochs 5, 6 and stage 2 redone
    kept = [(r["stage"], r["epoch"]) for r in map(json.loads, log.read_text().splitlines())]
    assert kept == [("stage1", e) for e in range(1, 5)]
    assert drop_records_after(log, None, 0) == 4 and log.read_text() == ""  # resumed from scratch


def test_runs_written_with_epochs_from_0_resume_in_todays_numbering(saved_checkpoints):
    """Before issue 25, checkpoint folders, trainer_state.json and log.jsonl counted epochs from 0
    (``stage1-epoch0004`` after "epoch 5/30"): such a run resumes, renumbered from 1."""
    root = saved_checkpoints / "checkpoints"
    newest = root / "stage1-epoch0003"
    state_file = newest / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["epoch_base"]
    state.update(epoch=2, history=[{"stage": "stage1", "epoch": e, "loss": 1.0} for e in range(3)])
    state_file.write_text(json.dumps(state))
    chosen, restored, broken = choose_checkpoint(saved_checkpoints)
    assert (chosen, broken) == (newest, [])
    assert restored["epoch"] == 3 and [r["epoch"] for r in restored["history"]] == [1, 2, 3]
    log = saved_checkpoints / "log.jsonl"
    log.write_text("".join(json.dumps({"stage": "stage1", "epoch": e, "loss": 1.0}) + "\n" for e in range(5)))
    assert drop_records_after(log, "stage1", 3) == 2
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "override, message",
    [
        ("data.imbalance_ratio=abc", "data.imbalance_ratio='abc' is not valid: expected null or a number >= 1"),
        ("data.imbalance_ratio=0.01", "an imbalance factor of 0.01 is data.imbalance_ratio=100"),
        ("stage1.epochs=three", "stage1.epochs='three' is not valid: expected a whole number >= 0"),
        ("stage1.epochs=-1", "stage1.epochs=-1 is not valid: expected a whole number >= 0"),
        ("stage2.epochs=1.5", "stage2.epochs=1.5 is not valid: expected a whole number >= 0"),
        ("epochs=1.5", "unknown recipe key 'epochs'; did you mean 'stage2.epochs'?"),
        ("stage1.lr=abc", "stage1.lr='abc' is not valid: expected a number > 0; e.g. stage1.lr=0.1"),
        ("stage1.weight_decay=-1e-4", "stage1.weight_decay=-0.0001 is not valid: expected a number >= 0"),
        ("seed=abc", "seed='abc' is not valid: expected a whole number >= 0; e.g. seed=42"),
        ("stage1.schedule=cosin", "expected one of step, cosine, constant; did you mean 'cosine'?"),
        ("stage1.optimizer=sgdd", "stage1.optimizer='sgdd' is not valid: expected one of"),
        ("train.mixed_precision=fp32", "expected one of no, fp16, bf16"),
        ("data.selection=random", "expected one of first, shuffle"),
        ("data.shot_rule=strict", "expected one of paper, authors"),
        ("model.head=mlp", "expected null or one of linear, cosine"),
        ("model.norm=layernorm", "expected one of batchnorm, groupnorm"),
        ("train.prototypes=maybe", "train.prototypes='maybe' is not valid: expected true or false"),
        ("stage1.milestones=[160, 180", "--set stage1.milestones=[160, 180: not a valid YAML value"),
        ("stage1.epochs=0", "stage1.epochs=0 would re-train the classifier on a randomly initialised backbone"),
    ],
)
def test_bad_values_are_one_line_before_any_work(capsys, tmp_path, override, message):
    out = tmp_path / "run"
    err = _error(capsys, ["--recipe", "quickstart", "--output-dir", str(out), "--set", override])
    assert message in err
    assert not out.exists()


def test_mixed_precision_no_is_the_string_not_yaml_false():
    from ccsam_zoo.training.config import apply_overrides

    assert apply_overrides(load_recipe("quickstart"), ["train.mixed_precision=no"])["train"]["mixed_precision"] == "no"


def test_yaml_syntax_error_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nstage1: {epochs: 3\nstage2:\n  lr: 0.1\n")
    err = _error(capsys, ["--recipe", str(bad)])
    assert f"{bad}:3:7: YAML syntax error" in err
    bad.write_text("stage1:\n  epochs: ten\n")
    assert f"{bad}: stage1.epochs='ten' is not valid" in _error(capsys, ["--recipe", str(bad)])


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(RecipeError, match="stage1.epochs='three'"):
        main(["--recipe", "quickstart", "--output-dir", str(tmp_path / "r"), "--set", "stage1.epochs=three", "--debug"])


def test_places_lt_without_data_says_what_to_set_and_leaves_no_folder(capsys, tmp_path):
    out = tmp_path / "places"
    err = _error(capsys, ["--recipe", "places_lt", "--output-dir", str(out)])
    assert "--set data.source=IMAGE_ROOT:SPLIT_DIR" in err
    for part in ("Places-365", "Places_LT_train.txt", "Places_LT_test.txt", "OpenLongTailRecognition-OLTR"):
        assert part in err
    assert not out.exists()
    err = _error(capsys, ["--recipe", "places_lt", "--output-dir", str(out), "--set", f"data.source={tmp_path}"])
    assert "Places_LT_train.txt" in err and "OLTR" in err and not out.exists()


@pytest.fixture(scope="module")
def bad_label_data(tmp_path_factory):
    """The embedded CIFAR-10-LT subset with one training label set to 10 (with and without class names)."""
    from ccsam_zoo.data.sources import EMBEDDED_DIR

    train, test = pq.read_table(EMBEDDED_DIR / "train.parquet"), pq.read_table(EMBEDDED_DIR / "test.parquet")
    labels = np.asarray(train.column("label")).copy()
    labels[7] = 10
    train = train.set_column(train.schema.get_field_index("label"), "label", pa.array(labels))
    out = {}
    for kind, meta in (("named", train.schema.metadata), ("unnamed", None)):
        folder = tmp_path_factory.mktemp(kind)
        pq.write_table(train.replace_schema_metadata(meta), folder / "train.parquet")
        pq.write_table(test.replace_schema_metadata(test.schema.metadata if meta else None), folder / "test.parquet")
        out[kind] = folder
    return out


def test_train_label_outside_the_classes_is_an_error_before_training(capsys, tmp_path, bad_label_data):
    base = ["--recipe", "quickstart", "--output-dir", str(tmp_path / "run"), "--set", "data.name=parquet"]
    err = _error(capsys, [*base, f"data.source={bad_label_data['named']}"])
    assert "train labels of" in err and "outside the 10 declared class names ('airplane' .. 'truck'" in err
    assert "[10], first at row 7" in err
    # without declared names the label would make an 11th class with no test images: refused
    err = _error(capsys, [*base, f"data.source={bad_label_data['unnamed']}"])
    assert "no test images for class(es) 10 ('10', 1 training images)" in err
    assert not (tmp_path / "run").exists()


def test_failed_push_says_where_the_run_is_and_keeps_it(capsys, tmp_path, monkeypatch):
    import ccsam_zoo.hub.publish
    import ccsam_zoo.training.trainer

    run = tmp_path / "run"

    def fake_train(recipe, output_dir, **kwargs):
        _run_folder(Path(output_dir))
        return {"stage2": {"top1": 33.3}}

    def failing_push(*args, **kwargs):
        raise RuntimeError("401 Client Error: Unauthorized for url https://huggingface.co/api/repos/create")

    monkeypatch.setattr(ccsam_zoo.training.trainer, "train", fake_train)
    monkeypatch.setattr(ccsam_zoo.hub.publish, "push_to_hub", failing_push)
    argv = ["--recipe", "quickstart", "--output-dir", str(run), "--push-to-hub", "me/model"]
    assert main(argv) == 2  # found before training: the tests run offline
    assert "--push-to-hub needs the Hub but HF_HUB_OFFLINE is set" in capsys.readouterr().err
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    assert main(argv) == 1
    out = capsys.readouterr()
    assert "hf_secret" not in out.out + out.err
    assert f"done: {run}" in out.out
    assert out.err.strip() == f"error: saved in {run}; push failed: 401 Client Error: Unauthorized for url " + (
        "https://huggingface.co/api/repos/create"
    )
    assert (run / "recipe.yaml").is_file() and (run / "log.jsonl").is_file()
    assert main(["--recipe", "quickstart", "--push-to-hub", "not-a-repo-id"]) == 2
    assert "expected ORG/NAME" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_kill_then_resume_from_a_broken_checkpoint_keeps_each_epoch_once(tmp_path):
    """SIGKILL during stage 1, the newest checkpoint then truncated: the resume falls back to the previous
    checkpoint, says so, and ends with the uninterrupted run's metrics and one log record per epoch."""
    sets = [
        "stage1.epochs=4",
        "stage1.milestones=[3]",
        "stage1.warmup_epochs=1",
        "stage2.epochs=1",
        "train.keep_checkpoints=2",
        "train.prototypes=false",
    ]
    cmd = [sys.executable, "-m", "ccsam_zoo.train", "--recipe", "quickstart", "--set", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    full = start_run([*cmd, "--output-dir", str(tmp_path / "full")], REPO, env)  # side by side with the killed run

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--output-dir", str(killed)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    newest = killed / "checkpoints" / "stage1-epoch0003"
    deadline = time.time() + 600
    while time.time() < deadline and not newest.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert newest.exists() and not (killed / "metrics.json").exists()
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    again = subprocess.run([*cmd[:3], "--resume", str(killed)], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    wait_ok(full)
    log = (killed / "train.log").read_text()
    assert "checkpoint stage1-epoch0003 is broken (model.safetensors has" in log
    assert "resuming from stage1-epoch0002 (the previous complete checkpoint)" in log
    assert (killed / "checkpoints" / ".broken-stage1-epoch0003").is_dir()
    records = [json.loads(line) for line in (killed / "log.jsonl").read_text().splitlines()]
    epochs = [(r["stage"], r["epoch"]) for r in records]
    assert epochs == [("stage1", e) for e in range(1, 5)] + [("stage2", 1)]
    assert json.loads((killed / "metrics.json").read_text()) == json.loads((tmp_path / "full/metrics.json").read_text())
