"""Sharpness diagnostics: the CC-SAM paper's loss-landscape evidence (Sec. 2.2.1, Fig. 1) as a tool.

``loss_curves`` perturbs a parameter set (the classifier by default, as in the paper) with random Gaussian
directions scaled so that ``||eps|| / ||theta|| = r`` (``theta`` = the chosen parameters, one global norm
over the set) and records the mean loss per shot group (classes grouped by training count) and overall,
averaged over directions, on a global range (r in 0..1) and a local, perturbative one (r in 0..0.05).
It also gives scalar summaries for tables: the loss increase at fixed r, and the SAM-style worst-case
sharpness ``max_{eps in ball} L(theta + eps) - L(theta)`` (``worst_case_sharpness``; by default the ball bounds
every filter by ``rho`` times its own norm).
``landscape_2d`` (in ``landscape.py``) is the Appendix-E view. ``save_report`` writes JSON + PNG.

The model is left exactly as it was: parameter values (bit for bit), requires_grad flags and train/eval
modes are restored, also on errors. The loss is pluggable: ``loss_fn(logits, labels) -> per-sample
losses`` (default cross-entropy). Example::

    result = loss_curves(model, images, labels, class_counts, transform=bench.batch_transform(train=False))
    save_report(result, "out/")
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..data.counts import SHOT_RULES
from ..jsonio import dumps
from ._core import (
    _STREAM_ASCENT,
    GROUP_NAMES,
    LossFn,
    _Session,
    _Setup,
    global_norm,
    random_direction,
    select_sample,
)

__all__ = ["loss_curves", "worst_case_sharpness", "save_report", "add_arguments", "run"]

DEFAULT_RELATIVE_NORMS: dict[str, tuple[float, ...]] = {
    "global": tuple(round(0.05 * i, 10) for i in range(21)),  # 0, 0.05, ..., 1.0 (Fig. 1a)
    "local": tuple(round(0.005 * i, 10) for i in range(11)),  # 0, 0.005, ..., 0.05 (Fig. 1b)
}


def _norm_key(r: float) -> str:
    return f"{r:g}"


def _ranges(relative_norms: Mapping[str, Sequence[float]] | Sequence[float] | None) -> dict[str, list[float]]:
    if relative_norms is None:
        relative_norms = DEFAULT_RELATIVE_NORMS
    if not isinstance(relative_norms, Mapping):
        relative_norms = {"custom": relative_norms}
    out = {str(k): [float(r) for r in v] for k, v in relative_norms.items()}
    for name, norms in out.items():
        if not norms or any(not math.isfinite(r) or r < 0 for r in norms):
            raise ValueError(f"relative_norms[{name!r}] must be a non-empty list of finite values >= 0, got {norms}")
    return out


RHO_MODES = ("per_filter", "per_tensor", "relative", "absolute")
Radius = float | list[torch.Tensor]


def _block_norms(t: torch.Tensor, per_filter: bool) -> torch.Tensor:
    """Norm of each filter (slice along dim 0) of a >= 2-D tensor, shaped to broadcast; else the tensor's norm."""
    t = t.detach().double()
    if per_filter and t.dim() >= 2:
        return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))
    return t.norm().reshape([1] * t.dim())


def _radius(rho: float, rho_mode: str, theta: Sequence[torch.Tensor]) -> Radius:
    """The ascent ball: one radius (``relative``: rho ||theta||, ``absolute``: rho) or one per tensor / filter."""
    if rho_mode not in RHO_MODES:
        raise ValueError(f"rho_mode must be one of {RHO_MODES}, got {rho_mode!r}")
    if not (math.isfinite(rho) and rho >= 0):
        raise ValueError(f"rho must be a finite number >= 0, got {rho}")
    if rho_mode in ("per_filter", "per_tensor"):  # ||eps_b|| <= rho ||theta_b|| for every block b
        return [rho * _block_norms(t, rho_mode == "per_filter") for t in theta]
    return rho * global_norm(theta) if rho_mode == "relative" else float(rho)


