"""Data pipeline throughput on CIFAR-10-LT (IR 100); prints one JSON object.

    python bench/data_throughput.py [--data DIR] [--batches N]

- cold / warm build time of ``build_benchmark("cifar10_lt", DIR, 100)`` (cold: empty cache folder, so
  the 12,406 + 10,000 JPEGs are decoded; warm: the same call again, served from the cache);
- fast-path loader + batch augmentation (pad-4 crop, flip, normalise) throughput, batch 128;
- bare ``resnet32_cifar`` forward + backward throughput on in-memory tensors, batch 128, for comparison.

DIR defaults to ``$CCSAM_DATA/cifar10`` (``CCSAM_DATA`` defaults to ``../shared/data`` beside the repo).
On a machine whose cores are shared with other jobs, ``--threads 1`` avoids intra-op thread contention.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ccsam_zoo  # noqa: E402,F401  (registers resnet32_cifar)
from ccsam_zoo.data import build_benchmark  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _loader_throughput(bench, batches: int) -> float:
    augment = bench.batch_transform(train=True)
    loader = bench.loader("train", 128, seed=0, drop_last=True)
    n, start = 0, time.perf_counter()
    while n < batches * 128:
        for images, _labels in loader:
            x = augment(images)
            n += x.shape[0]
            if n >= batches * 128:
                break
    return n / (time.perf_counter() - start)


def _model_throughput(batches: int) -> float:
    model = timm.create_model("resnet32_cifar", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))
    for _ in range(2):  # warm-up
        F.cross_entropy(model(x), y).backward()
    start = time.perf_counter()
    for _ in range(batches):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return batches * 128 / (time.perf_counter() - start)


def main() -> None:
    default = Path(os.environ.get("CCSAM_DATA", REPO.parent / "shared" / "data")) / "cifar10"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default)
    parser.add_argument("--batches", type=int, default=200, help="batches for the loader measurement")
    parser.add_argument("--model-batches", type=int, default=10, help="batches for the model measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        build_benchmark("cifar10_lt", args.data, 100, cache_dir=cache)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        bench = build_benchmark("cifar10_lt", args.data, 100, cache_dir=cache)
        warm = time.perf_counter() - start
    result = {
        "dataset": f"cifar10_lt IR 100 ({len(bench.train)} train / {len(bench.test)} test images)",
        "build_cold_s": round(cold, 3),
        "build_warm_s": round(warm, 3),
        "loader_augment_img_per_s": round(_loader_throughput(bench, args.batches)),
        "resnet32_fwd_bwd_img_per_s": round(_model_throughput(args.model_batches)),
        "batch_size": 128,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
