"""2D loss landscape (Li et al. 2018; CC-SAM Appendix E) over two random filter-normalised directions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ._core import GROUP_NAMES, LossFn, _Setup, global_norm, random_direction

__all__ = ["landscape_2d"]


def landscape_2d(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_counts: Sequence[int] | None = None,
    *,
    params: str | Sequence[str] = "head",
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    seed: int = 0,
    filter_normalize: bool = True,
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
    """Loss on the plane ``theta + alpha * d1 + beta * d2`` per shot group and overall.

    ``d1``, ``d2`` are Gaussian directions drawn like directions 0 and 1 of ``loss_curves`` (same seed);
    with ``filter_normalize`` (default) every filter of ``d`` has the norm of the same filter of ``theta``
    and 1-D parameters are not moved, so ``alpha = 1`` is a displacement of about ``||theta||``. Without
    it each direction is rescaled to ``||d|| = ||theta||``. Default grid: 21 points in [-1, 1] per axis.
    Other arguments as in ``loss_curves``.

    Returns:
        dict with ``kind="landscape_2d"``, ``config``, the class partition, ``alphas``, ``betas``,
        ``clean``, ``losses[group]`` (a ``len(betas) x len(alphas)`` nested list: row i is ``betas[i]``),
        ``direction_relative_norms`` (``||d_k|| / ||theta||``) and ``direction_cosine``.
    """
    alphas = [float(a) for a in (alphas if alphas is not None else torch.linspace(-1, 1, 21).tolist())]
    betas = [float(b) for b in betas] if betas is not None else list(alphas)
    if not alphas or not betas:
        raise ValueError("alphas and betas must be non-empty")
    setup = _Setup(
        model, images, labels, class_counts, params=params, groups=groups, shot_thresholds=shot_thresholds,
        shot_rule=shot_rule, num_samples=num_samples, sample_seed=sample_seed,
    )  # fmt: skip
    with setup.session(
        model, batch_size=batch_size, loss_fn=loss_fn, transform=transform, cache_features=cache_features
    ) as session:
        theta_norm = session.theta_norm
        if theta_norm == 0:
            raise ValueError("the chosen parameters are all zero: the landscape has no scale")
        dirs = []
        for k in (0, 1):
            d = random_direction(session.theta0, seed, k, filter_normalize=filter_normalize)
            d_norm = global_norm(d)
            if d_norm == 0:
                raise ValueError("the direction is zero (filter_normalize with only 1-D parameters?)")
            if not filter_normalize:
                d = [t * (theta_norm / d_norm) for t in d]
            dirs.append(d)
        counts = session.counts
        clean = setup.group_losses(session.class_sums(), counts)
        losses: dict[str, list[list[float]]] = {g: [] for g in setup.group_index}
        with tqdm(total=len(alphas) * len(betas), desc="landscape-2d", disable=not progress, leave=False) as bar:
            for b in betas:
                rows = []
                for a in alphas:
                    session.set([(a, dirs[0]), (b, dirs[1])])
                    rows.append(setup.group_losses(session.class_sums(), counts))
                    bar.update(1)
                for g in losses:
                    losses[g].append([row[g] for row in rows])
            session.set()
        n1, n2 = global_norm(dirs[0]), global_norm(dirs[1])
        dot = sum(float((x.double() * y.double()).sum()) for x, y in zip(*dirs))
    return {
        "kind": "landscape_2d",
        "config": {
            **setup.config,
            "seed": seed,
            "filter_normalize": filter_normalize,
            "theta_norm": theta_norm,
            "features_cached": session.head is not None,
        },
        **setup.info(),
        "alphas": alphas,
        "betas": betas,
        "clean": clean,
        "losses": losses,
        "direction_relative_norms": [n1 / theta_norm, n2 / theta_norm],
        "direction_cosine": dot / (n1 * n2),
    }
