"""Thin helpers over an ``accelerate.Accelerator`` (or ``None`` = plain single-process PyTorch)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn


def unwrap(net: nn.Module, accelerator: Any) -> nn.Module:
    """``net`` without its DDP / ``torch.compile`` wrappers (the ``FeaturesAndLogits`` view)."""
    from ..models.heads import unwrap as _unwrap

    return _unwrap(net, timm_model=False)


def world_size(accelerator: Any) -> int:
    return 1 if accelerator is None else int(accelerator.num_processes)


def backward(loss: torch.Tensor, accelerator: Any) -> None:
    if accelerator is None:
        loss.backward()
    else:
        accelerator.backward(loss)


def grad_scale(accelerator: Any) -> float:
    """The fp16 GradScaler's current scale (1.0 without one): for ``autograd.grad`` calls outside ``backward``."""
    scaler = getattr(accelerator, "scaler", None) if accelerator is not None else None
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0


def no_sync(net: nn.Module, accelerator: Any) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` (gradients accumulate locally), a no-op without data parallelism."""
    if world_size(accelerator) > 1 and hasattr(net, "no_sync"):
        return net.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor, accelerator: Any) -> torch.Tensor:
    if world_size(accelerator) == 1:
        return t
    return accelerator.reduce(t.contiguous(), reduction="sum")


def padded_gather(accelerator: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``gather`` for ``perturbed_head_logits``: uneven local batches are padded with -1 (dropped by label)."""
    if world_size(accelerator) == 1:
        return None

    def gather(t: torch.Tensor) -> torch.Tensor:
        return accelerator.gather(accelerator.pad_across_processes(t.contiguous(), dim=0, pad_index=-1))

    return gather


def average_gradients(params: list[nn.Parameter], accelerator: Any) -> None:
    """Mean of ``.grad`` over processes in one flat all-reduce (for passes run under ``no_sync``)."""
    if world_size(accelerator) == 1:
        return
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = accelerator.reduce(flat, reduction="mean")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers keep normalising with batch statistics but do not update running statistics.

    Sets ``momentum = 0`` (``running = 1 * running + 0 * batch``, bitwise unchanged) and restores
    ``momentum`` and ``num_batches_tracked`` on exit: the extra SAM / CC-SAM passes leave the running
    statistics exactly as the first (clean) pass left them.
    """
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            nbt = m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None
            saved.append((m, m.momentum, nbt))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, nbt in saved:
            m.momentum = momentum
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)
