"""Every loader on small data made on the fly: image folders, OLTR split files, iNaturalist json, parquet.

Images come in odd PIL modes (L, RGBA, CMYK, P, P with transparency, I;16) and must decode to the RGB
values computed here independently.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from ccsam_zoo.data import build_benchmark, long_tailed_counts

# mode -> (make a 16x16 solid image, file format, expected RGB)
_MODES = {
    "RGB": (lambda: Image.new("RGB", (16, 16), (200, 10, 60)), "PNG", (200, 10, 60)),
    "L": (lambda: Image.new("L", (16, 16), 77), "PNG", (77, 77, 77)),
    "RGBA": (lambda: Image.new("RGBA", (16, 16), (10, 200, 30, 128)), "PNG", (10, 200, 30)),
    "CMYK": (lambda: Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "TIFF", (255, 0, 255)),
    "P": (lambda: Image.new("RGB", (16, 16), (12, 34, 56)).convert("P", palette=Image.Palette.ADAPTIVE), "PNG",
          (12, 34, 56)),
    "I;16": (lambda: Image.new("I;16", (16, 16), 257 * 100), "PNG", (100, 100, 100)),
}


def _p_transparent() -> Image.Image:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 90, 80, 70] + [0] * 762)
    img.info["transparency"] = 0
    return img


_MODES["P+transparency"] = (_p_transparent, "PNG", (90, 80, 70))
MODE_NAMES = list(_MODES)


def _save(img: Image.Image, path: Path, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "PNG" and "transparency" in img.info:
        img.save(path, format=fmt, transparency=img.info["transparency"])
    else:
        img.save(path, format=fmt)


def _image_bytes(mode: str) -> bytes:
    make, fmt, _ = _MODES[mode]
    buf = io.BytesIO()
    img = make()
    kwargs = {"transparency": img.info["transparency"]} if "transparency" in img.info else {}
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _solid(rgb, size=16) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.uint8).view(3, 1, 1).expand(3, size, size)


def _make_folder(root: Path, counts: dict[str, int], test_per_class: int = 2) -> dict[Path, str]:
    """root/{train,test}/<class>/<i>.<ext>, modes cycling; returns file -> mode."""
    modes = {}
    k = 0
    for split, per in (("train", counts), ("test", dict.fromkeys(counts, test_per_class))):
        for cls, n in per.items():
            for i in range(n):
                mode = MODE_NAMES[k % len(MODE_NAMES)]
                make, fmt, _ = _MODES[mode]
                path = root / split / cls / f"{i:03d}.{'tif' if fmt == 'TIFF' else 'png'}"
                _save(make(), path, fmt)
                modes[path] = mode
                k += 1
    return modes


@pytest.fixture
def folder(tmp_path):
    counts = {"cat": 8, "ant": 12, "bee": 5}
    modes = _make_folder(tmp_path / "imgs", counts)
    return tmp_path / "imgs", counts, modes


def test_imagefolder_decodes_every_mode(folder):
    root, counts, modes = folder
    bench = build_benchmark("imagefolder", root)
    assert bench.class_names == ["ant", "bee", "cat"]  # sorted folder names
    assert bench.class_counts == [12, 5, 8]
    assert bench.is_tensor and bench.input_size == (3, 16, 16)
    assert bench.train.images.dtype == torch.uint8 and bench.train.images.shape == (25, 3, 16, 16)
    # rows: sorted classes, then sorted files
    files = sorted((p for p in modes if p.parts[-3] == "train"), key=lambda p: (p.parent.name, p.name))
    for i, path in enumerate(files):
        expected = _solid(_MODES[modes[path]][2])
        assert torch.equal(bench.train.images[i], expected), f"{path} ({modes[path]})"
        assert bench.train.labels[i] == bench.class_names.index(path.parent.name)
    assert len(bench.test) == 6 and bench.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert bench.val is None and bench.open is None
    assert bench.train_indices.tolist() == list(range(25))


def test_imagefolder_made_long_tailed_and_val(folder):
    root, _, _ = folder
    bench = build_benchmark("imagefolder", root, imbalance_ratio=4, max_count=8, val_per_class=2)
    # class sizes: ant 12, bee 5, cat 8; targets [8, 4, 2]
    assert long_tailed_counts(3, 8, 4) == [8, 4, 2]
    assert bench.val.labels.bincount().tolist() == [2, 2, 2]
    # rows: ant 0-11, bee 12-16, cat 17-24. Val takes images left out of the subset (ant 8, 9; cat 19, 20);
    # bee has one left over (16), so its last subset image (15) moves to val too.
    assert bench.val_indices.tolist() == [8, 9, 15, 16, 19, 20]
    assert bench.train_indices.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 17, 18]
    assert bench.class_counts == [8, 3, 2]
    assert not set(bench.val_indices.tolist()) & set(bench.train_indices.tolist())
    with pytest.raises(ValueError, match="class 1 \\('bee'\\) has 5 training images.*needs 8"):
        build_benchmark("imagefolder", root, imbalance_ratio=2, max_count=12)


def test_imagefolder_resizes_to_requested_size(tmp_path):
    for split in ("train", "test"):
        _save(Image.new("RGB", (40, 24), (5, 6, 7)), tmp_path / split / "a" / "0.png", "PNG")
        _save(Image.new("RGB", (24, 24), (9, 9, 9)), tmp_path / split / "b" / "0.png", "PNG")
    bench = build_benchmark("imagefolder", tmp_path, image_size=12)
    assert bench.train.images.shape == (2, 3, 12, 12)
    assert torch.equal(bench.train.images[0], _solid((5, 6, 7), 12))


def test_imagefolder_errors(tmp_path, folder):
    root, _, _ = folder
    with pytest.raises(FileNotFoundError, match="needs train/ and test/"):
        build_benchmark("imagefolder", root / "train")
    (root / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="no training images for class.*'empty'"):
        build_benchmark("imagefolder", root)
    (root / "train" / "empty").rmdir()
    (root / "test" / "zebra").mkdir()
    with pytest.raises(ValueError, match="zebra.*not training classes"):
        build_benchmark("imagefolder", root)
    (root / "test" / "zebra").rmdir()
    bad = root / "train" / "ant" / "999.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="cannot decode image at row \\d+ of .*999.png"):
        build_benchmark("imagefolder", root)


# ------------------------------------------------------------------------------------------------ parquet
def _write_parquet(path: Path, images: list[bytes], labels, image_col="image", label_col="fine_label", extra=True):
    cols = {
        image_col: pa.array([{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(images)],
                            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        label_col: pa.array(labels),
    }
    if extra:
        cols["coarse_label"] = pa.array([0] * len(images))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)


def _parquet_dir(root: Path, **kwargs) -> tuple[Path, list[str]]:
    modes = [MODE_NAMES[i % len(MODE_NAMES)] for i in range(20)]
    labels = [i % 4 for i in range(20)]
    _write_parquet(root / "train.parquet", [_image_bytes(m) for m in modes], labels, **kwargs)
    _write_parquet(root / "test.parquet", [_image_bytes("RGB")] * 8, [i % 4 for i in range(8)], **kwargs)
    return root, modes


def test_parquet_autodetects_columns_and_decodes(tmp_path):
    root, modes = _parquet_dir(tmp_path / "pq")
    bench = build_benchmark("parquet", root)
    assert bench.class_counts == [5, 5, 5, 5] and bench.class_names == ["0", "1", "2", "3"]
    for i, m in enumerate(modes):
        assert torch.equal(bench.train.images[i], _solid(_MODES[m][2])), m
    lt = build_benchmark("parquet", root, imbalance_ratio=5, selection="shuffle", seed=3)
    assert lt.class_counts == long_tailed_counts(4, 5, 5) == [5, 2, 1, 1]
    # the same build twice: same rows and fingerprint; another seed: another subset
    same = build_benchmark("parquet", root, imbalance_ratio=5, selection="shuffle", seed=3)
    assert same.fingerprint == lt.fingerprint and torch.equal(same.train_indices, lt.train_indices)
    other = build_benchmark("parquet", root, imbalance_ratio=5, selection="shuffle", seed=4)
    assert other.fingerprint != lt.fingerprint


def test_parquet_column_errors_and_options(tmp_path):
    root, _ = _parquet_dir(tmp_path / "pq", image_col="picture", label_col="y", extra=False)
    with pytest.raises(ValueError, match=r"no image column.*available columns: \['picture', 'y'\].*image_column="):
        build_benchmark("parquet", root)
    with pytest.raises(ValueError, match=r"no label column.*\['picture', 'y'\].*label_column="):
        build_benchmark("parquet", root, image_column="picture")
    with pytest.raises(ValueError, match="label column 'target' not found.*available columns"):
        build_benchmark("parquet", root, image_column="picture", label_column="target")
    bench = build_benchmark("parquet", root, image_column="picture", label_column="y")
    assert bench.num_classes == 4 and len(bench.train) == 20


def test_parquet_string_labels_dict_source_and_missing_test(tmp_path):
    imgs = [_image_bytes("L")] * 6
    _write_parquet(tmp_path / "a.parquet", imgs, ["dog", "cat", "dog", "emu", "cat", "dog"], label_col="label")
    _write_parquet(tmp_path / "b.parquet", imgs[:3], ["emu", "cat", "dog"], label_col="label")
    bench = build_benchmark("parquet", {"train": tmp_path / "a.parquet", "test": str(tmp_path / "b.parquet")})
    assert bench.class_names == ["cat", "dog", "emu"] and bench.class_counts == [2, 3, 1]
    assert bench.test.labels.tolist() == [2, 0, 1]
    with pytest.raises(FileNotFoundError, match="no test parquet.*test.parquet"):
        build_benchmark("parquet", tmp_path / "a.parquet")
    _write_parquet(tmp_path / "c.parquet", imgs[:1], ["yak"], label_col="label")
    with pytest.raises(ValueError, match="test labels .* not among the training classes: \\['yak'\\]"):
        build_benchmark("parquet", {"train": tmp_path / "a.parquet", "test": tmp_path / "c.parquet"})


def test_parquet_corrupt_image_names_the_row(tmp_path):
    images = [_image_bytes("RGB")] * 4
    images[2] = b"\xff\xd8\xff\xe0 truncated jpeg"
    _write_parquet(tmp_path / "train.parquet", images, [0, 1, 0, 1])
    _write_parquet(tmp_path / "test.parquet", images[:2], [0, 1])
    with pytest.raises(ValueError, match="cannot decode image at row 2 of .*train.parquet '2.png'"):
        build_benchmark("parquet", tmp_path)


def test_parquet_large_path_uses_timm_transforms(tmp_path):
    """image_size > 64: a datasets.Dataset with timm transforms; eval matches resize + center crop + normalise."""
    root, modes = _parquet_dir(tmp_path / "pq")
    bench = build_benchmark("parquet", root, image_size=72)
    assert not bench.is_tensor and bench.input_size == (3, 72, 72)
    assert isinstance(bench.batch_transform(True), torch.nn.Identity)
    images, labels = next(iter(bench.loader("train", 6, seed=0)))
    assert images.shape == (6, 3, 72, 72) and images.dtype == torch.float32 and labels.dtype == torch.long
    reference = T.Compose([
        T.Resize(int(72 / 0.875), interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(72),
        T.ToTensor(),
        T.Normalize(bench.mean, bench.std),
    ])
    image, label = bench.test[3]
    expected = reference(Image.open(io.BytesIO(_image_bytes("RGB"))).convert("RGB"))
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-5)
    assert label == 3 and bench.test.labels[3] == 3
    x, y = next(iter(bench.loader("test", 8)))
    assert x.shape == (8, 3, 72, 72) and y.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]


# ------------------------------------------------------------------------------------------ OLTR and iNat
def _write_oltr(root: Path, prefix: str, lead: str = "") -> dict[str, list[tuple[str, int]]]:
    """Images under root/train/<wnid>/ and the four split files under root/<prefix>/."""
    counts = [6, 3, 1]
    splits = {"train": [], "val": [], "test": [], "open": []}
    for c, n in enumerate(counts):
        for split, k in (("train", n), ("val", 1), ("test", 2)):
            for i in range(k):
                rel = f"{split}/n0{c}/{i}.png"
                _save(Image.new("L", (20, 20), 40 * c + i), root / rel, "PNG")
                splits[split].append((lead + rel, c))
    for i in range(3):
        rel = f"extra/{i}.png"
        _save(Image.new("RGB", (20, 20), (i, i, i)), root / rel, "PNG")
        splits["open"].append((lead + rel, -1))
    (root / prefix).mkdir()
    for split, rows in splits.items():
        (root / prefix / f"{prefix}_{split}.txt").write_text("".join(f"{p} {y}\n" for p, y in rows))
    return splits


def test_imagenet_lt_split_files(tmp_path):
    _write_oltr(tmp_path, "ImageNet_LT")
    bench = build_benchmark("imagenet_lt", {"root": tmp_path, "splits": tmp_path / "ImageNet_LT"}, image_size=20)
    assert bench.class_counts == [6, 3, 1] and bench.class_names == ["n00", "n01", "n02"]
    assert bench.shot_groups == ["few", "few", "few"]
    assert len(bench.val) == 3 and len(bench.test) == 6 and len(bench.open) == 3
    assert bench.open.labels.tolist() == [-1, -1, -1]
    assert torch.equal(bench.train.images[1], _solid((1, 1, 1), 20))  # class 0, image 1: L value 1
    assert torch.equal(bench.test.images[5], _solid((81, 81, 81), 20))  # class 2, test image 1
    # the split folder is found under the root without being named
    same = build_benchmark("imagenet_lt", str(tmp_path), image_size=20)
    assert same.fingerprint == bench.fingerprint
    with pytest.raises(ValueError, match="imbalance is fixed"):
        build_benchmark("imagenet_lt", tmp_path, imbalance_ratio=10)
    with pytest.raises(ValueError, match="ships its own validation split"):
        build_benchmark("imagenet_lt", tmp_path, val_per_class=1)


def test_places_lt_leading_slash_and_root_colon_splits(tmp_path):
    root = tmp_path / "places"
    root.mkdir()
    _write_oltr(root, "Places_LT", lead="/")
    splitdir = tmp_path / "splits"
    (root / "Places_LT").rename(splitdir)
    bench = build_benchmark("places_lt", f"{root}:{splitdir}", image_size=20)
    assert bench.class_counts == [6, 3, 1] and len(bench.open) == 3
    large = build_benchmark("places_lt", {"root": root, "splits": splitdir}, image_size=80)
    x, y = next(iter(large.loader("train", 4, sampler="class_balanced", num_workers=0)))
    assert x.shape == (4, 3, 80, 80) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1, 2}


def test_oltr_missing_files_and_wrong_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageNet_LT_train.txt.*ImageNet_LT_test.txt"):
        build_benchmark("imagenet_lt", tmp_path)
    _write_oltr(tmp_path, "ImageNet_LT")
    test_file = tmp_path / "ImageNet_LT" / "ImageNet_LT_test.txt"
    content = test_file.read_text()
    test_file.unlink()
    with pytest.raises(FileNotFoundError, match=f"not found in \\['{tmp_path}'.*expected.*ImageNet_LT_test.txt"):
        build_benchmark("imagenet_lt", tmp_path)
    test_file.write_text(content)
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(FileNotFoundError, match="first image of .*ImageNet_LT_train.txt is not at"):
        build_benchmark("imagenet_lt", {"root": other, "splits": tmp_path / "ImageNet_LT"})
    with pytest.raises(ValueError, match="needs source="):
        build_benchmark("imagenet_lt")


def test_oltr_malformed_line(tmp_path):
    _write_oltr(tmp_path, "ImageNet_LT")
    f = tmp_path / "ImageNet_LT" / "ImageNet_LT_train.txt"
    f.write_text(f.read_text() + "train/n00/0.png cat\n")
    with pytest.raises(ValueError, match="ImageNet_LT_train.txt:11: expected '<relative path> <integer label>'"):
        build_benchmark("imagenet_lt", tmp_path, image_size=20)


def test_inat2018_json(tmp_path):
    cats = [{"id": 11, "name": "Aves"}, {"id": 3, "name": "Fungi"}, {"id": 7, "name": "Plantae"}]
    per_cat = {3: 4, 7: 2, 11: 1}
    for split, factor in (("train", 1), ("val", 1)):
        images, anns, k = [], [], 0
        for cat, n in per_cat.items():
            for _ in range(n * factor):
                rel = f"train_val2018/{cat}/{split}{k}.jpg"
                _save(Image.new("CMYK", (20, 20), (255, 0, 0, 0)), tmp_path / rel, "JPEG")
                images.append({"id": 1000 + k, "file_name": rel})
                anns.append({"id": k, "image_id": 1000 + k, "category_id": cat})
                k += 1
        (tmp_path / f"{split}2018.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                                "categories": cats}))
    bench = build_benchmark("inat2018", tmp_path, image_size=20)
    assert bench.class_names == ["Fungi", "Plantae", "Aves"]  # sorted category ids 3, 7, 11
    assert bench.class_counts == [4, 2, 1] and len(bench.test) == 7
    pixel = bench.train.images[0, :, 10, 10].int()
    assert pixel[0] < 40 and pixel[1] > 215 and pixel[2] > 215  # cyan (lossy JPEG)
    carved = build_benchmark("inat2018", tmp_path, image_size=20, val_per_class=1)
    assert carved.class_counts == [3, 1, 1]  # moved out of the subset, keeping one image per class
    assert carved.val.labels.tolist() == [0, 1]
    (tmp_path / "val2018.json").unlink()
    with pytest.raises(FileNotFoundError, match="val2018.json"):
        build_benchmark("inat2018", tmp_path)
    (tmp_path / "val2018.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="not an iNaturalist/COCO-style file"):
        build_benchmark("inat2018", tmp_path)


# ---------------------------------------------------------------------------------------------- general
def test_bad_arguments(folder):
    root, _, _ = folder
    with pytest.raises(ValueError, match="unknown benchmark 'cifar_lt': use one of cifar10_lt, cifar100_lt.*embedded"):
        build_benchmark("cifar_lt")
    with pytest.raises(ValueError, match="imbalance_ratio must be >= 1"):
        build_benchmark("imagefolder", root, imbalance_ratio=0.01)
    with pytest.raises(ValueError, match="max_count=5 .* leaves class 1 with 0 images"):
        build_benchmark("imagefolder", root, imbalance_ratio=100, max_count=5)
    with pytest.raises(ValueError, match="unknown selection"):
        build_benchmark("imagefolder", root, selection="random")
    with pytest.raises(ValueError, match="unknown shot_rule"):
        build_benchmark("imagefolder", root, shot_rule="x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_benchmark("parquet", root / "nope")
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a Hub dataset id"):
        build_benchmark("cifar10_lt", "./missing/folder")
    bench = build_benchmark("imagefolder", root)
    with pytest.raises(ValueError, match="no val split: pass val_per_class"):
        bench.loader("val", 4)
    with pytest.raises(ValueError, match="unknown sampler"):
        bench.loader("train", 4, sampler="balanced")


def test_open_source_is_decoded_at_the_benchmark_size(folder, tmp_path):
    root, _, _ = folder
    ood = tmp_path / "ood"
    for i in range(3):
        _save(Image.new("RGB", (32, 32), (i, 50, 50)), ood / f"{i}.jpg", "PNG")
    bench = build_benchmark("imagefolder", root, open_source=ood)
    assert bench.open.images.shape == (3, 3, 16, 16) and bench.open.labels.tolist() == [-1, -1, -1]
    x, y = next(iter(bench.loader("open", 3)))
    assert y.tolist() == [-1, -1, -1] and x.dtype == torch.uint8
    assert bench.fingerprint != build_benchmark("imagefolder", root).fingerprint


def test_hub_ids_fail_clearly_offline(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="could not load 'uoft-cs/cifar100'.*--set data.source=DIR"):
        build_benchmark("cifar100_lt", "uoft-cs/cifar100")


def test_unreachable_hub_fails_at_once_with_the_command_line_fix(monkeypatch):
    """Not offline by the environment but no network: no load_dataset (its ~30 s of retries), the fix."""
    import datasets

    import ccsam_zoo.data.sources as sources

    def never(*args, **kwargs):
        raise AssertionError("load_dataset must not be tried when the Hub is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_hub_offline", lambda: False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(datasets, "load_dataset", never)
    with pytest.raises(FileNotFoundError, match=r"Hub is unreachable.*--set data.source=DIR.*HF_HUB_OFFLINE=1"):
        build_benchmark("cifar10_lt", "uoft-cs/cifar10")


def test_large_path_corrupt_image_names_the_file(tmp_path):
    for split in ("train", "test"):
        for c in ("a", "b"):
            _save(Image.new("RGB", (80, 80), (1, 2, 3)), tmp_path / split / c / "0.png", "PNG")
    (tmp_path / "train" / "b" / "0.png").write_bytes(b"garbage")
    bench = build_benchmark("imagefolder", tmp_path)  # the probe reads only the first image
    assert not bench.is_tensor and bench.input_size == (3, 224, 224)
    assert bench.train[0][0].shape == (3, 224, 224)
    with pytest.raises(ValueError, match="cannot decode image .*b/0.png.*item 1"):
        bench.train[1]
    assert np.isfinite(bench.test[0][0].numpy()).all()


def test_hub_dataset_ids_go_through_load_dataset(monkeypatch):
    """A Hub id is loaded with datasets.load_dataset (here served from the embedded parquet, offline)."""
    import datasets

    from ccsam_zoo.data.sources import EMBEDDED_DIR

    local = datasets.load_dataset(
        "parquet",
        data_files={s: str(EMBEDDED_DIR / f"{s}.parquet") for s in ("train", "test")},
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or local)
    bench = build_benchmark("cifar10_lt", "uoft-cs/cifar10", 100, max_count=500)
    assert calls == [("uoft-cs/cifar10",)]
    assert bench.class_counts == long_tailed_counts(10, 500, 100) and bench.class_names[0] == "airplane"
    assert torch.equal(bench.train.images, build_benchmark("embedded").train.images)
    large = build_benchmark("cifar10_lt", "uoft-cs/cifar10", 100, max_count=500, image_size=80)
    x, y = next(iter(large.loader("train", 16, num_workers=2)))
    assert x.shape == (16, 3, 80, 80) and y.dtype == torch.long
