"""On-disk cache of decoded uint8 images (safetensors, never pickle) and of source-file hashes.

Root: ``cache_dir`` argument, else ``$CCSAM_CACHE``, else ``~/.cache/ccsam_zoo``; this module writes
under ``<root>/data/``. Writes are atomic (temporary file + rename) so concurrent processes (one per
Accelerate rank) can share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_VERSION = 1  # bump when the decoding changes


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The data cache folder (created on demand)."""
    root = Path(cache_dir or os.environ.get("CCSAM_CACHE") or Path.home() / ".cache" / "ccsam_zoo")
    return root.expanduser() / "data"


def hash_json(obj: Any) -> str:
    """sha256 of a canonical JSON dump."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha256(path: Path, cache: Path) -> str:
    """Content sha256 of a file, memoised under ``cache`` by (path, size, mtime)."""
    st = path.stat()
    memo = cache / "sha256" / (hash_json([str(path.resolve()), st.st_size, st.st_mtime_ns]) + ".txt")
    try:
        value = memo.read_text().strip()
        if len(value) == 64:
            return value
    except OSError:
        pass
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    value = digest.hexdigest()
    try:
        _atomic_write(memo, lambda tmp: Path(tmp).write_text(value))
    except OSError:  # a read-only cache only costs speed
        pass
    return value


def load_images(key: str, cache: Path) -> torch.Tensor | None:
    """The cached uint8 [N, 3, H, W] tensor for ``key``, or None (a damaged file is removed)."""
    path = cache / "images" / f"{key}.safetensors"
    if not path.exists():
        return None
    try:
        return load_file(path)["images"]
    except (SafetensorError, OSError, KeyError, RuntimeError):
        path.unlink(missing_ok=True)
        return None


def save_images(key: str, cache: Path, images: np.ndarray, meta: dict[str, Any]) -> None:
    """Store a uint8 [N, 3, H, W] array under ``key`` (atomic; errors only cost speed)."""
    path = cache / "images" / f"{key}.safetensors"
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    metadata = {"format": "ccsam_zoo.images", "version": str(_VERSION), "meta": json.dumps(meta, default=str)}
    try:
        _atomic_write(path, lambda tmp: save_file({"images": tensor}, tmp, metadata=metadata))
    except OSError as err:
        warnings.warn(f"could not write the image cache {path} ({err}): images will be decoded again", stacklevel=3)
