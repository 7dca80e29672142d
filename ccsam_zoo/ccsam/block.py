"""Perturbing more than the head: true per-class gradients (block mode) and the plain SAM step.

Block mode costs, per step, one clean forward and one final backward (the clean term and the perturbed
terms together) plus, per class (or frequency group) ``c`` present in the (global) batch: one backward
from the class loss to the perturbed parameters (``autograd.grad`` on the retained clean graph) and one
forward + backward at ``w + eps_c``. With ``block_batch="full"`` the modules that run before any perturbed
parameter is used (the trunk) are not re-run: their clean outputs are replayed (``TrunkCache``) and only the
perturbed tail runs per class, so a step costs about ``2 + 2 P * tail / network`` CE steps. With ``"class"``
each class's samples go through the whole network (``~3-4x`` CE on CPU, more with many tiny classes).
"""

from __future__ import annotations

import contextlib
import itertools
import re
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from .perturbation import cap_factors, class_factors

__all__ = [
    "select_params",
    "class_gradients",
    "class_perturbations",
    "sam_perturbation",
    "frequency_groups",
    "TrunkCache",
]


def select_params(model: nn.Module, blocks: int = 0, pattern: str | None = None) -> list[tuple[str, nn.Parameter]]:
    """Parameters to perturb: the classifier plus the last ``blocks`` blocks, or those matching ``pattern``.

    Blocks are timm's fine-grained parameter groups (``model.group_matcher(coarse=False)``; the stem counts
    as a block). ``pattern`` (``re.search`` on ``named_parameters`` names of the timm model) replaces
    both and selects exactly what it matches. Only parameters with ``requires_grad`` are returned.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pattern is not None:
        rx = re.compile(pattern)
        out = [(n, p) for n, p in named if rx.search(n)]
        if not out:
            raise ValueError(f"params pattern {pattern!r} matches no trainable parameter")
        return out
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    head_ids = {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    chosen = set(head_ids)
    if blocks > 0:
        if not hasattr(model, "group_matcher"):
            raise ValueError(f"{type(model).__name__} has no timm group_matcher: select parameters with 'params'")
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=False))
        by_name = dict(named)
        ordered = []
        for names in groups.values():
            ids = [id(by_name[n]) for n in names if n in by_name and id(by_name[n]) not in head_ids]
            if ids:
                ordered.append(ids)
        for ids in ordered[-blocks:]:
            chosen.update(ids)
    out = [(n, p) for n, p in named if id(p) in chosen]
    if not out:
        raise ValueError("no parameters selected: the model has no classifier parameters and blocks=0")
    return out


def frequency_groups(class_counts: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split classes sorted by training count into ``groups`` contiguous groups of (nearly) equal size.

    Returns ``(group_of_class (C,), group_count (G,))``; a group's count for Eq. 8 is the mean n_c of its
    classes.
    """
    n = torch.as_tensor(class_counts, dtype=torch.float64)
    C = n.numel()
    groups = max(1, min(int(groups), C))
    order = torch.argsort(n, descending=True, stable=True)
    group_of = torch.empty(C, dtype=torch.long)
    group_of[order] = torch.arange(C) * groups // C
    total = torch.zeros(groups, dtype=torch.float64).index_add_(0, group_of, n)
    mean = total / torch.bincount(group_of, minlength=groups)
    return group_of, mean


def class_gradients(
    losses: torch.Tensor,
    slots: torch.Tensor,
    num_slots: int,
    params: Sequence[torch.Tensor],
    global_counts: torch.Tensor,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_scale: float = 1.0,
) -> torch.Tensor:
    """Class-mean gradients ``g_c = d(mean_{i in S_c} l_i)/dw``, flat, ``num_slots x k`` (one autograd call per class).

    ``slots[i]`` is the class slot of sample i; gradients of the local class SUMS are all-reduced (summed)
    over processes when ``all_reduce`` is given and divided by the global class sizes ``global_counts``:
    the exact global class-mean gradient (each sample's loss as its own process computed it). ``loss_scale``
    multiplies the losses before differentiation and divides the gradients after (fp16 underflow).
    """
    k = sum(p.numel() for p in params)
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    out = torch.zeros(num_slots, k, dtype=dtype, device=losses.device)
    for s in range(num_slots):
        sel = slots == s
        if not bool(sel.any()):
            continue
        grads = torch.autograd.grad(loss_scale * losses[sel].sum(), list(params), retain_graph=True,
                                    allow_unused=True)
        out[s] = torch.cat([(g if g is not None else torch.zeros_like(p)).to(dtype).reshape(-1)
                            for g, p in zip(grads, params)])
    if all_reduce is not None:
        out = all_reduce(out)
    return out / (loss_scale * global_counts.to(out).clamp_min(1))[:, None]