def _total(radius: Radius) -> float:
    """Norm of the largest eps the ball allows (for a ball per block, sqrt(sum_b r_b^2))."""
    return math.sqrt(sum(float(r.pow(2).sum()) for r in radius)) if isinstance(radius, list) else radius


def _step(grad: Sequence[torch.Tensor], radius: Radius) -> list[torch.Tensor] | None:
    """argmax of <grad, eps> on the ball: radius * g / ||g|| (block by block for a ball per block)."""
    if not isinstance(radius, list):
        gnorm = global_norm(grad)
        return None if gnorm <= 1e-30 else [g * (radius / gnorm) for g in grad]
    eps, moved = [], False
    for g, r in zip(grad, radius):
        n = _block_norms(g, per_filter=r.numel() > 1)
        moved = moved or bool((n > 1e-30).any())
        eps.append((g.double() * torch.where(n > 1e-30, r / n.clamp_min(1e-30), 0.0)).to(g.dtype))
    return eps if moved else None


def _ascent(
    session: _Session, index: torch.Tensor, radius: Radius, steps: int, seed: int, bar: Any
) -> tuple[float, list[float]]:
    """Largest loss found on the ball by iterated normalised-gradient steps.

    eps_0 = radius * g(theta) / ||g(theta)|| (SAM's first-order step; a seeded random direction if the
    gradient vanishes), then ``steps`` times eps <- radius * g(theta + eps) / ||g(theta + eps)||: projected
    normalised-gradient ascent with a step large enough to reach the sphere, which is monotone for a
    convex loss and converges to the exact maximiser for quadratics. With a ball per tensor (or filter)
    every block is normalised on its own (the maximiser of the linearised loss on a product of balls).
    Returns (best loss, loss history).
    """
    session.set()
    _, grad = session.loss_and_grad(index)
    bar.update(1)
    history: list[float] = []
    for step in range(steps + 1):
        eps = _step(grad, radius)
        if eps is None:
            if step > 0:
                break
            eps = _step(random_direction(session.theta0, seed, 0, stream=_STREAM_ASCENT), radius)
        session.set([(1.0, eps)])
        loss, grad = session.loss_and_grad(index, grad=step < steps)
        history.append(loss)
        bar.update(1)
    session.set()
    return max(history), history


