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

from .augment import BatchAugment
from .benchmarks import BENCHMARKS, LongTailedBenchmark, build_benchmark
from .counts import long_tailed_counts, shot_groups
from .samplers import ClassBalancedSampler, ShuffleSampler

__all__ = [
    "BENCHMARKS",
    "BatchAugment",
    "ClassBalancedSampler",
    "LongTailedBenchmark",
    "ShuffleSampler",
    "build_benchmark",
    "long_tailed_counts",
    "shot_groups",
]
