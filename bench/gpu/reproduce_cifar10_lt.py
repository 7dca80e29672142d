"""The paper protocol on one GPU: ResNet-32, CIFAR-10-LT IR 100, 200 + 30 epochs, for ce, mixup_crt, ccsam and
the project's recommended CC-SAM configuration (``ccsam_rec``); ``--group issue22`` runs issue 22's strong-
augmentation protocol instead (CE + cRT, mixup + cRT, CC-SAM authors' stage 1 without mixup + paper stage 2, the
acting CC-SAM ``ccsam_block`` and plain SAM at the same radius; AutoAugment + Cutout, validation-selected epochs),
``--group issue22_sweep`` the radius sweep of both (pick the radius on ``stage*_best.val_bacc``, never on test).

All runs start at once on the same GPU (each is small: ResNet-32 at batch 64 leaves the GPU mostly idle,
so the processes overlap their Python overhead). Each run is the project's own command, with the overrides
of ``bench/compare.py``'s ``RUNS`` for its name::

    python recipes/train.py --recipe cifar10_lt --output-dir OUT/<run> --set data.source=DATA <RUNS[run]>
        train.mixed_precision=bf16 model.channels_last=true data.device_resident=true ...

(data decoded once into a uint8 tensor kept on the GPU; augmentation runs on the GPU batch). Writes
``OUT/<run>/`` (the whole run folder: stage1/, stage2/, metrics.json, logs) and ``OUT/gpu_results.json``
(device, per-run wall time, stage-1/2 top-1, many/medium/few) and prints the latter.

    # on the GPU machine, from the repository root, with the CIFAR-10 parquet copied to data/cifar10:
    python bench/gpu/reproduce_cifar10_lt.py --data data/cifar10 --out "$OUT"
    python bench/gpu/reproduce_cifar10_lt.py --data data/cifar10 --out "$OUT" --group issue22
    python bench/gpu/reproduce_cifar10_lt.py --data data/cifar10 --out "$OUT" --runs ccsam_strong ce_strong --seeds 43
    # CPU dry run (the test does this): a tiny schedule
    python bench/gpu/reproduce_cifar10_lt.py --data ../shared/data/cifar10 --stage1-epochs 1 --stage2-epochs 1

A run whose folder already has ``metrics.json`` is not run again; one with ``recipe.yaml`` but no metrics is
resumed (``--resume``): a session cut off mid-run continues where its last checkpoint left it. Folders are
``OUT/<run>`` for seed 42 and ``OUT/<run>-s<seed>`` for other seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from compare import GROUPS, RUNS  # noqa: E402  (bench/compare.py: run name -> recipe overrides)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _launch import collect, device, launch  # noqa: E402  (what the GPU scripts share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("CCSAM_DATA", "../shared/data")) / "cifar10")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu")))
    ap.add_argument("--runs", "--methods", nargs="+", default=None, choices=list(RUNS), dest="methods",
                    help="run names of bench/compare.py (default: the --group's)")
    ap.add_argument("--group", default="paper", choices=list(GROUPS), help="a run group of bench/compare.py")
    ap.add_argument("--seeds", nargs="+", type=int, default=[42], help="one run per name and seed")
    ap.add_argument("--stage1-epochs", type=int, default=200)
    ap.add_argument("--stage2-epochs", type=int, default=30)
    ap.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    ap.add_argument("--set", nargs="*", default=[], dest="extra", metavar="KEY=VALUE", help="more recipe overrides")
    args = ap.parse_args()
    names = args.methods or GROUPS[args.group]
    if not (args.data / "train.parquet").exists():
        sys.exit(f"error: no train.parquet in {args.data}; pass --data DIR holding CIFAR-10 train/test parquet")
    args.out.mkdir(parents=True, exist_ok=True)
    s1, s2 = args.stage1_epochs, args.stage2_epochs
    schedule = [f"stage1.epochs={s1}", f"stage2.epochs={s2}"]
    if s1 < 200:  # keep the paper's milestone positions (160/180 of 200) on a shorter schedule
        schedule += [f"stage1.milestones=[{int(s1 * 0.8)}, {int(s1 * 0.9)}]", f"stage1.warmup_epochs={min(5, s1 // 2)}"]
    common = [
        f"data.source={args.data.resolve()}",
        f"train.mixed_precision={args.precision}",
        "model.channels_last=true",
        "data.device_resident=true",
        "eval.batch_size=1000",
        f"train.checkpoint_every={max(1, s1 // 4)}",
        *schedule,
        *args.extra,
    ]
    commands, t0 = {}, time.time()
    for method, seed in [(n, s) for s in args.seeds for n in names]:
        run = method if seed == 42 else f"{method}-s{seed}"
        folder = args.out / run
        if (folder / "metrics.json").exists():
            commands[run] = None  # finished earlier
        elif (folder / "recipe.yaml").exists():  # an interrupted run: continue from its newest checkpoint
            commands[run] = ["--resume", str(folder)]
        else:
            commands[run] = ["--recipe", "cifar10_lt", "--output-dir", str(folder),
                             "--set", *common, *RUNS[method], f"seed={seed}"]  # fmt: skip
    procs = launch(args.out, commands, mode="a")
    result = {
        "device": device(),
        "protocol": f"cifar10_lt IR 100, resnet32_cifar, {s1} + {s2} epochs",
        "overrides": common,
        "runs": collect(args.out, procs),
    }
    result["total_wall_s"] = round(time.time() - t0, 1)
    (args.out / "gpu_results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    sys.exit(max(r["returncode"] for r in result["runs"].values()))


if __name__ == "__main__":
    main()
