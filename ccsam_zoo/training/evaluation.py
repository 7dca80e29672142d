"""Evaluation across processes: predictions gathered with ``gather_for_metrics``, metrics via `evaluate`."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import broadcast_object_list

from ..metrics import load_metric

__all__ = ["balanced_accuracy", "evaluate", "penultimate_features"]


def _sharded_loader(bench, split: str, accelerator: Accelerator, batch_size: int):
    loader = bench.loader(split, batch_size, sampler="sequential")
    return prepare_data_loader(
        loader,
        device=accelerator.device,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
        put_on_device=True,
    )


@torch.no_grad()
def penultimate_features(
    net, bench, split: str, accelerator: Accelerator, batch_size: int, autocast: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z, labels, logits)`` of a whole split in eval mode, without augmentation, on every process
    (under the run's mixed precision unless ``autocast=False``; a module passed through ``accelerator.prepare``
    autocasts in its own patched ``forward`` whatever ``autocast`` says: pass ``FeaturesAndLogits(unwrap(net))``)."""
    was_training = net.training
    net.eval()
    transform = bench.batch_transform(train=False)
    feats, labels, logits = [], [], []
    for images, y in _sharded_loader(bench, split, accelerator, batch_size):
        with accelerator.autocast() if autocast else contextlib.nullcontext():
            z, out = net(transform(images))
        z, out, y = accelerator.gather_for_metrics((z.float(), out.float(), y))
        feats.append(z.cpu())
        logits.append(out.cpu())
        labels.append(y.cpu())
    net.train(was_training)
    return torch.cat(feats), torch.cat(labels), torch.cat(logits)


def evaluate(
    net, bench, split: str, accelerator: Accelerator, batch_size: int, autocast: bool = True
) -> dict[str, Any]:
    """Top-1, many/medium/few and per-class accuracy (%) of ``net`` on a split (same on every process)."""
    _, labels, logits = penultimate_features(net, bench, split, accelerator, batch_size, autocast)
    result: list[Any] = [None]
    if accelerator.is_main_process:  # `evaluate` writes an Arrow cache: once, on the main process
        many, few = bench.shot_thresholds
        result[0] = _percent(
            load_metric("lt_accuracy").compute(
                predictions=logits.argmax(1).tolist(),
                references=labels.tolist(),
                class_counts=list(bench.class_counts),
                many_threshold=many,
                few_threshold=few,
                rule=getattr(bench, "shot_rule", "paper"),
            )
        )
    if accelerator.num_processes > 1:
        broadcast_object_list(result, from_process=0)
    return result[0]


def balanced_accuracy(metrics: dict[str, Any]) -> float:
    """Mean per-class accuracy (%) over the classes the split has images of (``per_class`` not None): the
    validation score of ``eval.select_on=val``. A class without validation images (CIFAR-10-LT's head class
    under ``data.val_rule=left_out``) is left out of the mean, not counted as 0."""
    scored = [a for a in metrics["per_class"] if a is not None]
    if not scored:
        raise ValueError("balanced accuracy of a split without images: the validation split is empty")
    return sum(scored) / len(scored)


def _percent(result: dict[str, Any]) -> dict[str, Any]:
    """The metric module returns fractions; run metrics are in percent, like the paper's tables."""

    def pct(x):
        return None if x is None else 100.0 * x

    return {k: [pct(x) for x in v] if k == "per_class" else pct(v) for k, v in result.items()}
