"""Turning user inputs (paths, folders, PIL images, arrays, tensors) into RGB images, with clear errors."""

from __future__ import annotations

import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# floating pixel dtypes accepted (values in [0, 1]); float8 and complex tensors are refused
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ORIENTATION = 0x0112  # EXIF orientation tag

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


class LargeImageWarning(UserWarning):
    """An image file above PIL's decompression-bomb warning limit (``PIL.Image.MAX_IMAGE_PIXELS``) was decoded."""


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


def distinct_values(t: torch.Tensor) -> torch.Tensor:
    """A view holding each stored value of ``t`` once along its broadcast (stride-0) dimensions.

    ``torch.zeros(3, 1, 1).expand(3, 30000, 30000)`` gives a ``[3, 1, 1]`` view: checks of finiteness and range
    on it are exact and never materialise the expanded tensor.
    """
    if t.layout != torch.strided or not t.numel():
        return t
    index = tuple(slice(0, 1) if st == 0 and n > 1 else slice(None) for st, n in zip(t.stride(), t.shape))
    return t[index]


def _check_finite(values: np.ndarray | torch.Tensor, source: str | int | None) -> None:
    """Refuse NaN / inf pixels: they would give NaN probabilities (or 'unknown') without any error.

    Tensors are checked on their distinct values (``distinct_values``): an expanded view is never materialised.
    """
    if isinstance(values, torch.Tensor):
        values = distinct_values(values)
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
    """Integer / float arrays of any range to uint8, by their value range (never clipped to black or white).

    The rule: values in [0, 255] are 8-bit (floats in [0, 1]: times 255); integers in [0, 65535] are 16-bit
    (times 255 / 65535); anything else (negative values, 32-bit ranges such as PIL mode "I" TIFFs, floats
    beyond 255) is scaled linearly from the image's own [min, max] to [0, 255] (a constant image becomes
    mid-grey 128). NaN / inf: error.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if not np.issubdtype(arr.dtype, np.integer):
        _check_finite(arr, source)
    a = arr.astype(np.float64)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and hi <= 1.0 and not np.issubdtype(arr.dtype, np.integer):
        a = a * 255.0
    elif lo >= 0 and hi <= 255.0:
        pass
    elif lo >= 0 and hi <= 65535.0 and np.issubdtype(arr.dtype, np.integer):
        a = a * (255.0 / 65535.0)
    elif hi > lo:
        a = (a - lo) * (255.0 / (hi - lo))
    else:
        a = np.full_like(a, 128.0)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned by its EXIF orientation tag (as a camera's viewer shows it); itself when it has none."""
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001  (unreadable EXIF: use the pixels as stored)
        return img
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


def pil_to_rgb(img: Image.Image, source: str | int | None = None) -> Image.Image:
    """Any PIL mode to RGB, upright: the EXIF orientation tag applied (as for files), grayscale / palette / CMYK
    via convert, alpha dropped, 16/32-bit and float images rescaled by their value range (``_to_8bit``).

    An image with a zero side is an error naming ``source``.
    """
    if img.width == 0 or img.height == 0:
        raise ImageInputError(f"image {source}: empty image of size {img.width}x{img.height}", source)
    img = _upright(img)
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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", Image.DecompressionBombWarning)
                img = Image.open(f)
            for w in caught:
                if not issubclass(w.category, Image.DecompressionBombWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
                warnings.warn(
                    f"{path}: {img.width}x{img.height} = {img.width * img.height:,} pixels is above PIL's "
                    f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS); "
                    "decoding it anyway (it is downscaled on load). Pass only images you trust; raise "
                    "PIL.Image.MAX_IMAGE_PIXELS to silence this",
                    LargeImageWarning,
                    stacklevel=4,
                )
            with img:
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
            m = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(m.group(1)):,} pixels" if m else "too many pixels"
            raise ImageInputError(
                f"{path}: possible decompression bomb: {size}, more than twice PIL's limit of "
                f"{Image.MAX_IMAGE_PIXELS:,} pixels (PIL.Image.MAX_IMAGE_PIXELS): refusing to decode it; if you "
                "trust this file, raise PIL.Image.MAX_IMAGE_PIXELS",
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
    if t.is_floating_point() and t.dtype not in FLOAT_DTYPES:
        raise ImageInputError(
            f"image {source}: unsupported tensor dtype {str(t.dtype).removeprefix('torch.')}; pass uint8 or integer "
            "pixels, or float16 / bfloat16 / float32 / float64 values in [0, 1] (e.g. t.float())",
            source,
        )
    t = t.detach().cpu()
    if t.is_floating_point():
        _check_finite(t, source)
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        values = distinct_values(t)
        low, high = (float(values.min()), float(values.max())) if values.numel() else (0.0, 0.0)
        if low < -1e-3 or high > 1 + 1e-3:
            raise ImageInputError(
                f"image {source}: float tensors must hold values in [0, 1] (raw pixels, not normalised)", source
            )
        if low < 0 or high > 1:
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
    return t  # may be a view (an expanded input stays unexpanded until the batch is stacked)


def iter_chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
