"""Helpers for the training tests: a small real CIFAR-10 slice and a tiny recipe."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def write_cifar10_slice(cifar10_dir: Path, out: Path, train_per_class: int, test_per_class: int) -> Path:
    """Copy the first N rows of every class of the real CIFAR-10 parquet into ``out`` (same schema)."""
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        table = pq.read_table(cifar10_dir / f"{split}.parquet")
        labels = np.asarray(table.column("label"))
        keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c in range(10)])
        pq.write_table(table.take(keep), out / f"{split}.parquet")
    return out


def tiny_overrides(source: Path, method: str = "ccsam", **extra: object) -> list[str]:
    """A recipe small enough for a test: ResNet-20, 2 + 1 epochs on an IR-10 slice."""
    sets = {
        "data.name": "cifar10_lt",
        "data.source": str(source),
        "data.imbalance_ratio": 10,
        "data.val_per_class": 5,
        "model.arch": "resnet20_cifar",
        "method": method,
        "stage1.epochs": 2,
        "stage1.batch_size": 32,
        "stage1.warmup_epochs": 1,
        "stage1.milestones": "[1]",
        "stage2.epochs": 1,
        "stage2.batch_size": 32,
        "eval.batch_size": 200,
        "train.checkpoint_every": 1,
        "train.log_every": 5,
    }
    sets.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in sets.items()]


def start_run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """Start a command with one OpenMP thread, so that two run side by side on a 2-core machine."""
    log = tempfile.TemporaryFile()  # not a pipe: a long stderr (progress bars) must not block the child
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(args, cwd=cwd, env=full_env, stdout=subprocess.DEVNULL, stderr=log)
    proc.stderr_file = log  # type: ignore[attr-defined]
    return proc


def wait_ok(proc: subprocess.Popen, timeout: float = 900) -> str:
    """Wait for a ``start_run`` command; assert it succeeded (its stderr's end in the message). Returns stderr."""
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.stderr_file.seek(0)
    err = proc.stderr_file.read().decode(errors="replace")
    proc.stderr_file.close()
    assert proc.returncode == 0, err[-3000:]
    return err
