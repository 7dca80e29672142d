"""CC-SAM against the baselines on one recipe: run (or resume) every method x seed, then tabulate and plot.

Each run is ``python recipes/train.py --recipe RECIPE --output-dir OUT/<run>-s<seed> --set <overrides>``,
launched as a child process whose wall time and peak resident memory (polled with psutil) are written
to ``timing.json`` beside its ``metrics.json``. A run with ``metrics.json`` is not run again; a run
folder without it is resumed (``--resume``); a run another live process is training (another
``compare.py`` worker on the same ``--out``, e.g. with the run list in another order) is skipped.
``--report`` only aggregates what exists.

Writes ``OUT/results.json`` (every run and the mean/std over seeds), ``OUT/results.md`` (the tables of
docs/RESULTS.md), ``OUT/top1_vs_scale.png`` and ``OUT/per_class_ce_vs_ccsam.png``; prints the JSON.

    python bench/compare.py --recipe cifar10_lt_cpu --runs ce ccsam --seeds 42 43 44 --jobs 2 --threads 1
    python bench/compare.py --report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from ccsam_zoo.training.run_log import stage_seconds

REPO = Path(__file__).resolve().parents[1]

STRONG = [
    "data.autoaugment=cifar10",
    "data.cutout=16",
    "data.val_per_class=100",
    "data.val_rule=left_out",
    "eval.every=5",
    "eval.select_on=val",
    "stage2.init_from=best",
]
PAPER_STAGE2 = ["stage2.method.name=ccsam_adv", "stage2.method.preset=paper"]
RADIUS = 0.1  # ccsam_block's preset radius; the sweep picks it on the validation split
SWEEP = (0.05, 0.1, 0.2, 0.5, 0.8)

# name -> --set overrides on top of the recipe (paper Table 2 ablations: ccsam_dir, ccsam_mag; the s sweep:
# ccsam_s<s>, with ccsam itself the s = 1e-6 point of the official preset)
RUNS: dict[str, list[str]] = {
    "ce": ["method=ce"],
    "mixup_crt": ["method=mixup_crt"],
    "sam": ["method=sam"],
    "balanced_softmax": ["method=balanced_softmax"],
    "ldam_drw": ["method=ldam_drw"],
    "ccsam": ["method=ccsam"],
    "ccsam_rec": ["method=ccsam_rec"],
    "ccsam_paper": ["method=ccsam_paper"],
    "ccsam_dir": ["method=ccsam_dir"],
    "ccsam_mag": ["method=ccsam_mag"],
    **{f"ccsam_s{s:g}": ["method=ccsam", f"stage1.method.scale={s:g}"] for s in (1e-3, 1e-2, 1e-1, 1.0)},
    # issue 22 (on top of cifar10_lt): the strong augmentation of the authors' README (AutoAugment CIFAR-10 policy
    # + Cutout 16), selection on a validation split of left-over training images (never the test split), stage 2
    # from the validation-best stage-1 epoch (the authors' script does this on the test split)
    "ce_strong": ["method=ce", *STRONG],
    "mixup_crt_strong": ["method=mixup_crt", *STRONG],
    # authors' stage 1 with mixup off (their answer to zzpustc/CC-SAM issue 4) + the paper's stage 2
    "ccsam_strong": ["method=ccsam", "stage1.method.mixup_alpha=0.0", "stage2.method.preset=paper", *STRONG],
    # a perturbation that acts, and plain SAM at the same radius with the same (paper) stage 2
    "ccsam_block_strong": ["method=ccsam_block", f"stage1.method.scale={RADIUS:g}", *STRONG],
    "sam_strong": ["method=sam", f"stage1.method.rho={RADIUS:g}", *PAPER_STAGE2, *STRONG],
    # issue 24: LogitNorm (Wei et al. 2022, tau 0.04 = their CIFAR-10 value) through both stages from the first
    # epoch, against the same recipe without it (`ccsam`)
    "ccsam_logitnorm": ["method=ccsam", "stage1.method.logit_norm_tau=0.04", "stage2.method.logit_norm_tau=0.04"],
    # ... and outlier exposure on patch-shuffled training images (Hendrycks et al.'s uniform-target term, weight 0.5)
    "ccsam_oe": ["method=ccsam", "stage1.method.oe_weight=0.5"],
    # the radius sweep, read on the validation split (results.json: stage1_best / stage2_best val_bacc)
    **{f"ccsam_block_r{r:g}": ["method=ccsam_block", f"stage1.method.scale={r:g}", *STRONG] for r in SWEEP},
    **{f"sam_r{r:g}": ["method=sam", f"stage1.method.rho={r:g}", *PAPER_STAGE2, *STRONG] for r in SWEEP},
}
# run groups (bench/gpu/reproduce_cifar10_lt.py --group)
GROUPS: dict[str, list[str]] = {
    "paper": ["ce", "mixup_crt", "ccsam", "ccsam_rec"],
    "issue22": ["ce_strong", "mixup_crt_strong", "ccsam_strong", "ccsam_block_strong", "sam_strong"],
    "issue24": ["ccsam_logitnorm", "ccsam_oe", "ccsam"],
    "issue22_sweep": [*(f"ccsam_block_r{r:g}" for r in SWEEP), *(f"sam_r{r:g}" for r in SWEEP)],
}


def _busy(folder: Path) -> bool:
    """A live process (another compare.py worker's run) trains into ``folder``: leave it to that worker."""
    target = str(folder)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if proc.info["pid"] != os.getpid() and "recipes/train.py" in " ".join(cmd) and target in cmd:
            return True
    return False


def _run_one(recipe: str, name: str, seed: int, out: Path, threads: int, extra: list[str]) -> subprocess.Popen | None:
    folder = out / f"{name}-s{seed}"
    if (folder / "metrics.json").exists() or _busy(folder):
        return None
    cmd = [sys.executable, str(REPO / "recipes/train.py")]
    resumed = (folder / "recipe.yaml").exists()
    if resumed:
        cmd += ["--resume", str(folder)]
    else:
        cmd += ["--recipe", recipe, "--output-dir", str(folder), "--set", *RUNS[name], *extra, f"seed={seed}"]
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # beside the run folder: a new run needs an empty (or missing) --output-dir
    log = open(out / f"{folder.name}.stdout.log", "a")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.folder, proc.t0, proc.peak, proc.logfile = folder, time.time(), 0, log  # type: ignore[attr-defined]
    proc.resumed = resumed  # type: ignore[attr-defined]
    return proc


def _last_line(log: Path, tail: int = 4096) -> str:
    """The last line of a run's output that is not a progress bar: the error or exception of a failed run."""
    with open(log, "rb") as fh:
        fh.seek(max(0, log.stat().st_size - tail))
        lines = fh.read().decode("utf-8", "replace").replace("\r", "\n").splitlines()
    text = [ln.strip() for ln in lines if ln.strip() and not re.search(r"it/s\]|s/it\]|\d+%\|", ln)]
    return text[-1][:300] if text else "no output"


def _poll(procs: list[subprocess.Popen]) -> list[subprocess.Popen]:
    alive = []
    for p in procs:
        try:
            p.peak = max(p.peak, psutil.Process(p.pid).memory_info().rss)  # type: ignore[attr-defined]
        except psutil.Error:
            pass
        if p.poll() is None:
            alive.append(p)
            continue
        p.logfile.close()  # type: ignore[attr-defined]
        timing = {
            "wall_s": round(time.time() - p.t0, 1),
            "peak_rss_mb": round(p.peak / 2**20, 1),  # type: ignore[attr-defined]
            "returncode": p.returncode,
            "resumed": p.resumed,  # type: ignore[attr-defined]  # wall_s then covers the resumed part only
        }
        (p.folder / "timing.json").write_text(json.dumps(timing))  # type: ignore[attr-defined]
        line = f"{p.folder.name}: exit {p.returncode}, {timing['wall_s']} s"  # type: ignore[attr-defined]
        if p.returncode:  # a failed run says why, not only that it stopped
            line += f": FAILED, {_last_line(Path(p.logfile.name))} (whole output: {p.logfile.name})"  # type: ignore[attr-defined]
        print(line, file=sys.stderr)
    return alive


def run_all(
    recipe: str, names: list[str], seeds: list[int], out: Path, jobs: int, threads: int, extra: list[str]
) -> None:
    """Run the missing (name, seed) pairs, ``jobs`` at a time."""
    todo = [(n, s) for s in seeds for n in names]
    procs: list[subprocess.Popen] = []
    while todo or procs:
        while todo and len(procs) < jobs:
            p = _run_one(recipe, *todo.pop(0), out, threads, extra)
            if p is not None:
                procs.append(p)
        time.sleep(0.5)
        procs = _poll(procs)


def _mean_std(values: list[float]) -> dict[str, float | int]:
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def report(out: Path) -> dict:
    """Collect every finished run under ``out`` into results.json / results.md and the plots."""
    runs = {}
    for folder in sorted(out.glob("*-s*")):
        if not (folder / "metrics.json").exists():
            continue
        name, seed = folder.name.rsplit("-s", 1)
        metrics = json.loads((folder / "metrics.json").read_text())
        timing = json.loads((folder / "timing.json").read_text()) if (folder / "timing.json").exists() else {}
        stages, _ = stage_seconds(folder)  # summed epoch times: right across --resume, unlike the wall time
        timing = {**timing, "train_s": {k: round(v, 1) for k, v in stages.items()}}
        runs.setdefault(name, {})[seed] = {"metrics": metrics, "timing": timing}
    summary = {}
    for name, by_seed in runs.items():
        row = {}
        for stage in ("stage1", "stage2", "stage1_best", "stage2_best"):  # *_best: eval.select_on=val
            for key in ("top1", "many", "medium", "few", "val_bacc"):
                vals = [
                    r["metrics"][stage][key]
                    for r in by_seed.values()
                    if stage in r["metrics"] and r["metrics"][stage].get(key) is not None
                ]
                if vals:
                    row[f"{stage}.{key}"] = _mean_std(vals)
        fresh = [r["timing"] for r in by_seed.values() if not r["timing"].get("resumed")]
        walls = [t["wall_s"] for t in fresh if "wall_s" in t]
        peaks = [r["timing"]["peak_rss_mb"] for r in by_seed.values() if "peak_rss_mb" in r["timing"]]
        row["wall_s"] = _mean_std(walls) if walls else None
        trains = [sum(r["timing"]["train_s"].values()) for r in by_seed.values() if r["timing"]["train_s"]]
        row["train_s"] = _mean_std(trains) if trains else None
        row["peak_rss_mb"] = max(peaks) if peaks else None
        row["seeds"] = sorted(by_seed)
        summary[name] = row
    result = {"runs": runs, "summary": summary}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "results.md").write_text(_markdown(summary, runs))
    _plots(out, summary, runs)
    return result


