"""The full-protocol CIFAR-10-LT models shipped in the package (issues 13, 22) against independent references."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import ccsam_zoo
from ccsam_zoo.hub.registry import ASSETS_DIR
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

# alias -> (assets folder, stage folder, the recipe's method, the paper's row for it or None)
# All are issue 22's strong-augmentation runs (AutoAugment + Cutout, validation-selected epochs; mixup off but in
# CE + mixup + cRT); the section-0 runs (crop + flip, last epoch, no validation split) no longer ship.
MODELS = {
    "ccsam-cifar10-lt": ("ccsam-cifar10-lt", "stage2", "ccsam", 83.92),  # the paper stage 2 (Eq. 12-14)
    "ccsam-cifar10-lt:stage1": ("ccsam-cifar10-lt", "stage1", "ccsam", 83.92),
    "ce-crt-cifar10-lt": ("ce-crt-cifar10-lt", "stage2", "ce", None),  # the paper has no CE + cRT row
    "ce-crt-cifar10-lt:stage1": ("ce-crt-cifar10-lt", "stage1", "ce", 70.70),  # = the paper's CE row
    "mixup-crt-cifar10-lt": ("mixup-crt-cifar10-lt", "stage2", "mixup_crt", 79.15),  # stage 2 only
}
ALIAS_BUDGET = 5_000_000  # bytes per shipped alias: both stages (1.9 MB of weights each), stage 2's statistics


def _folder(alias: str):
    root, stage, _, _ = MODELS[alias]
    return ASSETS_DIR / root / stage


def _extras(alias: str) -> dict:
    return json.loads((_folder(alias) / "ccsam_zoo.json").read_text())


@pytest.mark.parametrize("alias", MODELS)
def test_folder_is_complete_small_and_from_the_paper_protocol(alias):
    folder = _folder(alias)
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    need = {"config.json", "model.safetensors", "README.md", "ccsam_zoo.json", "prototypes.safetensors"}
    assert need <= set(files), files
    # stage 2 keeps the open-set statistics; stage 1 the logit and prototype scores (the alias stays under 5 MB)
    assert ("open_set_stats.safetensors" in files) == (folder.name == "stage2")
    assert sum(p.stat().st_size for p in folder.parent.rglob("*") if p.is_file()) <= ALIAS_BUDGET
    extras = _extras(alias)
    recipe = extras["recipe"]
    assert recipe["name"] == "cifar10_lt" and recipe["method"] == MODELS[alias][2] and recipe["seed"] == 42
    assert (recipe["stage1"]["epochs"], recipe["stage2"]["epochs"]) == (200, 30)
    assert recipe["stage1"]["milestones"] == [160, 180] and recipe["stage1"]["batch_size"] == 64
    assert recipe["data"]["imbalance_ratio"] == 100
    assert extras["class_counts"] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    m = extras["metrics"]
    assert m["split"] == "test"
    # 900 left-out images (airplane has none left), each stage's epoch chosen on them
    d = recipe["data"]
    assert (d["val_per_class"], d["val_rule"], d["autoaugment"], d["cutout"]) == (100, "left_out", "cifar10", 16)
    assert recipe["stage1"]["method"].get("mixup_alpha", 0) == 0 and recipe["eval"]["select_on"] == "val"
    assert "alpha" not in recipe["stage1"]["method"]  # CE + mixup + cRT: mixup's own default alpha, 1.0
    assert m["selection"] == "val" and 1 <= m["epoch"] <= recipe[folder.name]["epochs"]
    assert 0 < m["val_bacc"] <= 100
    run = json.loads((folder.parent / "metrics.json").read_text())  # the last epoch stays beside it
    assert run[folder.name]["top1"] == m["top1"] and f"{folder.name}_last" in run
    if folder.name == "stage2":  # CC-SAM: the paper's unweighted stage 2 (Eq. 12-14); the baselines: cRT
        ccsam = MODELS[alias][2] == "ccsam"
        assert extras["method"] == ({"name": "ccsam_adv", "preset": "paper"} if ccsam else {"name": "crt"})
        assert not ccsam or recipe["stage2"]["method"] == {"preset": "paper"}  # the two-stage recipe says so too


@pytest.mark.parametrize("alias", MODELS)
def test_card_is_current_and_states_protocol_data_seeds_and_gap(alias):
    from ccsam_zoo.hub import render_model_card

    folder = _folder(alias)
    text = (folder / "README.md").read_text()
    assert render_model_card(folder) == text
    assert f'ccsam_zoo.from_pretrained("{alias}")' in text and "hf-hub:" not in text
    assert "**Protocol**: the paper's full CIFAR-10-LT protocol" in text and "Shortened schedule" not in text
    m = _extras(alias)["metrics"]
    assert f"the validation-selected epoch {m['epoch']} (balanced accuracy {m['val_bacc']:.2f}%" in text
    mixup = "mixup alpha 1" if MODELS[alias][2] == "mixup_crt" else "no mixup"
    assert f"AutoAugment's CIFAR-10 policy per image, Cutout (one 16x16 hole), {mixup}." in text
    assert "The reported model was selected on the `val` split, never on the test split." in text
    assert "**Data copy**" in text and "quality 75" in text and "**Seeds**: 1 (seed 42)" in text
    paper = MODELS[alias][3]
    top1 = _extras(alias)["metrics"]["top1"]
    top1 = 100 * top1 if top1 <= 1 else top1
    if paper is None:
        assert "The paper publishes no number for this model's method" in text
    else:
        assert f"{paper:.2f}): **{top1 - paper:+.2f}** points top-1" in text
    assert "This model has an open-set threshold" in text
    if MODELS[alias][2] == "ccsam":  # the flagship was first chosen on the test split: its card says so
        assert "**Selection**: this configuration" in text and "first chosen on the test split" in text
        assert "bench/heldout_selection.py makes the same choice without test images" in text
        assert "the test split used for nothing but" not in text
    else:  # a baseline of issue 22: chosen on the validation split alone
        assert "**Selection**: the same-augmentation baseline of issue 22" in text and "test split" not in text.split(
            "**Selection**")[1].split("\n")[0]  # fmt: skip
        assert "because it scores higher on the validation split" in text


@pytest.mark.parametrize("alias", MODELS)
def test_alias_loads_offline_and_matches_plain_timm(alias):
    """The alias resolves to its stage folder; predictions equal timm's own model + eval transform."""
    clf = ccsam_zoo.from_pretrained(alias)
    folder = _folder(alias)
    assert clf.meta["path"] == str(folder)
    paths = sorted((REPO / "docs" / "examples").glob("*.png"))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])), 1)
    for row, p in zip(clf.predict(paths, top_k=1), probs):
        assert row["class_index"] == int(p.argmax()) and row["probability"] == pytest.approx(float(p.max()), abs=1e-5)


