"""The full Tiny-ImageNet-LT recipe on one GPU: ResNet-50 (3x3 stride-1 stem, no max-pool) from scratch, 90 + 10
epochs, CC-SAM (the recipe's configuration: official stage-1 preset + paper stage 2) and CE + cRT, then the
OLTR open-set report of both.

Both runs start at once on the same GPU, each with half of the CPU cores as loader workers (the per-image timm
transforms of 64-px JPEGs). Each run is the project's own command::

    python recipes/train.py --recipe tinyimagenet_lt --output-dir OUT/<run> --set data.source=IMAGES:SPLITS
        train.mixed_precision=bf16 model.channels_last=true data.num_workers=N <run overrides>

then ``bench/tinyimagenet_lt_report.py --model OUT/ccsam OUT/ce``. Writes ``OUT/<run>/`` (whole run folders),
``OUT/report.json`` and ``OUT/gpu_results.json`` (device, per-run wall time, stage-1/2 top-1, many/medium/few,
the open-set numbers) and prints the latter.

    # on the GPU machine, from the repository root (the data folder holds images/ and the split files):
    python bench/gpu/reproduce_tinyimagenet_lt.py --data ../shared/data/tinyimagenet_lt --out "$OUT"
    # CPU dry run (the test does this): a tiny schedule on a slice
    python bench/gpu/reproduce_tinyimagenet_lt.py --data SLICE --stage1-epochs 1 --stage2-epochs 1 --precision no \
        --set model.arch=resnet50_64px
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNS = {"ccsam": ["method=ccsam", "stage2.method.preset=paper"], "ce": ["method=ce"]}

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _launch import collect, device, launch  # noqa: E402  (what the GPU scripts share)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_dir = Path(os.environ.get("CCSAM_DATA", "../shared/data")) / "tinyimagenet_lt"
    ap.add_argument("--data", type=Path, default=data_dir, help="folder with images/ and the split files")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs/gpu_tinyimagenet_lt")))
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--stage1-epochs", type=int, default=90)
    ap.add_argument("--stage2-epochs", type=int, default=10)
    ap.add_argument("--precision", default="bf16", choices=["no", "bf16", "fp16"])
    ap.add_argument("--workers", type=int, default=None, help="loader workers per run (default: half the cores - 1)")
    ap.add_argument("--set", nargs="*", default=[], dest="extra", metavar="KEY=VALUE", help="more recipe overrides")
    args = ap.parse_args()
    if not (args.data / "TinyImageNet_LT_train.txt").is_file() or not (args.data / "images").is_dir():
        sys.exit(f"error: {args.data} needs TinyImageNet_LT_*.txt and images/; pass --data FOLDER")
    args.out.mkdir(parents=True, exist_ok=True)
    s1, s2 = args.stage1_epochs, args.stage2_epochs
    workers = args.workers if args.workers is not None else max(0, (os.cpu_count() or 2) // len(args.runs) - 1)
    data = args.data.resolve()
    common = [
        f"data.source={data / 'images'}{os.pathsep}{data}",
        f"train.mixed_precision={args.precision}",
        "model.channels_last=true",
        f"data.num_workers={workers}",
        f"stage1.epochs={s1}",
        f"stage2.epochs={s2}",
        f"stage1.warmup_epochs={min(5, s1 // 2)}",
        f"eval.every={max(1, s1 // 9)}" if s1 >= 9 else "eval.every=0",
        f"train.checkpoint_every={max(1, s1 // 9)}",
        *args.extra,
    ]
    t0 = time.time()
    procs = launch(args.out, {run: ["--recipe", "tinyimagenet_lt", "--output-dir", str(args.out / run), "--overwrite",
                                    "--set", *common, *RUNS[run]] for run in args.runs})  # fmt: skip
    result = {
        "device": device(),
        "protocol": f"tinyimagenet_lt, {s1} + {s2} epochs",
        "overrides": common,
        "runs": collect(args.out, procs),
    }
    finished = [str(args.out / r) for r in args.runs if result["runs"][r]["returncode"] == 0]
    if finished:
        cmd = [sys.executable, str(REPO / "bench/tinyimagenet_lt_report.py"), "--model", *finished,
               "--data-source", str(data), "--output", str(args.out / "report.json")]  # fmt: skip
        rep = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if rep.returncode == 0:
            for row in json.loads(rep.stdout):
                result["runs"][Path(row["model"]).name]["report"] = row
        else:
            result["report_error"] = rep.stderr[-2000:]
    result["total_wall_s"] = round(time.time() - t0, 1)
    (args.out / "gpu_results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    sys.exit(max(r["returncode"] for r in result["runs"].values()))


if __name__ == "__main__":
    main()
