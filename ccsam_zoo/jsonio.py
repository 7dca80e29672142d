"""JSON for everything the project writes or prints (configs, metrics, reports, CLI output): strict JSON."""

from __future__ import annotations

import json
import math
import os
from typing import Any

__all__ = ["jsonable", "dumps"]


def jsonable(value: Any) -> Any:
    """A strict-JSON copy: tensors / numpy to lists or scalars, tuples to lists, NaN / inf to None, paths to str,
    mapping keys to str, anything else to its ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "tolist"):  # a torch tensor
        return jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist") and type(value).__module__.startswith("numpy"):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def dumps(value: Any, indent: int | None = 2) -> str:
    """``json.dumps`` of ``jsonable(value)`` (never NaN / Infinity tokens)."""
    return json.dumps(jsonable(value), indent=indent, allow_nan=False)
