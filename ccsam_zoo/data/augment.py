"""Batched augmentation of uint8 image batches as an ``nn.Module`` (fast path).

Random parameters are drawn from torch's global CPU generator (seed it with ``torch.manual_seed``) and
then moved to the batch's device, so a seeded run augments identically on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_POLICIES = ("cifar10", "imagenet", "svhn")


class BatchAugment(nn.Module):
    """uint8 [B, 3, H, W] -> normalised float [B, 3, H, W].

    ``augment=True``: optional AutoAugment (torchvision v2, per image), zero-pad ``padding`` + random
    ``H x W`` crop per image, horizontal flip with probability 0.5, normalisation, optional Cutout
    (a ``cutout x cutout`` square set to 0 after normalisation, centre uniform in the image, clipped at
    the border, DeVries & Taylor 2017). ``augment=False``: normalisation only, ``(x / 255 - mean) / std``.
    Float input is taken as already scaled to [0, 1].
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: bool = True,
        padding: int = 4,
        flip: bool = True,
        autoaugment: bool | str = False,
        cutout: int = 0,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.augment, self.padding, self.flip, self.cutout = bool(augment), int(padding), bool(flip), int(cutout)
        self.autoaugment = None
        if autoaugment:
            from torchvision.transforms import v2

            policy = "cifar10" if autoaugment is True else str(autoaugment).lower()
            if policy not in _POLICIES:
                raise ValueError(f"unknown AutoAugment policy {autoaugment!r}: use one of {_POLICIES} or True")
            self.autoaugment = v2.AutoAugment(v2.AutoAugmentPolicy(policy))

    def extra_repr(self) -> str:
        if not self.augment:
            return "normalise only"
        aa = "autoaugment, " if self.autoaugment is not None else ""
        return f"{aa}pad={self.padding} crop, flip={self.flip}, cutout={self.cutout}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
        if self.augment:
            if self.autoaugment is not None:
                if x.dtype != torch.uint8:
                    x = (x * 255).round().clamp(0, 255).to(torch.uint8)
                x = torch.stack([self.autoaugment(img) for img in x])
            if self.padding > 0 or self.flip:
                x = random_crop_flip(x, self.padding, self.flip)
        scale = (255.0 if x.dtype == torch.uint8 else 1.0) * self.std.to(x.device)
        x = torch.div(x, scale).float().sub_(self.mean.to(x.device) / self.std.to(x.device))  # a new tensor
        if self.augment and self.cutout > 0:
            x = cutout(x, self.cutout)
        return x


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool = True) -> torch.Tensor:
    """Zero-pad each image by ``padding``, take a random crop of the original size, flip it horizontally
    with probability 0.5 (all per image): one gather over the batch."""
    b, c, h, w = x.shape
    width = w + 2 * padding
    padded = F.pad(x, (padding, padding, padding, padding)) if padding else x
    offsets = torch.randint(0, 2 * padding + 1, (b, 2))  # (dy, dx) per image
    cols = torch.arange(w).expand(b, w)
    if flip:
        flipped = torch.rand(b) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    index = (torch.arange(h)[:, None] * width).view(1, h, 1) + (offsets[:, 1:] + cols).view(b, 1, w)
    index = (index + (offsets[:, 0] * width).view(b, 1, 1)).view(b, 1, h * w).to(x.device)
    return padded.reshape(b, c, -1).gather(2, index.expand(b, c, h * w)).view(b, c, h, w)


def cutout(x: torch.Tensor, size: int) -> torch.Tensor:
    """Set a ``size x size`` square per image to 0 (centre uniform in the image, clipped at the border)."""
    b, _, h, w = x.shape
    centres = torch.stack([torch.randint(0, h, (b,)), torch.randint(0, w, (b,))], 1).to(x.device)
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    lo, hi = size // 2, size - size // 2
    in_y = (ys >= centres[:, :1] - lo) & (ys < centres[:, :1] + hi)
    in_x = (xs >= centres[:, 1:] - lo) & (xs < centres[:, 1:] + hi)
    return x.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.0)
