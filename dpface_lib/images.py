"""Image files at their own precision: 8- and 16-bit, grey, colour and alpha, decoded explicitly.

Pillow alone is not enough for dual-pixel data: it opens a 48-bit RGB PNG as 8-bit RGB (silently dropping
the low byte) and turns a 16-bit grey PNG into white when asked for RGB. So PNG files are decoded with
``torchvision.io.decode_png``, which keeps 16 bits, and every other format (JPEG, PGM/PPM, TIFF, BMP) with
Pillow, whose mode says the bit depth. Values are scaled by the file's own maximum (255 or 65535) into
float32 [0, 1]. Conversions that lose information (dropping a non-opaque alpha channel, CMYK to RGB) warn
with :class:`ImageWarning`, naming the file; conversions that lose nothing (grey repeated to RGB) are
silent. Pillow's decompression-bomb limit applies to every format, PNG included (the header is read by
Pillow first).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

__all__ = ["ImageError", "ImageWarning", "drop_alpha", "read_image", "to_rgb"]

#: Pillow modes read as they are, with the largest value of their bit depth.
_PIL_SCALE = {"1": 1, "L": 255, "LA": 255, "RGB": 255, "RGBA": 255, "I;16": 65535, "I;16B": 65535,
              "I;16L": 65535, "I;16N": 65535}


class ImageError(ValueError):
    """An image file cannot be decoded, or holds something that is not an 8/16-bit picture."""


class ImageWarning(UserWarning):
    """A conversion lost information (alpha dropped, CMYK converted); the message names the file."""


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode ``path`` into float32 ``(H, W, C)`` in [0, 1] and its bit depth (8 or 16).

    ``C`` is what the file holds: 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA). Palette images are
    expanded to RGB(A). Raises :class:`ImageError` naming the file for a missing, corrupt or oversized
    file, or for 32-bit integer / floating-point images, whose range is not defined.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: image file is missing")
    try:
        with Image.open(path) as image:  # reads the header only, and applies the decompression-bomb check
            if image.format == "PNG":
                return _decode_png(path)
            image.load()
            return _from_pillow(image, path)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image is too large to decode safely ({exc})") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, RuntimeError) as exc:
        raise ImageError(f"{path}: not a readable image (corrupt or unsupported: {exc})") from exc


def _decode_png(path: Path) -> tuple[np.ndarray, int]:
    import torch
    from torchvision.io import ImageReadMode, decode_png, read_file

    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; the kit pins it
        warnings.simplefilter("ignore", DeprecationWarning)
        data = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)  # (C, H, W) uint8 or uint16
    bits = 16 if data.dtype == torch.uint16 else 8
    array = data.to(torch.int32).permute(1, 2, 0).numpy().astype(np.float32)
    return array / np.float32(65535 if bits == 16 else 255), bits


def _from_pillow(image, path: Path) -> tuple[np.ndarray, int]:
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    elif mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    elif mode == "I" and image.format in ("PPM", "TIFF"):  # 16-bit PGM/TIFF opened as 32-bit integers
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise ImageError(f"{path}: 32-bit integer image with values outside 0..65535")
        return (array.astype(np.float32) / np.float32(65535))[..., None], 16
    elif mode not in _PIL_SCALE:
        if mode in ("I", "F"):
            raise ImageError(f"{path}: {mode!r} images (32-bit integer or float) have no defined range; "
                             "save the picture as 8- or 16-bit")
        warnings.warn(f"{path}: {mode} image converted to RGB by Pillow (colours may shift)",
                      ImageWarning, stacklevel=3)
        image, mode = image.convert("RGB"), "RGB"
    scale = _PIL_SCALE[mode]
    array = np.asarray(image).astype(np.float32) / np.float32(scale)
    if array.ndim == 2:
        array = array[..., None]
    return array, 16 if scale == 65535 else 8


def drop_alpha(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``(H, W, C)`` from :func:`read_image` without its alpha channel (C = 2 or 4 -> 1 or 3).

    Dropping an alpha channel that is not fully opaque warns with :class:`ImageWarning` (the colour under a
    transparent pixel is kept as stored, not composited on any background).
    """
    if array.shape[-1] not in (2, 4):
        return array
    transparent = float(np.mean(array[..., -1] < 1.0))
    if transparent > 0:
        warnings.warn(f"{path}: alpha channel dropped ({100 * transparent:.1f}% of pixels not opaque)",
                      ImageWarning, stacklevel=3)
    return array[..., :-1]


def to_rgb(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """``(H, W, C)`` from :func:`read_image` as ``(H, W, 3)``: grey repeated, alpha dropped
    (:func:`drop_alpha`)."""
    array = drop_alpha(array, path)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array, dtype=np.float32)
