"""File-system helpers shared by the writers: the user's umask for files that tools create private."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["apply_umask", "umask"]


def umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` and everything under it the permissions the user's umask gives new files and folders.

    ``tempfile.mkdtemp`` makes folders 0700 and safetensors writes files 0600 whatever the umask; the
    atomic writers call this on their temporary folder before renaming it into place.
    """
    mask = umask()
    root = Path(path)
    items = [root] if not root.is_dir() else [root, *root.rglob("*")]
    for p in items:
        if p.is_symlink():
            continue
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
