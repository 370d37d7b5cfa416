"""What every dual-pixel dataset reader shares: the :class:`DPDataset` container and the image readers.

:mod:`dpface_lib.datasets` (public layouts) and :mod:`dpface_lib.datasets_real` (real captures with
calibration) build on it; ``open_dataset`` lives in the former.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dpface_lib.images import ImageError, drop_alpha, read_image
from dpface_lib.layout import DatasetError

__all__ = ["DPDataset", "read_grey", "read_views"]


def read_views(path: Path) -> torch.Tensor:
    """``(C, H, W)`` float32 in [0, 1] at the file's precision; alpha dropped (:func:`drop_alpha`)."""
    try:
        array, _ = read_image(path)
    except ImageError as exc:
        raise DatasetError(str(exc)) from exc
    return torch.from_numpy(np.ascontiguousarray(drop_alpha(array, path).transpose(2, 0, 1)))


def read_grey(path: Path) -> tuple[np.ndarray, int]:
    """First channel ``(H, W)`` float32 in [0, 1] and the bit depth."""
    try:
        array, bits = read_image(path)
    except ImageError as exc:
        raise DatasetError(str(exc)) from exc
    return array[..., 0], bits


class DPDataset(Dataset):
    """Items of one dual-pixel dataset (see :mod:`dpface_lib.datasets`); ``self.kind``, ``self.items`` (what
    each item is read from) and ``len``. Build it with :func:`dpface_lib.datasets.open_dataset`."""

    def __init__(self, kind: str, root: Path, split: str, items: list[dict[str, Any]],
                 read: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        if not items:
            raise DatasetError(f"{root}: no {kind} sample found for split {split!r}")
        self.kind, self.root, self.split, self.items, self._read = kind, root, split, items, read

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self._read(self.items[i])

    def __repr__(self) -> str:
        return f"DPDataset(kind={self.kind!r}, root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
