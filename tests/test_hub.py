"""Checkpoint folders: layout, round trips (from_pretrained, timm local-dir:), atomic saves, cards, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import ccsam_zoo
from ccsam_zoo.hub import CheckpointError, from_pretrained, render_model_card, save_pretrained
from ccsam_zoo.hub import checkpoint as ckpt_mod
from ccsam_zoo.hub.card import paper_result_for
from ccsam_zoo.models import FeaturesAndLogits

NAMES = ["cat", "dog", "emu"]
COUNTS = [500, 50, 10]


def make_model(num_classes: int = 3, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("resnet20_cifar", num_classes=num_classes, **kwargs)
    for m in model.modules():  # non-trivial BN statistics, so eval-mode logits depend on the buffers too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def make_info(stage: str = "stage2", **over) -> dict:
    info = dict(
        class_names=NAMES,
        class_counts=COUNTS,
        shot_thresholds=[100, 20],
        shot_rule="paper",
        stage=stage,
        method={"name": "ccsam_adv", "preset": "official"} if stage == "stage2" else {"name": "ccsam"},
        recipe={
            "name": "tiny",
            "method": "ccsam",
            "model": {"arch": "resnet20_cifar", "pretrained": False},
            "data": {"name": "cifar10_lt", "imbalance_ratio": 100, "source": "shared/data/cifar10"},
            "stage1": {"epochs": 2, "lr": 0.1, "milestones": [1]},
            "stage2": {"epochs": 1, "lr": 0.01},
        },
        metrics={"top1": 0.731, "many": 0.9, "medium": 0.55, "few": 0.3, "per_class": [0.9, 0.55, 0.3],
                 "split": "test", "selection": "last"},
        dataset="cifar10_lt IR100",
        data_fingerprint="fp-1234",
        prototypes=torch.nn.functional.normalize(torch.randn(3, 64), dim=1),
        open_set={"score": "cosine", "threshold": 0.42, "tpr": 0.95},
        paper_results=None,
    )
    info.update(over)
    return info


def light_info(**over) -> dict:
    """No per-class accuracies (no plot) and no prototypes: the cheapest save."""
    return make_info(**{"prototypes": None, "metrics": {"top1": 0.5, "many": 0.6, "medium": 0.5, "few": 0.4}, **over})


X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def _saved_once(tmp_path_factory):
    model = make_model()
    folder = save_pretrained(model, tmp_path_factory.mktemp("saved") / "stage2", info=make_info())
    return model, folder


@pytest.fixture
def saved(_saved_once, tmp_path):
    """A fresh copy of one saved checkpoint (tests may corrupt it)."""
    model, folder = _saved_once
    copy = tmp_path / "stage2"
    shutil.copytree(folder, copy)
    return model, copy


# ------------------------------------------------------------------------------------------------ layout


def test_layout_config_and_extras(_saved_once):
    model, folder = _saved_once
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "ccsam_zoo.json", "config.json", "model.safetensors", "per_class_accuracy.png",
        "prototypes.safetensors",
    ]
    assert not list(folder.parent.glob(".stage2*")), "temporary folders must not be left behind"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "resnet20_cifar"
    assert cfg["num_classes"] == 3 and cfg["num_features"] == 64 and cfg["global_pool"] == "avg"
    assert cfg["label_names"] == NAMES
    pcfg = cfg["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32]
    assert pcfg["mean"] == list(ccsam_zoo.models.CIFAR_MEAN) and pcfg["std"] == list(ccsam_zoo.models.CIFAR_STD)
    for key in ("interpolation", "crop_pct", "crop_mode"):
        assert key in pcfg
    assert pcfg["num_classes"] == 3
    state = load_file(str(folder / "model.safetensors"))
    assert state.keys() == model.state_dict().keys()
    extras = json.loads((folder / "ccsam_zoo.json").read_text())
    assert extras["format_version"] == 1
    assert extras["class_names"] == NAMES and extras["class_counts"] == COUNTS
    assert extras["shot_groups"] == ["many", "medium", "few"]
    assert extras["stage"] == 2 and extras["dataset_name"] == "cifar10_lt" and extras["imbalance_ratio"] == 100
    assert extras["open_set"] == {"score": "cosine", "threshold": 0.42, "tpr": 0.95}
    assert extras["prototypes"] == {"file": "prototypes.safetensors", "shape": [3, 64]}
    assert extras["paper_results"]["top1"] == 83.92
    assert extras["data_fingerprint"] == "fp-1234" and extras["recipe"]["method"] == "ccsam"


def test_cosine_head_model_args(tmp_path):
    model = make_model(head="cosine")
    folder = save_pretrained(model, tmp_path / "cos", info=light_info())
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_args"]["head"] == "cosine"
    assert not (folder / "prototypes.safetensors").exists()
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


# ------------------------------------------------------------------------------------------- round trips


def test_round_trip_from_pretrained(saved):
    model, folder = saved
    clf = from_pretrained(folder)
    assert isinstance(clf, ccsam_zoo.inference.Classifier)
    assert not clf.training
    with torch.no_grad():
        assert torch.equal(clf(X), model(X))
    assert clf.class_names == NAMES and clf.class_counts == COUNTS
    assert clf.open_set["threshold"] == 0.42
    protos = load_file(str(folder / "prototypes.safetensors"))["prototypes"]
    assert torch.allclose(clf.prototypes, protos)
    assert clf.pretrained_cfg["input_size"] in ([3, 32, 32], (3, 32, 32))
    from_cpu = from_pretrained(str(folder), device="cpu")
    with torch.no_grad():
        assert torch.equal(from_cpu(X), model(X))


def test_round_trip_timm_local_dir(saved):
    model, folder = saved
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
    assert loaded.pretrained_cfg["label_names"] == NAMES


def test_save_unwraps_features_and_logits(tmp_path):
    model = make_model()
    folder = save_pretrained(FeaturesAndLogits(model), tmp_path / "w", info=light_info())
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder)(X), model(X))


def test_save_keeps_training_mode(tmp_path):
    model = make_model().train()
    save_pretrained(model, tmp_path / "t", info=light_info())
    assert model.training


# ------------------------------------------------------------------------------------------------ atomic


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    folder = tmp_path / "stage2"
    old = make_model(seed=3)
    save_pretrained(old, folder, info=light_info())

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("ccsam_zoo.hub.card.render_model_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(make_model(seed=4), folder, info=light_info())
    with pytest.raises(RuntimeError, match="disk full"):
        save_pretrained(make_model(seed=4), tmp_path / "fresh", info=light_info())
    assert not (tmp_path / "fresh").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage2"], "no temporary folder may be left behind"
    monkeypatch.undo()
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder)(X), old(X)), "a failed save must leave the old folder intact"
    new = make_model(seed=5)
    save_pretrained(new, folder, info=light_info())  # overwrite replaces the whole folder
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder)(X), new(X))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage2"]


def test_save_validates_info(tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match="class_names"):
        save_pretrained(model, tmp_path / "a", info=make_info(class_names=["a", "b"]))
    with pytest.raises(ValueError, match="class_counts"):
        save_pretrained(model, tmp_path / "b", info=make_info(class_counts=[1, 2]))
    with pytest.raises(ValueError, match="prototypes"):
        save_pretrained(model, tmp_path / "c", info=make_info(prototypes=torch.zeros(3, 7)))
    with pytest.raises(ValueError, match="timm model"):
        save_pretrained(nn.Linear(2, 3), tmp_path / "d", info=make_info())
    assert not any(tmp_path.iterdir())
    with pytest.warns(UserWarning, match="unknown info keys"):
        folder = save_pretrained(model, tmp_path / "e", info=light_info(typo_key=1))
    assert json.loads((folder / "ccsam_zoo.json").read_text())["extra"] == {"typo_key": 1}


# ------------------------------------------------------------------------------------------------- cards


def test_card_round_trips_through_model_card_load(_saved_once):
    _, folder = _saved_once
    card = ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "timm" and data.license == "apache-2.0"
    assert {"image-classification", "long-tailed", "cc-sam", "timm"} <= set(data.tags)
    assert data.datasets == ["uoft-cs/cifar10"]
    assert data.model_name == "ccsam-cifar10-lt-ir100-resnet20"
    values = {r.metric_type: r.metric_value for r in data.eval_results}
    assert values == {"accuracy": 73.1, "many_shot_accuracy": 90.0, "medium_shot_accuracy": 55.0,
                      "few_shot_accuracy": 30.0}
    assert {r.dataset_split for r in data.eval_results} == {"test"}
    assert {r.task_type for r in data.eval_results} == {"image-classification"}
    text = card.text
    # a local folder: loaded from where it is, no Hub repo that does not exist
    assert f'ccsam_zoo.from_pretrained("{folder}")' in text
    assert f'timm.create_model("local-dir:{folder}", pretrained=True)' in text
    assert "hf-hub:" not in text and "ccsam-zoo/" not in text and "not on the Hugging Face Hub" in text
    assert "| Overall | 73.10 | 83.92 | -10.82 |" in text
    assert "per_class_accuracy.png" in text
    assert "| 2 (this model) | adversarial feature re-training (official preset) | 1 |" in text
    assert "`stage1.epochs`" not in text and "`train.log_every`" not in text  # no dump of the settings
    assert "This model has an open-set threshold: an image whose `cosine` score is below 0.42" in text
    assert "Shortened schedule" in text and "fp-1234" in text
    assert "Zhou, Zhipeng and Li, Lanqing and Zhao, Peilin and Heng, Pheng-Ann and Gong, Wei" in text
    assert render_model_card(folder) == (folder / "README.md").read_text()


def test_card_for_repo_and_stage1(tmp_path):
    folder = save_pretrained(make_model(), tmp_path / "s1", info=light_info(stage="stage1"))
    text = render_model_card(folder, repo_id="me/my-model")
    assert 'from_pretrained("me/my-model", revision="stage1")' in text
    assert '"hf-hub:me/my-model@stage1"' in text
    assert "after both stages" in text
    card = ModelCard(text)
    assert card.data.model_name == "my-model"


def test_card_without_per_class_or_paper(tmp_path):
    info = make_info(metrics={"top1": 40.0, "many": 50.0, "medium": None, "few": None}, prototypes=None,
                     recipe={"method": "sam", "data": {"name": "cifar10_lt", "imbalance_ratio": 100}},
                     method={"name": "crt"})
    folder = save_pretrained(make_model(), tmp_path / "x", info=info)
    assert not (folder / "per_class_accuracy.png").exists()
    card = ModelCard.load(folder / "README.md")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "accuracy": 40.0, "many_shot_accuracy": 50.0}
    assert "publishes no number for this setting" in card.text


@pytest.mark.parametrize(
    "extras, expected",
    [
        (dict(dataset_name="cifar10_lt", imbalance_ratio=100, stage=1, method={"name": "ce"}, recipe={"method": "ce"}),
         70.70),
        (dict(dataset_name="cifar100_lt", imbalance_ratio=50, stage=2, method={"name": "crt"},
              recipe={"method": "mixup_crt"}), 50.86),
        (dict(dataset_name="cifar10_lt", imbalance_ratio=200, stage=2, method={"name": "ccsam_adv"},
              recipe={"method": "ccsam_paper"}), 80.94),
        (dict(dataset_name="imagenet_lt", stage=2, method={"name": "ccsam_adv"}, recipe={"method": "ccsam"},
              architecture="resnext50_32x4d"), 55.4),
        (dict(dataset_name="places_lt", stage=2, method="ccsam_adv", architecture="resnet152"), 40.6),
        (dict(dataset_name="cifar10_lt", imbalance_ratio=100, stage=2, method={"name": "crt"},
              recipe={"method": "ccsam_dir"}), None),
        (dict(dataset_name="cifar10_lt", imbalance_ratio=10, stage=2, method="ccsam_adv"), None),
    ],
)
def test_paper_lookup(extras, expected):
    result = paper_result_for({"architecture": "resnet32_cifar", **extras})
    assert (result and result["top1"]) == expected


def test_explicit_paper_results_kept(tmp_path):
    paper = {"setting": "my baseline", "top1": 70.0, "many": None, "medium": None, "few": None, "source": "me"}
    folder = save_pretrained(make_model(), tmp_path / "p", info=light_info(paper_results=paper))
    assert json.loads((folder / "ccsam_zoo.json").read_text())["paper_results"] == paper
    assert "| Overall | 50.00 | 70.00 | -20.00 |" in (folder / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ errors


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_truncated_weights(saved):
    _, folder = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*corrupt or truncated"):
        from_pretrained(folder)


def test_garbage_weights(saved):
    _, folder = saved
    (folder / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        from_pretrained(folder)


def test_num_classes_mismatch(saved):
    _, folder = saved
    cfg = folder / "config.json"
    data = json.loads(cfg.read_text())
    data["num_classes"] = 10
    data["model_args"]["num_classes"] = 10
    data["pretrained_cfg"]["num_classes"] = 10
    cfg.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"fc\.weight has 3 classes but .*config\.json says num_classes=10"):
        from_pretrained(folder)


def test_weights_from_another_model(saved):
    _, folder = saved
    save_file(make_model(num_classes=10).state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="num_classes=3"):
        from_pretrained(folder)


def test_missing_weight_key_is_strict(saved):
    _, folder = saved
    state = load_file(str(folder / "model.safetensors"))
    state.pop("layer1.0.bn1.running_mean")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="layer1.0.bn1.running_mean"):
        from_pretrained(folder)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file(saved, name):
    _, folder = saved
    (folder / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        ckpt_mod.load_checkpoint(folder)


def test_pickle_weights_are_never_loaded(saved):
    model, folder = saved
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle files are never loaded"):
        from_pretrained(folder)


def test_missing_prototypes_file(saved):
    _, folder = saved
    (folder / "prototypes.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"prototypes\.safetensors"):
        from_pretrained(folder)


def test_unknown_architecture(saved):
    _, folder = saved
    _edit_json(folder / "config.json", architecture="resnet7_nowhere")
    with pytest.raises(CheckpointError, match=r"unknown architecture 'resnet7_nowhere'.*import ccsam_zoo"):
        from_pretrained(folder)


def test_corrupt_json(saved):
    _, folder = saved
    (folder / "ccsam_zoo.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"ccsam_zoo\.json"):
        from_pretrained(folder)


def test_newer_format_version(saved):
    _, folder = saved
    _edit_json(folder / "ccsam_zoo.json", format_version=99)
    with pytest.raises(CheckpointError, match="upgrade ccsam_zoo"):
        from_pretrained(folder)


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


class _Compiled(nn.Module):
    """Stands in for torch.compile's OptimizedModule (``_orig_mod``, attributes forwarded) without dynamo."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._orig_mod = model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._orig_mod, name)


