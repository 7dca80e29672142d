"""Turning user inputs (paths, folders, PIL images, arrays, tensors) into RGB images, with clear errors."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)


class ImageInputError(ValueError):
    """An input image that cannot be used; the message names the file (or the input's index) and the problem.

    ``source`` is the path string or index; ``reason`` the message without the ``skip_bad`` hint that
    ``Classifier.predict`` adds when other images were given too (the CLI turns it into ``--skip-bad``).
    """

    def __init__(self, reason: str, source: str | int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source
        self.others = 0  # images of the same call left unclassified (set by with_skip_bad_hint)


class ImageNotFoundError(ImageInputError, FileNotFoundError):
    """An image path that does not exist (also a ``FileNotFoundError``)."""


def with_skip_bad_hint(err: ImageInputError, others: int) -> ImageInputError:
    """The same error, its message ending with how to classify the ``others`` images anyway (when there are any)."""
    if others < 1:
        return err
    msg = (
        f"{err.reason}; the other {others} image{'s were' if others > 1 else ' was'} not classified: pass "
        "skip_bad=True to skip unreadable images and classify the rest"
    )
    out = type(err)(msg, err.source)
    out.reason, out.others = err.reason, others
    return out


@dataclass
class Item:
    """One input image: ``source`` (path string or index) and its ``payload`` (path, PIL image, array, tensor)."""

    source: str | int
    payload: Any


def expand_inputs(images: Any) -> list[Item]:
    """Flatten the accepted input forms into items (files are not opened yet)."""
    if isinstance(images, (bytes, bytearray, memoryview)):
        raise ValueError(
            "raw bytes are not an image input: decode them first (PIL.Image.open(io.BytesIO(data))) or save a file"
        )
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    try:
        seq = list(images)
    except TypeError:
        raise ValueError(
            f"unsupported input of type {type(images).__name__}: pass file paths, a folder, PIL images, "
            "numpy arrays (HWC) or tensors (CHW / BCHW)"
        ) from None
    items: list[Item] = []
    for obj in seq:
        if isinstance(obj, (str, os.PathLike)):
            if not os.fspath(obj):
                raise ValueError(f"input #{len(items)} is an empty path: pass an image file or a folder")
            path = Path(obj)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
                if not files:
                    raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in folder {path}")
                items.extend(Item(str(p), p) for p in files)
            else:
                items.append(Item(str(path), path))
        elif isinstance(obj, torch.Tensor) and obj.ndim == 4:
            items.extend(Item(len(items), t) for t in obj)
        elif isinstance(obj, np.ndarray) and obj.ndim == 4:
            items.extend(Item(len(items), a) for a in obj)
        elif isinstance(obj, (Image.Image, np.ndarray, torch.Tensor)):
            items.append(Item(len(items), obj))
        else:
            raise ValueError(
                f"input #{len(items)} has unsupported type {type(obj).__name__}: pass file paths, a folder, "
                "PIL images, numpy arrays (HWC) or tensors (CHW / BCHW)"
            )
    if not items:
        raise ValueError("no images given: pass at least one file path, folder, PIL image, array or tensor")
    return items


def _check_finite(values: np.ndarray | torch.Tensor, source: str | int | None) -> None:
    """Refuse NaN / inf pixels: they would give NaN probabilities (or 'unknown') without any error."""
    if isinstance(values, torch.Tensor):
        bad = int((~torch.isfinite(values)).sum()) if values.is_floating_point() else 0
        total = values.numel()
    else:
        bad = int((~np.isfinite(values)).sum()) if np.issubdtype(values.dtype, np.inexact) else 0
        total = values.size
    if bad:
        raise ImageInputError(
            f"image {source}: {bad} of {total} pixel values are not finite (NaN or inf); pass finite pixel values "
            "(uint8, or floats in [0, 1])",
            source,
        )


def _to_8bit(arr: np.ndarray, source: str | int | None = None) -> np.ndarray:
    """Integer / float arrays of any range to uint8 (16-bit: /257; float: [0, 1] or [0, 255]; NaN / inf: error)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    _check_finite(arr, source)
    arr = arr.astype(np.float64)
    scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image, source: str | int | None = None) -> Image.Image:
    """Any PIL mode to RGB: grayscale / palette / CMYK via convert, alpha dropped, 16/32-bit rescaled (not clipped).

    An image with a zero side is an error naming ``source``.
    """
    if img.width == 0 or img.height == 0:
        raise ImageInputError(f"image {source}: empty image of size {img.width}x{img.height}", source)
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_to_8bit(np.asarray(img), source), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def _open_regular_file(path: Path):
    """Open ``path`` for reading only if it is a regular file (a named pipe or a device would block or never end).

    ``O_NONBLOCK`` makes opening a FIFO return at once; the type check is on the opened descriptor (no race).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise ImageNotFoundError(f"image file not found: {path} (no such file or folder)", str(path)) from None
    except IsADirectoryError:
        raise ImageInputError(f"{path}: a folder where an image file was expected", str(path)) from None
    except OSError as e:
        raise ImageInputError(f"cannot open {path}: {e.strerror or e}", str(path)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = (
            "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode)
            else "a folder" if stat.S_ISDIR(mode)
            else "not a regular file"
        )  # fmt: skip
        raise ImageInputError(f"{path}: {kind}, not an image file; only regular files are read", str(path))
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_image(path: Path, short_side: int) -> Image.Image:
    """Open an image file as RGB, EXIF orientation applied, very large images downscaled early.

    Only regular files are read (a named pipe, a device or a socket is an error, never a hang).
    Large images: JPEG DCT scaling (``draft``) and an integer ``reduce`` keep the shorter side >= 2x
    ``short_side`` (the eval transform does the final resize). Over ``2 * Image.MAX_IMAGE_PIXELS`` pixels PIL
    refuses the file (decompression bomb): an ``ImageInputError`` naming the file.
    """
    source = str(path)
    with _open_regular_file(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImageInputError(f"cannot read {path}: empty file (0 bytes)", source)
        try:
            with Image.open(f) as img:
                w, h = img.size
                if w == 0 or h == 0:
                    raise ImageInputError(f"cannot read {path}: empty image of size {w}x{h}", source)
                if img.format == "JPEG" and min(w, h) >= 2 * short_side:
                    img.draft("RGB", (short_side, short_side))  # DCT scaling keeps both sides >= short_side
                img.load()
                out = ImageOps.exif_transpose(img)  # camera orientation tag (a new image, or img itself)
                out = pil_to_rgb(out, source)
                out = out.copy() if out is img else out
            factor = min(out.size) // (2 * short_side)
            return out.reduce(factor) if factor >= 2 else out
        except ImageInputError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageInputError(
                f"{path}: refusing to decode a possible decompression bomb ({e}); if you trust this file, raise "
                "PIL.Image.MAX_IMAGE_PIXELS",
                source,
            ) from None
        except UnidentifiedImageError:
            raise ImageInputError(
                f"cannot read {path}: not an image file, or a format PIL does not support", source
            ) from None
        except (OSError, SyntaxError, ValueError, ZeroDivisionError, EOFError) as e:
            raise ImageInputError(f"cannot read {path}: {e}", source) from None


def array_to_input(arr: np.ndarray, source: str | int) -> Image.Image | torch.Tensor:
    """HWC / HW numpy image to a PIL RGB image (integer types) or a CHW float tensor in [0, 1] (float types)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageInputError(
            f"image {source}: numpy arrays must be HWC with 1, 3 or 4 channels, got shape {arr.shape}", source
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageInputError(f"image {source}: empty image of shape {arr.shape}", source)
    if not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageInputError(
            f"image {source}: unsupported array dtype {arr.dtype}; pass uint8 / integer pixels or floats in [0, 1]",
            source,
        )
    _check_finite(arr, source)
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < -1e-3 or np.nanmax(arr) > 1 + 1e-3):
            raise ImageInputError(f"image {source}: float arrays must hold values in [0, 1]", source)
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
        return tensor_to_input(t, source)
    a = _to_8bit(arr, source)
    c = a.shape[2]
    a = a[:, :, :3] if c >= 3 else a[:, :, :1]
    return Image.fromarray(np.ascontiguousarray(a[:, :, 0] if a.shape[2] == 1 else a)).convert("RGB")


