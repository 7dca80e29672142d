"""JSON for everything the project writes or prints (configs, metrics, reports, CLI output): strict JSON."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

__all__ = ["JSONNestingError", "jsonable", "dumps", "loads"]


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


class JSONNestingError(ValueError):
    """JSON text nested deeper than Python's parser can follow (``json.loads`` would raise ``RecursionError``)."""


def loads(text: str | bytes, source: str = "JSON text") -> Any:
    """``json.loads`` whose too-deep nesting is a ``JSONNestingError`` naming ``source`` (not a ``RecursionError``).

    Malformed JSON still raises ``json.JSONDecodeError``; callers name the file and the fix for both.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONNestingError(
            f"{source}: JSON nested too deeply (arrays / objects inside each other more than about "
            f"{sys.getrecursionlimit()} levels deep); no ccsam_zoo file is nested more than a few levels"
        ) from None
