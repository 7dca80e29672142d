"""PNG plots of a run: training curves and per-class accuracy against the training count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_run"]


def plot_run(
    output_dir: Path, metrics: dict[str, Any], class_counts: list[int], log: list[dict[str, Any]]
) -> list[Path]:
    """Write ``training_curves.png`` and ``per_class_accuracy.png``; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    epochs = [r for r in log if "loss" in r and "step" not in r]
    if epochs:
        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        offset = 0
        for stage in ("stage1", "stage2"):
            rows = [r for r in epochs if r.get("stage") == stage]
            if not rows:
                continue
            x = [offset + r["epoch"] + 1 for r in rows]
            ax[0].plot(x, [r["loss"] for r in rows], label=stage)
            ax[1].plot(x, [r["lr"] for r in rows], label=stage)
            tested = [(offset + r["epoch"] + 1, r["test_top1"]) for r in rows if "test_top1" in r]
            if stage in metrics:
                tested.append((offset + len(rows), metrics[stage]["top1"]))
            if tested:
                twin = ax[0].twinx()
                twin.plot(*zip(*tested), "o--", color="gray", label=f"{stage} test top-1")
                twin.set_ylabel("test top-1 (%)")
            offset = x[-1]
        ax[0].set(xlabel="epoch", ylabel="training loss", title="loss")
        ax[1].set(xlabel="epoch", ylabel="learning rate", title="learning rate")
        ax[0].legend(loc="upper center")
        fig.tight_layout()
        path = output_dir / "training_curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    stages = [s for s in ("stage1", "stage2") if s in metrics and metrics[s].get("per_class")]
    if stages:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        order = sorted(range(len(class_counts)), key=lambda c: -class_counts[c])
        width = 0.8 / len(stages)
        for i, stage in enumerate(stages):
            acc = metrics[stage]["per_class"]
            ax.bar([j + i * width for j in range(len(order))], [acc[c] for c in order], width, label=stage)
        ax.set_xticks(range(len(order))[:: max(1, len(order) // 20)])
        ax.set(xlabel="classes by training count (head to tail)", ylabel="test accuracy (%)")
        counts = ax.twinx()
        counts.plot(range(len(order)), [class_counts[c] for c in order], "k.-", label="training images")
        counts.set_yscale("log")
        counts.set_ylabel("training images")
        ax.legend(loc="lower left")
        fig.tight_layout()
        path = output_dir / "per_class_accuracy.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