def tensor_to_input(t: torch.Tensor, source: str | int) -> torch.Tensor:
    """CHW tensor (uint8, or float in [0, 1]) to a CHW float RGB tensor in [0, 1] on the CPU."""
    if t.layout != torch.strided or t.is_meta:
        kind = "meta" if t.is_meta else str(t.layout).removeprefix("torch.")
        raise ImageInputError(f"image {source}: a {kind} tensor holds no dense pixel values; pass a dense tensor",
                              source)  # fmt: skip
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 2, 3, 4):
        raise ImageInputError(
            f"image {source}: tensors must be CHW (or BCHW) with 1, 3 or 4 channels, got shape {tuple(t.shape)}",
            source,
        )
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ImageInputError(f"image {source}: empty image of shape {tuple(t.shape)}", source)
    t = t.detach().cpu()
    if t.is_floating_point():
        _check_finite(t, source)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        if t.numel() and (t.min() < -1e-3 or t.max() > 1 + 1e-3):
            raise ImageInputError(
                f"image {source}: float tensors must hold values in [0, 1] (raw pixels, not normalised)", source
            )
        t = t.clamp(0, 1)
    elif t.dtype != torch.bool and not t.is_complex():
        t = torch.from_numpy(_to_8bit(t.to(torch.int64).numpy())).float() / 255.0
    else:
        raise ImageInputError(f"image {source}: unsupported tensor dtype {t.dtype}", source)
    c = t.shape[0]
    if c in (1, 2):
        t = t[:1].expand(3, -1, -1)
    elif c == 4:
        t = t[:3]
    return t.contiguous()


def iter_chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
