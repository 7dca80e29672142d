"""Batched augmentation of uint8 image batches as an ``nn.Module`` (fast path).

Random parameters are drawn from torch's global CPU generator (seed it with ``torch.manual_seed``) and
then moved to the batch's device, so a seeded run augments identically on CPU and GPU.

Strong augmentation (``autoaugment``): torchvision v2's ``AutoAugment`` (CIFAR-10 / ImageNet / SVHN policy) or
``RandAugment`` (``"rand-m9-n2"``: 2 ops of magnitude 9 on timm's 0-10 scale), applied per image: every image
draws its own sub-policy (ops, magnitudes, signs) exactly as one call of the torchvision transform on that image
would, in image order; images that drew the same op and magnitude are then transformed together by torchvision's
own op (``_apply_image_or_video_transform``), which gives the per-image result at a fraction of the cost of one
transform call per image (tests/test_strong_augment.py checks equality with the per-image loop).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

_POLICIES = ("cifar10", "imagenet", "svhn")
_RAND = re.compile(r"^rand-m(\d+)-n(\d+)$")  # RandAugment: magnitude (0-10, timm's scale) and number of ops


def strong_augment(spec: bool | str) -> nn.Module | None:
    """The torchvision v2 transform named by ``data.autoaugment``: False -> None; True / ``"cifar10"`` /
    ``"imagenet"`` / ``"svhn"`` -> ``AutoAugment`` with that policy; ``"rand-mM-nN"`` -> ``RandAugment`` with N
    ops of magnitude M out of 10 (``num_magnitude_bins=11``, so M/10 of each op's range, as timm's strings)."""
    if spec is False or spec is None:
        return None
    from torchvision.transforms import v2

    name = "cifar10" if spec is True else str(spec).lower()
    rand = _RAND.match(name)
    if rand:
        magnitude, ops = int(rand.group(1)), int(rand.group(2))
        if not (0 <= magnitude <= 10 and ops >= 1):
            raise ValueError(f"RandAugment {spec!r}: magnitude must be 0-10 and ops >= 1, e.g. 'rand-m9-n2'")
        return v2.RandAugment(num_ops=ops, magnitude=magnitude, num_magnitude_bins=11)
    if name not in _POLICIES:
        raise ValueError(
            f"unknown AutoAugment policy {spec!r}: use one of {_POLICIES}, True (cifar10) or 'rand-mM-nN' "
            "(RandAugment, e.g. rand-m9-n2)"
        )
    return v2.AutoAugment(v2.AutoAugmentPolicy(name))


def _draw_ops(t: nn.Module, magnitudes: dict[str, torch.Tensor | None]) -> list[tuple[str, float]]:
    """One image's ops ``[(op, magnitude)]``, drawn exactly as one ``t.forward`` call on that image draws them
    (the same torch RNG calls in the same order: sub-policy / op, then per op its coin flip and sign), without
    applying them. ``magnitudes``: each op's magnitude bins for the image size (``_magnitudes``). ``Identity``
    and skipped ops are left out."""
    ops: list[tuple[str, float]] = []
    space = t._AUGMENTATION_SPACE
    if hasattr(t, "_policies"):  # AutoAugment: one sub-policy, each of its ops applied with its probability
        steps = t._policies[int(torch.randint(len(t._policies), ()))]
    else:  # RandAugment: num_ops ops drawn uniformly, all at the same magnitude
        steps = range(t.num_ops)
    for step in steps:
        if hasattr(t, "_policies"):
            tid, prob, midx = step
            if not torch.rand(()) <= prob:
                continue
        else:
            tid, midx = t._get_random_item(space)[0], t.magnitude
        signed = space[tid][1]
        magnitude = 0.0
        if magnitudes[tid] is not None:
            magnitude = float(magnitudes[tid][midx])
            if signed and torch.rand(()) <= 0.5:
                magnitude *= -1
        if tid != "Identity":
            ops.append((tid, magnitude))
    return ops


def per_image_augment(t: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply the torchvision v2 ``AutoAugment`` / ``RandAugment`` ``t`` to every image of the uint8 batch ``x``
    [B, C, H, W], each image with its own draw (the result of ``torch.stack([t(img) for img in x])`` under the
    same RNG state); images sharing an (op, magnitude) at a step are transformed together by torchvision's op."""
    b, _, h, w = x.shape
    bins = t.num_magnitude_bins if hasattr(t, "num_magnitude_bins") else 10  # AutoAugment's policies: 10 bins
    magnitudes = {tid: fn(bins, h, w) for tid, (fn, _) in t._AUGMENTATION_SPACE.items()}
    drawn = [_draw_ops(t, magnitudes) for _ in range(b)]
    out = x.clone()
    for step in range(max((len(ops) for ops in drawn), default=0)):
        groups: dict[tuple[str, float], list[int]] = {}
        for i, ops in enumerate(drawn):
            if step < len(ops):
                groups.setdefault(ops[step], []).append(i)
        for (tid, magnitude), rows in groups.items():
            idx = torch.tensor(rows, device=x.device)
            out[idx] = t._apply_image_or_video_transform(
                out[idx], tid, magnitude, interpolation=t.interpolation, fill=t._fill
            )
    return out


