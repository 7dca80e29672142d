"""What the GPU scripts share: the device line, starting the runs side by side, collecting their results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
METRIC_KEYS = ("top1", "many", "medium", "few", "epoch", "val_bacc")


def device() -> str:
    """The accelerator (or the CPU) the runs train on, with the torch / CUDA versions."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"cpu (torch {torch.__version__}, {os.cpu_count()} cores)"


def launch(out: Path, commands: dict[str, list[str] | None], mode: str = "w") -> dict[str, tuple]:
    """Start ``recipes/train.py ARGS`` for every run at once (logs in ``out/<run>.log``); None: finished earlier."""
    procs = {}
    for run, args in commands.items():
        if args is None:
            procs[run] = (None, None, time.time())
            continue
        log = open(out / f"{run}.log", mode)  # noqa: SIM115 - closed in collect()
        cmd = [sys.executable, str(REPO / "recipes/train.py"), *args]
        procs[run] = (subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT), log, time.time())
    return procs


def collect(out: Path, procs: dict[str, tuple]) -> dict[str, dict[str, Any]]:
    """Wait for every run; its return code, wall time and each stage's metrics (or the log's tail)."""
    runs = {}
    for run, (proc, log, start) in procs.items():
        if proc is None:
            entry: dict[str, Any] = {"returncode": 0, "wall_s": None, "done_before": True}
        else:
            proc.wait()
            log.close()
            entry = {"returncode": proc.returncode, "wall_s": round(time.time() - start, 1)}
        metrics_file = out / run / "metrics.json"
        if metrics_file.exists():  # stage1, stage2 (last epochs), stage*_best (validation-selected)
            for stage, m in json.loads(metrics_file.read_text()).items():
                entry[stage] = {k: m[k] for k in METRIC_KEYS if k in m}
        else:
            entry["log_tail"] = (out / f"{run}.log").read_text()[-2000:]
        runs[run] = entry
    return runs
