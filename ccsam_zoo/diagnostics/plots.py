"""Plots: sharpness diagnostics, open-set score histograms (matplotlib's object API: no pyplot, no display)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

__all__ = ["plot_curves", "plot_comparison", "plot_landscape_2d", "plot_score_histograms"]

_COLORS = {"overall": "black", "many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
_TITLES = {"global": "global", "local": "local (perturbative)"}


def plot_curves(result: Mapping[str, Any], path: str | Path, *, dpi: int = 120) -> Path:
    """One panel per range, one curve per group (mean over directions, +-1 std band); returns ``path``."""
    curves = result["curves"]
    fig = Figure(figsize=(5.0 * len(curves), 4.0), layout="constrained")
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    cfg = result.get("config", {})
    for ax, (name, curve) in zip(axes, curves.items()):
        x = curve["relative_norms"]
        for g, mean in curve["mean"].items():
            std = curve["std"][g]
            color = _COLORS.get(g)
            ax.plot(x, mean, marker="o", ms=3, color=color, label=g, lw=2.0 if g == "overall" else 1.5)
            lo = [m - s for m, s in zip(mean, std)]
            hi = [m + s for m, s in zip(mean, std)]
            ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
        ax.set_xlabel(r"$\|\epsilon\|_2 \,/\, \|\theta\|_2$")
        ax.set_ylabel("loss")
        ax.set_title(f"{_TITLES.get(name, name)} ({cfg.get('num_directions', '?')} directions)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"loss vs. relative noise norm, params={cfg.get('params', '?')}")
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def plot_comparison(
    results: Mapping[str, Mapping[str, Any]], path: str | Path, *, curve: str = "local", dpi: int = 120
) -> Path:
    """Several ``loss_curves`` results side by side: loss increase ``L(r) - L(0)`` against r.

    ``results`` maps a label (e.g. "ce, head") to a result; results with the same ``config["params"]`` share
    a panel; colour = shot group, line style = label. Returns ``path``.
    """
    panels: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for label, result in results.items():
        if curve not in result.get("curves", {}):
            raise ValueError(f"result {label!r} has no {curve!r} curve (has {sorted(result.get('curves', {}))})")
        panels.setdefault(str(result.get("config", {}).get("params", "?")), []).append((label, result))
    styles = ["-", "--", ":", "-."]
    fig = Figure(figsize=(5.0 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (params, members) in zip(axes, panels.items()):
        for i, (label, result) in enumerate(members):
            c = result["curves"][curve]
            for g, mean in c["mean"].items():
                inc = [m - mean[0] for m in mean]
                ax.plot(c["relative_norms"], inc, styles[i % len(styles)], color=_COLORS.get(g), marker="o", ms=2.5,
                        lw=2.0 if g == "overall" else 1.4, label=f"{label}: {g}")  # fmt: skip
        ax.set_xlabel(r"$\|\epsilon\|_2 \,/\, \|\theta\|_2$")
        ax.set_ylabel(r"loss increase $L(\theta+\epsilon) - L(\theta)$")
        ax.set_title(f"params={params}, {_TITLES.get(curve, curve)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("loss increase vs. relative noise norm (mean over random directions)")
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def plot_landscape_2d(result: Mapping[str, Any], path: str | Path, *, dpi: int = 120) -> Path:
    """One heat map (with contour lines) per group over the (alpha, beta) grid; returns ``path``."""
    alphas, betas, losses = result["alphas"], result["betas"], result["losses"]
    n = len(losses)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.0 * cols, 4.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (g, grid) in zip(axes, losses.items()):
        values = [[v if v is not None and math.isfinite(v) else float("nan") for v in row] for row in grid]
        im = ax.pcolormesh(alphas, betas, values, shading="nearest", cmap="viridis")
        if len(alphas) > 1 and len(betas) > 1:
            ax.contour(alphas, betas, values, levels=10, colors="white", linewidths=0.6)
        ax.plot([0], [0], marker="*", color="red", ms=9)
        ax.set_title(g)
        ax.set_xlabel(r"$\alpha$ (direction 1)")
        ax.set_ylabel(r"$\beta$ (direction 2)")
        fig.colorbar(im, ax=ax, label="loss")
    for ax in axes[n:]:
        ax.set_visible(False)
    cfg = result.get("config", {})
    fig.suptitle(f"2D loss landscape, params={cfg.get('params', '?')}")
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def plot_score_histograms(
    scores: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    thresholds: Mapping[str, float] | None = None,
    default: str | None = None,
    dpi: int = 110,
) -> Path:
    """Known vs open score histograms, one panel per score; returns ``path``.

    ``scores[name] = {"known": array, "open": array}`` (higher = more likely known). Axes: score (x), density
    (y). Each ``thresholds[name]`` is a vertical dashed line; the ``default`` score's panel comes first, its title
    says "(default)" and its threshold is a solid red line. The lowest 0.5% of the scores are clipped into the
    first bin (a few extreme values would otherwise squeeze every histogram into one bar).
    """
    import numpy as np

    names = list(scores)
    if default in scores:
        names.remove(default)
        names.insert(0, default)
    if not names:
        raise ValueError("no scores to plot")
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(3.8 * cols, 3.0 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.flat, names):
        known = np.asarray(scores[name]["known"], dtype=float)
        opened = np.asarray(scores[name]["open"], dtype=float)
        both = np.concatenate([known, opened])
        both = both[np.isfinite(both)]
        lo, hi = np.percentile(both, [0.5, 100.0]) if both.size else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 50)
        ax.hist(np.clip(known, lo, None), bins=bins, alpha=0.55, density=True, label=f"known ({known.size})")
        ax.hist(np.clip(opened, lo, None), bins=bins, alpha=0.55, density=True, label=f"open ({opened.size})")
        t = (thresholds or {}).get(name)
        is_default = name == default
        if t is not None:
            ax.axvline(t, color="tab:red" if is_default else "k", lw=1.8 if is_default else 1.0,
                       ls="-" if is_default else "--",
                       label=f"{'default ' if is_default else ''}threshold {t:.4g}")  # fmt: skip
        ax.set_title(f"{name} (default)" if is_default else name, fontsize=9, fontweight="bold" if is_default else None)
        ax.set_xlabel("score (higher = more likely known)", fontsize=8)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("open-set scores, known vs open images (lowest 0.5% clipped into the first bin)", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