class BatchAugment(nn.Module):
    """uint8 [B, 3, H, W] -> normalised float [B, 3, H, W].

    ``augment=True``: optional AutoAugment / RandAugment (``autoaugment``: see ``strong_augment``; torchvision
    v2, per image), zero-pad ``padding`` + random ``H x W`` crop per image, horizontal flip with probability 0.5,
    normalisation, optional Cutout (``cutout``: a ``cutout x cutout`` square set to 0 after normalisation, centre
    uniform in the image, clipped at the border, DeVries & Taylor 2017; ``True`` = 16, their CIFAR-10 size).
    The order is the one of the authors' README and DeVries & Taylor's code: AutoAugment, crop, flip,
    normalise, Cutout. ``augment=False``: normalisation only, ``(x / 255 - mean) / std``.
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
        cutout = 16 if cutout is True else int(cutout)  # true: DeVries & Taylor's CIFAR-10 size
        self.augment, self.padding, self.flip, self.cutout = bool(augment), int(padding), bool(flip), cutout
        self.autoaugment = strong_augment(autoaugment)

    def extra_repr(self) -> str:
        if not self.augment:
            return "normalise only"
        aa = f"autoaugment={type(self.autoaugment).__name__}, " if self.autoaugment is not None else ""
        return f"{aa}pad={self.padding} crop, flip={self.flip}, cutout={self.cutout}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch [B, C, H, W], got shape {tuple(x.shape)}")
        if self.augment:
            if self.autoaugment is not None:
                if x.dtype != torch.uint8:
                    x = (x * 255).round().clamp(0, 255).to(torch.uint8)
                x = per_image_augment(self.autoaugment, x)
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
    """DeVries & Taylor's Cutout (uoguelph-mlrg/Cutout): per image, a hole centre ``(y, x)`` uniform over the
    image, rows ``clip(y - size // 2, 0, H)`` to ``clip(y + size // 2, 0, H)`` (columns likewise) set to 0."""
    b, _, h, w = x.shape
    centres = torch.stack([torch.randint(0, h, (b,)), torch.randint(0, w, (b,))], 1)
    return _cutout_at(x, size, centres.to(x.device))


def _cutout_at(x: torch.Tensor, size: int, centres: torch.Tensor) -> torch.Tensor:
    """Cutout with the given hole centres ``[B, 2]`` (y, x)."""
    _, _, h, w = x.shape
    ys = torch.arange(h, device=x.device)
    xs = torch.arange(w, device=x.device)
    half = size // 2  # as the reference: a hole of 2 * (size // 2) pixels before clipping
    in_y = (ys >= centres[:, :1] - half) & (ys < centres[:, :1] + half)
    in_x = (xs >= centres[:, 1:] - half) & (xs < centres[:, 1:] + half)
    return x.masked_fill((in_y[:, :, None] & in_x[:, None, :])[:, None], 0.0)
