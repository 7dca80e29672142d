"""Class-conditional perturbation factors: the radius of Eq. 8 and the perturbation of Eq. 9.

Every perturbation kind is expressed through one factor ``a`` per class (and per tensor in
``per_tensor`` mode) with ``||eps_c|| = a_c * ||g_c||``:

* ``"ccsam"``      (Eq. 8-9)  ``eps_c = a_c g_c``,  ``a_c = sqrt(k) rho_c / ||g_c||``;
* ``"direction"``  (Table 2, "stage 1 + dir")  ``eps_c = scale * g_c / ||g_c||``: unit-norm direction times
  ``scale`` (``||eps_c|| = scale``; in ``per_tensor`` mode EACH tensor's perturbation has norm ``scale``);
* ``"magnitude"``  (Table 2, "stage 1 + mag")  ``eps_c = sqrt(k) rho_c u / ||u||`` with ``u ~ N(0, I)``:
  the same factor as ``"ccsam"``, the caller draws the random direction;
* ``"radius"``     (not in the paper; issue 22) SAM's step with Eq. 8's class dependence:
  ``eps_c = scale * (n_ref / max(n_c - 1, 1))^(1/4) * g_c / ||g_c||``, ``n_ref`` the geometric mean of
  ``max(n_c - 1, 1)`` over the training classes (``radius_reference``): ``scale`` is SAM's rho at the geometric
  mean count, tail classes get a larger radius, head classes a smaller one; on balanced data it IS SAM.

``k`` is the total number of perturbed parameters (all tensors together, also in ``per_tensor`` mode) and
``||w||`` is the norm of all perturbed tensors together (the authors' code). The scalars are computed in
float32 (float64 if the inputs are float64), whatever the autocast dtype.
"""

from __future__ import annotations

import math

import torch

from .presets import KINDS, NORMS

__all__ = ["NORMS", "KINDS", "characteristic_radius", "class_factors", "cap_factors", "radius_reference"]



def _stat_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def characteristic_radius(
    weight_norm: torch.Tensor | float,
    grad_norm: torch.Tensor,
    k: int,
    counts: torch.Tensor,
    *,
    scale: float = 1.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Eq. 8: ``rho_c = s * sqrt(||w|| / (2 ||g_c||)) * k^(-1/4) * max(n_c - 1, 1)^(-1/4)``.

    ``counts`` are TRAINING counts n_c. ``n_c = 1`` would make ``(n_c - 1)^(-1/4)`` infinite: we use
    ``max(n_c - 1, 1)`` (a one-image class gets the radius of a two-image class). ``||g_c||`` is clamped to
    ``eps`` (the perturbation ``a_c g_c`` of a zero gradient is then exactly zero).
    """
    dtype = _stat_dtype(grad_norm)
    g = grad_norm.to(dtype).clamp_min(eps)
    w = torch.as_tensor(weight_norm, dtype=dtype, device=g.device)
    n1 = (counts.to(device=g.device, dtype=dtype) - 1).clamp_min(1.0)
    return scale * torch.sqrt(w / (2 * g)) * k ** -0.25 * n1**-0.25  # Eq. 8


def radius_reference(class_counts: torch.Tensor) -> float:
    """``n_ref`` of ``kind="radius"``: the geometric mean of ``max(n_c - 1, 1)`` over the training classes."""
    n1 = (torch.as_tensor(class_counts, dtype=torch.float64) - 1).clamp_min(1.0)
    return float(n1.log().mean().exp())


def class_factors(
    grad_sq_norms: torch.Tensor,
    weight_norm: torch.Tensor | float,
    k: int,
    counts: torch.Tensor,
    *,
    scale: float = 1.0,
    norm: str = "per_tensor",
    kind: str = "ccsam",
    max_ratio: float | None = None,
    eps: float = 1e-12,
    ref_count: float | None = None,
) -> torch.Tensor:
    """Factors ``a[t, c]`` with ``eps_c^t = a[t, c] * g_c^t`` (Eq. 9), shape of ``grad_sq_norms`` (T x P).

    Args:
        grad_sq_norms: ``||g_c^t||^2`` per perturbed tensor t (rows) and class c (columns).
        weight_norm: ``||w||`` of all perturbed tensors together.
        k: total number of perturbed parameters.
        counts: training counts n_c of the P classes (columns).
        scale: the extra factor s (authors' ``noise_ratio``); for ``"direction"`` the norm of eps.
        norm: ``"per_tensor"`` (each tensor its own ``||g_c^t||``, authors) or ``"global"`` (one ``||g_c||``).
        kind: ``"ccsam"``, ``"direction"`` or ``"magnitude"`` (see the module docstring).
        max_ratio: cap on ``||eps_c|| / ||w||`` (all tensors together); None = no cap.
        eps: floor on gradient norms.
        ref_count: ``n_ref`` of ``kind="radius"`` (``radius_reference`` of the training counts); required there.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if kind not in KINDS:
        raise ValueError(f"perturbation kind must be one of {KINDS}, got {kind!r}")
    dtype = _stat_dtype(grad_sq_norms)
    sq = grad_sq_norms.to(dtype)
    if norm == "global":
        gn = sq.sum(0, keepdim=True).sqrt()  # ||g_c|| over all tensors, shared factor
    else:
        gn = sq.sqrt()
    if kind == "direction":
        a = scale / gn.clamp_min(eps)  # ||eps|| = scale (per tensor or global)
    elif kind == "radius":
        if ref_count is None:
            raise ValueError("perturbation 'radius' needs ref_count (radius_reference of the training counts)")
        n1 = (counts.to(device=gn.device, dtype=dtype) - 1).clamp_min(1.0)
        a = scale * (ref_count / n1) ** 0.25 / gn.clamp_min(eps)  # ||eps_c|| = rho (n_ref / (n_c - 1))^(1/4)
    else:
        rho = characteristic_radius(weight_norm, gn, k, counts, scale=scale, eps=eps)  # Eq. 8
        a = math.sqrt(k) * rho / gn.clamp_min(eps)  # Eq. 9: eps = sqrt(k) rho g / ||g||
    a = a.expand_as(sq).clone()
    return cap_factors(a, sq, weight_norm, max_ratio)[0]


def cap_factors(
    factors: torch.Tensor, grad_sq_norms: torch.Tensor, weight_norm: torch.Tensor | float, max_ratio: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The optional cap ``||eps_c|| <= max_ratio ||w||`` (not in the paper; a named option): ``(factors, capped)``
    with ``capped[c]`` True where the cap bound (the trainer logs how often). ``max_ratio=None``: unchanged."""
    capped = torch.zeros(factors.shape[-1], dtype=torch.bool, device=factors.device)
    if max_ratio is None:
        return factors, capped
    dtype = factors.dtype
    w = torch.as_tensor(weight_norm, dtype=dtype, device=factors.device)
    eps_norm = torch.linalg.vector_norm(factors * grad_sq_norms.to(dtype).sqrt(), dim=0)  # ||eps_c||, all tensors
    limit = max_ratio * w
    capped = eps_norm > limit
    shrink = torch.where(capped, limit / eps_norm.clamp_min(torch.finfo(dtype).tiny), 1.0)
    return factors * shrink, capped
