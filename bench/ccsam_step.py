"""Stage-1 step time (forward_backward + optimizer step) of CE, SAM and CC-SAM on ResNet-32 at CIFAR shapes.

Prints one JSON object: median seconds per step for every (method, batch) and the ratio to CE. Labels are
drawn from the CIFAR-10-LT (IR 100) distribution so that the number of classes per batch is realistic.
Methods are timed round-robin (one step of each in turn) so that load from other processes hits all alike.

    python bench/ccsam_step.py [--batches 64 128] [--steps 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import timm
import torch

import ccsam_zoo  # noqa: F401
from ccsam_zoo.ccsam import build_stage1
from ccsam_zoo.models import FeaturesAndLogits

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # CIFAR-10-LT, IR 100
METHODS = {
    "ce": {"name": "ce"},
    "sam": {"name": "sam"},
    "ccsam_head": {"name": "ccsam", "preset": "official"},
    "ccsam_head_paper": {"name": "ccsam", "preset": "paper"},
    "ccsam_block1": {"name": "ccsam", "preset": "official", "mode": "block", "blocks": 1},
    "ccsam_block1_class_batches": {"name": "ccsam", "preset": "official", "mode": "block", "blocks": 1,
                                   "block_batch": "class"},
    # issue 22's acting CC-SAM (method=ccsam_block: SAM-size radius per class over layer3 + fc), per class and
    # per frequency group (groups=3)
    "ccsam_block": {"name": "ccsam", "preset": "block"},
    "ccsam_block_groups3": {"name": "ccsam", "preset": "block", "groups": 3},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    result: dict = {"device": "cpu", "processor": platform.processor() or platform.machine(),
                    "threads": args.threads, "steps": args.steps, "model": "resnet32_cifar", "times_s": {},
                    "ratio_to_ce": {}, "classes_per_batch": {}}
    for batch in args.batches:
        runs = {}
        for name in args.methods:
            net = FeaturesAndLogits(timm.create_model("resnet32_cifar", num_classes=10)).train()
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
            runs[name] = (net, opt, build_stage1(METHODS[name], COUNTS), [])
        data = [(torch.randn(batch, 3, 32, 32), torch.multinomial(prior, batch, replacement=True))
                for _ in range(4)]
        result["classes_per_batch"][str(batch)] = statistics.mean(len(torch.unique(y)) for _, y in data)
        for step in range(args.warmup + args.steps):
            x, y = data[step % len(data)]
            for net, opt, method, times in runs.values():
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                method.forward_backward(net, x, y, None)
                opt.step()
                if step >= args.warmup:
                    times.append(time.perf_counter() - t0)
        med = {name: statistics.median(r[3]) for name, r in runs.items()}
        result["times_s"][str(batch)] = {k: round(v, 4) for k, v in med.items()}
        if "ce" in med:
            result["ratio_to_ce"][str(batch)] = {k: round(v / med["ce"], 3) for k, v in med.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