def test_channels_last_and_compiled_models_save(tmp_path):
    model = make_model().to(memory_format=torch.channels_last)
    folder = save_pretrained(model, tmp_path / "cl", info=light_info())
    assert load_file(str(folder / "model.safetensors"))["conv1.weight"].is_contiguous()
    wrapped = _Compiled(model)
    assert "_orig_mod.conv1.weight" in wrapped.state_dict() and wrapped.pretrained_cfg is model.pretrained_cfg
    folder2 = save_pretrained(wrapped, tmp_path / "compiled", info=light_info())
    assert "conv1.weight" in load_file(str(folder2 / "model.safetensors"))
    state = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():  # channels_last convolutions round differently: same weights, near-equal logits
        assert torch.allclose(from_pretrained(folder)(X), model(X), atol=1e-5)


def _run_folder(tmp_path: Path, *, logs: bool = True, threshold: bool = False) -> Path:
    """A run folder as the trainer leaves it: stage1/, stage2/, recipe.yaml, log.jsonl, train.log, metrics.json."""
    import yaml

    from ccsam_zoo.training.config import apply_overrides, load_recipe, stage_methods

    recipe = apply_overrides(load_recipe("cifar10_lt_cpu"), ["stage1.epochs=2", "stage2.epochs=1"])
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    if logs:
        line = "12:00:01 accelerate: 2 process(es), device cuda:0, mixed precision bf16, seed 42\n"
        (run / "train.log").write_text(line)
        t = 1_700_000_000.0
        records = [("stage1", 0, 100.0, 60.0), ("stage1", 1, 165.0, 62.0), ("stage1", 1, 400.0, 61.0),  # redone
                   ("stage2", 0, 430.0, 20.0)]
        lines = [json.dumps({"time": t + end, "stage": st, "epoch": ep, "loss": 1.0, "img_per_s": 200.0,
                             "seconds": sec}) for st, ep, end, sec in records]  # fmt: skip
        (run / "log.jsonl").write_text("\n".join(lines) + "\nnot json\n")
    s1, s2 = stage_methods(recipe)
    metrics = {}
    for n, cfg, top1 in ((1, s1, 0.4412), (2, s2, 0.5634)):
        m = {"top1": top1, "many": top1 + 0.05, "medium": top1 - 0.1, "few": None, "split": "test"}
        metrics[f"stage{n}"] = m
        info = light_info(stage=f"stage{n}", method=cfg, recipe=recipe, metrics=m,
                          open_set={"score": "cosine", "threshold": 0.8, "tpr": 0.95} if threshold else None)
        save_pretrained(make_model(), run / f"stage{n}", info=info)
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_card_of_a_local_run(tmp_path):
    run = _run_folder(tmp_path)
    text = render_model_card(run / "stage2")
    assert text.splitlines()[text.splitlines().index("---", 1) + 2] == (
        "# CC-SAM zoo: ResNet-20 on CIFAR-10-LT (IR 100): CC-SAM (official preset) + adversarial feature "
        "re-training (paper preset), stage-2 model"
    )
    assert 'ccsam_zoo.from_pretrained("' + str(run / "stage2") + '")' in text and "hf-hub:" not in text
    # both stages' numbers, schedules and times; the command, wall time and hardware
    assert "| 1 | CC-SAM (official preset) | 2 | 128 | 0.1, step | 44.12 | 49.12 | 34.12 | – | 2.0 min |" in text
    assert ("| 2 (this model) | adversarial feature re-training (paper preset) | 1 | 128, class-balanced | "
            "0.01, constant | 56.34 | 61.34 | 46.34 | – | 20 s |") in text
    assert "Reproduce: `ccsam-zoo train --recipe cifar10_lt_cpu --set data.source=PATH/TO/cifar10 stage1.epochs=2 " \
           "stage2.epochs=1`" in text
    assert "Wall time: 6.5 min (first to last epoch, log.jsonl); hardware: 2 processes, device cuda:0, mixed " \
           "precision bf16." in text
    assert "[`recipe.yaml`](../recipe.yaml)" in text and "`stage1.lr`" not in text
    # no threshold: the card says so and how to get one
    assert "This model has no open-set threshold" in text and "--threshold T" in text
    # stage 1's card names stage 1 as this model, with the same run information
    text1 = render_model_card(run / "stage1")
    assert "stage-1 model" in text1 and "| 1 (this model) | CC-SAM (official preset) |" in text1
    assert 'from_pretrained("' + str(run / "stage1") + '")' in text1


