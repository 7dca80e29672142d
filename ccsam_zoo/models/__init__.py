"""Backbones: CIFAR ResNets and 64-px timm ResNets registered in timm, heads, and the (features, logits) view."""

from .cifar_resnet import CIFAR_MEAN, CIFAR_STD, CifarResNet
from .heads import FeaturesAndLogits, NormedLinear, linear_head_params
from .small_input import SmallInputResNet

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "CifarResNet",
    "FeaturesAndLogits",
    "NormedLinear",
    "SmallInputResNet",
    "linear_head_params",
]
