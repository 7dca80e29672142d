"""``OpenSetStats``: what the statistics-based open-set scores need from the training images, and how to fit it.

Fitted in one streaming pass over the training images (no augmentation), stored in the checkpoint folder as
``open_set_stats.safetensors`` (``to_tensors`` / ``from_tensors``). For a ResNet-32 on CIFAR-10-LT it takes
about 0.7 MB (a 2,048-row float16 bank, float32 precisions, 4,096-value references):

- ``class_means`` ``[C, D]``, ``precision`` ``[D, D]``: class means of the penultimate features and the
  pseudo-inverse of their shared within-class covariance (``mahalanobis``);
- ``bank`` ``[M, D]`` float16, ``k``: L2-normalised features of a seeded uniform subsample of the training
  images (``knn``);
- per early stage (``stage_names``, timm ``feature_info`` modules: all but the last stage, at most three):
  the mean and precision of its ``channel_statistics`` (``layer_stats``);
- ``references``: sorted known-ness scores of a seeded subsample of the training images (``msp``,
  ``max_logit``, ``energy``, ``layer_stats`` and ``stage:<name>``), for the empirical p-values.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "OpenSetStats", "StatsAccumulator", "capture_stage_statistics", "channel_statistics", "class_feature_sums",
    "early_stages", "log_pvalue", "logit_score", "mahalanobis_distances", "prototypes_from_sums",
]  # fmt: skip

STATS_VERSION = "1"
CORR_CHANNELS = 16
STD_EPS = 1e-3
MAX_STAGES = 3


# ------------------------------------------------------------------- score math (open_set.py imports it)


def class_feature_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums of L2-normalised features (float64) and per-class counts; for streaming accumulation."""
    labels = torch.as_tensor(labels, device=features.device).long().reshape(-1)
    if features.ndim != 2 or features.shape[0] != labels.numel():
        raise ValueError(
            f"features must be [N, D] with N = len(labels), got {tuple(features.shape)} and {labels.numel()}"
        )
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    z = F.normalize(features.detach().double(), dim=1)
    sums = torch.zeros(num_classes, z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=num_classes)
    return sums, counts


