"""Turning user inputs (paths, folders, PIL images, arrays, tensors) into RGB images, with clear errors."""

from __future__ import annotations

import os
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


@dataclass
class Item:
    """One input image: ``source`` (path string or index) and its ``payload`` (path, PIL image, array, tensor)."""

    source: str | int
    payload: Any


def expand_inputs(images: Any) -> list[Item]:
    """Flatten the accepted input forms into items (files are not opened yet)."""
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


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """Integer / float arrays of any range to uint8 (16-bit: /257; float: [0, 1] or [0, 255])."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float64))
    scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
    return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: grayscale / palette / CMYK via convert, alpha dropped, 16/32-bit rescaled (not clipped)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return Image.fromarray(_to_8bit(np.asarray(img)), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def open_image(path: Path, short_side: int) -> Image.Image:
    """Open an image file as RGB, EXIF orientation applied, very large images downscaled early.

    Large images: JPEG DCT scaling (``draft``) and an integer ``reduce`` keep the shorter side >= 2x
    ``short_side`` (the eval transform does the final resize). Over ``2 * Image.MAX_IMAGE_PIXELS`` pixels PIL
    refuses the file (decompression bomb): a ValueError naming the file.
    """
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if img.format == "JPEG" and min(w, h) >= 2 * short_side:
                img.draft("RGB", (short_side, short_side))  # DCT scaling keeps both sides >= short_side
            img.load()
            out = ImageOps.exif_transpose(img)  # camera orientation tag (a new image, or img itself)
            out = pil_to_rgb(out)
            out = out.copy() if out is img else out
        factor = min(out.size) // (2 * short_side)
        return out.reduce(factor) if factor >= 2 else out
    except Image.DecompressionBombError as e:
        raise ValueError(
            f"{path}: refusing to decode a possible decompression bomb ({e}); if you trust this file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(f"cannot read {path}: not an image file, or a format PIL does not support") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None


def array_to_input(arr: np.ndarray, source: str | int) -> Image.Image | torch.Tensor:
    """HWC / HW numpy image to a PIL RGB image (integer types) or a CHW float tensor in [0, 1] (float types)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image {source}: numpy arrays must be HWC with 1, 3 or 4 channels, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image {source}: empty image of shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < -1e-3 or np.nanmax(arr) > 1 + 1e-3):
            raise ValueError(f"image {source}: float arrays must hold values in [0, 1]")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
        return tensor_to_input(t, source)
    a = _to_8bit(arr)
    c = a.shape[2]
    a = a[:, :, :3] if c >= 3 else a[:, :, :1]
    return Image.fromarray(np.ascontiguousarray(a[:, :, 0] if a.shape[2] == 1 else a)).convert("RGB")


def tensor_to_input(t: torch.Tensor, source: str | int) -> torch.Tensor:
    """CHW tensor (uint8, or float in [0, 1]) to a CHW float RGB tensor in [0, 1] on the CPU."""
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 2, 3, 4):
        raise ValueError(
            f"image {source}: tensors must be CHW (or BCHW) with 1, 3 or 4 channels, got shape {tuple(t.shape)}"
        )
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"image {source}: empty image of shape {tuple(t.shape)}")
    t = t.detach().cpu()
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        if t.numel() and (t.min() < -1e-3 or t.max() > 1 + 1e-3):
            raise ValueError(f"image {source}: float tensors must hold values in [0, 1] (raw pixels, not normalised)")
        t = t.clamp(0, 1)
    elif t.dtype != torch.bool and not t.is_complex():
        t = torch.from_numpy(_to_8bit(t.to(torch.int64).numpy())).float() / 255.0
    else:
        raise ValueError(f"image {source}: unsupported tensor dtype {t.dtype}")
    c = t.shape[0]
    if c in (1, 2):
        t = t[:1].expand(3, -1, -1)
    elif c == 4:
        t = t[:3]
    return t.contiguous()


def iter_chunks(items: list[Item], size: int) -> Iterator[list[Item]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
