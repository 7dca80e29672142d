"""The model shipped inside the package (alias "ccsam-cifar10-lt-cpu") against independent references."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import ModelCard
from PIL import Image

import ccsam_zoo
from ccsam_zoo.hub.registry import ASSETS_DIR
from tests.conftest import REPO

FOLDER = ASSETS_DIR / "ccsam-cifar10-lt-cpu"


def _plain_timm_logits(images: np.ndarray) -> torch.Tensor:
    """Logits from timm alone (local-dir checkpoint, mean/std from its config.json)."""
    model = timm.create_model(f"local-dir:{FOLDER}", pretrained=True).eval()
    cfg = json.loads((FOLDER / "config.json").read_text())["pretrained_cfg"]
    x = (images / 255.0 - np.array(cfg["mean"])) / np.array(cfg["std"])
    with torch.no_grad():
        return model(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2))


def test_shipped_folder_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in FOLDER.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "ccsam_zoo.json", "prototypes.safetensors"} <= set(files)
    assert sum(files.values()) <= 3 * 2**20
    card = ModelCard.load(FOLDER / "README.md")
    meta = json.loads((FOLDER / "ccsam_zoo.json").read_text())
    assert card.data.eval_results[0].metric_value == pytest.approx(meta["metrics"]["top1"], abs=0.01)
    assert meta["architecture"] == "resnet32_cifar" and meta["class_counts"][0] / meta["class_counts"][-1] == 99


def test_shipped_card_is_the_current_rendering_with_its_numbers_and_notes():
    """Re-rendered with the template (no Hub repo named, alias usage), the numbers and hand-written notes intact."""
    from ccsam_zoo.hub import render_model_card

    text = (FOLDER / "README.md").read_text()
    assert render_model_card(FOLDER) == text
    assert 'ccsam_zoo.from_pretrained("ccsam-cifar10-lt-cpu")' in text and "hf-hub:" not in text
    assert "ccsam-zoo/ccsam-cifar10-lt-ir100-resnet32" not in text  # that repo was never published
    assert "# CC-SAM zoo: ResNet-32 on CIFAR-10-LT (IR 100): CC-SAM (official preset) + adversarial feature " \
           "re-training (paper preset), stage-2 model" in text
    assert "This model has an open-set threshold: an image whose `max_logit+layer_stats` score is below -4.908" in text
    assert "| Overall | 59.90 | 83.92 | -24.02 |" in text and "| 9 | truck | 50 | medium | 53.60 |" in text
    assert "| CC-SAM (this model) | 44.02 | **59.90** | 60.99 | 55.55 | – |" in text  # stage 1 vs stage 2
    assert "42.2 min wall time" in text and "2-core x86_64 CPU" in text
    assert "`data.num_workers`" not in text  # no dump of the default settings


def test_alias_predictions_match_plain_timm_on_the_example_images():
    """32 px CIFAR images and 64 px TinyImageNet images: timm's own eval transform is the reference."""
    clf = ccsam_zoo.from_pretrained("ccsam-cifar10-lt-cpu")
    paths = sorted((REPO / "docs" / "examples").glob("*.png"))
    assert len(paths) == 6
    model = timm.create_model(f"local-dir:{FOLDER}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])), 1)
    out = clf.predict(paths, top_k=2, open_set=True)
    for row, p in zip(out, probs):
        index, prob = (row["class_index"], row["probability"]) if row["known"] else (
            row["nearest_index"], row["nearest_probability"])  # fmt: skip
        assert index == int(p.argmax()) and prob == pytest.approx(float(p.max()), abs=1e-5)
        assert row["label"] == (clf.class_names[index] if row["known"] else "unknown")
        assert row["known"] == (row["score"] >= row["threshold"]) and row["score_type"] == clf.open_set["score"]


@pytest.mark.slow
def test_shipped_accuracy_recomputed_independently(cifar10_dir):
    """The card's 59.90% top-1 and per-class numbers, recomputed on all 10,000 test images by plain timm."""
    import pyarrow.parquet as pq

    table = pq.read_table(cifar10_dir / "test.parquet").to_pylist()
    images = np.stack([np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in table])
    labels = np.array([r["label"] for r in table])
    pred = torch.cat([_plain_timm_logits(images[i : i + 1000]).argmax(1) for i in range(0, len(images), 1000)])
    pred = pred.numpy()
    meta = json.loads((FOLDER / "ccsam_zoo.json").read_text())
    assert 100.0 * (pred == labels).mean() == pytest.approx(meta["metrics"]["top1"], abs=1e-6)
    per_class = [100.0 * (pred[labels == c] == c).mean() for c in range(10)]
    np.testing.assert_allclose(per_class, meta["metrics"]["per_class"], atol=1e-6)
