"""Long-tailed benchmarks: CIFAR-LT, ImageNet-LT, Places-LT, iNaturalist 2018, image folders, parquet.

Small images (<= 64 px) take a fast path: decoded once into a cached uint8 tensor, batches fetched by one
tensor index and augmented on the batch (``batch_transform``). Large images go through ``datasets`` with
timm transforms in the loader workers.

    from ccsam_zoo.data import build_benchmark
    bench = build_benchmark("cifar10_lt", "/path/to/cifar10", imbalance_ratio=100)
    augment = bench.batch_transform(train=True)
    for images, labels in bench.loader("train", 128):
        x = augment(images)
"""

from __future__ import annotations

from .._lazy import lazy_attributes

# Loaded on first use: ``long_tailed_counts`` / ``shot_groups`` need no torch.
_LAZY = {
    "BENCHMARKS": "benchmarks",
    "BatchAugment": "augment",
    "ClassBalancedSampler": "samplers",
    "LongTailedBenchmark": "benchmarks",
    "ShuffleSampler": "samplers",
    "build_benchmark": "benchmarks",
    "long_tailed_counts": "counts",
    "shot_groups": "counts",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