def test_card_of_a_resumed_run_gives_summed_epoch_times_and_no_wall_time(tmp_path):
    """The first-to-last-epoch span of a run continued with --resume holds the pauses between sessions."""
    run = _run_folder(tmp_path)
    with open(run / "train.log", "a") as f:
        f.write("15:49:04 resuming from stage1-epoch0001\n17:16:35 stage1 epoch 2/2 loss 1.0\n")
        f.write("17:20:00 note: not resuming from anything\n")  # only the trainer's own line counts
    text = render_model_card(run / "stage2")
    assert "Wall time" not in text
    assert ("Continued 1x with `--resume`: no wall time (the span of its epochs holds the pauses), the stage times "
            "above are the summed epoch times; hardware: 2 processes, device cuda:0, mixed precision bf16.") in text
    assert "| 1 | CC-SAM (official preset) | 2 | 128 | 0.1, step | 44.12 | 49.12 | 34.12 | – | 2.0 min |" in text
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "wall_time_s": 1800.0}))  # measured by the run itself
    assert "Wall time: 30.0 min (first to last epoch, metrics.json)" in render_model_card(run / "stage2")


def test_card_leaves_out_what_the_run_did_not_record(tmp_path):
    run = _run_folder(tmp_path, logs=False, threshold=True)
    (run / "metrics.json").unlink()
    shutil.rmtree(run / "stage1")
    text = render_model_card(run / "stage2")
    assert "Wall time" not in text and "hardware" not in text
    assert "| 1 | CC-SAM (official preset) | 2 | 128 | 0.1, step | – | – | – | – | – |" in text
    assert "–: not recorded in this folder" in text
    assert "This model has an open-set threshold: an image whose `cosine` score is below 0.8" in text
    (run / "recipe.yaml").unlink()
    text = render_model_card(run / "stage2")  # the recipe kept in ccsam_zoo.json still gives the command
    assert "Reproduce: `ccsam-zoo train --recipe cifar10_lt_cpu --set" in text
    assert "[`recipe.yaml`]" not in text


def test_card_path_as_written_and_hub_repo_only_when_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = save_pretrained(make_model(), Path("out") / "stage2", info=light_info())
    text = (folder / "README.md").read_text()
    assert 'from_pretrained("out/stage2")' in text and "relative to the folder the card was written from" in text
    hub = render_model_card(folder, repo_id="me/tiny")
    assert 'from_pretrained("me/tiny")' in hub and '"hf-hub:me/tiny"' in hub and "not on the Hugging Face" not in hub


def test_card_keeps_hand_written_notes(saved):
    _, folder = saved
    card = folder / "README.md"
    notes = "<!-- ccsam_zoo:notes -->\n## How it was made\n\nBy hand, 42.2 min.\n<!-- /ccsam_zoo:notes -->"
    card.write_text(card.read_text().replace("## Citation", notes + "\n\n## Citation"))
    again = render_model_card(folder)
    assert notes in again and again.index(notes) < again.index("## Citation")
    assert notes in render_model_card(folder, repo_id="me/x")  # push_to_hub's rendering keeps them too
