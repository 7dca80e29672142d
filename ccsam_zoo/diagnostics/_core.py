"""Shared machinery of the sharpness diagnostics.

Parameter sets, random directions, shot groups, the data sample, and ``_Session``: the object that owns the
perturbed parameters while a diagnostic runs (eval mode, clean copies, batched evaluation) and puts
everything back, bit for bit, when it closes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.counts import shot_groups

GROUP_NAMES = ("many", "medium", "few")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Direction streams: the curves / 2D directions and the ascent's fallback start never share a seed.
_STREAM_DIRECTIONS = 0
_STREAM_ASCENT = 1


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (the default ``loss_fn``)."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


# ---------------------------------------------------------------------------------------------- groups / data


def select_sample(labels: torch.Tensor, num_samples: int | None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a fixed, class-stratified sample of ``num_samples`` items (all when None).

    Classes are filled round-robin in a seeded random order (every class gets its first sample before any
    gets a second, ...), so tail classes stay represented in a small sample of an imbalanced split.
    """
    n = int(labels.numel())
    if num_samples is None or num_samples >= n:
        return torch.arange(n)
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    lab = labels.detach().cpu().numpy()[perm]
    order = np.argsort(lab, kind="stable")
    sorted_lab = lab[order]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.searchsorted(sorted_lab, sorted_lab, side="left")
    take = np.argsort(rank * n + np.arange(n), kind="stable")[:num_samples]
    return torch.from_numpy(np.sort(perm[take]))


# ---------------------------------------------------------------------------------------------- parameters


def _timm_like(model: nn.Module) -> nn.Module | None:
    """The model itself or the first nested ``.model`` with timm's classifier interface."""
    m: Any = model
    for _ in range(4):
        if isinstance(m, nn.Module) and all(hasattr(m, a) for a in ("get_classifier", "forward_features")):
            return m
        m = getattr(m, "model", None)
    return None


def _classifier(model: nn.Module) -> nn.Module:
    timm_model = _timm_like(model)
    if timm_model is None:
        raise ValueError(
            f"params='head' needs a model with timm's get_classifier() (got {type(model).__name__}); "
            "pass explicit parameter names instead"
        )
    head = timm_model.get_classifier()
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        raise ValueError("the model's classifier has no parameters (num_classes=0?)")
    return head


