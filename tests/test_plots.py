"""The run's plots and metrics.json are readable: one accuracy axis with labelled markers, loss and lr
panels, class names with training counts under bars on their ticks, legends outside the data, rounding."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ccsam_zoo.training.plots import _per_class, _training_curves, plot_run  # noqa: E402
from ccsam_zoo.training.run_log import readable_metrics  # noqa: E402

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COUNTS = [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
METRICS = {
    "stage1": {"top1": 10.1, "many": 25.25, "medium": 0.0, "few": None, "per_class": [92.0, 9.0] + [0.0] * 8},
    "stage2": {"top1": 13.7, "many": 34.25, "medium": 0.0, "few": None, "per_class": [61.0, 6.0, 70.0] + [0.0] * 7},
}


def _log(every: int = 0) -> list[dict]:
    rows = []
    for e in range(30):
        row = {"stage": "stage1", "epoch": e, "lr": 0.1 if e < 24 else 0.001, "loss": 3.0 - 0.05 * e}
        if every and (e + 1) % every == 0 and e + 1 < 30:
            row["test_top1"] = 10.0 + e
        rows.append(row)
    return rows + [{"stage": "stage2", "epoch": e, "lr": 0.01, "loss": 1.5 - 0.1 * e} for e in range(5)]


def _overlaps(labels) -> bool:
    boxes = sorted((t.get_window_extent() for t in labels if t.get_visible() and t.get_text()), key=lambda b: b.y0)
    return any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))


def test_training_curves_one_accuracy_axis_with_labelled_markers():
    fig = _training_curves(plt, _log(), METRICS, "quickstart, method=ccsam")
    fig.canvas.draw()
    assert len(fig.axes) == 3  # accuracy, loss, lr: no twin axes
    acc, loss, lr = fig.axes
    assert [a.get_title() for a in fig.axes] == ["test accuracy (end of each stage)", "training loss", "learning rate"]
    assert sorted(t.get_text() for t in acc.texts) == ["stage 1: 10.1%", "stage 2: 13.7%"]
    assert [list(line.get_xdata()) for line in acc.get_lines()[:2]] == [[30], [35]]  # where each stage ends
    for ax in fig.axes:
        assert not _overlaps(ax.get_yticklabels()), ax.get_title()
    assert all(float(x).is_integer() for x in lr.get_xticks())  # whole epochs
    assert lr.get_yscale() == "log"  # 0.1 .. 0.001
    assert acc.get_legend().get_window_extent().x0 >= acc.get_window_extent().x1  # legend outside the data
    plt.close(fig)


def test_training_curves_per_epoch_accuracy_when_evaluated_during_training():
    fig = _training_curves(plt, _log(every=5), METRICS, None)
    stage1 = fig.axes[0].get_lines()[0]
    assert list(stage1.get_xdata()) == [5, 10, 15, 20, 25, 30] and stage1.get_ydata()[-1] == 10.1
    assert fig.axes[0].get_title() == "test accuracy"
    plt.close(fig)


def test_per_class_names_counts_bars_on_ticks_legend_outside_title():
    groups = ["many"] * 4 + ["medium"] * 3 + ["few"] * 3
    fig = _per_class(plt, METRICS, ["stage1", "stage2"], COUNTS, NAMES, groups, "quickstart, method=ccsam")
    fig.canvas.draw()
    ax = fig.axes[0]
    assert len(fig.axes) == 1
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{n} ({c})" for n, c in zip(NAMES, COUNTS)]
    centres = [b.get_x() + b.get_width() / 2 for b in ax.patches if b.get_height() >= 0 and b.get_width() < 1]
    stage1, stage2 = centres[:10], centres[10:20]
    assert [round((a + b) / 2, 6) for a, b in zip(stage1, stage2)] == list(ax.get_xticks())  # pairs on their tick
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["stage 1 (top-1 10.1%)", "stage 2 (top-1 13.7%)"]
    assert ax.get_title() == "per-class test accuracy: quickstart, method=ccsam"
    assert {t.get_text() for t in ax.texts} == {"many", "medium", "few"}
    plt.close(fig)


def test_plot_run_writes_both_pngs(tmp_path):
    paths = plot_run(tmp_path, METRICS, COUNTS, _log(), class_names=NAMES, title="t")
    assert [p.name for p in paths] == ["training_curves.png", "per_class_accuracy.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_metrics_json_rounded_with_class_names():
    raw = {"stage1": {**METRICS["stage1"], "top1": 10.123456789, "per_class": [1 / 3] * 10, "split": "test"}}
    out = readable_metrics(raw, NAMES)
    m = out["stage1"]
    assert m["top1"] == 10.1235 and m["few"] is None and m["split"] == "test"
    assert m["per_class"] == [0.3333] * 10  # the list stays for code that reads it
    assert m["per_class_by_name"] == dict.fromkeys(NAMES, 0.3333)
    assert json.loads(json.dumps(out)) == out
    dup = readable_metrics({"s": {"per_class": [1.0, 2.0]}}, ["cat", "cat"])["s"]["per_class_by_name"]
    assert dup == {"cat": 1.0, "cat (1)": 2.0}


@pytest.mark.parametrize("num", [300])
def test_per_class_many_classes_labels_a_readable_subset(num):
    counts = sorted(range(5, 5 + num), reverse=True)
    metrics = {"stage2": {"top1": 50.0, "per_class": [50.0] * num}}
    fig = _per_class(plt, metrics, ["stage2"], counts, [f"c{i}" for i in range(num)], None, None)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert 20 <= len(labels) <= 40 and labels[0] == f"c0 ({counts[0]})"
    plt.close(fig)
