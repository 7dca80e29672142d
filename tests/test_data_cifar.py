"""CIFAR-10-LT from the real parquet, the embedded subset, loaders, the decode cache and fingerprints."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import ccsam_zoo.data.decode as decode_module
from ccsam_zoo.data import build_benchmark, long_tailed_counts
from ccsam_zoo.data.sources import EMBEDDED_DIR
from ccsam_zoo.data.tensor_data import TensorSplit

C10_IR100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


@pytest.fixture(scope="session")
def c10_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("c10cache")


@pytest.fixture(scope="session")
def cifar10_lt(cifar10_dir, c10_cache):
    """CIFAR-10-LT IR 100 from the real parquet (decodes 22k images once per session, ~3 s)."""
    return build_benchmark("cifar10_lt", cifar10_dir, 100, cache_dir=c10_cache)


@pytest.fixture(scope="session")
def cifar10_labels(cifar10_dir):
    return pq.read_table(cifar10_dir / "train.parquet", columns=["label"]).column(0).to_numpy()


def _decode_rows(parquet: Path, rows) -> torch.Tensor:
    """Independent decode: PIL straight from the parquet bytes."""
    column = pq.read_table(parquet, columns=["img"]).column(0).combine_chunks().field("bytes")
    return torch.stack([
        torch.from_numpy(np.array(Image.open(io.BytesIO(column[int(r)].as_py())).convert("RGB"))).permute(2, 0, 1)
        for r in rows
    ])


def test_cifar10_lt_counts_indices_and_pixels(cifar10_lt, cifar10_labels, cifar10_dir):
    b = cifar10_lt
    assert b.class_counts == C10_IR100 and len(b.train) == 12406 and b.num_classes == 10
    assert b.class_names[:3] == ["airplane", "automobile", "bird"]
    assert b.shot_groups == ["many"] * 8 + ["medium"] * 2
    assert b.is_tensor and b.input_size == (3, 32, 32) and b.train.images.dtype == torch.uint8
    # "first" selection: the first n_i rows of each class, in source order
    expected = np.sort(np.concatenate([np.flatnonzero(cifar10_labels == c)[:n] for c, n in enumerate(C10_IR100)]))
    assert torch.equal(b.train_indices, torch.from_numpy(expected))
    assert torch.equal(b.train.labels, torch.from_numpy(cifar10_labels[expected]))
    picks = [0, 4999, 5000, 12405]
    assert torch.equal(b.train.images[picks], _decode_rows(cifar10_dir / "train.parquet", expected[picks]))
    assert len(b.test) == 10000 and b.test.labels.bincount().tolist() == [1000] * 10
    assert torch.equal(b.test.images[[0, 9999]], _decode_rows(cifar10_dir / "test.parquet", [0, 9999]))
    assert b.val is None and b.open is None
    assert re.fullmatch("[0-9a-f]{64}", b.fingerprint)
    assert b.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and b.std == pytest.approx((0.2023, 0.1994, 0.2010))


def test_cifar10_lt_warm_build_reuses_the_cache(cifar10_lt, cifar10_dir, c10_cache, monkeypatch):
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these images")

    monkeypatch.setattr(decode_module, "decode_batch", no_decode)
    warm = build_benchmark("cifar10_lt", cifar10_dir, 100, cache_dir=c10_cache)
    assert warm.fingerprint == cifar10_lt.fingerprint
    assert torch.equal(warm.train.images, cifar10_lt.train.images)
    assert torch.equal(warm.test.images, cifar10_lt.test.images)
    with pytest.raises(AssertionError, match="decoded although"):  # another subset is not in the cache
        build_benchmark("cifar10_lt", cifar10_dir, 50, cache_dir=c10_cache)


def test_loader_fast_path_is_one_tensor_index(cifar10_lt, monkeypatch):
    def per_item(self, index):
        raise AssertionError("per-item fetching on the fast path")

    monkeypatch.setattr(TensorSplit, "__getitem__", per_item)
    loader = cifar10_lt.loader("train", 128, seed=0)
    seen = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32) and labels.dtype == torch.long
        seen.append(labels)
    labels = torch.cat(seen)
    assert len(seen) == 97 and labels.bincount().tolist() == C10_IR100  # one epoch = every image once
    first_a = next(iter(cifar10_lt.loader("train", 128, seed=0)))[1]
    first_b = next(iter(cifar10_lt.loader("train", 128, seed=0)))[1]
    assert torch.equal(first_a, first_b) and torch.equal(first_a, seen[0])
    cb = torch.cat([y for _, y in cifar10_lt.loader("train", 500, sampler="class_balanced", drop_last=True)])
    assert len(cb) == 12000 and cb.bincount().min() >= 1195  # ~1/10 of the draws per class
    test_labels = torch.cat([y for _, y in cifar10_lt.loader("test", 1000)])
    assert torch.equal(test_labels, cifar10_lt.test.labels)  # sequential by default for test


def test_batch_transform_on_loaded_batches(cifar10_lt):
    images, _ = next(iter(cifar10_lt.loader("test", 64)))
    torch.manual_seed(0)
    train_x = cifar10_lt.batch_transform(train=True)(images)
    eval_x = cifar10_lt.batch_transform(train=False)(images)
    mean = torch.tensor(cifar10_lt.mean).view(1, 3, 1, 1)
    std = torch.tensor(cifar10_lt.std).view(1, 3, 1, 1)
    torch.testing.assert_close(eval_x, (images.double() / 255 - mean.double()).div(std.double()).float(),
                               rtol=0, atol=1e-5)
    assert train_x.shape == eval_x.shape and not torch.equal(train_x, eval_x)


def test_embedded_loads_offline_as_shipped():
    b = build_benchmark("embedded")
    assert b.class_counts == long_tailed_counts(10, 500, 100) == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert len(b.test) == 1000 and b.test.labels.bincount().tolist() == [100] * 10
    assert b.class_names[-1] == "truck" and b.is_tensor and b.input_size == (3, 32, 32)
    assert b.shot_groups == ["many"] * 4 + ["medium"] * 3 + ["few"] * 3
    assert b.train_indices.tolist() == list(range(1236))
    assert build_benchmark("embedded").fingerprint == b.fingerprint
    size = sum(f.stat().st_size for f in EMBEDDED_DIR.iterdir())
    assert size < 5 * 2**20


def test_embedded_readme_provenance_matches_files():
    readme = (EMBEDDED_DIR / "README.md").read_text()
    for name in ("train.parquet", "test.parquet"):
        digest = hashlib.sha256((EMBEDDED_DIR / name).read_bytes()).hexdigest()
        assert f"{digest}  {name}" in readme


def test_embedded_is_the_first_rows_of_cifar10(cifar10_dir):
    """The shipped bytes are the original JPEG bytes of the first n rows of each class."""
    src = pq.read_table(cifar10_dir / "train.parquet")
    emb = pq.read_table(EMBEDDED_DIR / "train.parquet")
    labels = src.column("label").to_numpy()
    rows = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(long_tailed_counts(10, 500, 100))])
    assert emb.column("img").to_pylist()[::97] == src.column("img").take(rows).to_pylist()[::97]
    assert emb.column("label").to_numpy().tolist() == labels[rows].tolist()


def test_shuffle_selection_is_ldams_procedure():
    """selection="shuffle" = LDAM's gen_imbalanced_data: np.random.seed(seed), then shuffle each class's rows."""
    labels = pq.read_table(EMBEDDED_DIR / "train.parquet", columns=["label"]).column(0).to_numpy()
    counts = long_tailed_counts(10, 500, 200)
    np.random.seed(5)  # LDAM's code, literally (global numpy RNG)
    chosen = []
    for c, n in enumerate(counts):
        idx = np.where(labels == c)[0]
        np.random.shuffle(idx)
        chosen.extend(idx[:n].tolist())
    b = build_benchmark("embedded", imbalance_ratio=200, selection="shuffle", seed=5)
    assert b.train_indices.tolist() == sorted(chosen) and b.class_counts == counts
    first = build_benchmark("embedded", imbalance_ratio=200)
    assert first.train_indices.tolist() == sorted(
        np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(counts)]).tolist()
    )
    assert len({b.fingerprint, first.fingerprint, build_benchmark("embedded").fingerprint}) == 3


def test_val_split_from_images_left_out():
    shipped = long_tailed_counts(10, 500, 100)
    counts = long_tailed_counts(10, 250, 100)
    assert all(s - n >= 2 for s, n in zip(shipped, counts))  # enough images left out of the subset
    b = build_benchmark("embedded", imbalance_ratio=100, max_count=250, val_per_class=2)
    assert b.class_counts == counts
    assert b.val.labels.bincount().tolist() == [2] * 10
    assert not set(b.val_indices.tolist()) & set(b.train_indices.tolist())
    # the first n of each class train, the next 2 validate
    starts = np.cumsum([0, *shipped[:-1]])
    assert b.val_indices.tolist() == [int(s + n + k) for s, n in zip(starts, counts) for k in range(2)]
    assert torch.equal(b.val.images[0], build_benchmark("embedded").train.images[250])
    assert len(b.test) == 1000  # never from the test split


def test_decode_cache_reuse_and_location(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = build_benchmark("embedded", cache_dir=cache)
    files = sorted((cache / "data" / "images").glob("*.safetensors"))
    assert len(files) == 2  # train and test
    assert not [p for p in EMBEDDED_DIR.iterdir() if p.suffix not in (".parquet", ".md")]  # nothing beside the data
    calls = []

    def no_decode(*args, **kwargs):
        calls.append(args)
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(decode_module, "decode_batch", no_decode)
    again = build_benchmark("embedded", cache_dir=cache)
    assert torch.equal(again.train.images, first.train.images) and again.fingerprint == first.fingerprint
    with pytest.raises(AssertionError, match="decoded although cached"):  # the patch is live: a new cache decodes
        build_benchmark("embedded", cache_dir=tmp_path / "other")
    # a damaged cache file is dropped and decoded again
    monkeypatch.undo()
    files[0].write_bytes(files[0].read_bytes()[:100])
    repaired = build_benchmark("embedded", cache_dir=cache)
    assert torch.equal(repaired.train.images, first.train.images)
    assert torch.equal(repaired.test.images, first.test.images)


def test_cache_follows_ccsam_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CCSAM_CACHE", str(tmp_path / "env"))
    build_benchmark("embedded")
    assert len(list((tmp_path / "env" / "data" / "images").glob("*.safetensors"))) == 2


def test_open_source_real_ood_images(ood_dir, tmp_path):
    """Tiny-ImageNet (64 px, ~2% grayscale) as the open split of a 32 px benchmark: resized, gray -> RGB."""
    b = build_benchmark("embedded", open_source=ood_dir, cache_dir=tmp_path)
    assert b.open.images.shape == (10000, 3, 32, 32) and (b.open.labels == -1).all()
    column = pq.read_table(ood_dir / "test.parquet", columns=["img"]).column(0).combine_chunks().field("bytes")
    gray = [i for i in range(300) if Image.open(io.BytesIO(column[i].as_py())).mode == "L"]
    assert gray, "expected grayscale images among the first 300"
    for i in gray[:3] + [0, 1]:
        ref = Image.open(io.BytesIO(column[i].as_py())).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
        assert torch.equal(b.open.images[i], torch.from_numpy(np.array(ref)).permute(2, 0, 1))
    x = b.open.images[gray[0]]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
