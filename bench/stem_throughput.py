"""Training img/s of the 64-px ResNet-50 stems (ccsam_zoo/models/small_input.py) on this machine. Prints JSON.

Forward + backward + SGD step on in-memory 64x64 tensors (no data pipeline), median over ``--steps`` timed steps
after one warm-up step, for each stem and thread count. The 1-minute load average is recorded beside each
number: on a shared machine the numbers are lower bounds.

    python bench/stem_throughput.py [--archs resnet50_64px resnet50_64px_nomaxpool resnet50_64px_s1]
        [--threads 1 2] [--batch 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import timm
import torch

import ccsam_zoo  # noqa: F401  (registers the 64-px ResNets)


def measure(arch: str, threads: int, batch: int, steps: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=100).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, 64, 64), torch.randint(0, 100, (batch,))
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - t0)
    with torch.no_grad():
        model.eval()
        t0 = time.perf_counter()
        model(x)
        fwd = time.perf_counter() - t0
    return {
        "train_img_per_s": round(batch / statistics.median(times), 2),
        "eval_img_per_s": round(batch / fwd, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=["resnet50_64px", "resnet50_64px_nomaxpool", "resnet50_64px_s1"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "batch": args.batch,
        "steps": args.steps,
        "results": {a: {str(t): measure(a, t, args.batch, args.steps) for t in args.threads} for a in args.archs},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
