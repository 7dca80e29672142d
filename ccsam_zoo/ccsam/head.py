"""Class-conditional perturbation of a linear head without a per-class loop (ALGORITHM.md, closed form).

For a linear head ``h(z) = W z + b`` and cross-entropy, with ``r_i = softmax(W z_i + b) - onehot(y_i)``
(or minus a soft target), the class-mean gradients are ``G_c^W = (1/m_c) sum_{i in S_c} r_i z_i^T`` and
``G_c^b = (1/m_c) sum_{i in S_c} r_i``, so

    ||G_c^W||^2 = (1/m_c^2) sum_{i,j in S_c} (r_i . r_j)(z_i . z_j)
    l'_j = W z_j + b + a_c (1/m_c) sum_{i in S_c} r_i (z_i . z_j) + a'_c (1/m_c) sum_{i in S_c} r_i

with ``a_c, a'_c`` the Eq. 8-9 factors (``perturbation.class_factors``). Everything is B x B and B x C
algebra (B x B Gram matrices, a P x C table of class-mean residuals, P = classes present): nothing of
size C x D per class, one backward. The perturbation is a constant (SAM): ``r`` and the ``z_i`` inside it
are detached, while ``z_j``'s own path through ``(W + eps_c^W) z_j`` keeps its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .perturbation import cap_factors, class_factors

__all__ = ["perturbed_head_logits", "head_perturbation"]


def _check(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if features.dim() != 2 or weight.dim() != 2 or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features (B, D) and weight (C, D) expected, got {tuple(features.shape)}, {tuple(weight.shape)}"
        )
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must have shape ({features.shape[0]},), got {tuple(labels.shape)}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def head_perturbation(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    class_counts: torch.Tensor | list[int],
    *,
    scale: float = 1.0,
    norm: str = "per_tensor",
    targets: torch.Tensor | None = None,
    kind: str = "ccsam",
    max_ratio: float | None = None,
    eps: float = 1e-12,
    logits: torch.Tensor | None = None,
    logit_adjustment: torch.Tensor | None = None,
    logit_norm_tau: float | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``perturbed_head_logits`` plus statistics: ``{"eps_ratio": mean_c ||eps_c|| / ||w||, "classes": P,
    "capped": number of classes whose ||eps_c|| the ``max_ratio`` cap shortened}``."""
    _check(features, labels, weight, bias)
    stat = torch.float64 if torch.float64 in (features.dtype, weight.dtype) else torch.float32
    dev = features.device
    C, D = weight.shape
    counts = torch.as_tensor(class_counts, device=dev)
    if counts.numel() != C:
        raise ValueError(f"class_counts has {counts.numel()} entries for a head with {C} classes")
    with torch.autocast(device_type=dev.type, enabled=False):
        z = features.to(stat)
        w_ = weight.to(stat)
        b_ = None if bias is None else bias.to(stat)
        out = F.linear(z, w_, b_) if logits is None else logits.to(stat)
        with torch.no_grad():
            lg = out.detach() if logit_adjustment is None else out.detach() + logit_adjustment.to(stat)
            if logit_norm_tau is not None:
                if logit_adjustment is not None:
                    raise ValueError("logit_adjustment and logit_norm_tau cannot be combined")
                raw = lg
                ln = torch.linalg.vector_norm(raw, dim=1, keepdim=True)
                sn = (ln + 1e-7) * logit_norm_tau  # losses.logit_norm: u = l / (tau (||l|| + 1e-7))
                lg = raw / sn
            r = torch.softmax(lg, dim=1)  # r = dCE/dlogits of each sample
            if targets is None:
                r[torch.arange(r.shape[0], device=dev), labels] -= 1
            else:
                r = r - targets.to(stat)
            if logit_norm_tau is not None:  # through u(l): J^T r = r / sn - l (l . r) / (sn ||l|| (||l|| + 1e-7))
                r = r / sn - raw * ((raw * r).sum(1, keepdim=True) / (sn * ln.clamp_min(1e-30) * (ln + 1e-7)))
            zd = z.detach()
            if gather is None:
                zg, rg, yg = zd, r, labels
            else:  # class statistics from the global batch (padding rows carry label -1)
                zg, rg, yg = gather(zd).to(stat), gather(r).to(stat), gather(labels)
                keep = yg >= 0
                zg, rg, yg = zg[keep], rg[keep], yg[keep]
            classes, inv = torch.unique(yg, return_inverse=True)  # P classes present (sorted)
            P = classes.numel()
            m = torch.bincount(inv, minlength=P).to(stat)
            loc = torch.searchsorted(classes, labels)  # class slot of each local sample
            wn = torch.linalg.vector_norm(weight.detach().to(stat)).square()
            if bias is not None:
                wn = wn + torch.linalg.vector_norm(bias.detach().to(stat)).square()
            wnorm = wn.sqrt()
            k = C * D + (C if bias is not None else 0)
            # m_c^2 ||G_c^W||^2 = sum_{i,j in S_c} (r_i . r_j)(z_i . z_j); m_c^2 ||G_c^b||^2 = sum_{i,j in S_c} r_i.r_j
            # the diagonal for one-sample classes, Gram matrices over the samples of classes with m_c >= 2 only
            # (all samples on CIFAR, a few at iNaturalist scale)
            multi = (m >= 2)[inv]
            pair_b = torch.linalg.vector_norm(rg, dim=1).square()
            pair_w = pair_b * torch.linalg.vector_norm(zg, dim=1).square()
            if bool(multi.any()):
                rm, zm, im = rg[multi], zg[multi], inv[multi]
                rr = (rm @ rm.T) * (im[:, None] == im[None, :])
                pair_b[multi] = rr.sum(1)
                pair_w[multi] = (rr * (zm @ zm.T)).sum(1)
            sq = torch.zeros(2, P, dtype=stat, device=dev)
            sq[0].index_add_(0, inv, pair_w)
            sq[1].index_add_(0, inv, pair_b)
            sq = sq / m.square()
            if bias is None:
                sq = sq[:1]
            a = class_factors(sq, wnorm, k, counts[classes], scale=scale, norm=norm, kind=kind, eps=eps)  # Eq. 8-9
            a, capped = cap_factors(a, sq, wnorm, max_ratio)
            eps_norm = torch.linalg.vector_norm(a * sq.sqrt(), dim=0)
        if kind == "magnitude":
            delta = _random_direction_term(z, loc, P, eps_norm if norm == "global" else a * sq.sqrt(),
                                           C, bias is not None, norm, generator)
        else:
            # l'_j - l_j = (a_c / m_c) sum_{i in S_c} r_i (z_i . z_j) + (a'_c / m_c) sum_{i in S_c} r_i  (c = y_j):
            # r and the z_i are constants, z_j keeps its gradient. One-sample classes: the sum is r_j itself.
            a_w = (a[0] / m)[loc]  # per local sample: a_c / m_c
            a_b = (a[1] / m)[loc] if bias is not None else torch.zeros_like(a_w)
            single = m[loc] < 2
            delta = (single * (a_w * (zd * z).sum(1) + a_b))[:, None] * r
            if not bool(single.all()):
                jm = (~single).nonzero().squeeze(1)
                gm = multi.nonzero().squeeze(1)
                same = (inv[gm][:, None] == loc[jm][None, :]).to(stat)  # class partners (global) x locals
                kx = zg[gm] @ z[jm].T  # z_i . z_j
                coef = same * (a_w[jm][None, :] * kx + a_b[jm][None, :])
                delta = delta.index_add(0, jm, coef.T @ rg[gm])
        info = {"eps_ratio": (eps_norm / wnorm.clamp_min(eps)).mean(), "classes": torch.tensor(float(P)),
                "capped": capped.sum().to(stat)}
        return out + delta, info