def class_perturbations(
    grads: torch.Tensor,
    params: Sequence[torch.Tensor],
    counts: torch.Tensor,
    *,
    scale: float,
    norm: str,
    kind: str = "ccsam",
    max_ratio: float | None = None,
    eps: float = 1e-12,
    generator: torch.Generator | None = None,
    ref_count: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 8-9 on flat class gradients (P x k): ``(eps (P x k), ||eps_c|| / ||w|| (P,), capped (P,) bool)``.

    ``counts`` are the TRAINING counts of the P classes (or the mean count of a frequency group).
    """
    sizes = [p.numel() for p in params]
    dev = grads.device
    seg = torch.repeat_interleave(torch.arange(len(sizes), device=dev), torch.tensor(sizes, device=dev))
    sq = torch.zeros(len(sizes), grads.shape[0], dtype=grads.dtype, device=grads.device)
    sq.index_add_(0, seg, grads.square().T)  # ||g_c^t||^2
    wnorm = torch.sqrt(sum(p.detach().to(grads.dtype).square().sum() for p in params))
    k = sum(sizes)
    a = class_factors(sq, wnorm, k, counts, scale=scale, norm=norm, kind=kind, eps=eps, ref_count=ref_count)
    a, capped = cap_factors(a, sq, wnorm, max_ratio)
    if kind == "magnitude":  # Eq. 9 magnitude along a random Gaussian direction
        mag = a * sq.sqrt()  # T x P
        u = torch.randn(grads.shape, generator=generator, dtype=grads.dtype, device="cpu").to(grads.device)
        if norm == "global":
            u = u / u.norm(dim=1, keepdim=True) * torch.linalg.vector_norm(mag, dim=0)[:, None]
        else:
            usq = torch.zeros_like(sq).index_add_(0, seg, u.square().T)
            u = u * (mag / usq.sqrt().clamp_min(eps)).T[:, seg]
        delta = u
    else:
        delta = grads * a.T[:, seg]  # eps_c^t = a[t, c] g_c^t
    ratio = torch.linalg.vector_norm(delta, dim=1) / wnorm.clamp_min(eps)
    return delta, ratio, capped


def sam_perturbation(
    grads: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    rho: float,
    adaptive: bool = False,
    eps: float = 1e-12,
) -> list[torch.Tensor]:
    """SAM (Foret et al. 2021): ``eps = rho g / ||g||``; adaptive (ASAM, Kwon et al. 2021, as in the widely
    used ``davda54/sam``): ``eps = rho |w|^2 g / || |w| g ||``."""
    if adaptive:
        scaled = [p.detach().abs() * g for g, p in zip(grads, params)]
    else:
        scaled = list(grads)
    dtype = torch.float64 if any(p.dtype == torch.float64 for p in params) else torch.float32
    gnorm = torch.sqrt(sum(s.to(dtype).square().sum() for s in scaled)).clamp_min(eps)
    if adaptive:
        return [rho * p.detach().abs() * s / gnorm for s, p in zip(scaled, params)]
    return [rho * g / gnorm for g in grads]


class TrunkCache:
    """Replays the clean-pass outputs of the modules that finish before any perturbed parameter is used.

    ``record()`` wraps the clean forward: it finds the maximal sub-modules of ``model`` without perturbed
    parameters, called once, that complete before the first module owning a perturbed parameter starts,
    and keeps their outputs (with graph). ``replay()`` wraps a perturbed forward on the SAME batch: those
    modules return a copy of a leaf holding the clean output, so only the tail runs. Gradients reaching the
    leaves are handed back to the trunk by ``surrogate`` in the final backward. Exact for a deterministic
    trunk (dropout masks are shared with the clean pass) when every perturbed parameter is used inside its
    own module's forward; disabled (``enabled = False``) if the root model owns a perturbed parameter.
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]) -> None:
        sel = {id(p) for p in params}
        self.model = model
        self.enabled = not any(id(p) in sel for p in model.parameters(recurse=False))
        self.owners = [m for m in model.modules() if any(id(p) in sel for p in m.parameters(recurse=False))]
        self.candidates: list[nn.Module] = []

        def visit(module: nn.Module) -> None:
            for child in module.children():
                if any(id(p) in sel for p in child.parameters()):
                    visit(child)
                else:
                    self.candidates.append(child)

        if self.enabled:
            visit(model)
        self.entries: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        self.entries = []
        if not self.enabled:
            yield
            return
        clock = itertools.count()
        start: dict[int, int] = {}
        seen: dict[int, list] = {}

        def pre(mod: nn.Module, args: tuple) -> None:
            start.setdefault(id(mod), next(clock))

        def post(mod: nn.Module, args: tuple, out: object) -> None:
            seen.setdefault(id(mod), []).append((next(clock), out))

        handles = [m.register_forward_pre_hook(pre) for m in self.owners]
        handles += [m.register_forward_hook(post) for m in self.candidates]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
        first = min((start[id(m)] for m in self.owners if id(m) in start), default=None)
        if first is None:
            return
        for m in self.candidates:
            calls = seen.get(id(m), [])
            if len(calls) == 1 and calls[0][0] < first and isinstance(calls[0][1], torch.Tensor):
                out = calls[0][1]
                self.entries.append((m, out, out.detach().requires_grad_(out.requires_grad)))

    @property
    def leaves(self) -> list[torch.Tensor]:
        return [leaf for _, _, leaf in self.entries if leaf.requires_grad]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        saved = []
        for m, _, leaf in self.entries:
            saved.append((m, m.__dict__.get("forward")))
            m.forward = (lambda t: lambda *a, **k: t.clone())(leaf)  # a copy: in-place ops stay local
        try:
            yield
        finally:
            for m, prev in saved:
                if prev is None:
                    del m.forward
                else:
                    m.forward = prev

    def surrogate(self, leaf_grads: Sequence[torch.Tensor | None]) -> torch.Tensor | float:
        """``sum_m <clean output_m, accumulated leaf gradient_m>`` (in ``leaves`` order, None = no gradient):
        its backward sends the leaves' gradients through the trunk."""
        outs = [out for _, out, leaf in self.entries if leaf.requires_grad]
        return sum((out.to(g.dtype) * g).sum() for out, g in zip(outs, leaf_grads) if g is not None)
