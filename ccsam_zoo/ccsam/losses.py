"""Losses of the stage-1 baselines: CE, logit adjustment / Balanced Softmax, LDAM + DRW, mixup; and two open-set
training options without outside images: LogitNorm, outlier exposure on patch-shuffled training images."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "as_float",
    "soft_cross_entropy",
    "log_prior",
    "ldam_margins",
    "ldam_logits",
    "drw_weights",
    "mixup",
    "logit_norm",
    "patch_shuffle",
    "outlier_exposure",
]


def as_float(t: torch.Tensor) -> torch.Tensor:
    """float32 for half / bfloat16 / float32 inputs, float64 kept (losses are computed in float32 or wider)."""
    return t if t.dtype == torch.float64 else t.float()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """``-sum_c t_c log softmax(logits)_c`` per sample (``reduction`` "none", "mean" or "sum")."""
    loss = -(targets * torch.log_softmax(as_float(logits), dim=1)).sum(1)
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def log_prior(class_counts: torch.Tensor | list[int], tau: float = 1.0) -> torch.Tensor:
    """``tau * log(n_c / N)`` (float64): added to the logits it gives logit-adjusted CE (Menon et al. 2021);
    ``tau = 1`` is Balanced Softmax (Ren et al. 2020)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    return tau * torch.log(n / n.sum())


def ldam_margins(class_counts: torch.Tensor | list[int], max_m: float = 0.5) -> torch.Tensor:
    """LDAM margins ``m_c = C / n_c^(1/4)`` with C chosen so that ``max_c m_c = max_m`` (Cao et al. 2019)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    m = n**-0.25
    return m * (max_m / m.max())


def ldam_logits(logits: torch.Tensor, labels: torch.Tensor, margins: torch.Tensor, s: float = 30.0) -> torch.Tensor:
    """``s * (logits - m_y onehot(y))``: feed to (weighted) cross-entropy for the LDAM loss."""
    m = margins.to(logits.device)[labels]
    x = as_float(logits)
    return s * (x - F.one_hot(labels, x.shape[1]).to(x.dtype) * m.to(x.dtype)[:, None])


def drw_weights(class_counts: torch.Tensor | list[int], beta: float = 0.9999) -> torch.Tensor:
    """Effective-number class weights ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to C (Cui et al.)."""
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    w = (1 - beta) / (1 - beta**n)
    return w / w.sum() * len(n)


def mixup(
    images: torch.Tensor, labels: torch.Tensor, alpha: float, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018): ``(mixed, targets, y_a, y_b, lam)``, ``lam ~ Beta(alpha, alpha)``.

    ``y_a`` is the batch's own label, ``y_b = labels[perm]``; ``targets = lam onehot(y_a) + (1-lam) onehot(y_b)``.
    Uses torch's global RNG (seed it once, e.g. ``accelerate.utils.set_seed``).
    """
    lam = float(torch.distributions.Beta(alpha, alpha).sample()) if alpha > 0 else 1.0
    perm = torch.randperm(images.shape[0], device=images.device)
    mixed = lam * images + (1 - lam) * images[perm]
    y_b = labels[perm]
    targets = lam * F.one_hot(labels, num_classes).float() + (1 - lam) * F.one_hot(y_b, num_classes).float()
    return mixed, targets, labels, y_b, lam


def logit_norm(logits: torch.Tensor, tau: float | None, eps: float = 1e-7) -> torch.Tensor:
    """LogitNorm (Wei et al., ICML 2022): ``logits / (tau * (||logits||_2 + eps))`` per sample (float32 or wider).

    Cross-entropy on the result is the LogitNorm loss (hongxin001/logitnorm_ood ``LogitNormLoss``, ``eps =
    1e-7``): the loss no longer falls by growing the logits' norm, which keeps the network from becoming
    over-confident on inputs unlike its training images. ``tau`` None returns the (float) logits unchanged.
    """
    x = as_float(logits)
    if tau is None:
        return x
    if not tau > 0:
        raise ValueError(f"logit_norm_tau must be > 0 (e.g. 0.04, the paper's CIFAR-10 value) or None, got {tau}")
    return x / ((torch.linalg.vector_norm(x, dim=-1, keepdim=True) + eps) * tau)


def patch_shuffle(images: torch.Tensor, grid: int) -> torch.Tensor:
    """Synthetic outliers from training images: each image cut into ``grid x grid`` patches whose places are
    permuted (one random permutation per image, torch's global RNG). Local colour and texture stay those of the
    training images, the object's global shape is gone. Height and width must be divisible by ``grid``."""
    if grid < 2:
        raise ValueError(f"oe_grid must be >= 2 (patches per side), got {grid}")
    B, C, H, W = images.shape
    if H % grid or W % grid:
        raise ValueError(f"oe_grid={grid} must divide the image size {H}x{W}; pick a divisor, e.g. 4 for 32 px")
    ph, pw = H // grid, W // grid
    patches = images.reshape(B, C, grid, ph, grid, pw).permute(0, 2, 4, 1, 3, 5).reshape(B, grid * grid, C, ph, pw)
    order = torch.argsort(torch.rand(B, grid * grid, device=images.device), dim=1)
    patches = patches[torch.arange(B, device=images.device)[:, None], order]
    return patches.reshape(B, grid, grid, C, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)


def outlier_exposure(logits: torch.Tensor) -> torch.Tensor:
    """Outlier exposure (Hendrycks et al., ICLR 2019): the mean over outliers of the cross-entropy to the uniform
    distribution, ``-(mean_c logits - logsumexp(logits))`` (their code's term, before its weight 0.5)."""
    x = as_float(logits)
    return -(x.mean(1) - torch.logsumexp(x, dim=1)).mean()