def loss_curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_counts: Sequence[int] | None = None,
    *,
    params: str | Sequence[str] = "head",
    relative_norms: Mapping[str, Sequence[float]] | Sequence[float] | None = None,
    num_directions: int = 5,
    seed: int = 0,
    batch_size: int = 256,
    groups: Sequence[str] = GROUP_NAMES,
    shot_thresholds: Sequence[int] = (100, 20),
    shot_rule: str = "paper",
    filter_normalize: bool = False,
    loss_fn: LossFn | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_samples: int | None = None,
    sample_seed: int = 0,
    summary_norms: Sequence[float] = (0.01, 0.05),
    rho: float | None = 0.05,
    rho_mode: str = "per_filter",
    ascent_steps: int = 5,
    per_class: bool = False,
    cache_features: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Loss against the relative noise norm ``||eps|| / ||theta||`` per shot group (CC-SAM Fig. 1).

    Args:
        model: maps a batch to logits (or ``(z, logits)``); timm models, ``FeaturesAndLogits`` and
            wrappers with a ``.model`` work with ``params="head"`` / ``"blocks:N"``.
        images, labels: the data (images as the model takes them, or uint8 with ``transform``).
        class_counts: training images per class; defines the groups (many > 100, medium 20..100,
            few < 20 with ``shot_rule="paper"``; ``"authors"``: >= 100 / <= 20). None: overall only.
        params: "head", "all", "blocks:N" (classifier + last N blocks) or parameter names.
        relative_norms: ``{range name: [r, ...]}`` or one list; default ``DEFAULT_RELATIVE_NORMS``
            (global 0..1 in steps of 0.05, local 0..0.05 in steps of 0.005).
        num_directions: random directions (the paper averages 5 seeds); direction k is drawn from a
            ``torch.Generator`` seeded by ``(seed, k)``, so results are deterministic.
        filter_normalize: Li et al. (2018) filter-wise normalised direction, then rescaled globally to r.
        loss_fn: ``(logits, labels) -> per-sample loss``; default cross-entropy.
        transform: applied to each image batch on the device (e.g. ``bench.batch_transform(train=False)``).
        num_samples, sample_seed: evaluate on a fixed class-stratified sample of this size drawn with
            ``sample_seed`` (kept apart from ``seed`` so that changing the directions keeps the data), else all.
        summary_norms: relative norms of the ``summary["loss_increase"]`` table entries.
        rho, rho_mode: worst-case ball (see ``worst_case_sharpness``; default ``||eps_f|| <= 0.05 ||theta_f||``
            for every filter f); None skips the worst-case estimate. With "relative" / "absolute" the reported
            increase also counts the random directions at that radius (they lie in the ball).
        ascent_steps: normalised-gradient steps of the worst-case estimate (see ``worst_case_sharpness``).
        per_class: also return per-class mean curves.
        cache_features: with classifier-only parameters, compute backbone features once.
        progress: tqdm progress bar.

    Returns:
        dict with ``kind="loss_curves"``, ``config``, ``shot_groups`` / ``groups`` (class partition),
        ``group_samples``, ``clean`` (loss per group), ``curves[range] = {relative_norms, mean, std,
        per_direction}`` (std over directions, ddof=1; 0 with one direction) and ``summary`` with
        ``loss_increase[r][group]`` (mean over directions) and ``worst_case`` (largest increase found
        within the radius, from the ascent and from the random directions at that radius).
    """
    if num_directions < 1 or ascent_steps < 0:
        raise ValueError(f"need num_directions >= 1 and ascent_steps >= 0, got {num_directions}, {ascent_steps}")
    ranges = _ranges(relative_norms)
    setup = _Setup(
        model, images, labels, class_counts, params=params, groups=groups, shot_thresholds=shot_thresholds,
        shot_rule=shot_rule, num_samples=num_samples, sample_seed=sample_seed,
    )  # fmt: skip
    with setup.session(
        model, batch_size=batch_size, loss_fn=loss_fn, transform=transform, cache_features=cache_features
    ) as session:
        theta_norm = session.theta_norm
        radius = _radius(rho, rho_mode, session.theta0) if rho is not None else None
        rho_rel = None  # random directions at this norm lie in the ball (not so for per-tensor/filter)
        if radius is not None and theta_norm > 0 and rho_mode in ("relative", "absolute"):
            rho_rel = float(rho) if rho_mode == "relative" else radius / theta_norm
        wanted = {r for norms in ranges.values() for r in norms} | {float(r) for r in summary_norms}
        if rho_rel is not None:
            wanted.add(rho_rel)
        norms = sorted(r for r in wanted if r > 0)
        if norms and theta_norm == 0:
            raise ValueError("the chosen parameters are all zero: ||eps|| / ||theta|| is undefined")
        n_groups = len(setup.group_index)
        total = num_directions * len(norms) + (n_groups * (ascent_steps + 2) if radius else 0)
        with tqdm(total=total, desc="sharpness", disable=not progress, leave=False) as bar:
            counts = session.counts
            session.set()
            clean_sums = session.class_sums()
            table: dict[float, list[torch.Tensor]] = {0.0: [clean_sums] * num_directions}
            for r in norms:
                table[r] = []
            for k in range(num_directions):
                d = random_direction(session.theta0, seed, k, filter_normalize=filter_normalize)
                d_norm = global_norm(d)
                if d_norm == 0:
                    raise ValueError("the direction is zero (filter_normalize with only 1-D parameters?)")
                for r in norms:
                    session.set([(r * theta_norm / d_norm, d)])
                    table[r].append(session.class_sums())
                    bar.update(1)
                session.set()
            ascent: dict[str, float] = {}
            if radius:
                for g, index in setup.group_index.items():
                    ascent[g] = _ascent(session, index, radius, ascent_steps, seed, bar)[0]

    per_dir = {r: [setup.group_losses(s, counts) for s in sums] for r, sums in table.items()}
    clean = setup.group_losses(clean_sums, counts)
    names = list(setup.group_index)

    def stats(r: float) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
        vals = {g: torch.tensor([row[g] for row in per_dir[r]], dtype=torch.float64) for g in names}
        std = {g: float(v.std()) if v.numel() > 1 else 0.0 for g, v in vals.items()}
        return {g: float(v.mean()) for g, v in vals.items()}, std, {g: v.tolist() for g, v in vals.items()}

    curves: dict[str, Any] = {}
    for name, rs in ranges.items():
        rows = [stats(r) for r in rs]
        curves[name] = {
            "relative_norms": rs,
            "mean": {g: [row[0][g] for row in rows] for g in names},
            "std": {g: [row[1][g] for row in rows] for g in names},
            "per_direction": {g: [[row[2][g][k] for row in rows] for k in range(num_directions)] for g in names},
        }
    summary: dict[str, Any] = {
        "loss_increase": {_norm_key(r): {g: stats(float(r))[0][g] - clean[g] for g in names} for r in summary_norms}
    }
    if radius is not None:
        at_rho = stats(rho_rel)[2] if rho_rel is not None else {g: [clean[g]] for g in names}
        summary["worst_case"] = {
            "rho": rho,
            "rho_mode": rho_mode,
            "radius": _total(radius),
            "relative_radius": _total(radius) / theta_norm if theta_norm > 0 else None,
            "random_in_ball": rho_rel is not None,
            "steps": ascent_steps,
            "increase": {g: max([ascent.get(g, clean[g]), *at_rho[g]]) - clean[g] for g in names},
            "ascent_increase": {g: ascent.get(g, clean[g]) - clean[g] for g in names},
        }
    result: dict[str, Any] = {
        "kind": "loss_curves",
        "config": {
            **setup.config,
            "seed": seed,
            "num_directions": num_directions,
            "filter_normalize": filter_normalize,
            "theta_norm": theta_norm,
            "loss": "cross_entropy" if loss_fn is None else getattr(loss_fn, "__name__", type(loss_fn).__name__),
            "features_cached": session.head is not None,
        },
        **setup.info(),
        "clean": clean,
        "curves": curves,
        "summary": summary,
    }
    if per_class:
        result["per_class"] = _per_class(table, ranges, counts)
    return result


def _per_class(table: dict[float, list[torch.Tensor]], ranges: dict[str, list[float]], counts: torch.Tensor) -> dict:
    def mean(r: float) -> list[float | None]:
        avg = torch.stack(table[r]).mean(0) / counts.clamp_min(1)
        return [float(v) if c > 0 else None for v, c in zip(avg, counts)]

    return {"clean": mean(0.0), "curves": {name: [mean(r) for r in rs] for name, rs in ranges.items()}}


def worst_case_sharpness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_counts: Sequence[int] | None = None,
    *,
    params: str | Sequence[str] = "head",
    rho: float = 0.05,
    rho_mode: str = "per_filter",
    steps: int = 5,
    seed: int = 0,
    batch_size: int = 256,
    groups: Sequence[str] = GROUP_NAMES,
    shot_thresholds: Sequence[int] = (100, 20),
    shot_rule: str = "paper",
    loss_fn: LossFn | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    num_samples: int | None = None,
    sample_seed: int = 0,
    cache_features: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """SAM-style sharpness ``max_{eps in ball} L_G(theta + eps) - L_G(theta)`` for each group G and overall.

    The ball: ``rho_mode="per_filter"`` (default) bounds every filter (slice along dim 0 of a >= 2-D
    tensor: a conv filter, a class row of the classifier) and every 1-D tensor by ``rho`` times its own
    norm, the constraint that matches Li et al.'s filter normalisation; ``"per_tensor"`` bounds every
    tensor, ``||eps_t|| <= rho ||theta_t||``; ``"relative"``: one ball ``||eps|| <= rho ||theta||``;
    ``"absolute"``: ``||eps|| <= rho`` (SAM's convention). The coarser balls let the ascent push a
    near-dead filter far beyond its own norm, which the frozen running variance of its BatchNorm channel
    (eval mode) turns into an exploding activation. Over all parameters of a deep network even the
    per-filter ball must be small: on a CIFAR ResNet-32, rho = 0.05 raised the loss from 0.7 to 1e5
    (one global ball: 3e7), while rho = 1e-3 (SAM's rho 0.05 at ``||theta|| ~ 50``) settles within a few
    steps; the summary table warns when the worst case exceeds ten times the clean loss.
    ``radius`` in the result is the norm of the largest eps allowed. Estimated by ``steps``
    normalised-gradient steps projected on the ball (each group maximises its own loss); a lower bound
    on the true maximum for non-convex losses, exact in the limit for quadratic ones. Other arguments as
    in ``loss_curves``.

    Returns:
        dict with ``kind="worst_case"``, ``config``, the class partition, ``clean``, ``loss`` (the largest
        perturbed loss found), ``increase`` (``loss - clean``), ``history`` (loss per ascent iterate), ``radius``.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    setup = _Setup(
        model, images, labels, class_counts, params=params, groups=groups, shot_thresholds=shot_thresholds,
        shot_rule=shot_rule, num_samples=num_samples, sample_seed=sample_seed,
    )  # fmt: skip
    with setup.session(
        model, batch_size=batch_size, loss_fn=loss_fn, transform=transform, cache_features=cache_features
    ) as session:
        radius = _radius(rho, rho_mode, session.theta0)
        clean = setup.group_losses(session.class_sums(), session.counts)
        best: dict[str, float] = {}
        history: dict[str, list[float]] = {}
        total = len(setup.group_index) * (steps + 2)
        with tqdm(total=total, desc="worst-case", disable=not progress, leave=False) as bar:
            for g, index in setup.group_index.items():
                best[g], history[g] = _ascent(session, index, radius, steps, seed, bar)
    return {
        "kind": "worst_case",
        "config": {
            **setup.config,
            "seed": seed,
            "rho": rho,
            "rho_mode": rho_mode,
            "steps": steps,
            "theta_norm": session.theta_norm,
        },
        **setup.info(),
        "radius": _total(radius),
        "clean": clean,
        "loss": best,
        "increase": {g: best[g] - clean[g] for g in best},
        "history": history,
    }


# ---------------------------------------------------------------------------------------------- report


def _summary_table(result: Mapping[str, Any]) -> str:
    summary = result["summary"]
    norms = list(summary["loss_increase"])
    head = ["group", "clean loss", *[f"dL @ {r}" for r in norms]]
    worst = summary.get("worst_case")
    if worst:
        head.append(f"worst-case dL @ rho={worst['rho']:g} ({worst['rho_mode']})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g, clean in result["clean"].items():
        row = [g, f"{clean:.4f}", *[f"{summary['loss_increase'][r][g]:.4f}" for r in norms]]
        if worst:
            row.append(f"{worst['increase'][g]:.4f}")
        lines.append("| " + " | ".join(row) + " |")
    blown = [g for g in result["clean"] if worst and worst["increase"][g] > 10 * max(result["clean"][g], 1.0)]
    if blown:
        lines.append(
            f"\nwarning: the worst-case loss of {', '.join(blown)} exceeds ten times the clean loss: rho = "
            f"{worst['rho']:g} is beyond the perturbative range of these parameters (the number measures an "
            "explosion, not sharpness); use a smaller --rho, e.g. 0.001 with --params all (SAM's rho 0.05 at "
            "||theta|| ~ 50)."
        )
    return "\n".join(lines) + "\n"


def save_report(result: Mapping[str, Any], out_dir: str | Path, *, name: str | None = None) -> dict[str, Path]:
    """Write a result as strict JSON (non-finite numbers become null) plus its plot.

    ``loss_curves`` results: ``{name}.json``, ``{name}.png`` (one panel per range, one curve per group,
    +-1 std band over directions) and ``{name}_summary.md`` (the scalar table); default name "sharpness".
    ``landscape_2d`` results: ``{name}.json`` and ``{name}.png`` (one heat map per group); default
    "landscape_2d". ``worst_case`` results: JSON only. Returns ``{"json": path, "png": path, ...}``.
    """
    from . import plots

    kind = result.get("kind")
    defaults = {"loss_curves": "sharpness", "landscape_2d": "landscape_2d", "worst_case": "worst_case"}
    if kind not in defaults:
        raise ValueError(f"not a diagnostics result (kind={kind!r})")
    name = name or defaults[kind]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json"}
    paths["json"].write_text(dumps(result) + "\n")
    if kind == "loss_curves":
        paths["png"] = plots.plot_curves(result, out / f"{name}.png")
        paths["summary"] = out / f"{name}_summary.md"
        paths["summary"].write_text(_summary_table(result))
    elif kind == "landscape_2d":
        paths["png"] = plots.plot_landscape_2d(result, out / f"{name}.png")
    return paths


# ---------------------------------------------------------------------------------------------- CLI


def _number(low: float, high: float = math.inf, low_open: bool = False) -> Any:
    """An argparse type: a finite float in [low, high] ((low, high] with ``low_open``), else a usage error that
    names the valid range (``nan`` / ``inf`` would give a column of NaN)."""

    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            x = math.nan
        ok = math.isfinite(x) and (x > low if low_open else x >= low) and x <= high
        if not ok:
            span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else (
                f"{'>' if low_open else '>='} {low:g}")  # fmt: skip
            raise argparse.ArgumentTypeError(f"must be a finite number {span}, got {text!r}")
        return x

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ccsam-zoo sharpness``."""
    parser.add_argument("--model", required=True, help="checkpoint folder, Hub repo id or alias (hub.from_pretrained)")
    parser.add_argument("--data", required=True, help="benchmark name (data.build_benchmark), e.g. cifar10_lt")
    parser.add_argument("--source", default=None, help="where the benchmark's files are (build_benchmark source=)")
    parser.add_argument("--imbalance-ratio", type=_number(1.0), default=None, help="imbalance ratio of the benchmark")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="data split (default test)")
    parser.add_argument("--params", default="head", help="head | all | blocks:N (classifier + last N blocks)")
    parser.add_argument("--groups", default=",".join(GROUP_NAMES), help="comma-separated shot groups")
    parser.add_argument("--shot-thresholds", type=int, nargs=2, default=None, metavar=("MANY", "FEW"),
                        help="default: the benchmark's (100 20)")  # fmt: skip
    parser.add_argument("--shot-rule", default="paper", choices=list(SHOT_RULES))
    parser.add_argument("--num-samples", type=int, default=2000, help="class-stratified sample size (0: all)")
    parser.add_argument("--directions", type=int, default=5, help="random directions averaged (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    parser.add_argument("--sample-seed", type=int, default=0, help="seed of the data sample")
    parser.add_argument("--rho", type=_number(0.0), default=0.05, help="worst-case radius (relative, see --rho-mode)")
    parser.add_argument("--rho-mode", default="per_filter", choices=list(RHO_MODES),
                        help="worst-case ball: per_filter ||eps_f|| <= rho ||theta_f|| for every filter f "
                        "(default), per_tensor, relative ||eps|| <= rho ||theta||, absolute ||eps|| <= rho",
                        )  # fmt: skip
    parser.add_argument("--ascent-steps", type=int, default=5)
    parser.add_argument("--filter-norm", action="store_true", help="filter-normalised directions (Li et al.)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="e.g. cpu, cuda (default: where from_pretrained puts it)")
    parser.add_argument("--output", default=None, help="folder for JSON, PNG plots and the summary table")
    parser.add_argument("--card", action="store_true",
                        help="write the report into the local checkpoint folder and add it to its model card")
    parser.add_argument("--two-d", action="store_true", help="also compute the 2D landscape (Li et al.)")
    parser.add_argument("--two-d-points", type=int, default=21, help="grid points per axis of the 2D landscape")
    parser.add_argument("--two-d-extent", type=_number(0.0, low_open=True), default=1.0,
                        help="2D grid spans [-E, E] on both axes (E > 0)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the full result as JSON on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _gather_images(split: Any, index: torch.Tensor) -> torch.Tensor:
    images = getattr(split, "images", None)
    if isinstance(images, torch.Tensor):
        return images[index]
    try:  # large-image datasets: items are (transformed image, label)
        return torch.stack([torch.as_tensor(split[int(i)][0]) for i in index])
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"cannot read images from the split ({type(split).__name__}): {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Run ``ccsam-zoo sharpness``; returns the exit code."""
    from ccsam_zoo.data import build_benchmark
    from ccsam_zoo.hub import from_pretrained

    from .landscape import landscape_2d

    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
    bad = [g for g in groups if g not in GROUP_NAMES]
    if bad:
        print(f"error: unknown groups {bad}; choose from {','.join(GROUP_NAMES)}", file=sys.stderr)
        return 2
    if getattr(args, "card", False):
        folder = Path(args.model).expanduser()
        if not (folder / "config.json").is_file():
            msg = f"error: --card needs a local checkpoint folder (with config.json), got {args.model!r}"
            print(msg, file=sys.stderr)
            return 2
        if args.output and Path(args.output).expanduser().resolve() != folder.resolve():
            print("error: --card writes the report into the checkpoint folder; drop --output", file=sys.stderr)
            return 2
        args.output = str(folder)
    clf = from_pretrained(args.model, device=args.device)
    bench = build_benchmark(args.data, source=args.source, imbalance_ratio=args.imbalance_ratio)
    split = getattr(bench, args.split, None)
    if split is None:
        print(f"error: the benchmark {args.data!r} has no {args.split!r} split", file=sys.stderr)
        return 2
    labels = torch.as_tensor(split.labels).long()
    sample = select_sample(labels, args.num_samples or None, args.sample_seed)
    images = _gather_images(split, sample)
    class_counts = getattr(clf, "class_counts", None)
    if class_counts is None:
        class_counts = bench.class_counts
    class_counts = [int(c) for c in class_counts]
    thresholds = tuple(args.shot_thresholds or getattr(bench, "shot_thresholds", None) or (100, 20))
    net = getattr(clf, "model", clf)  # the network itself: the loss landscape of its logits
    common = dict(
        params=args.params, seed=args.seed, batch_size=args.batch_size, groups=groups, shot_thresholds=thresholds,
        shot_rule=args.shot_rule, transform=bench.batch_transform(train=False), progress=not args.no_progress,
    )  # fmt: skip
    source = {
        "model": args.model,
        "data": args.data,
        "split": args.split,
        "sampled_from": int(labels.numel()),
        "sample_seed": args.sample_seed,
    }
    try:
        result = loss_curves(
            net, images, labels[sample], class_counts, num_directions=args.directions, rho=args.rho,
            rho_mode=args.rho_mode,
            ascent_steps=args.ascent_steps, filter_normalize=args.filter_norm, **common,
        )  # fmt: skip
        result["config"].update(source)
        land = None
        if args.two_d:
            extent, points = args.two_d_extent, args.two_d_points
            grid = torch.linspace(-extent, extent, points).tolist()
            land = landscape_2d(net, images, labels[sample], class_counts, alphas=grid, **common)
            land["config"].update(source)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths: dict[str, Path] = {}
    if args.output:
        paths.update({f"curves_{k}": v for k, v in save_report(result, args.output).items()})
        if land is not None:
            paths.update({f"landscape_{k}": v for k, v in save_report(land, args.output).items()})
        if getattr(args, "card", False):
            from ccsam_zoo.hub import render_model_card

            paths["card"] = Path(args.output) / "README.md"
            paths["card"].write_text(render_model_card(args.output), encoding="utf-8")
    if args.json:
        payload = {"loss_curves": result, "landscape_2d": land} if land is not None else result
        print(dumps(payload, indent=None))
    else:
        cfg = result["config"]
        print(
            f"{args.model} on {args.data}/{args.split}: {cfg['num_samples']} samples, params={cfg['params']} "
            f"({cfg['num_params']} values, ||theta|| = {cfg['theta_norm']:.4g}), {cfg['num_directions']} directions"
        )
        print(_summary_table(result), end="")
        for key, path in paths.items():
            print(f"{key}: {path}")
    return 0
