"""``lazy_module``: a stand-in for a heavy module (torch) that imports it on first attribute access.

Modules whose import must stay cheap (the ``ccsam-zoo`` start-up path: ``--help``, ``--version``, ``list``)
write ``torch = lazy_module("torch")`` instead of ``import torch``; annotations are strings
(``from __future__ import annotations``), so only code that runs touches the real module.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["lazy_module", "lazy_attributes"]


class _LazyModule:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy_module(name: str) -> Any:
    """The module ``name`` if already imported, else a proxy that imports it when an attribute is read."""
    import sys

    return sys.modules.get(name) or _LazyModule(name)


def lazy_attributes(package: str, table: dict[str, str]) -> Any:
    """A module ``__getattr__`` (PEP 562) for ``package``: attribute ``name`` comes from the submodule
    ``table[name]`` (relative to ``package``), imported on first use."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(f"{package}.{table[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
