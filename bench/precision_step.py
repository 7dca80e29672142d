"""Step time of a CIFAR ResNet-32 under each CPU precision / memory-format setting, and the CPU's bf16 support.

bf16 autocast is only fast on a CPU that computes bf16 natively (AVX512-BF16 or AMX-BF16); elsewhere it is
emulated and slower than float32 (the trainer warns then). One forward + backward + SGD step on in-memory
tensors, the median of ``--steps`` after ``--warmup``. Prints one JSON object.

    python bench/precision_step.py [--batch 64] [--threads 1] [--steps 10] [--compile]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import ccsam_zoo  # noqa: F401  (registers resnet32_cifar)


def _step_ms(bf16: bool, channels_last: bool, compile_model: bool, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = timm.create_model("resnet32_cifar", num_classes=10)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    run = torch.compile(model) if compile_model else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(run(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return round(1000 * statistics.median(times), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also float32 + channels_last under torch.compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    variants = {"fp32": (False, False, False), "fp32_channels_last": (False, True, False),
                "bf16": (True, False, False), "bf16_channels_last": (True, True, False)}
    if args.compile:
        variants["fp32_channels_last_compile"] = (False, True, True)
    ms = {name: _step_ms(*v, args.batch, args.steps, args.warmup) for name, v in variants.items()}
    print(json.dumps({
        "cpu": caps.get("cpu_name"),
        "native_bf16": {k: caps.get(k) for k in ("avx512_bf16", "amx_bf16")},
        "batch": args.batch, "threads": args.threads,
        "ms_per_step": ms,
        "bf16_vs_fp32": round(ms["bf16"] / ms["fp32"], 2),
    }, indent=1))


if __name__ == "__main__":
    main()
