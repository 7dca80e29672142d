"""Large images: a ``datasets.Dataset`` of image references decoded and transformed by timm in the workers."""

from __future__ import annotations

from typing import Any

import torch
from timm.data import create_transform
from torch.utils.data import Dataset

from .decode import open_image


def timm_transform(image_size: int, train: bool, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """timm's ImageNet pipeline: train = RandomResizedCrop(0.08-1) + flip + ColorJitter(0.4); eval = resize + crop.

    The colour jitter (brightness / contrast / saturation 0.4, no hue) is the one of the ImageNet-LT /
    Places-LT / iNaturalist recipes of OLTR and Decoupling (cRT); interpolation is bilinear (timm's
    training default is random).
    """
    if train:
        return create_transform(
            image_size, is_training=True, scale=(0.08, 1.0), hflip=0.5, color_jitter=0.4,
            interpolation="bilinear", mean=mean, std=std,
        )
    return create_transform(image_size, is_training=False, crop_pct=0.875, interpolation="bilinear", mean=mean, std=std)


class _DecodeTransform:
    """``set_transform`` function: decode each reference to RGB and apply the timm transform."""

    def __init__(self, transform: Any, base_dir: str | None, origin: str) -> None:
        self.transform, self.base_dir, self.origin = transform, base_dir, origin

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[torch.Tensor]]:
        where = f"in {self.origin}"
        return {"image": [self.transform(open_image(r, where, self.base_dir)) for r in batch["image"]]}


class ImageSplit(Dataset):
    """A split of large images: ``hf`` (``datasets.Dataset`` with an ``image`` column) and ``labels``.

    Items are ``(float image [3, S, S], label)``, already normalised by the timm transform.
    """

    def __init__(self, hf: Any, labels: torch.Tensor, transform: Any, base_dir: str | None, origin: str) -> None:
        self.hf = hf
        self.labels = labels.long()
        self.origin = origin
        self.hf.set_transform(_DecodeTransform(transform, base_dir, origin))

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        try:
            image = self.hf[index]["image"]
        except (ValueError, FileNotFoundError) as err:
            raise type(err)(f"{err} (item {index} of the split)") from err
        return image, self.labels[index]
