"""ccsam_zoo: a model zoo for deep long-tailed recognition built around CC-SAM (CVPR 2023).

Importing the package registers the CIFAR ResNets in timm's registry. The Hub-facing functions are
imported lazily so that ``import ccsam_zoo`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from . import models  # noqa: F401  (registers resnet{20,32,44,56,110}_cifar with timm)

__version__ = "0.1.0"

_LAZY = {
    "from_pretrained": "ccsam_zoo.hub",
    "list_pretrained": "ccsam_zoo.hub",
    "register_pretrained": "ccsam_zoo.hub",
    "push_to_hub": "ccsam_zoo.hub",
    "save_pretrained": "ccsam_zoo.hub",
    "render_model_card": "ccsam_zoo.hub",
    "CheckpointError": "ccsam_zoo.hub",
    "Classifier": "ccsam_zoo.inference",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ccsam_zoo' has no attribute {name!r}")
