"""CIFAR ResNets (He et al. 2016, Sec. 4.2) registered in timm's model registry.

The standard CIFAR layout: a 3x3 stem with 16 channels, three stages of ``n`` basic blocks with
16/32/64 channels (depth = 6n + 2), option-A shortcuts (stride-2 subsampling plus zero-padded
channels, no parameters), global average pooling and a linear head. This is the ResNet-32 of the
LDAM / CC-SAM CIFAR-LT experiments.

After ``import ccsam_zoo``::

    model = timm.create_model("resnet32_cifar", num_classes=10)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import create_classifier
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .heads import NormedLinear

__all__ = ["CifarResNet"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # authors' CIFAR configs (ALGORITHM.md)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


class _ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsampling and zero-padded channels (no parameters)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.pad = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def _norm(kind: str, chs: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm2d(chs)
    if kind == "groupnorm":  # batch-independent: used to compare 1- and 2-process runs exactly
        return nn.GroupNorm(min(8, chs), chs)
    raise ValueError(f"norm must be 'batchnorm' or 'groupnorm', got {kind!r}")


class _BasicBlock(nn.Module):
    def __init__(
        self, in_chs: int, out_chs: int, stride: int = 1, shortcut: str = "A", norm: str = "batchnorm"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, out_chs)
        if stride == 1 and in_chs == out_chs:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = _ShortcutA(in_chs, out_chs, stride)
        else:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), _norm(norm, out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs with timm's model interface.

    Args:
        depth: 20, 32, 44, 56, 110, ... (6n + 2).
        num_classes: classifier outputs; 0 removes the classifier (``nn.Identity``).
        in_chans: input channels.
        global_pool: timm pool type ("avg"; "" keeps the feature map).
        widths: channels of the three stages.
        shortcut: "A" (zero-pad, the paper's CIFAR choice) or "B" (1x1 projection).
        head: "linear" or "cosine" (``NormedLinear``: scaled cosine similarity).
        drop_rate: dropout before the classifier.
        norm: "batchnorm" (standard) or "groupnorm" (batch-independent).
    """

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_chans: int = 3,
        global_pool: str = "avg",
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "A",
        head: str = "linear",
        drop_rate: float = 0.0,
        norm: str = "batchnorm",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if head not in ("linear", "cosine"):
            raise ValueError(f"head must be 'linear' or 'cosine', got {head!r}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.head_type = head
        self.grad_checkpointing = False
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = _norm(norm, widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act1")]
        in_chs = widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [
                _BasicBlock(in_chs if j == 0 else w, w, stride if j == 0 else 1, shortcut, norm) for j in range(n)
            ]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            in_chs = w
            self.feature_info.append(dict(num_chs=w, reduction=2**i, module=f"layer{i + 1}"))
        self.num_features = self.head_hidden_size = widths[-1]
        self.global_pool, self.fc = self._make_head(num_classes, global_pool)
        self._init_weights()

    def _make_head(self, num_classes: int, global_pool: str) -> tuple[nn.Module, nn.Module]:
        pool, fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        if self.head_type == "cosine" and num_classes > 0:
            fc = NormedLinear(self.num_features, num_classes)
        return pool, fc

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> nn.Module | str:
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = self._make_head(num_classes, global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"resnet{d}_cifar.untrained": _cfg() for d in (20, 32, 44, 56, 110)})


def _create(variant: str, depth: int, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return build_model_with_cfg(
        CifarResNet,
        variant,
        pretrained,
        depth=depth,
        feature_cfg=dict(out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage)."""
    return _create("resnet20_cifar", 20, pretrained, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage), the CIFAR-LT backbone of LDAM and CC-SAM."""
    return _create("resnet32_cifar", 32, pretrained, **kwargs)


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (7 blocks per stage)."""
    return _create("resnet44_cifar", 44, pretrained, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage)."""
    return _create("resnet56_cifar", 56, pretrained, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage)."""
    return _create("resnet110_cifar", 110, pretrained, **kwargs)
