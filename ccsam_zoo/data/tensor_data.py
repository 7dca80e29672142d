"""Fast path for small images: decode once into a uint8 [N, 3, H, W] tensor, cached on disk.

A batch is one tensor index (``__getitems__``) and the loader's collate passes it through, so loading
costs microseconds per batch; augmentation runs on the whole batch afterwards (``augment.py``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from . import decode as _decode
from ._cache import _VERSION, hash_json, load_images, save_images
from .sources import FileImages, Split


class TensorSplit(Dataset):
    """A split held in memory: ``images`` uint8 [N, 3, H, W] and ``labels`` int64 [N]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"expected uint8 images [N, 3, H, W] and N labels, got {images.shape} / {labels.shape}")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx.to(self.images.device)], self.labels[idx]

    def to_device(self, device: torch.device | str) -> TensorSplit:
        """Keep the images on ``device`` (e.g. a GPU): batches are then sliced there, no host copy."""
        self.images = self.images.to(device)
        return self


def passthrough_collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for ``TensorSplit.__getitems__``: the batch is already two tensors."""
    return batch


def decode_rows(split: Split, rows: np.ndarray, size: int, cache: Path) -> torch.Tensor:
    """uint8 [len(rows), 3, size, size] of the given rows, from the cache or decoded (then cached).

    The cache key hashes the split's content identity (file sha256 / Hub fingerprint / listing), the file
    stats for file sources, the rows and the size.
    """
    rows = np.asarray(rows, dtype=np.int64)
    key = hash_json(
        {
            "version": _VERSION,
            "identity": split.identity,
            "stat": split.images.stat_key(rows) if isinstance(split.images, FileImages) else None,
            "rows": hashlib.sha256(rows.tobytes()).hexdigest(),
            "size": size,
        }
    )
    cached = load_images(key, cache)
    if cached is not None and tuple(cached.shape) == (len(rows), 3, size, size):
        return cached
    images = _decode.decode_batch(
        split.images.refs(rows), size, rows, split.images.origin, split.images.base_dir
    )
    save_images(key, cache, images, {"origin": split.images.origin, "rows": len(rows), "size": size})
    return torch.from_numpy(images)
