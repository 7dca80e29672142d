"""timm ImageNet ResNets for 64-px inputs (Tiny-ImageNet-LT), registered in timm under ``*_64px*`` names.

The weights are timm's ``resnet50`` / ``resnext50_32x4d`` modules exactly (same parameter names, so
timm tooling and ImageNet checkpoints of the same arch load into them); what differs is the stem and the
data config (64 px, ``crop_pct`` 0.875, ImageNet mean / std), which ``from_pretrained`` uses to preprocess.
The stem is the recipe key ``model.arch`` (a registered name keeps it in every saved config.json):

============================  =====================================================  ===============
name                          stem                                                   final feature map
============================  =====================================================  ===============
``resnet50_64px``             timm's: 7x7 stride-2 conv + 3x3 stride-2 max-pool       2x2 (64 px in)
``resnet50_64px_nomaxpool``   7x7 stride-2 conv, max-pool removed                    4x4
``resnet50_64px_s1``          3x3 stride-1 conv, max-pool removed (the CIFAR stem)   8x8
============================  =====================================================  ===============

and the same three for ``resnext50_32x4d_64px*``. Removing the max-pool costs ~4x the FLOPs of timm's stem,
the stride-1 stem ~16x; measured training speed at one CPU thread: 26 / 10 / 2.0 img/s
(``bench/stem_throughput.py``).
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet

STEMS = ("timm", "nomaxpool", "s1")
_SUFFIX = {"timm": "", "nomaxpool": "_nomaxpool", "s1": "_s1"}
_POOL = {"timm": 2, "nomaxpool": 4, "s1": 8}


class SmallInputResNet(ResNet):
    """timm's ResNet with the stem ``stem`` ("timm", "nomaxpool" or "s1", see the module docstring)."""

    def __init__(self, *args: Any, stem: str = "timm", **kwargs: Any) -> None:
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}: use one of {STEMS}")
        super().__init__(*args, **kwargs)
        self.stem = stem
        if stem == "timm":
            return
        self.maxpool = nn.Identity()
        if stem == "s1":
            self.conv1 = nn.Conv2d(self.conv1.in_channels, self.conv1.out_channels, 3, 1, 1, bias=False)
        factor = 2 if stem == "nomaxpool" else 4  # the max-pool's 2 (and the stem conv's 2)
        for info in self.feature_info:
            if info["module"] == "act1":  # the stem conv's output, before the (removed) max-pool
                info["reduction"] = 2 if stem == "nomaxpool" else 1
            else:
                info["reduction"] //= factor


def _cfg(stem: str) -> dict[str, Any]:
    pool = _POOL[stem]
    return {
        "num_classes": 1000,
        "input_size": (3, 64, 64),
        "pool_size": (pool, pool),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
    }


_ARCHS = {"resnet50": {}, "resnext50_32x4d": {"cardinality": 32, "base_width": 4}}
default_cfgs = generate_default_cfgs(
    {f"{arch}_64px{_SUFFIX[stem]}.untrained": _cfg(stem) for arch in _ARCHS for stem in STEMS}
)


def _create(arch: str, stem: str, pretrained: bool, **kwargs: Any) -> SmallInputResNet:
    return build_model_with_cfg(
        SmallInputResNet,
        f"{arch}_64px{_SUFFIX[stem]}",
        pretrained,
        block=Bottleneck,
        layers=(3, 4, 6, 3),
        stem=stem,
        **_ARCHS[arch],
        **kwargs,
    )


@register_model
def resnet50_64px(pretrained: bool = False, **kwargs: Any) -> SmallInputResNet:
    """ResNet-50 (timm's) with timm's stem and a 64-px data config."""
    return _create("resnet50", "timm", pretrained, **kwargs)


@register_model
def resnet50_64px_nomaxpool(pretrained: bool = False, **kwargs: Any) -> SmallInputResNet:
    """ResNet-50 for 64-px inputs: the stem's max-pool removed (4x4 final map)."""
    return _create("resnet50", "nomaxpool", pretrained, **kwargs)


@register_model
def resnet50_64px_s1(pretrained: bool = False, **kwargs: Any) -> SmallInputResNet:
    """ResNet-50 for 64-px inputs: 3x3 stride-1 stem conv, no max-pool (8x8 final map)."""
    return _create("resnet50", "s1", pretrained, **kwargs)


@register_model
def resnext50_32x4d_64px(pretrained: bool = False, **kwargs: Any) -> SmallInputResNet:
    """ResNeXt-50 32x4d (timm's) with timm's stem and a 64-px data config."""
    return _create("resnext50_32x4d", "timm", pretrained, **kwargs)


@register_model
def resnext50_32x4d_64px_nomaxpool(pretrained: bool = False, **kwargs: Any) -> SmallInputResNet:
    """ResNeXt-50 32x4d for 64-px inputs: the stem's max-pool removed (4x4 final map)."""
    return _create("resnext50_32x4d", "nomaxpool", pretrained, **kwargs)


@register_model
def resnext50_32x4d_64px_s1(pretrained: bool = False, **kwargs: Any) -> SmallInputResNet:
    """ResNeXt-50 32x4d for 64-px inputs: 3x3 stride-1 stem conv, no max-pool (8x8 final map)."""
    return _create("resnext50_32x4d", "s1", pretrained, **kwargs)
