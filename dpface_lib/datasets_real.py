"""Readers of real dual-pixel captures with calibration: ``pixel4-defocus`` and ``dslr-dp``.

Both are reached through :func:`dpface_lib.datasets.open_dataset`; items follow its contract. Every reader
turns the DP shift onto the kit's axis (image **rows**, :mod:`dpface_lib.classical`) and records the file's
own axis in ``meta["dp_axis"]`` (``"columns"`` here) with ``meta["transposed"]``; every map of the item
(views, ground truth, all-in-focus image, kernels) is turned alike.

- ``pixel4-defocus``: Xin et al., "Defocus Map Estimation and Deblurring from a Single Dual-Pixel Image",
  ICCV 2021 (17 Pixel 4 scenes). ``<root>/NNN_{left,right}.png`` (16-bit, green only, 14-bit data with black
  level 1024: ``(x - 1024) / (2^14 - 1)`` clipped at 0), ``calibration/white_sheet_{left,right}.png``
  (vignetting), ``calibration/blur_kernels_{left,right}.npy`` (``(tiles, k, k)`` over a grid of square tiles
  of the central field), ``gt_defocus_map/NNN_gt.png`` (8-bit, 0 = unlabelled) and
  ``gt_all_in_focus_im/NNN_gt.png`` (16-bit). The reader keeps the central field of view (the size of the
  ground-truth map). The defocus map is an affine map of inverse depth (thin lens), so it is the item's
  ``inverse_depth`` with ``mask``/``confidence`` = labelled.
- ``dslr-dp``: Punnappurath et al., "Modeling Defocus-Disparity in Dual-Pixel Sensors", ICCP 2020 (Canon).
  ``<root>/NNN_{L,R}.jpg`` (the two DP views), ``NNN_B.jpg`` (their sum, the ordinary photo) and
  ``NNN_D.TIF`` (8-bit map, 0 = no value), optionally under ``GT_data/``. The map is taken as a target up
  to an affine map (``inverse_depth``) with ``mask = map > 0``.

Vignetting: the two views of a DP pixel see different halves of the lens, so their gains differ across the
frame. ``vignetting=True`` (default) multiplies the right view by the smoothed ratio left / right: of the
white-sheet calibration for the Pixel 4 (box filter of ``vignetting_window`` px, after Xin et al.), of the
scene itself for the DSLR, which has no calibration (the ratio of the two views, box-filtered over a window
much wider than any disparity, is the gain ratio wherever the scene is not flat in one view only).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dpface_lib.datasets_base import DPDataset, read_grey, read_views
from dpface_lib.layout import DatasetError, load_npy

__all__ = ["PIXEL4_BLACK", "PIXEL4_WHITE", "downsample_item", "dslr_root", "pixel4_root"]

#: black level and full scale of the Pixel 4 DP data (14-bit in 16-bit PNGs)
PIXEL4_BLACK = 1024.0
PIXEL4_WHITE = 2.0**14 - 1
#: box window (px) of the Pixel 4 white-sheet gain ratio (as Xin et al.'s loader)
PIXEL4_VIGNETTING_WINDOW = 101
PIXEL4_SCENE = re.compile(r"^(\d+)_left\.png$")
DSLR_SCENE = re.compile(r"^(.+)_L\.(jpg|jpeg|png)$", re.IGNORECASE)


def pixel4_root(root: Path) -> Path | None:
    """The folder holding the Pixel 4 scenes (``root`` or ``root/DP_data_pixel_4``), or ``None``."""
    for folder in (root, root / "DP_data_pixel_4"):
        if (folder / "calibration" / "blur_kernels_left.npy").is_file() and any(folder.glob("*_left.png")):
            return folder
    return None


def dslr_root(root: Path) -> Path | None:
    """The folder holding ``NNN_L.jpg`` with ``NNN_D.TIF`` (``root`` or ``root/GT_data``), or ``None``."""
    for folder in (root, root / "GT_data"):
        if folder.is_dir() and _dslr_scenes(folder):
            return folder
    return None


def _dslr_scenes(folder: Path) -> list[dict[str, Path]]:
    scenes = []
    for left in sorted(folder.iterdir()):
        match = DSLR_SCENE.match(left.name)
        if not match:
            continue
        stem, ext = match.group(1), match.group(2)
        right = left.with_name(f"{stem}_R.{ext}")
        depth = next((p for p in (folder / f"{stem}_D.TIF", folder / f"{stem}_D.tif") if p.is_file()), None)
        if right.is_file() and depth is not None:
            scenes.append({"stem": stem, "left": left, "right": right, "depth": depth,
                           "combined": left.with_name(f"{stem}_B.{ext}")})
    return scenes


def _box(image: torch.Tensor, window: int) -> torch.Tensor:
    """Box mean of a (H, W) map over ``window`` x ``window`` px (odd), edges replicated."""
    r = window // 2
    out = F.pad(image[None, None].double(), (r, r, r, r), mode="replicate")[0, 0]
    for dim in (0, 1):  # separable running sums: O(H W) whatever the window
        total = F.pad(out.cumsum(dim), (1, 0) if dim else (0, 0, 1, 0))
        out = (total.narrow(dim, 2 * r + 1, total.shape[dim] - 2 * r - 1)
               - total.narrow(dim, 0, total.shape[dim] - 2 * r - 1)) / (2 * r + 1)
    return out.to(image.dtype)


def _central(image: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The central ``height`` x ``width`` window of a (..., H, W) map and its top-left corner (row, col)."""
    full_h, full_w = image.shape[-2:]
    if height > full_h or width > full_w:
        raise DatasetError(f"central field {height}x{width} is larger than the image {full_h}x{full_w}")
    y0, x0 = (full_h - height) // 2, (full_w - width) // 2
    return image[..., y0 : y0 + height, x0 : x0 + width], (y0, x0)