def _random_direction_term(
    z: torch.Tensor,
    loc: torch.Tensor,
    P: int,
    mags: torch.Tensor,
    C: int,
    has_bias: bool,
    norm: str,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Table 2 "stage 1 + mag": Eq. 9 magnitudes along random Gaussian directions (a loop over classes).

    Draws one C x D (+ C) direction per present class, in class order, so identically seeded generators give
    identical directions on every rank. Meant for ablations on small heads.
    """
    D = z.shape[1]
    delta = torch.zeros(z.shape[0], C, dtype=z.dtype, device=z.device)
    for p in range(P):
        u_w = torch.randn(C, D, generator=generator, dtype=z.dtype, device="cpu").to(z.device)
        u_b = torch.randn(C, generator=generator, dtype=z.dtype, device="cpu").to(z.device) if has_bias else None
        sel = (loc == p).nonzero().squeeze(1)
        if norm == "global":
            nrm = u_w.square().sum() + (u_b.square().sum() if has_bias else 0.0)
            u_w, u_b = u_w * (mags[p] / nrm.sqrt()), (u_b * (mags[p] / nrm.sqrt()) if has_bias else None)
        else:
            u_w = u_w * (mags[0, p] / u_w.norm())
            u_b = u_b * (mags[1, p] / u_b.norm()) if has_bias else None
        if sel.numel():
            term = z[sel] @ u_w.T + (u_b if has_bias else 0.0)
            delta = delta.index_add(0, sel, term)
    return delta


def perturbed_head_logits(
    features: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    class_counts: torch.Tensor | list[int],
    *,
    scale: float = 1.0,
    norm: str = "per_tensor",
    targets: torch.Tensor | None = None,
    kind: str = "ccsam",
    max_ratio: float | None = None,
    eps: float = 1e-12,
    logits: torch.Tensor | None = None,
    logit_adjustment: torch.Tensor | None = None,
    logit_norm_tau: float | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Logits of each sample under its own class's perturbation ``eps_{y_j}`` (Eq. 8-9), B x C.

    ``l'_j = (W + eps_c^W) z_j + b + eps_c^b`` with ``c = y_j``; ``eps_c`` is a constant (SAM), so gradients
    reach ``weight``, ``bias`` and ``features`` exactly as at the perturbed point. Computed in float32
    (float64 for float64 inputs) with autocast disabled; the result has that dtype.

    Args:
        features: z, B x D (the local batch).
        labels: B class indices; they group samples into classes (the first mixup label under mixup).
        weight, bias: the head, C x D and C (``bias`` may be None); k = C*D + C (C*D without bias).
        class_counts: TRAINING counts n_c (C entries); ``max(n_c - 1, 1)`` is used in Eq. 8.
        scale: s of Eq. 8 (authors' ``noise_ratio``; 1.0 = the paper).
        norm: ``"per_tensor"`` (W and b each with its own ``||g_c||``, ``||w||`` of (W, b) together: authors)
            or ``"global"`` (one gradient norm over (W, b): the paper).
        targets: B x C soft targets replacing the one-hot in the residual ``r``.
        kind: ``"ccsam"`` (Eq. 9), ``"direction"`` (unit direction times ``scale``) or ``"magnitude"``
            (Eq. 9 magnitude, random Gaussian direction drawn from ``generator``).
        max_ratio: cap on ``||eps_c|| / ||w||``; None (default) = no cap.
        eps: floor on gradient norms (a zero class gradient gives a zero perturbation).
        logits: ``W z + b`` if already computed (the graph is reused; one head forward saved).
        logit_adjustment: C-vector added to the logits before the softmax of ``r`` (logit-adjusted /
            Balanced Softmax CE: its gradient); the returned logits do NOT include it.
        logit_norm_tau: LogitNorm (``losses.logit_norm``): ``r`` is the gradient of CE on ``l / (tau ||l||)``
            with respect to the logits ``l`` (the returned logits stay raw: the caller normalises them).
        gather: e.g. ``accelerator.gather``: the class statistics (z, r, labels; detached) come from the
            global batch; rows whose gathered label is negative are dropped (padding). The local samples'
            logits use the global ``eps_c``. Every process must call it (collective).
        generator: random directions for ``kind="magnitude"``.

    Classes absent from the batch get no term. Cost: Gram matrices of z and r over the samples of classes with
    at least two samples in the batch (B' <= B: B'^2 (D + C)) and one B' x B' x C product, at most about one
    extra head forward (far less when most classes have one sample); memory O(B'^2 + P C).
    """
    return head_perturbation(
        features, labels, weight, bias, class_counts, scale=scale, norm=norm, targets=targets, kind=kind,
        max_ratio=max_ratio, eps=eps, logits=logits, logit_adjustment=logit_adjustment,
        logit_norm_tau=logit_norm_tau, gather=gather, generator=generator,
    )[0]
