"""Nothing shipped holds a path of the build machine; shipped cards give commands a wheel user can run.

Covers every text file under ``ccsam_zoo/assets`` (cards, recipes, metadata, logs of every alias), a freshly saved
checkpoint's card for the Hub, what ``push_to_hub`` uploads, and what ``bench/ship_model.py`` writes.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

import ccsam_zoo  # noqa: F401
from ccsam_zoo.hub import push_to_hub, render_model_card, save_pretrained
from ccsam_zoo.hub.card import portable_recipe, portable_text
from ccsam_zoo.hub.registry import _REGISTRY, ASSETS_DIR

REPO = Path(__file__).resolve().parents[1]
TEXT_SUFFIXES = {".md", ".json", ".yaml", ".yml", ".log", ".jsonl", ".txt"}
# A path of some machine: POSIX roots where builds live, home-relative, Windows drives; and this project's
# relative layout of the build machine (../shared/data).
MACHINE_PATH = re.compile(
    r"(?<![\w.:/-])(?:/(?:work|root|home|tmp|Users|mnt|var|opt|srv)(?:/|\b)|~/|[A-Za-z]:\\)|\.\./shared\b"
)
SHIPPED = sorted(alias for alias, e in _REGISTRY.items() if e.shipped)


def _text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)


def _leaks(text: str) -> list[str]:
    return [ln.strip()[:160] for ln in text.splitlines() if MACHINE_PATH.search(ln)]


def test_the_path_pattern_catches_what_it_must_and_nothing_else():
    for bad in ("data.source=/work/shared/data/cifar10", "from /root/.cache/x", "`/home/me/runs`", "at /tmp/x",
                "'/Users/me/x'", r"C:\data\cifar10", "~/.cache/ccsam_zoo", "../shared/data/cifar10"):  # fmt: skip
        assert _leaks(bad), bad
    for fine in ("<!-- /ccsam_zoo:notes -->", "78 img/s", "[x](../recipe.yaml)", "uoft-cs/cifar10", "PATH/TO/cifar10",
                 "https://github.com/zzpustc/CC-SAM", "stage2.init=RUN1/stage1", "x0.1 at [160, 180]"):  # fmt: skip
        assert not _leaks(fine), fine


def test_every_shipped_text_file_is_free_of_machine_paths():
    files = _text_files(ASSETS_DIR)
    aliases = {p.relative_to(ASSETS_DIR).parts[0] for p in files}
    assert set(SHIPPED) <= aliases  # every alias, both stages where shipped
    assert {p.name for p in files} >= {"README.md", "ccsam_zoo.json", "recipe.yaml", "train.log", "log.jsonl"}
    leaks = {str(p.relative_to(ASSETS_DIR)): _leaks(p.read_text(encoding="utf-8", errors="replace")) for p in files}
    assert {k: v for k, v in leaks.items() if v} == {}


@pytest.mark.parametrize("alias", SHIPPED)
def test_shipped_cards_name_the_data_copy_and_a_command_a_wheel_has(alias):
    folder = _REGISTRY[alias].local_dir
    cards = sorted(folder.glob("**/README.md"))
    assert cards
    for card in cards:
        text = card.read_text(encoding="utf-8")
        assert "recipes/train.py" not in text  # a wheel has no recipes/ folder
        assert "Reproduce: " in text and "ccsam-zoo train --recipe" in text
        assert "data.source=PATH/TO/cifar10" in text
        extras = json.loads((card.parent / "ccsam_zoo.json").read_text())
        limits = text[text.index("## Limitations"):]
        # trained on the JPEG quality-75 copy, named by name, hash and fingerprint (no warning about "a JPEG mirror")
        assert "Trained and evaluated on the CIFAR-10 copy `cifar10`" in limits
        assert "JPEG at PIL quality 75" in limits and f"Data fingerprint `{extras['data_fingerprint']}`" in limits
        assert "the copy's files, the long-tailed subset rule and its seed" in limits
        assert extras["recipe"]["data"]["source"] == "PATH/TO/cifar10"


def test_flagship_card_gives_the_one_command_that_rebuilds_its_recipe():
    """ccsam-cifar10-lt (issue 22: strong augmentation, validation selection) was one run; the card's command,
    applied to the packaged recipe, gives the shipped recipe key for key."""
    from ccsam_zoo.training.config import apply_overrides, load_recipe, resolve_recipe

    folder = _REGISTRY["ccsam-cifar10-lt"].local_dir
    assert "stage 1 skipped" not in (folder / "train.log").read_text()
    shipped = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert shipped["stage2"].get("init") is None and shipped["stage2"]["init_from"] == "best"
    stage1 = json.loads((folder / "stage1" / "ccsam_zoo.json").read_text())["metrics"]
    for stage in ("stage1", "stage2"):
        text = (folder / stage / "README.md").read_text()
        assert "Reproduce: two runs" not in text and "recipe.yaml  # the run folder's" not in text
        command = re.search(r"Reproduce: `(ccsam-zoo train --recipe cifar10_lt --set [^`]*)`", text).group(1)
        sets = command.split(" --set ")[1].split()
        strong = ["data.autoaugment=cifar10", "data.cutout=16", "stage1.method.mixup_alpha=0.0", "eval.select_on=val",
                  "data.val_rule=left_out", "data.val_per_class=100", "stage2.method.preset=paper"]  # fmt: skip
        assert set(strong) <= set(sets) and "data.source=PATH/TO/cifar10" in sets
        rebuilt = resolve_recipe(apply_overrides(load_recipe("cifar10_lt"), sets))
        assert {k: v for k, v in rebuilt.items() if k != "description"} == {
            k: v for k, v in resolve_recipe(shipped).items() if k != "description"}  # fmt: skip
        # the stage-1 row: stage 1's method and schedule, and its validation-selected weights' test accuracy
        row = f"| CC-SAM (official preset) | 200 | 64 | 0.1, step | {stage1['top1']:.2f} |"
        assert f"| 1{' (this model)' if stage == 'stage1' else ''} {row}" in text
        assert render_model_card(folder / stage) == text  # the shipped card is what the renderer writes


def test_portable_recipe_and_text():
    recipe = {"data": {"name": "cifar10_lt", "source": "/work/shared/data/cifar10"},
              "model": {"pretrained_file": "/home/me/w.safetensors"},
              "stage2": {"init": "/root/.cache/ccsam_zoo/runs/full/ccsam-s42/stage1", "lr": 0.01}}  # fmt: skip
    out = portable_recipe(recipe)
    assert out == {"data": {"name": "cifar10_lt", "source": "PATH/TO/cifar10"},
                   "model": {"pretrained_file": "PATH/TO/w.safetensors"},
                   "stage2": {"init": "PATH/TO/ccsam-s42/stage1", "lr": 0.01}}  # fmt: skip
    assert recipe["data"]["source"] == "/work/shared/data/cifar10"  # a copy: the caller's recipe is untouched
    assert portable_recipe({"data": {"source": "uoft-cs/cifar10"}})["data"]["source"] == "uoft-cs/cifar10"  # Hub id
    oltr = portable_recipe({"data": {"source": "/data/imagenet:/data/splits"}})["data"]["source"]
    assert oltr == "PATH/TO/imagenet:PATH/TO/splits"
    assert portable_text("weights from /root/x/run/stage1 at 78 img/s") == "weights from PATH/TO/run/stage1 at 78 img/s"


def _tiny_info(tmp_path: Path) -> dict:
    from ccsam_zoo.training.config import load_recipe, resolve_recipe

    recipe = resolve_recipe(load_recipe("cifar10_lt"))  # a section-0 CE + cRT run: method and speed keys set
    recipe["method"], recipe["train"]["mixed_precision"] = "ce", "bf16"
    recipe["model"]["channels_last"] = recipe["model"]["compile"] = True
    recipe["data"]["source"] = str(tmp_path / "data" / "cifar10")  # an absolute path of "this machine"
    recipe["stage2"]["init"] = str(tmp_path / "runs" / "first" / "stage1")
    recipe["stage1"]["epochs"], recipe["stage2"]["epochs"] = 2, 1
    return dict(
        class_names=[str(c) for c in range(10)], class_counts=[500, 300, 180, 100, 60, 40, 20, 12, 8, 5],
        shot_thresholds=[100, 20], shot_rule="paper", stage="stage2", method={"name": "crt"}, recipe=recipe,
        metrics={"top1": 0.5, "many": 0.6, "medium": 0.4, "few": 0.3}, dataset="cifar10_lt IR100",
        data_fingerprint="fp-1", data_source=str(tmp_path / "data" / "cifar10"),
    )  # fmt: skip


def test_a_card_saved_for_the_hub_and_the_upload_hold_no_machine_path(tmp_path):
    from tests.test_hub_publish import FakeApi

    info = _tiny_info(tmp_path)
    model = timm.create_model("resnet20_cifar", num_classes=10)
    folder = save_pretrained(model, tmp_path / "run" / "stage2", info={**info, "repo_id": "me/tiny"})
    card = (folder / "README.md").read_text()
    assert str(tmp_path) not in card and not _leaks(card)
    assert "data.source=PATH/TO/cifar10" in card and "ccsam-zoo train --recipe cifar10_lt" in card
    assert "Trained and evaluated on the data copy `cifar10`" in card
    # the local folder keeps the real path (resume and local tools read it); the Hub gets placeholders
    assert json.loads((folder / "ccsam_zoo.json").read_text())["recipe"]["data"]["source"] == info["data_source"]
    api = FakeApi()
    push_to_hub(tmp_path / "run", "me/tiny", api=api)
    uploaded = {op.path_in_repo: op.path_or_fileobj for op in api.commits()[0]["operations"]}
    extras = uploaded["ccsam_zoo.json"]
    assert isinstance(extras, bytes) and not _leaks(extras.decode()) and str(tmp_path) not in extras.decode()
    sent = json.loads(extras)
    assert sent["recipe"]["data"]["source"] == "PATH/TO/cifar10" and sent["data_source"] == "PATH/TO/cifar10"
    assert sent["recipe"]["stage2"]["init"] == "PATH/TO/first/stage1"
    local = json.loads((folder / "ccsam_zoo.json").read_text())
    assert {k: v for k, v in sent.items() if k not in ("recipe", "data_source")} == {
        k: v for k, v in local.items() if k not in ("recipe", "data_source")}  # fmt: skip
    assert not _leaks(uploaded["README.md"].decode())


def test_ship_script_makes_a_run_folder_portable_and_refuses_leaks(tmp_path):
    sys.path.insert(0, str(REPO / "bench"))
    import ship_model

    info = _tiny_info(tmp_path)
    run = tmp_path / "run"
    model = timm.create_model("resnet20_cifar", num_classes=10)
    save_pretrained(model, run / "stage2", info=info)
    (run / "recipe.yaml").write_text(yaml.safe_dump(info["recipe"], sort_keys=False))
    (run / "train.log").write_text(f"12:00:00 stage 1 skipped: weights from {info['recipe']['stage2']['init']}\n")
    (run / "metrics.json").write_text(json.dumps({"command": f"train --set data.source={info['data_source']}"}))
    weights = (run / "stage2" / "model.safetensors").read_bytes()
    assert ship_model.machine_paths(run)  # the run folder as trained names this machine
    with pytest.raises(SystemExit, match="would ship paths of this machine"):
        ship_model._refuse_leaks(run)
    changed = ship_model.make_portable(run, "the data copy `cifar10`")
    assert set(changed) >= {"recipe.yaml", "train.log", "metrics.json", "stage2/ccsam_zoo.json", "stage2/README.md"}
    # the card as shipped: for an alias or a Hub repo (a card of an unshipped local folder names that folder)
    (run / "stage2" / "README.md").write_text(render_model_card(run / "stage2", repo_id="me/tiny"))
    assert ship_model.machine_paths(run) == [] and not any(_leaks(p.read_text()) for p in _text_files(run))
    ship_model._refuse_leaks(run)
    assert (run / "stage2" / "model.safetensors").read_bytes() == weights
    extras = json.loads((run / "stage2" / "ccsam_zoo.json").read_text())
    assert extras["data_copy"] == "the data copy `cifar10`" and extras["metrics"]["top1"] == 0.5
    card = (run / "stage2" / "README.md").read_text()
    assert "Trained and evaluated on the data copy `cifar10`." in card
    assert "Command: `train --set data.source=PATH/TO/cifar10`" in card  # the run's own command, made portable
    (run / "metrics.json").unlink()
    card = render_model_card(run / "stage2", repo_id="me/tiny")  # without it: the commands that rebuild the model
    assert "Reproduce: two runs, because stage 2 was trained separately from the saved stage-1 weights" in card
    first, second = card[card.index("```bash", card.index("Reproduce: two runs")) :].splitlines()[1:3]
    assert first.startswith("ccsam-zoo train --recipe cifar10_lt --output-dir RUN1 --set ")
    assert "stage2." not in first.split("#")[0] and "data.source=PATH/TO/cifar10" in first
    assert second.startswith("ccsam-zoo train --recipe cifar10_lt --output-dir RUN2 --set stage2.init=RUN1/stage1")
    assert ship_model.make_portable(run) == []  # idempotent


def test_data_copy_is_named_without_its_path(tmp_path, cifar10_dir):
    sys.path.insert(0, str(REPO / "bench"))
    import ship_model

    text = ship_model.data_copy(str(cifar10_dir))
    assert text.startswith("the CIFAR-10 copy `cifar10`") and "quality 75" in text and str(cifar10_dir) not in text
    other = tmp_path / "mycopy"
    other.mkdir()
    shutil.copy(ccsam_zoo.data.sources.EMBEDDED_DIR / "train.parquet", other / "train.parquet")
    assert ship_model.data_copy(str(other)).startswith("the data copy `mycopy` (train.parquet sha256 ")
    assert "quality" not in ship_model.data_copy(str(other))


def test_ci_script_cites_only_documents_the_project_has():
    text = (REPO / ".ci" / "run").read_text()
    for doc in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", text):
        assert list(REPO.glob(f"**/{doc}")), f".ci/run cites {doc}, which the project does not have"
    assert torch.__version__  # the pins the comment talks about are this machine's