def _fmt(cell: dict | None) -> str:
    if not cell:
        return "–"
    return f"{cell['mean']:.2f} ± {cell['std']:.2f}" if cell["n"] > 1 else f"{cell['mean']:.2f}"


def _markdown(summary: dict, runs: dict) -> str:
    lines = [
        "| Method | Seeds | Stage-1 top-1 | Many | Medium | Stage-2 top-1 | Many | Medium | Few | Train (min) "
        "| Wall (min) | Peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        wall = f"{row['wall_s']['mean'] / 60:.1f}" if row["wall_s"] else "–"
        train = f"{row['train_s']['mean'] / 60:.1f}" if row.get("train_s") else "–"
        peak = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "–"
        lines.append(
            f"| {name} | {len(row['seeds'])} | {_fmt(row.get('stage1.top1'))} | {_fmt(row.get('stage1.many'))} | "
            f"{_fmt(row.get('stage1.medium'))} | {_fmt(row.get('stage2.top1'))} | "
            f"{_fmt(row.get('stage2.many'))} | {_fmt(row.get('stage2.medium'))} | {_fmt(row.get('stage2.few'))} | "
            f"{train} | {wall} | {peak} |"
        )
    selected = {n: r for n, r in summary.items() if "stage1_best.top1" in r or "stage2_best.top1" in r}
    if selected:  # eval.select_on=val: the validation-selected epochs beside the last ones (test split)
        lines += ["", "Validation-selected epochs (eval.select_on=val; val = balanced accuracy on the validation "
                  "split, the selection score; top-1 on the test split):", "",
                  "| Method | Stage-1 val | Stage-1 top-1 (last / selected) | Stage-2 val | Stage-2 top-1 (last / "
                  "selected) | Many | Medium | Few |", "|---|---|---|---|---|---|---|---|"]
        for name, row in selected.items():
            lines.append(
                f"| {name} | {_fmt(row.get('stage1_best.val_bacc'))} | {_fmt(row.get('stage1.top1'))} / "
                f"{_fmt(row.get('stage1_best.top1'))} | {_fmt(row.get('stage2_best.val_bacc'))} | "
                f"{_fmt(row.get('stage2.top1'))} / {_fmt(row.get('stage2_best.top1'))} | "
                f"{_fmt(row.get('stage2_best.many'))} | {_fmt(row.get('stage2_best.medium'))} | "
                f"{_fmt(row.get('stage2_best.few'))} |"
            )
    lines += ["", "Per-class stage-2 accuracy (%), mean over the seeds of each method:", ""]
    lines += ["| Method | " + " | ".join(str(c) for c in range(10)) + " |", "|---|" + "---|" * 10]
    for name, by_seed in runs.items():
        stage = "stage2" if all("stage2" in r["metrics"] for r in by_seed.values()) else "stage1"
        per_class = [statistics.mean(v) for v in zip(*(r["metrics"][stage]["per_class"] for r in by_seed.values()))]
        lines.append(f"| {name} | " + " | ".join(f"{a:.1f}" for a in per_class) + " |")
    return "\n".join(lines) + "\n"


def _sweep_scale(name: str) -> float | None:
    """The perturbation scale of a ``ccsam_s<scale>`` sweep run (``ccsam_s0.01`` -> 0.01); None for any other run
    (``ccsam_strong`` included)."""
    m = re.fullmatch(r"ccsam_s(\d[\d.]*(?:e[+-]?\d+)?)", name)
    return float(m.group(1)) if m else None


def _plots(out: Path, summary: dict, runs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = sorted((_sweep_scale(n), n) for n in summary if _sweep_scale(n) is not None)
    if scales and "ccsam" in summary:
        scales = sorted([*scales, (1e-6, "ccsam")])  # the official preset is s = 1e-6
    if scales:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for stage in ("stage1", "stage2"):
            pts = [(s, summary[n][f"{stage}.top1"]["mean"]) for s, n in scales if f"{stage}.top1" in summary[n]]
            ax.plot(*zip(*pts), marker="o", label=stage)
        if "ce" in summary:
            ax.axhline(summary["ce"]["stage2.top1"]["mean"], color="gray", ls="--", label="ce + cRT")
        ax.set(xscale="log", xlabel="perturbation scale s (Eq. 8)", ylabel="test top-1 (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "top1_vs_scale.png", dpi=120)
        plt.close(fig)
    if "ce" in runs and "ccsam" in runs:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for i, name in enumerate(("ce", "ccsam")):
            by_seed = runs[name]
            per_class = [
                statistics.mean(v) for v in zip(*(r["metrics"]["stage2"]["per_class"] for r in by_seed.values()))
            ]
            ax.bar([c + (i - 0.5) * 0.4 for c in range(len(per_class))], per_class, width=0.4, label=name)
        ax.set(xlabel="class (sorted by training count, head to tail)", ylabel="stage-2 test accuracy (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "per_class_ce_vs_ccsam.png", dpi=120)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="cifar10_lt_cpu")
    ap.add_argument("--runs", nargs="+", default=["ce", "ccsam"], choices=list(RUNS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[42])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "compare")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)), help="OMP threads per run")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        dest="extra",
        metavar="KEY=VALUE",
        help="overrides for every run, e.g. train.mixed_precision=bf16 model.channels_last=true",
    )
    ap.add_argument("--report", action="store_true", help="only aggregate the finished runs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        run_all(args.recipe, args.runs, args.seeds, args.out, args.jobs, args.threads, args.extra)
    print(json.dumps(report(args.out)["summary"], indent=1))


if __name__ == "__main__":
    main()