def _turn(item: dict[str, Any]) -> dict[str, Any]:
    """Swap rows and columns of every map of a reader item (the DP shift ran along columns)."""
    for key in ("left", "right", "combined", "all_in_focus", "inverse_depth", "confidence", "mask"):
        if key in item:
            item[key] = item[key].transpose(-2, -1).contiguous()
    if "kernels" in item:  # (2, rows, cols, k, k): the tile grid and each kernel turn
        item["kernels"] = item["kernels"].permute(0, 2, 1, 4, 3).contiguous()
    item["meta"].update(dp_axis="columns", transposed=True)
    return item


def downsample_item(item: dict[str, Any], factor: int) -> dict[str, Any]:
    """Area-average an item's maps by an integer ``factor`` (disparities shrink by ``factor``).

    Views and images are box-averaged; the target is averaged over the valid pixels of each block and stays
    valid only where the whole block was (so no block mixes labelled and unlabelled pixels). The kernels are
    left at full resolution; ``meta["downsample"]`` records the factor.
    """
    if factor == 1:
        return item
    if factor < 1:
        raise DatasetError(f"downsample must be an integer >= 1, got {factor}")
    for key in ("left", "right", "combined", "all_in_focus"):
        if key in item:
            item[key] = F.avg_pool2d(item[key][None], factor)[0]
    if "inverse_depth" in item:
        valid = item["mask"].float()
        count = F.avg_pool2d(valid[None, None], factor)[0, 0]
        total = F.avg_pool2d((item["inverse_depth"] * valid)[None, None], factor)[0, 0]
        item["mask"] = count >= 1.0 - 1e-6
        mean = total / count.clamp_min(1e-6)
        item["inverse_depth"] = torch.where(item["mask"], mean, torch.zeros_like(total))
        item["confidence"] = item["mask"].float()
    item["meta"]["downsample"] = factor
    return item


# ------------------------------------------------------------------------------------------- pixel4
def _pixel4_raw(path: Path) -> torch.Tensor:
    """(H, W) float32: 14-bit DP data with black level 1024 in a 16-bit PNG -> [0, 1]."""
    grey, bits = read_grey(path)
    if bits != 16:
        raise DatasetError(f"{path}: Pixel 4 DP views must be 16-bit PNGs, found {bits}-bit")
    counts = np.rint(grey.astype(np.float64) * 65535.0)
    return torch.from_numpy(np.clip((counts - PIXEL4_BLACK) / PIXEL4_WHITE, 0.0, None).astype(np.float32))


def pixel4_gain(folder: Path, window: int = PIXEL4_VIGNETTING_WINDOW) -> torch.Tensor:
    """(H, W) gain of the right view: box-filtered ratio left / right of the white-sheet calibration."""
    calib = folder / "calibration"
    left, right = (_pixel4_raw(calib / f"white_sheet_{side}.png") for side in ("left", "right"))
    if left.shape != right.shape:
        raise DatasetError(f"{calib}: white sheets differ in size {tuple(left.shape)} vs "
                           f"{tuple(right.shape)}")
    return _box(left / right.clamp_min(1e-4), window)


