"""``build_benchmark``: a long-tailed benchmark (splits, counts, shot groups, loaders, batch transforms)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from ..models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from ._cache import cache_root, hash_json
from ._names import BENCHMARKS, PIPELINES, SAMPLERS, SELECTIONS
from .augment import BatchAugment
from .counts import PROFILES, SHOT_RULES, long_tailed_counts, shot_groups
from .image_data import ImageSplit, timm_transform
from .samplers import ClassBalancedSampler, ShuffleSampler
from .sources import BaseData, Split, open_split, resolve
from .tensor_data import TensorSplit, decode_rows, passthrough_collate

_MAX_TENSOR_SIZE = 64
_DEFAULT_LARGE_SIZE = 224
_DEFAULT_IR = {"cifar10_lt": 100.0, "cifar100_lt": 100.0}
VAL_RULES = ("fill", "left_out")  # val_per_class: top up from the subset, or only the images it leaves out
# Benchmarks of small images that keep the ImageNet-LT pipeline (timm's RandomResizedCrop + flip + colour
# jitter per image, ImageNet mean / std) at their native size instead of the uint8 fast path.
_DEFAULT_PIPELINE = {"tinyimagenet_lt": "timm"}


class LongTailedBenchmark:
    """A long-tailed benchmark: splits, class statistics, loaders and the matching batch transforms.

    Splits (``train``, ``val`` or None, ``test``, ``open`` or None) are torch datasets with ``.labels``
    (LongTensor; -1 for open-set images) and ``len()``; on the fast path (``is_tensor``) they also hold
    ``.images`` (uint8 [N, 3, H, W]). ``train_indices`` / ``val_indices`` are rows of the base training
    split (LongTensor); ``fingerprint`` is the sha256 of the source identity, these indices and the options.
    """

    def __init__(self, **fields: Any) -> None:
        self.name: str = fields["name"]
        self.train: TensorSplit | ImageSplit = fields["train"]
        self.val: TensorSplit | ImageSplit | None = fields["val"]
        self.test: TensorSplit | ImageSplit = fields["test"]
        self.open: TensorSplit | ImageSplit | None = fields["open"]
        self.class_names: list[str] = fields["class_names"]
        self.class_counts: list[int] = fields["class_counts"]
        self.num_classes: int = len(self.class_names)
        self.shot_thresholds: tuple[int, int] = fields["shot_thresholds"]
        self.shot_rule: str = fields["shot_rule"]
        self.shot_groups: list[str] = shot_groups(self.class_counts, self.shot_thresholds, self.shot_rule)
        self.fingerprint: str = fields["fingerprint"]
        self.train_indices: torch.Tensor = fields["train_indices"]
        self.val_indices: torch.Tensor | None = fields["val_indices"]
        self.input_size: tuple[int, int, int] = fields["input_size"]
        self.mean: tuple[float, ...] = fields["mean"]
        self.std: tuple[float, ...] = fields["std"]
        self.is_tensor: bool = fields["is_tensor"]
        self.options: dict[str, Any] = fields["options"]

    @property
    def imbalance_ratio(self) -> float:
        """Largest over smallest training class count."""
        return max(self.class_counts) / min(self.class_counts)

    def __repr__(self) -> str:
        splits = ", ".join(f"{k}={len(v)}" for k in ("train", "val", "test", "open") if (v := getattr(self, k)))
        groups = {g: self.shot_groups.count(g) for g in ("many", "medium", "few")}
        return (
            f"LongTailedBenchmark({self.name!r}, classes={self.num_classes}, {splits}, "
            f"imbalance_ratio={self.imbalance_ratio:.1f}, shot_groups={groups}, input_size={self.input_size}, "
            f"is_tensor={self.is_tensor}, fingerprint={self.fingerprint[:12]})"
        )

    def metadata(self) -> dict[str, Any]:
        """JSON-able description for checkpoints and model cards."""
        return {
            "dataset": self.name,
            "data_fingerprint": self.fingerprint,
            "class_names": list(self.class_names),
            "class_counts": list(self.class_counts),
            "shot_thresholds": list(self.shot_thresholds),
            "shot_rule": self.shot_rule,
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "options": dict(self.options),
        }

    def batch_transform(self, train: bool = True, *, autoaugment: bool | str = False, cutout: int = 0) -> nn.Module:
        """Module mapping a loaded batch to a normalised float batch, on any device.

        Fast path: ``train=True`` pads by ``H // 8`` (4 px for 32x32) + random crop + flip (+ optional
        AutoAugment policy / Cutout size), then normalises; ``train=False`` only normalises.
        Large images: identity (the timm transforms ran in the loader workers).
        """
        if not self.is_tensor:
            if autoaugment or cutout:
                raise ValueError("autoaugment / cutout apply to the uint8 fast path only (is_tensor=False here)")
            return nn.Identity()
        return BatchAugment(
            self.mean, self.std, augment=train, padding=self.input_size[1] // 8, autoaugment=autoaugment, cutout=cutout
        )

    def split(self, name: str) -> Dataset:
        """The dataset of ``"train"``, ``"val"``, ``"test"`` or ``"open"``."""
        if name not in ("train", "val", "test", "open"):
            raise ValueError(f"unknown split {name!r}: use 'train', 'val', 'test' or 'open'")
        ds = getattr(self, name)
        if ds is None:
            hint = "pass val_per_class=N to build_benchmark" if name == "val" else "pass open_source=PATH"
            raise ValueError(f"{self.name} has no {name} split: {hint}")
        return ds

    def loader(
        self,
        split: str = "train",
        batch_size: int = 128,
        *,
        sampler: str | Sampler | None = None,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
    ) -> DataLoader:
        """DataLoader yielding ``(images, labels)``.

        ``sampler``: ``"shuffle"`` (default for train), ``"class_balanced"``, ``"sequential"`` (default for
        the other splits) or a Sampler; ``seed`` seeds the sampler and the workers' base seed. Fast path:
        uint8 batches fetched by one tensor index (keep ``num_workers=0``); apply ``batch_transform`` next.
        Large images: float batches transformed by timm in ``num_workers`` workers.
        """
        ds = self.split(split)
        if sampler is None:
            sampler = "shuffle" if split == "train" else "sequential"
        if isinstance(sampler, str):
            if sampler == "shuffle":
                sampler = ShuffleSampler(len(ds), seed=seed)
            elif sampler == "class_balanced":
                sampler = ClassBalancedSampler(ds.labels, seed=seed)
            elif sampler == "sequential":
                sampler = SequentialSampler(ds)
            else:
                raise ValueError(f"unknown sampler {sampler!r}: use one of {SAMPLERS} or a torch Sampler")
        return DataLoader(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=num_workers,
            collate_fn=passthrough_collate if self.is_tensor else None,
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=num_workers > 0,
        )


def _per_class_order(labels: np.ndarray, num_classes: int, selection: str, seed: int) -> list[np.ndarray]:
    """Rows of each class in selection order: source order ("first") or LDAM's seeded shuffle ("shuffle").

    "shuffle" is LDAM's ``gen_imbalanced_data``: ``np.random.seed(seed)`` then, class by class,
    ``np.random.shuffle`` of that class's rows (so seed 0 gives LDAM's default subset of the same base order).
    """
    order = [np.flatnonzero(labels == c) for c in range(num_classes)]
    if selection == "shuffle":
        rng = np.random.RandomState(seed)
        for rows in order:
            rng.shuffle(rows)
    return order


def _select(
    base: BaseData,
    name: str,
    imbalance_ratio: float | None,
    max_count: int | None,
    profile: str,
    selection: str,
    seed: int,
    val_per_class: int,
    val_rule: str = "fill",
) -> tuple[np.ndarray, np.ndarray | None]:
    """(train rows, val rows or None) of the base training split.

    Validation rows come first from the class's rows the subset leaves out; ``val_rule="fill"`` then moves
    rows out of the subset when too few are left out (keeping >= 1), ``"left_out"`` never touches the subset
    (a class with nothing left out, e.g. CIFAR-10-LT's head class, has no validation images)."""
    names = base.class_names
    order = _per_class_order(base.train.labels, len(names), selection, seed)
    available = [len(o) for o in order]
    if imbalance_ratio is None:
        targets = available
    else:
        if max_count is None:
            max_count = available[0]
        targets = long_tailed_counts(len(names), max_count, imbalance_ratio, profile)
        for c, (want, have) in enumerate(zip(targets, available)):
            if want > have:
                raise ValueError(
                    f"{name}: class {c} ({names[c]!r}) has {have} training images but the {profile} profile with "
                    f"max_count={max_count}, imbalance_ratio={imbalance_ratio} needs {want}: pass a smaller "
                    "max_count or a larger imbalance_ratio"
                )
    train, val = [], []
    for c, rows in enumerate(order):
        n = targets[c]
        chosen, rest = rows[:n], rows[n:]
        if val_per_class:
            extra = rest[:val_per_class]
            take = 0 if val_rule == "left_out" else min(val_per_class - len(extra), max(n - 1, 0))  # from the subset
            if take:
                extra = np.concatenate([extra, chosen[n - take :]])
                chosen = chosen[: n - take]
            val.append(extra)
        train.append(chosen)
    empty = [f"{c} ({names[c]!r})" for c, rows in enumerate(train) if not len(rows)]
    if empty:
        raise ValueError(
            f"{name}: no training images for class(es) {', '.join(empty[:10])}"
            + (" ..." if len(empty) > 10 else "")
            + ": every class needs at least one (check the source, max_count and imbalance_ratio)"
        )
    train_rows = np.sort(np.concatenate(train))
    val_rows = np.sort(np.concatenate(val)) if val_per_class else None
    if val_rows is not None and not len(val_rows):
        raise ValueError(
            f"{name}: val_rule='left_out' found no training image left out of the subset in any class: "
            "use val_rule='fill' (moves images out of the subset) or a larger imbalance_ratio / smaller max_count"
        )
    return train_rows, val_rows


def build_benchmark(
    name: str,
    source: Any = None,
    imbalance_ratio: float | None = None,
    *,
    selection: str = "first",
    seed: int = 0,
    shot_thresholds: tuple[int, int] = (100, 20),
    shot_rule: str = "paper",
    val_per_class: int = 0,
    val_rule: str = "fill",
    cache_dir: str | os.PathLike | None = None,
    image_size: int | None = None,
    max_count: int | None = None,
    profile: str = "exp",
    image_column: str | None = None,
    label_column: str | None = None,
    open_source: str | os.PathLike | None = None,
    pipeline: str | None = None,
) -> LongTailedBenchmark:
    """Build a long-tailed benchmark.

    ``name``: cifar10_lt, cifar100_lt (base data: ``source`` = local folder with train/test parquet, or a Hub
    id; default ``$CCSAM_DATA/cifar10`` (``cifar100``) when that folder exists, else ``uoft-cs/cifar10``
    (``uoft-cs/cifar100``)), imagenet_lt, places_lt, tinyimagenet_lt (OLTR split files), inat2018 (train2018.json /
    val2018.json), imagefolder, parquet, embedded (the shipped CIFAR-10-LT subset). ``source`` forms are
    described in ``ccsam_zoo.data.sources``.

    ``imbalance_ratio``: subsample the training split to ``long_tailed_counts(C, max_count, IR, profile)``
    (``max_count`` defaults to the size of class 0); None keeps the training split as it is, except for
    cifar*_lt where it means 100. ImageNet-LT / Places-LT / iNaturalist are fixed by their split files.
    ``selection``: "first" n images of each class in source order, or "shuffle" (LDAM's seeded per-class
    shuffle, ``seed``). ``val_per_class``: a validation split of that many images per class, taken from the
    class's training images left out of the subset; when too few are left out, ``val_rule="fill"`` moves
    the rest out of the subset (keeping >= 1 training image), ``"left_out"`` leaves the subset untouched (a
    class with no left-over image, e.g. airplane at CIFAR-10-LT IR 100, gets none). Never from the test split.
    OLTR benchmarks ship their own val.
    ``shot_thresholds`` = (many, few) and ``shot_rule`` ("paper": > / <, "authors": >= / <=) give shot groups.
    ``image_size``: images of at most 64 px go to the uint8 tensor fast path (decoded once and cached under
    ``cache_dir`` / ``$CCSAM_CACHE`` / ``~/.cache/ccsam_zoo``); larger ones to the timm transform path
    (default 224 for large sources, the native 64 for tinyimagenet_lt). ``pipeline``: "tensor" (uint8 fast
    path, images of at most 64 px: pad-crop-flip batch augmentation, CIFAR mean / std) or "timm" (per-image
    timm ImageNet transforms at any size, ImageNet mean / std); None: "timm" for tinyimagenet_lt (the
    ImageNet-LT augmentation at 64 px), else "tensor" up to 64 px. ``image_column`` / ``label_column`` name
    table columns (auto: img / image, label / fine_label). ``open_source``: parquet or image folder of
    open-set images (labels -1).

    ``fingerprint``: sha256 of the sources' identity (parquet: file sha256; Hub: dataset fingerprint; split
    files / json: their sha256 and the image root; image folders: the file listing and folder), the chosen
    rows and the options. Under Accelerate, build on the main process first
    (``with accelerator.main_process_first(): ...``) so the other ranks read the decode cache.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}: use one of {SELECTIONS}")
    if shot_rule not in SHOT_RULES:
        raise ValueError(f"unknown shot_rule {shot_rule!r}: use one of {SHOT_RULES}")
    if pipeline is not None and pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}: use one of {PIPELINES} (or None for the default)")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {PROFILES}")
    if imbalance_ratio is not None and not imbalance_ratio >= 1:
        raise ValueError(
            f"imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio!r}; "
            "an imbalance factor like 0.01 is written imbalance_ratio=100"
        )
    if int(val_per_class) != val_per_class or val_per_class < 0:
        raise ValueError(f"val_per_class must be a non-negative integer, got {val_per_class!r}")
    if val_rule not in VAL_RULES:
        raise ValueError(f"unknown val_rule {val_rule!r}: use one of {VAL_RULES}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    shot_thresholds = (int(shot_thresholds[0]), int(shot_thresholds[1]))
    cache = cache_root(cache_dir)
    base = resolve(name, source, image_column, label_column, cache)
    if base.fixed and imbalance_ratio is not None:
        raise ValueError(f"{name}'s imbalance is fixed by its split files: leave imbalance_ratio=None")
    if base.fixed and val_per_class and base.val is not None:
        raise ValueError(f"{name} ships its own validation split ({len(base.val)} images): leave val_per_class=0")
    if imbalance_ratio is None:
        imbalance_ratio = _DEFAULT_IR.get(name)
    if open_source is not None:
        base.open = open_split(open_source, image_column, cache)
    if imbalance_ratio is not None and max_count is None:
        max_count = int(np.count_nonzero(base.train.labels == 0))

    train_rows, val_rows = _select(
        base, name, imbalance_ratio, max_count, profile, selection, seed, int(val_per_class), val_rule
    )
    val_split: Split | None = base.val
    size = image_size or base.native_size or _DEFAULT_LARGE_SIZE
    pipeline = pipeline or _DEFAULT_PIPELINE.get(name)
    if pipeline == "tensor" and size > _MAX_TENSOR_SIZE:
        raise ValueError(
            f"pipeline='tensor' holds images of at most {_MAX_TENSOR_SIZE} px in memory, got image_size={size}: "
            "pass a smaller image_size or pipeline='timm'"
        )
    is_tensor = size <= _MAX_TENSOR_SIZE if pipeline is None else pipeline == "tensor"
    mean, std = (CIFAR_MEAN, CIFAR_STD) if is_tensor else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)

    def make(split: Split, rows: np.ndarray | None, train: bool) -> TensorSplit | ImageSplit:
        rows = np.arange(len(split)) if rows is None else rows
        labels = torch.from_numpy(split.labels[rows])
        if is_tensor:
            return TensorSplit(decode_rows(split, rows, size, cache), labels)
        tf = timm_transform(size, train, mean, std)
        return ImageSplit(split.images.hf_dataset(rows), labels, tf, split.images.base_dir, split.images.origin)

    train = make(base.train, train_rows, True)
    if val_rows is not None:
        val = make(base.train, val_rows, False)
    else:
        val = make(val_split, None, False) if val_split is not None else None
    test = make(base.test, None, False)
    open_ = make(base.open, None, False) if base.open is not None else None

    counts = np.bincount(base.train.labels[train_rows], minlength=len(base.class_names)).tolist()
    options = {
        "imbalance_ratio": imbalance_ratio,
        "max_count": max_count,
        "profile": profile,
        "selection": selection,
        "seed": seed if selection == "shuffle" else None,
        "val_per_class": int(val_per_class),
        "image_size": size,
    }
    if val_per_class and val_rule != "fill":  # only when set: older runs keep their fingerprint
        options["val_rule"] = val_rule
    if is_tensor != (size <= _MAX_TENSOR_SIZE):  # recorded only where it differs from the size rule
        options["pipeline"] = "tensor" if is_tensor else "timm"
    identity = {
        "name": name,
        "splits": {
            k: s.identity
            for k, s in (("train", base.train), ("test", base.test), ("val", val_split), ("open", base.open))
            if s is not None
        },
        "options": options,
        "train_indices": hashlib.sha256(train_rows.astype(np.int64).tobytes()).hexdigest(),
        "val_indices": None if val_rows is None else hashlib.sha256(val_rows.astype(np.int64).tobytes()).hexdigest(),
    }
    return LongTailedBenchmark(
        name=name,
        train=train,
        val=val,
        test=test,
        open=open_,
        class_names=list(base.class_names),
        class_counts=counts,
        shot_thresholds=shot_thresholds,
        shot_rule=shot_rule,
        fingerprint=hash_json(identity),
        train_indices=torch.from_numpy(train_rows.astype(np.int64)),
        val_indices=None if val_rows is None else torch.from_numpy(val_rows.astype(np.int64)),
        input_size=(3, size, size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        is_tensor=is_tensor,
        options=options,
    )