@pytest.mark.parametrize("alias", MODELS)
def test_open_set_threshold_calibrated_on_held_out_training_images(alias):
    clf = ccsam_zoo.from_pretrained(alias)
    assert clf.open_set["tpr"] == 0.95 and "validation split, images it never trained on" in clf.open_set["calibration"]
    assert set(clf.open_set["thresholds"]) == set(clf.available_scores())
    assert clf.default_score() == clf.open_set["score"] in clf.available_scores()
    if _folder(alias).name == "stage1":
        assert "layer_stats" not in clf.available_scores() and "cosine" in clf.available_scores()
        return
    g = torch.Generator().manual_seed(7)
    noise = torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8)
    rows = clf.predict(noise, open_set=True)
    assert all(r["label"] == "unknown" for r in rows), [r["score"] for r in rows]  # layer_stats catches noise


@pytest.fixture(scope="module")
def cifar10_test_pixels(cifar10_dir):
    """The 10,000 test images decoded once with PIL (uint8 NHWC) and their labels."""
    import pyarrow.parquet as pq

    table = pq.read_table(cifar10_dir / "test.parquet").to_pylist()
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in table])
    return images, np.array([r["label"] for r in table])


@pytest.mark.slow
@pytest.mark.parametrize("alias", MODELS)
def test_accuracy_and_groups_recomputed_by_plain_timm(alias, cifar10_test_pixels):
    """The card's numbers, recomputed on the 10,000 test images by timm alone; many/medium from the counts."""
    images, labels = cifar10_test_pixels
    folder = _folder(alias)
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    x = torch.tensor((images / 255.0 - np.array(cfg["mean"])) / np.array(cfg["std"]), dtype=torch.float32)
    torch.set_num_threads(2)  # float32 either way; the one_thread fixture restores the count (16 s, not 44)
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 250].permute(0, 3, 1, 2)).argmax(1) for i in range(0, len(x), 250)])
    pred = pred.numpy()
    extras = _extras(alias)
    m = extras["metrics"]
    scale = 100.0 if m["top1"] > 1 else 1.0
    per_class = np.array([(pred[labels == c] == c).mean() for c in range(10)])
    counts = np.array(extras["class_counts"])
    assert scale * (pred == labels).mean() == pytest.approx(m["top1"], abs=1e-3)
    assert scale * per_class[counts > 100].mean() == pytest.approx(m["many"], abs=1e-3)  # paper rule: many > 100
    assert scale * per_class[(counts <= 100) & (counts >= 20)].mean() == pytest.approx(m["medium"], abs=1e-3)