def prototypes_from_sums(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Unit prototypes from per-class sums (zero rows, with a warning, for classes without samples)."""
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        warnings.warn(f"no samples for classes {missing[:20]}: their prototypes are zero and ignored", stacklevel=3)
    return F.normalize(sums, dim=1).float()


def mahalanobis_distances(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances ``[N, M]`` of features ``[N, D]`` to means ``[M, D]`` (float64)."""
    z = features.double()
    mu = means.to(z.device, torch.float64)
    p = precision.to(z.device, torch.float64)
    if mu.ndim != 2 or mu.shape[1] != z.shape[1] or p.shape != (z.shape[1], z.shape[1]):
        raise ValueError(
            f"means [M, {z.shape[1]}] and precision [{z.shape[1]}, {z.shape[1]}] expected, got "
            f"{tuple(mu.shape)} and {tuple(p.shape)}"
        )
    zp = z @ p
    d = (zp * z).sum(1, keepdim=True) - 2.0 * zp @ mu.T + ((mu @ p) * mu).sum(1)[None, :]
    return d.clamp_min(0.0)


def log_pvalue(reference: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log((#{reference <= x} + 1) / (n + 1))`` per element of ``x``; ``reference`` sorted ascending.

    A NaN ``x`` gives NaN (never the largest p-value: ``searchsorted`` would place NaN after every reference).
    """
    ref = reference.to(x.device, torch.float64).contiguous()
    xd = x.double().contiguous()
    below = torch.searchsorted(ref, xd, right=True)
    out = torch.log((below.double() + 1.0) / (ref.numel() + 1.0))
    return out.masked_fill(torch.isnan(xd), float("nan"))


def logit_score(name: str, logits: torch.Tensor) -> torch.Tensor:
    """``msp``, ``max_logit`` or ``energy`` of a logit batch ``[N, C]`` (float32)."""
    lg = logits.float()
    if name == "msp":
        return lg.softmax(dim=1).amax(dim=1)
    if name == "max_logit":
        return lg.amax(dim=1)
    return torch.logsumexp(lg, dim=1)


def channel_statistics(fmap: torch.Tensor, corr_channels: int = CORR_CHANNELS) -> torch.Tensor:
    """``[B, 2C + k(k-1)/2]`` statistics of a ``[B, C, H, W]`` feature map over its spatial positions.

    Per channel the mean and ``log(std + 1e-3)``, then the correlations between the first
    ``k = min(C, corr_channels)`` channels (upper triangle, Gram-matrix style texture statistics).
    """
    x = fmap.float().flatten(2)
    mean = x.mean(dim=2)
    std = x.std(dim=2, correction=0)
    k = min(x.shape[1], corr_channels)
    xc = x[:, :k] - mean[:, :k, None]
    cov = xc @ xc.transpose(1, 2) / x.shape[2]
    corr = cov / (std[:, :k, None] * std[:, None, :k] + STD_EPS**2)
    iu = torch.triu_indices(k, k, offset=1, device=x.device)
    return torch.cat([mean, torch.log(std + STD_EPS), corr[:, iu[0], iu[1]]], dim=1)


def early_stages(model: nn.Module) -> list[str]:
    """Module names of the early stages of a timm model: its ``feature_info`` modules but the last (<= 3)."""
    info = getattr(model, "feature_info", None)
    names = [f["module"] for f in info if isinstance(f, dict) and f.get("module")] if isinstance(info, list) else []
    if len(names) < 2:
        raise ValueError(
            f"{type(model).__name__} has no timm feature_info with two or more stages: the layer_stats scores "
            "need the early stages (use a timm model)"
        )
    return names[:-1][:MAX_STAGES]


@contextlib.contextmanager
def capture_stage_statistics(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, each forward of ``model`` stores ``channel_statistics`` of the named modules' outputs."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"the model has no module(s) {missing} that the open-set statistics were fitted on")
    captured: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            captured[name] = channel_statistics(output)

        return fn

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


@dataclass
class OpenSetStats:
    """Training-set statistics of the statistics-based open-set scores (see the module docstring)."""

    class_means: torch.Tensor
    precision: torch.Tensor
    class_counts: torch.Tensor
    bank: torch.Tensor
    k: int
    stage_names: list[str]
    stage_means: list[torch.Tensor]
    stage_precisions: list[torch.Tensor]
    references: dict[str, torch.Tensor] = field(default_factory=dict)
    num_train: int = 0

    @property
    def valid_classes(self) -> torch.Tensor:
        """Classes with training images (the others are ignored by ``mahalanobis``)."""
        return self.class_counts > 0

    def to_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """(tensors, string metadata) for ``safetensors.torch.save_file``."""
        t = {
            "class_means": self.class_means.float(),
            "precision": self.precision.float(),
            "class_counts": self.class_counts.long(),
            "bank": self.bank.half(),
        }
        for name, mean, prec in zip(self.stage_names, self.stage_means, self.stage_precisions):
            t[f"stage_mean:{name}"] = mean.float()
            t[f"stage_precision:{name}"] = prec.float()
        t.update({f"reference:{k}": v.float() for k, v in self.references.items()})
        meta = {
            "version": STATS_VERSION,
            "k": str(self.k),
            "stages": ",".join(self.stage_names),
            "num_train": str(self.num_train),
            "corr_channels": str(CORR_CHANNELS),
        }
        return {k: v.detach().cpu().contiguous() for k, v in t.items()}, meta

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None) -> OpenSetStats:
        """Inverse of ``to_tensors``; raises ``ValueError`` naming what is missing or inconsistent."""
        meta = metadata or {}
        if meta.get("version") != STATS_VERSION:
            raise ValueError(
                f"open-set statistics of version {meta.get('version')!r}; this ccsam_zoo reads {STATS_VERSION}"
            )
        need = ["class_means", "precision", "class_counts", "bank"]
        stages = [s for s in meta.get("stages", "").split(",") if s]
        need += [f"stage_mean:{s}" for s in stages] + [f"stage_precision:{s}" for s in stages]
        missing = [n for n in need if n not in tensors]
        if missing:
            raise ValueError(f"open-set statistics lack tensors {missing}")
        means, prec = tensors["class_means"].float(), tensors["precision"].float()
        if (
            means.ndim != 2
            or prec.shape != (means.shape[1], means.shape[1])
            or tensors["bank"].shape[1:] != means.shape[1:]
        ):
            raise ValueError(
                f"open-set statistics have inconsistent shapes: class_means {tuple(means.shape)}, precision "
                f"{tuple(prec.shape)}, bank {tuple(tensors['bank'].shape)}"
            )
        return cls(
            class_means=means,
            precision=prec,
            class_counts=tensors["class_counts"].long(),
            bank=tensors["bank"].half(),
            k=int(meta.get("k", 1)),
            stage_names=stages,
            stage_means=[tensors[f"stage_mean:{s}"].float() for s in stages],
            stage_precisions=[tensors[f"stage_precision:{s}"].float() for s in stages],
            references={k.split(":", 1)[1]: v.float() for k, v in tensors.items() if k.startswith("reference:")},
            num_train=int(meta.get("num_train", 0)),
        )

    def nbytes(self) -> int:
        """Bytes of the stored tensors."""
        return sum(t.numel() * t.element_size() for t in self.to_tensors()[0].values())


def _covariance_precision(outer: torch.Tensor, n: int, means_outer: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of ``(sum x x^T - sum_c n_c mu_c mu_c^T) / n`` (float64 sums)."""
    cov = (outer - means_outer) / max(n, 1)
    cov = (cov + cov.T) / 2.0
    return torch.linalg.pinv(cov, hermitian=True)


class StatsAccumulator:
    """Streams batches of (features, logits, labels, stage statistics) into an ``OpenSetStats``.

    Sums are float64; the bank and the references come from a seeded uniform subsample of the stream (the
    rows with the smallest random keys), so the result does not depend on the batch size.
    """

    def __init__(
        self, num_classes: int, *, bank_size: int = 2048, reference_size: int = 4096, k: int = 5, seed: int = 0
    ) -> None:
        if bank_size < 1 or reference_size < 1 or k < 1:
            raise ValueError(f"bank_size, reference_size and k must be >= 1, got {bank_size}, {reference_size}, {k}")
        self.num_classes, self.bank_size, self.k = num_classes, bank_size, k
        self.keep = max(bank_size, reference_size)
        self.reference_size = reference_size
        self.generator = torch.Generator().manual_seed(seed)
        self.n = 0
        self.unit_sums = self.sums = self.outer = self.counts = None
        self.stage_sums: list[torch.Tensor] = []
        self.stage_outer: list[torch.Tensor] = []
        self.kept: dict[str, torch.Tensor] | None = None

    def update(
        self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, stage_features: list[torch.Tensor]
    ) -> None:
        """Add one batch (any device; sums stay on the features' device)."""
        z = features.detach().double()
        labels = torch.as_tensor(labels, device=z.device).long().reshape(-1)
        unit, counts = class_feature_sums(z, labels, self.num_classes)
        sums = torch.zeros(self.num_classes, z.shape[1], dtype=torch.float64, device=z.device).index_add_(0, labels, z)
        if self.sums is None:
            self.unit_sums, self.sums, self.counts = unit, sums, counts
            self.outer = z.T @ z
            self.stage_sums = [s.double().sum(0) for s in stage_features]
            self.stage_outer = [s.double().T @ s.double() for s in stage_features]
        else:
            self.unit_sums += unit
            self.sums += sums
            self.counts += counts
            self.outer += z.T @ z
            for i, s in enumerate(stage_features):
                self.stage_sums[i] += s.double().sum(0)
                self.stage_outer[i] += s.double().T @ s.double()
        self.n += z.shape[0]
        rows = {"key": torch.rand(z.shape[0], generator=self.generator), "z": features.detach().float().cpu(),
                "logits": logits.detach().float().cpu(), "labels": labels.cpu()}  # fmt: skip
        rows.update({f"stage{i}": s.detach().float().cpu() for i, s in enumerate(stage_features)})
        if self.kept is not None:
            rows = {k: torch.cat([self.kept[k], v]) for k, v in rows.items()}
        order = rows["key"].argsort()[: self.keep]
        self.kept = {k: v[order] for k, v in rows.items()}

    def finish(self, stage_names: list[str]) -> tuple[OpenSetStats, torch.Tensor]:
        """The fitted statistics and the class prototypes (``compute_prototypes`` of the same pass)."""
        if self.n == 0 or self.kept is None:
            raise ValueError("fit_open_set: the dataset is empty")
        if len(stage_names) != len(self.stage_sums):
            raise ValueError(f"{len(stage_names)} stage names for {len(self.stage_sums)} stage statistics")
        counts = self.counts.double()
        means = self.sums / counts.clamp_min(1)[:, None]
        precision = _covariance_precision(self.outer, self.n, means.T @ (means * counts[:, None]))
        stage_means, stage_precisions = [], []
        for s_sum, s_outer in zip(self.stage_sums, self.stage_outer):
            m = s_sum / self.n
            stage_means.append(m.float().cpu())
            stage_precisions.append(_covariance_precision(s_outer, self.n, self.n * torch.outer(m, m)).float().cpu())
        kept = self.kept
        bank = F.normalize(kept["z"][: self.bank_size], dim=1)
        k = min(self.k, bank.shape[0])
        ref = {name: kept[name][: self.reference_size] for name in kept}
        stats = OpenSetStats(
            class_means=means.float().cpu(),
            precision=precision.float().cpu(),
            class_counts=self.counts.cpu(),
            bank=bank.half(),
            k=k,
            stage_names=list(stage_names),
            stage_means=stage_means,
            stage_precisions=stage_precisions,
            num_train=self.n,
        )
        refs = {name: torch.sort(logit_score(name, ref["logits"])).values for name in ("msp", "max_logit", "energy")}
        stage_known = [
            -mahalanobis_distances(ref[f"stage{i}"], stats.stage_means[i][None, :], stats.stage_precisions[i])[:, 0]
            for i in range(len(stage_names))
        ]
        for name, known in zip(stage_names, stage_known):
            refs[f"stage:{name}"] = torch.sort(known).values.float()
        if stage_names:
            fisher = sum(log_pvalue(refs[f"stage:{name}"], known) for name, known in zip(stage_names, stage_known))
            refs["layer_stats"] = torch.sort(fisher).values.float()
        stats.references = refs
        return stats, prototypes_from_sums(self.unit_sums, self.counts).cpu()
