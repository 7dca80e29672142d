"""Deterministic samplers: the order depends only on (seed, epoch), so every Accelerate rank iterates the
identical sequence and keeps its own share of the batches (Accelerate does not replace custom samplers).

Each iteration advances the epoch by one; ``set_epoch(e)`` pins the next iteration to epoch ``e``
(Accelerate's prepared loaders call it at every epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**64, epoch % 2**64])


class _EpochSampler(Sampler[int]):
    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch`` for the next iteration."""
        self.epoch = int(epoch)

    def indices(self, epoch: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.indices(epoch).tolist())


class ShuffleSampler(_EpochSampler):
    """A random permutation of ``range(n)``, deterministic per (seed, epoch)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__(seed)
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def indices(self, epoch: int) -> np.ndarray:
        """The order of the given epoch."""
        return _rng(self.seed, epoch).permutation(self.n)


class ClassBalancedSampler(_EpochSampler):
    """Class-balanced sampling (Decoupling's ClassAwareSampler, CC-SAM stage 2).

    Each draw takes the next class of a cycle through a shuffled class list (reshuffled at every pass),
    then the next image of that class from a cycle through its shuffled images (reshuffled at every
    pass). Classes without images (and labels < 0) are skipped. ``num_samples`` defaults to
    ``len(labels)``. Deterministic per (seed, epoch).
    """

    def __init__(
        self, labels: Sequence[int] | torch.Tensor | np.ndarray, num_samples: int | None = None, seed: int = 0
    ) -> None:
        super().__init__(seed)
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64)
        self.classes = np.unique(labels[labels >= 0])
        if not len(self.classes):
            raise ValueError("ClassBalancedSampler needs at least one labelled sample")
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        self._members = [order[np.searchsorted(sorted_labels, c) : np.searchsorted(sorted_labels, c, "right")]
                         for c in self.classes]
        self.num_samples = len(labels) if num_samples is None else int(num_samples)

    def __len__(self) -> int:
        return self.num_samples

    def indices(self, epoch: int) -> np.ndarray:
        """The order of the given epoch."""
        rng = _rng(self.seed, epoch)
        n, k = self.num_samples, len(self.classes)
        class_seq = np.concatenate([rng.permutation(k) for _ in range(-(-n // k))])[:n]
        out = np.empty(n, dtype=np.int64)
        positions = np.argsort(class_seq, kind="stable")  # draw positions grouped by class, in draw order
        bounds = np.concatenate([[0], np.cumsum(np.bincount(class_seq, minlength=k))])
        for c in range(k):
            draws = bounds[c + 1] - bounds[c]
            if not draws:
                continue
            members = self._members[c]
            cycles = -(-draws // len(members))
            seq = np.concatenate([members[rng.permutation(len(members))] for _ in range(cycles)])[:draws]
            out[positions[bounds[c] : bounds[c + 1]]] = seq
        return out