def pixel4(root: Path, split: str, vignetting: bool = True, downsample: int = 1,
           vignetting_window: int = PIXEL4_VIGNETTING_WINDOW) -> DPDataset:
    """The ``pixel4-defocus`` scenes of ``root`` (all of them: the set has no splits; ``split`` is kept for
    the interface). See the module docstring for the item."""
    folder = pixel4_root(root)
    if folder is None:
        raise DatasetError(f"{root}: no Pixel 4 DP scenes (NNN_left.png beside "
                           "calibration/blur_kernels_left.npy)")
    items = [{"scene": m.group(1), "folder": folder} for p in sorted(folder.glob("*_left.png"))
             if (m := PIXEL4_SCENE.match(p.name))]
    gain: dict[str, torch.Tensor] = {}

    def read(item: dict[str, Any]) -> dict[str, Any]:
        scene = item["scene"]
        left, right = (_pixel4_raw(folder / f"{scene}_{side}.png") for side in ("left", "right"))
        if left.shape != right.shape:
            raise DatasetError(f"{folder}/{scene}_right.png: size {tuple(right.shape)} differs from the "
                               "left view")
        if vignetting:
            if "g" not in gain:
                gain["g"] = pixel4_gain(folder, vignetting_window)
            if gain["g"].shape != right.shape:
                raise DatasetError(f"{folder}/calibration: white sheets {tuple(gain['g'].shape)} do not "
                                   f"match the views {tuple(right.shape)}")
            right = right * gain["g"]
        gt_path = folder / "gt_defocus_map" / f"{scene}_gt.png"
        target, bits = read_grey(gt_path)
        if bits != 8:
            raise DatasetError(f"{gt_path}: the defocus map must be an 8-bit PNG, found {bits}-bit")
        height, width = target.shape
        views, corner = _central(torch.stack([left, right]), height, width)
        labelled = torch.from_numpy(target > 0)
        kernels = np.stack([load_npy(folder / "calibration" / f"blur_kernels_{side}.npy").astype(np.float32)
                            for side in ("left", "right")])
        tiles, size = kernels.shape[1], kernels.shape[-1]
        rows = _tile_rows(tiles, height, width, folder)
        out: dict[str, Any] = {
            "left": views[0:1].clamp(0.0, 1.0), "right": views[1:2].clamp(0.0, 1.0), "sample_id": scene,
            "inverse_depth": torch.from_numpy(target.astype(np.float32)) * labelled,
            "mask": labelled, "confidence": labelled.float(),
            "kernels": torch.from_numpy(kernels).reshape(2, rows, tiles // rows, size, size),
            "meta": {"scene": scene, "vignetting": vignetting, "crop_corner": corner,
                     "black_level": PIXEL4_BLACK, "white_level": PIXEL4_WHITE,
                     "note": "gt_defocus_map /255: defocus, an affine map of inverse depth; 0 = unlabelled"},
        }
        sharp_path = folder / "gt_all_in_focus_im" / f"{scene}_gt.png"
        if sharp_path.is_file():
            sharp, _ = read_grey(sharp_path)
            if sharp.shape != target.shape:
                raise DatasetError(f"{sharp_path}: size {sharp.shape} differs from the defocus map "
                                   f"{target.shape}")
            out["all_in_focus"] = torch.from_numpy(sharp.astype(np.float32))[None]
        return downsample_item(_turn(out), downsample)

    return DPDataset("pixel4-defocus", root, split, items, read)


def _tile_rows(tiles: int, height: int, width: int, folder: Path) -> int:
    """Rows of the kernel grid: square tiles over the ``height`` x ``width`` field (6 x 8 for 1008 x 1344)."""
    for rows in range(1, tiles + 1):
        if tiles % rows == 0 and height * (tiles // rows) == width * rows:
            return rows
    raise DatasetError(f"{folder}/calibration: {tiles} kernel tiles do not tile the {height}x{width} field "
                       "in square tiles")


# --------------------------------------------------------------------------------------------- dslr
def dslr(root: Path, split: str, vignetting: bool = True, downsample: int = 1,
         vignetting_window: int | None = None) -> DPDataset:
    """The ``dslr-dp`` scenes of ``root`` (no splits). ``vignetting_window`` defaults to 1/8 of the width."""
    folder = dslr_root(root)
    if folder is None:
        raise DatasetError(f"{root}: no DSLR DP scenes (NNN_L.jpg, NNN_R.jpg and NNN_D.TIF)")
    items = _dslr_scenes(folder)

    def read(item: dict[str, Any]) -> dict[str, Any]:
        left, right = read_views(item["left"]), read_views(item["right"])
        if left.shape != right.shape:
            raise DatasetError(f"{item['right']}: size {tuple(right.shape)} differs from the left view")
        target, bits = read_grey(item["depth"])
        if target.shape != tuple(left.shape[1:]):
            raise DatasetError(f"{item['depth']}: size {target.shape} differs from the views "
                               f"{tuple(left.shape[1:])}")
        if vignetting:
            window = vignetting_window or (left.shape[-1] // 16) * 2 + 1
            grey_l, grey_r = left.mean(0), right.mean(0)
            right = right * (_box(grey_l, window) / _box(grey_r, window).clamp_min(1e-4))[None]
        labelled = torch.from_numpy(target > 0)
        out: dict[str, Any] = {
            "left": left, "right": right.clamp(0.0, 1.0), "sample_id": item["stem"],
            "inverse_depth": torch.from_numpy(target.astype(np.float32)), "mask": labelled,
            "confidence": labelled.float(),
            "meta": {"scene": item["stem"], "vignetting": vignetting, "depth_bits": bits,
                     "note": "target up to an affine map; 0 = no value"},
        }
        if item["combined"].is_file():
            out["combined"] = read_views(item["combined"])
        return downsample_item(_turn(out), downsample)

    return DPDataset("dslr-dp", root, split, items, read)