def resolve_params(model: nn.Module, spec: str | Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` pairs chosen by ``spec``, in ``model.named_parameters()`` order.

    ``"head"``: the classifier (timm ``get_classifier()``); ``"all"``: every parameter; ``"blocks:N"``: the
    classifier plus the last N parameter groups of timm's fine-grained ``group_matcher`` (the last N
    residual blocks for ResNets); a sequence of names: exactly those parameters.
    """
    named = list(model.named_parameters())
    if isinstance(spec, str):
        if spec == "all":
            chosen = {id(p) for _, p in named}
        elif spec == "head":
            chosen = {id(p) for p in _classifier(model).parameters()}
        elif spec.startswith("blocks:"):
            chosen = _last_blocks(model, spec)
        else:
            raise ValueError(f"params must be 'head', 'all', 'blocks:N' or a list of names, got {spec!r}")
    else:
        by_name = dict(named)
        missing = [s for s in spec if s not in by_name]
        if missing:
            raise KeyError(f"unknown parameter names {missing}; the model has e.g. {list(by_name)[:5]}")
        chosen = {id(by_name[s]) for s in spec}
    out = [(n, p) for n, p in named if id(p) in chosen]
    if not out:
        raise ValueError(f"params={spec!r} selects no parameter")
    return out


def _last_blocks(model: nn.Module, spec: str) -> set[int]:
    try:
        n_blocks = int(spec.split(":", 1)[1])
    except ValueError:
        raise ValueError(f"params must look like 'blocks:N' with an integer N, got {spec!r}") from None
    if n_blocks < 0:
        raise ValueError(f"blocks:N needs N >= 0, got {n_blocks}")
    from timm.models import group_parameters

    timm_model = _timm_like(model)
    if timm_model is None or not hasattr(timm_model, "group_matcher"):
        raise ValueError("params='blocks:N' needs a timm model with group_matcher(); pass parameter names instead")
    head_ids = {id(p) for p in _classifier(model).parameters()}
    by_name = dict(timm_model.named_parameters())
    groups = group_parameters(timm_model, timm_model.group_matcher(coarse=False))
    blocks = [
        [id(by_name[n]) for n in names]
        for _, names in sorted(groups.items())
        if not any(id(by_name[n]) in head_ids for n in names)
    ]
    if n_blocks > len(blocks):
        raise ValueError(f"{spec!r}: the model has only {len(blocks)} parameter groups besides the classifier")
    chosen = set(head_ids)
    for ids in blocks[len(blocks) - n_blocks :]:
        chosen.update(ids)
    return chosen


# ---------------------------------------------------------------------------------------------- directions


def direction_seed(seed: int, index: int, stream: int = _STREAM_DIRECTIONS) -> int:
    """The torch.Generator seed of direction ``index`` (independent streams per ``(seed, index, stream)``)."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def random_direction(
    theta: Sequence[torch.Tensor], seed: int, index: int, *, filter_normalize: bool = False, stream: int = 0
) -> list[torch.Tensor]:
    """A standard Gaussian direction shaped like ``theta`` (drawn in float32 on the CPU, then moved).

    With ``filter_normalize`` (Li et al. 2018), each filter (slice along dim 0) of a tensor with >= 2 dims
    is rescaled to the norm of the same filter of ``theta``; 1-dim tensors (biases, norm-layer affine
    parameters) get a zero direction, as in their ``ignore='biasbn'`` setting.
    """
    gen = torch.Generator().manual_seed(direction_seed(seed, index, stream))
    out = []
    for t in theta:
        d = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(device=t.device, dtype=t.dtype)
        if filter_normalize:
            if d.dim() <= 1:
                d.zero_()
            else:
                scale = t.flatten(1).norm(dim=1) / (d.flatten(1).norm(dim=1) + 1e-10)
                d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
        out.append(d)
    return out


def global_norm(tensors: Sequence[torch.Tensor]) -> float:
    """Euclidean norm of the concatenation of ``tensors`` (in float64)."""
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def output_logits(out: Any) -> torch.Tensor:
    """Logits from a model output: a tensor, ``(z, logits)`` (``FeaturesAndLogits``), or ``.logits``."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[-1]
    if isinstance(out, dict) and "logits" in out:
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    raise TypeError(f"cannot find logits in a model output of type {type(out).__name__}")


# ---------------------------------------------------------------------------------------------- session


class _Session:
    """Owns the chosen parameters while a diagnostic runs; ``close()`` restores the model exactly.

    On entry: the model goes to eval mode, the chosen parameters are copied (``theta0``), and only they
    require gradients. With ``cache_features`` and a classifier-only parameter set on a timm-style model,
    the penultimate features are computed once and every evaluation only runs the classifier (checked
    against the full forward on the first batch; falls back to full forwards if they disagree).
    """

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        named_params: list[tuple[str, nn.Parameter]],
        *,
        num_classes: int,
        batch_size: int,
        loss_fn: LossFn | None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        cache_features: bool,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if labels.numel() == 0:
            raise ValueError("no data: images and labels are empty")
        self.model = model
        self.names = [n for n, _ in named_params]
        self.params = [p for _, p in named_params]
        self.theta0 = [p.detach().clone() for p in self.params]
        self.theta_norm = global_norm(self.theta0)
        self.device = self.params[0].device
        self.num_classes = num_classes
        self.batch_size = int(batch_size)
        self.loss_fn = loss_fn or cross_entropy
        self.transform = transform
        self.labels = labels.detach().to(torch.long).cpu()
        self.counts = torch.bincount(self.labels, minlength=num_classes).double()
        self._modes = [(m, m.training) for m in model.modules()]
        self._grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        self._closed = False
        try:
            model.eval()
            chosen = {id(p) for p in self.params}
            for p in model.parameters():
                p.requires_grad_(id(p) in chosen)
            if isinstance(transform, nn.Module):
                transform.to(self.device)
            self.head: nn.Module | None = None
            self.inputs = images
            if cache_features:
                self._try_cache_features(images)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ data

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.transform is not None:
            x = self.transform(x)
        elif not torch.is_floating_point(x):
            raise TypeError(f"images are {x.dtype}: pass transform= (e.g. benchmark.batch_transform(train=False))")
        return x

    def _try_cache_features(self, images: torch.Tensor) -> None:
        timm_model = _timm_like(self.model)
        if timm_model is None or not hasattr(timm_model, "forward_head"):
            return
        head = timm_model.get_classifier()
        if not isinstance(head, nn.Module) or not {id(p) for p in self.params} <= {id(p) for p in head.parameters()}:
            return
        feats = []
        with torch.no_grad():
            for i, idx in enumerate(torch.arange(images.shape[0]).split(self.batch_size)):
                x = self._prepare(images[idx])
                z = timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)
                if i == 0:
                    full = output_logits(self.model(x))
                    if full.shape != head(z).shape or not torch.allclose(head(z), full, rtol=1e-4, atol=1e-5):
                        return  # the model does more than classifier(features): evaluate it whole
                feats.append(z)
        self.inputs = torch.cat(feats)
        self.head = head

    def batches(self, index: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, labels)`` batches of the samples ``index`` (CPU LongTensor), on the model's device."""
        for idx in index.split(self.batch_size):
            y = self.labels[idx].to(self.device)
            if self.head is not None:
                yield self.inputs[idx.to(self.inputs.device)], y
            else:
                yield self._prepare(self.inputs[idx]), y

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.head(x) if self.head is not None else output_logits(self.model(x))
        loss = self.loss_fn(logits, y)
        if loss.shape != y.shape:
            raise ValueError(
                f"loss_fn must return one loss per sample (shape {tuple(y.shape)}), got {tuple(loss.shape)}"
            )
        return loss

    # ------------------------------------------------------------------ parameters

    @torch.no_grad()
    def set(self, terms: Sequence[tuple[float, Sequence[torch.Tensor]]] = ()) -> None:
        """Parameters <- theta0 + sum(coef * direction) over ``terms``; no term restores theta0 exactly."""
        for i, p in enumerate(self.params):
            value = self.theta0[i].clone()
            for coef, d in terms:
                if coef != 0.0:
                    value.add_(d[i], alpha=coef)
            p.copy_(value)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def class_sums(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Per-class sums of the per-sample loss (float64, CPU) at the current parameters."""
        index = torch.arange(self.labels.numel()) if index is None else index
        sums = torch.zeros(self.num_classes, dtype=torch.float64, device=self.device)
        for x, y in self.batches(index):
            sums.index_add_(0, y, self.losses(x, y).double())
        return sums.cpu()

    def loss_and_grad(self, index: torch.Tensor, *, grad: bool = True) -> tuple[float, list[torch.Tensor] | None]:
        """Mean loss over the samples ``index`` and its gradient w.r.t. the chosen parameters."""
        if not grad:
            sums = self.class_sums(index)
            return float(sums.sum()) / int(index.numel()), None
        total = 0.0
        grads = [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad():
            for x, y in self.batches(index):
                loss = self.losses(x, y).sum()
                for g, gi in zip(grads, torch.autograd.grad(loss, self.params, allow_unused=True)):
                    if gi is not None:
                        g.add_(gi)
                total += float(loss.detach())
        n = int(index.numel())
        return total / n, [g / n for g in grads]

    def close(self) -> None:
        """Restore parameter values, requires_grad flags and train/eval modes."""
        if self._closed:
            return
        self._closed = True
        self.set()
        for p, flag in self._grad_flags:
            p.requires_grad_(flag)
        for m, mode in self._modes:
            m.training = mode

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Setup:
    """Validated inputs shared by the public functions: sample, groups, parameters."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        class_counts: Sequence[int] | None,
        *,
        params: str | Sequence[str],
        groups: Sequence[str],
        shot_thresholds: Sequence[int],
        shot_rule: str,
        num_samples: int | None,
        sample_seed: int,
    ) -> None:
        labels = torch.as_tensor(labels).detach().cpu().long()
        if labels.dim() != 1:
            raise ValueError(f"labels must be 1-D class indices, got shape {tuple(labels.shape)}")
        unknown = [g for g in groups if g not in GROUP_NAMES]
        if unknown:
            raise ValueError(f"unknown groups {unknown}; choose from {GROUP_NAMES}")
        self.sample = select_sample(labels, num_samples, sample_seed)
        self.images = images[self.sample] if self.sample.numel() != labels.numel() else images
        self.labels = labels[self.sample]
        if class_counts is not None:
            self.class_counts: list[int] | None = [int(c) for c in class_counts]
            self.num_classes = len(self.class_counts)
        else:
            self.class_counts = None
            self.num_classes = int(labels.max()) + 1 if labels.numel() else 0
        if self.labels.numel() and (int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}) (open-set samples labelled -1 are not allowed)"
            )
        self.named_params = resolve_params(model, params)
        self.params_spec = params if isinstance(params, str) else list(params)
        # group name -> class ids (all requested groups) and -> sample indices (groups with samples only)
        self.shot_groups = shot_groups(self.class_counts, shot_thresholds, shot_rule) if self.class_counts else None
        self.group_classes: dict[str, list[int]] = {}
        self.group_index: dict[str, torch.Tensor] = {"overall": torch.arange(self.labels.numel())}
        self.empty_groups: list[str] = []
        if self.shot_groups is not None:
            for g in groups:
                classes = [c for c, name in enumerate(self.shot_groups) if name == g]
                self.group_classes[g] = classes
                index = torch.nonzero(torch.isin(self.labels, torch.tensor(classes, dtype=torch.long))).flatten()
                if index.numel():
                    self.group_index[g] = index
                else:
                    self.empty_groups.append(g)
        self.masks = {
            g: torch.bincount(self.labels[idx], minlength=self.num_classes) > 0 for g, idx in self.group_index.items()
        }
        self.config: dict[str, Any] = {
            "params": self.params_spec,
            "param_names": [n for n, _ in self.named_params],
            "num_params": sum(p.numel() for _, p in self.named_params),
            "num_samples": int(self.labels.numel()),
            "sample_seed": int(sample_seed),
            "shot_thresholds": [int(t) for t in shot_thresholds],
            "shot_rule": shot_rule,
            "groups": list(groups) if self.class_counts else [],
            "empty_groups": self.empty_groups,
        }

    def session(self, model: nn.Module, **kwargs: Any) -> _Session:
        return _Session(model, self.images, self.labels, self.named_params, num_classes=self.num_classes, **kwargs)

    def group_losses(self, sums: torch.Tensor, counts: torch.Tensor) -> dict[str, float]:
        """Mean per-sample loss of each group (and overall) from per-class loss sums."""
        return {g: float(sums[m].sum() / counts[m].sum()) for g, m in self.masks.items()}

    def info(self) -> dict[str, Any]:
        """Class partition and sample counts for a result dict."""
        return {
            "shot_groups": self.shot_groups,
            "groups": self.group_classes,
            "group_samples": {g: int(i.numel()) for g, i in self.group_index.items()},
        }
