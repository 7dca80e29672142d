"""ccsam_zoo: a model zoo for deep long-tailed recognition built around CC-SAM (CVPR 2023).

Importing the package is cheap (no torch): the subpackages (``ccsam_zoo.data``, ``.models``, ``.ccsam``,
``.metrics``, ``.training``, ``.hub``, ``.inference``, ``.diagnostics``) and the Hub-facing functions load
on first use. The CIFAR ResNets join timm's registry as soon as timm is imported (or right away when it
already is), so ``import ccsam_zoo`` then ``timm.create_model("resnet32_cifar")`` works as before.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

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
SUBPACKAGES = ("ccsam", "data", "diagnostics", "hub", "inference", "metrics", "models", "training")

__all__ = ["__version__", *_LAZY, *SUBPACKAGES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'ccsam_zoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Import ``ccsam_zoo.models`` (which registers the CIFAR ResNets) right after ``timm`` is imported."""

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001  (importlib's protocol)
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # once; the other finders locate timm
        import importlib.util

        spec = importlib.util.find_spec("timm")
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module  # this loader object serves timm alone: wrap its method, keep the loader

        def exec_module(module) -> None:  # noqa: ANN001
            run(module)
            try:
                importlib.import_module("ccsam_zoo.models")
            except Exception as err:  # noqa: BLE001  (never break `import timm`; create_model will say more)
                import warnings

                warnings.warn(f"ccsam_zoo could not register its CIFAR ResNets with timm: {err}", stacklevel=2)

        loader.exec_module = exec_module
        return spec


if "timm" in sys.modules:
    from . import models  # noqa: F401  (registers resnet{20,32,44,56,110}_cifar with timm)
elif not any(isinstance(f, _RegisterWhenTimmLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())
