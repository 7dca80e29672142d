"""bench/ship_model.py and the held-out calibration of bench/open_set_report.py (paper-protocol recipes)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ccsam_zoo.data import build_benchmark
from tests.conftest import REPO
from tests.training_utils import write_cifar10_slice

pytestmark = pytest.mark.usefixtures("one_thread")


def _bench_module(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def test_heldout_images_are_training_images_outside_the_subset(cifar10_dir, tmp_path):
    """Every held-out image is a training-parquet image (decoded here with PIL) that the LT subset did not take."""
    source = write_cifar10_slice(cifar10_dir, tmp_path / "c10", 30, 2)
    bench = build_benchmark("cifar10_lt", str(source), 10, selection="shuffle", seed=42)
    report = _bench_module("open_set_report")
    held = report._heldout(bench, "cifar10_lt", str(source), {}, per_class=5)

    table = pq.read_table(source / "train.parquet").to_pylist()
    pixels = [np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")) for r in table]
    by_digest = {_digest(p): r["label"] for p, r in zip(pixels, table)}
    test_digests = {
        _digest(np.asarray(Image.open(io.BytesIO(r["img"]["bytes"])).convert("RGB")))
        for r in pq.read_table(source / "test.parquet").to_pylist()
    }
    train_digests = {_digest(img.permute(1, 2, 0).numpy()) for img in bench.train.images}
    held_digests = [_digest(img.permute(1, 2, 0).numpy()) for img in held.images]

    assert all(d in by_digest for d in held_digests)  # from the training parquet
    assert not set(held_digests) & train_digests  # never trained on
    assert not set(held_digests) & test_digests  # never a test image
    assert [by_digest[d] for d in held_digests] == held.labels.tolist()
    counts = np.bincount(held.labels.numpy(), minlength=10).tolist()
    assert counts == [min(5, 30 - n) for n in bench.class_counts]  # class 0: all 30 in the subset, none held out
    assert counts[0] == 0 and counts[-1] == 5


def test_report_without_a_validation_split_names_the_option(tmp_path):
    report = _bench_module("open_set_report")
    args = report.parse_args(["--model", str(tmp_path / "nothing")])
    assert args.heldout_per_class == 0
    with pytest.raises(Exception, match="not a checkpoint folder|no such folder"):
        report.run(args)
