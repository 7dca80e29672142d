"""The GPU reproduction script's CPU path on a tiny schedule (the real run needs the device tool)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.training_utils import write_cifar10_slice


@pytest.mark.slow
def test_gpu_script_dry_run_on_cpu(cifar10_dir, tmp_path):
    data = write_cifar10_slice(cifar10_dir, tmp_path / "cifar10", 60, 10)
    out = tmp_path / "out"
    tiny = ["data.imbalance_ratio=10", "model.arch=resnet20_cifar", "stage1.batch_size=32", "stage2.batch_size=32"]
    proc = subprocess.run(
        [
            sys.executable,
            "bench/gpu/reproduce_cifar10_lt.py",
            "--data",
            str(data),
            "--out",
            str(out),
            "--stage1-epochs",
            "1",
            "--stage2-epochs",
            "1",
            "--set",
            *tiny,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    result = json.loads((out / "gpu_results.json").read_text())
    assert json.loads(proc.stdout) == result
    assert set(result["runs"]) == {"ce", "mixup_crt", "ccsam", "ccsam_rec"} and result["device"].startswith("cpu")
    assert "data.device_resident=true" in result["overrides"] and "model.channels_last=true" in result["overrides"]
    for method, run in result["runs"].items():
        metrics = json.loads((out / method / "metrics.json").read_text())
        assert run["returncode"] == 0 and run["wall_s"] > 0
        assert run["stage2"]["top1"] == metrics["stage2"]["top1"]
        assert "mixed precision bf16" in (out / method / "train.log").read_text()


def test_gpu_script_names_missing_data(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/gpu/reproduce_cifar10_lt.py", "--data", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "no train.parquet" in proc.stderr and "Traceback" not in proc.stderr


def test_every_run_of_the_gpu_groups_is_a_valid_recipe():
    """Each run of bench/compare.py's groups (what the GPU script launches) passes the recipe checks."""
    sys.path.insert(0, str(REPO / "bench"))
    from compare import GROUPS, RUNS

    from ccsam_zoo.training import apply_overrides, load_recipe
    from ccsam_zoo.training.config import check_recipe, resolve_recipe, stage_methods

    strong = {"ce_strong", "mixup_crt_strong", "ccsam_strong", "ccsam_block_strong", "sam_strong"}
    assert set(GROUPS["issue22"]) == strong
    for group in GROUPS.values():
        for name in group:
            recipe = resolve_recipe(apply_overrides(load_recipe("cifar10_lt"), [*RUNS[name], "data.source=x"]))
            check_recipe(recipe)
            if name in GROUPS["issue22"]:
                d = recipe["data"]
                assert (d["autoaugment"], d["cutout"], d["val_rule"]) == ("cifar10", 16, "left_out")
                assert recipe["eval"]["select_on"] == "val" and recipe["stage2"]["init_from"] == "best"
    s1, s2 = stage_methods(apply_overrides(load_recipe("cifar10_lt"), RUNS["ccsam_strong"]))
    assert s1["mixup_alpha"] == 0.0 and s2["preset"] == "paper"
    # the acting CC-SAM and plain SAM: the same radius and the same stage 2
    block = stage_methods(apply_overrides(load_recipe("cifar10_lt"), RUNS["ccsam_block_strong"]))
    sam = stage_methods(apply_overrides(load_recipe("cifar10_lt"), RUNS["sam_strong"]))
    assert block[0]["scale"] == sam[0]["rho"] and block[1] == sam[1] == {"name": "ccsam_adv", "preset": "paper"}


def test_compare_report_reads_sweep_scales_only_from_sweep_runs():
    """bench/compare.py: the scale plot takes ccsam_s0.01 etc.; ccsam_strong is not a sweep run (it crashed the
    report once)."""
    sys.path.insert(0, str(REPO / "bench"))
    from compare import RUNS, _sweep_scale

    sweep = {n: _sweep_scale(n) for n in RUNS if n.startswith("ccsam_s")}
    assert sweep == {"ccsam_s0.001": 0.001, "ccsam_s0.01": 0.01, "ccsam_s0.1": 0.1, "ccsam_s1": 1.0,
                     "ccsam_strong": None}  # fmt: skip
    assert _sweep_scale("ccsam_s1e-06") == 1e-6 and _sweep_scale("ccsam") is None


def test_compare_names_why_a_run_failed(tmp_path):
    """bench/compare.py: a failed run's line carries its last error, not the progress bars written after it."""
    sys.path.insert(0, str(REPO / "bench"))
    from compare import _last_line

    log = tmp_path / "run.stdout.log"
    bars = "".join(f"\rstage1 epoch 1/200:  {p}%|##    | {p}/194 [00:10<01:00,  2.50it/s]" for p in range(0, 30, 3))
    log.write_text(f"Traceback (most recent call last):\n  File x\nRuntimeError: the real cause\n{bars}\n  \n")
    assert _last_line(log) == "RuntimeError: the real cause"
    log.write_text("")
    assert _last_line(log) == "no output"
