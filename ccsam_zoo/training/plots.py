"""PNG plots of a run: training curves and per-class accuracy against the training count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .run_log import epochs_from_one

__all__ = ["plot_run"]

_STAGES = ("stage1", "stage2")
_LABEL = {"stage1": "stage 1", "stage2": "stage 2"}
_COLOR = {"stage1": "tab:blue", "stage2": "tab:orange"}


def plot_run(
    output_dir: Path,
    metrics: dict[str, Any],
    class_counts: list[int],
    log: list[dict[str, Any]],
    *,
    class_names: list[str] | None = None,
    shot_groups: list[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """Write ``training_curves.png`` and ``per_class_accuracy.png``; returns the paths written.

    ``log``: the epoch records of ``log.jsonl``; ``metrics``: ``{"stage1": {...}, "stage2": {...}}`` as in
    ``metrics.json``. ``class_names`` label the classes (default: their indices), ``shot_groups`` shade the
    many / medium / few classes, ``title`` names the run.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    epochs = [r for r in log if "loss" in r and "step" not in r]
    if epochs:
        fig = _training_curves(plt, epochs, metrics, title)
        path = Path(output_dir) / "training_curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    stages = [s for s in _STAGES if s in metrics and metrics[s].get("per_class")]
    if stages:
        names = class_names or [str(c) for c in range(len(class_counts))]
        fig = _per_class(plt, metrics, stages, class_counts, names, shot_groups, title)
        path = Path(output_dir) / "per_class_accuracy.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _training_curves(plt, epochs: list[dict[str, Any]], metrics: dict[str, Any], title: str | None):
    """Three panels over one epoch axis: test top-1 (one axis, labelled markers), training loss, lr."""
    from matplotlib.ticker import MaxNLocator

    fig, (acc, loss, lr) = plt.subplots(3, 1, figsize=(8, 7.5), sharex=True, height_ratios=(1.2, 1, 0.8))
    offset, bounds, lrs = 0, [], []
    first = 0 if epochs_from_one(epochs) else 1  # x = the epoch number, from 1 (older logs counted from 0)
    for stage in _STAGES:
        rows = sorted((r for r in epochs if r.get("stage") == stage), key=lambda r: r["epoch"])
        if not rows:
            continue
        x = [offset + r["epoch"] + first for r in rows]
        style = dict(color=_COLOR[stage], label=_LABEL[stage])
        loss.plot(x, [r["loss"] for r in rows], ".-" if len(rows) < 40 else "-", **style)
        lr.plot(x, [r["lr"] for r in rows], drawstyle="steps-mid", **style)
        lrs += [r["lr"] for r in rows if r["lr"] > 0]
        tested = [(offset + r["epoch"] + first, r["test_top1"]) for r in rows if "test_top1" in r]
        final = metrics.get(stage, {}).get("top1")
        if final is not None:
            tested.append((x[-1], final))
        if tested:
            acc.plot(*zip(*tested), "o-" if len(tested) > 1 else "o", **style)
        if final is not None:
            below = stage == "stage1" and "stage2" in metrics  # keep the two labels apart
            acc.annotate(
                f"{_LABEL[stage]}: {final:.1f}%",
                (x[-1], final),
                textcoords="offset points",
                xytext=(-6, -14 if below else 8),
                ha="right",
                color=_COLOR[stage],
                fontsize=9,
                fontweight="bold",
            )
        bounds.append(offset)
        offset = x[-1]
    for ax in (acc, loss, lr):
        ax.grid(alpha=0.3)
        for b in bounds[1:]:
            ax.axvline(b + 0.5, color="gray", linestyle=":", linewidth=1)
    acc.set_ylabel("test top-1 (%)")
    top = max([v for line in acc.get_lines() for v in line.get_ydata()] or [1.0])
    acc.set_ylim(0, min(100, max(10.0, top * 1.25)))
    acc.set_title("test accuracy" + ("" if any("test_top1" in r for r in epochs) else " (end of each stage)"))
    acc.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    loss.set_ylabel("training loss")
    loss.set_title("training loss")
    lr.set_ylabel("learning rate")
    lr.set_title("learning rate")
    if lrs and max(lrs) / min(lrs) > 20:
        lr.set_yscale("log")
    lr.set_xlabel("epoch (stage 2 continues after stage 1)" if len(bounds) > 1 else "epoch")
    lr.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _per_class(plt, metrics, stages, class_counts, names, shot_groups, title):
    """Bars of per-class test accuracy per stage, classes from head to tail, labelled ``name (n)``."""
    num = len(class_counts)
    order = sorted(range(num), key=lambda c: (-class_counts[c], c))
    width = 0.8 / len(stages)
    fig, ax = plt.subplots(figsize=(min(max(7.0, 0.5 * num + 3), 16), 4.8))
    for i, stage in enumerate(stages):
        acc = metrics[stage]["per_class"]
        shift = (i - (len(stages) - 1) / 2) * width
        top1 = metrics[stage].get("top1")
        label = f"{_LABEL[stage]}" + (f" (top-1 {top1:.1f}%)" if top1 is not None else "")
        values = [acc[c] if acc[c] is not None else 0.0 for c in order]
        ax.bar([j + shift for j in range(num)], values, width, label=label, color=_COLOR[stage])
    if shot_groups:
        _shade_groups(ax, [shot_groups[c] for c in order])
    step = 1 if num <= 40 else -(-num // 30)
    ticks = list(range(0, num, step))
    ax.set_xticks(ticks)
    ax.set_xticklabels(
        [f"{names[order[j]]} ({class_counts[order[j]]})" for j in ticks], rotation=45 if num > 6 else 0, ha="right"
        if num > 6 else "center", fontsize=9 if num <= 20 else 7
    )  # fmt: skip
    ax.set_xlim(-0.6, num - 0.4)
    ax.set_ylim(0, 105)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlabel("class (training images), from head to tail" + ("" if step == 1 else f"; every {step}th labelled"))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title("per-class test accuracy" + (f": {title}" if title else ""))
    fig.tight_layout()
    return fig


def _shade_groups(ax, groups: list[str]) -> None:
    """Light background spans for the many / medium / few classes, named at the top."""
    shades = {"many": "#f2f2f2", "medium": "#e4e4e4", "few": "#d6d6d6"}
    start = 0
    for j in range(1, len(groups) + 1):
        if j == len(groups) or groups[j] != groups[start]:
            ax.axvspan(start - 0.5, j - 0.5, color=shades.get(groups[start], "white"), zorder=0)
            ax.text((start + j - 1) / 2, 102, groups[start], ha="center", va="center", fontsize=8, color="dimgray")
            start = j
