"""Small fixtures in the layouts of the real DP captures (pixel4-defocus, dslr-dp, a google-dp capture whose
PD images are twice the depth map's size), written by the tests themselves with a known answer.

Each scene is a smooth random texture seen by two views that differ by a whole-pixel shift along the file's
columns (as the real captures): ``right(y, x) = gain * left(y, x - d(y, x))`` with ``d`` piecewise constant,
so the readers' output can be compared exactly with the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from dpface_lib.fileio import encode_png

BLACK, WHITE = 1024.0, 2.0**14 - 1


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W) smooth random texture in [0.15, 0.85] (white noise box-blurred twice, 3 px)."""
    x = rng.random((height + 8, width + 8))
    for axis in (0, 1, 0, 1):
        x = (np.roll(x, 1, axis) + x + np.roll(x, -1, axis)) / 3
    x = x[4:-4, 4:-4]
    return 0.15 + 0.7 * (x - x.min()) / (x.max() - x.min())


def disparity_field(height: int, width: int) -> np.ndarray:
    """(H, W) integer column shifts: +2 on the left half of the frame, -1 on the right half."""
    d = np.full((height, width), 2, dtype=np.int64)
    d[:, width // 2 :] = -1
    return d


def shifted_pair(rng: np.random.Generator, height: int,
                 width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right without gain, d): ``right(y, x) = left(y, x - d(y, x))`` exactly (a wider texture)."""
    wide = texture(rng, height, width + 8)
    d = disparity_field(height, width)
    cols = np.arange(width)[None] + 4
    left = wide[:, 4 : 4 + width]
    right = np.take_along_axis(wide, cols - d, axis=1)
    return left, right, d


def _png16(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(np.clip(np.rint(values), 0, 65535).astype(np.uint16)))


def write_pixel4(root: Path, scenes: int = 2, full: tuple[int, int] = (40, 56),
                 field: tuple[int, int] = (24, 32), tile: int = 8, gain: float = 0.8, kernel: int = 5,
                 seed: int = 0) -> dict[str, dict]:
    """A ``DP_data_pixel_4`` folder under ``root``; returns per scene ``left``, ``right`` (the field, the
    right view before the gain, [0, 1]), ``d`` (column shifts), ``target`` (8-bit map, 0 = unlabelled),
    ``kernels`` ((2, tiles, k, k), file order) and ``sharp``."""
    rng = np.random.default_rng(seed)
    folder = root / "DP_data_pixel_4"
    h, w = full
    fh, fw = field
    y0, x0 = (h - fh) // 2, (w - fw) // 2
    tiles = (fh // tile) * (fw // tile)
    kernels = rng.random((2, tiles, kernel, kernel)).astype(np.float32)
    kernels /= kernels.sum(axis=(-2, -1), keepdims=True)
    for side, k in zip(("left", "right"), kernels, strict=True):
        (folder / "calibration").mkdir(parents=True, exist_ok=True)
        np.save(folder / "calibration" / f"blur_kernels_{side}.npy", k)
    _png16(folder / "calibration" / "white_sheet_left.png", np.full(full, BLACK + 0.5 * WHITE))
    _png16(folder / "calibration" / "white_sheet_right.png", np.full(full, BLACK + 0.5 * gain * WHITE))
    truth = {}
    for i in range(1, scenes + 1):
        scene = f"{i:03d}"
        left, right, d = shifted_pair(rng, h, w)
        _png16(folder / f"{scene}_left.png", BLACK + left * WHITE)
        _png16(folder / f"{scene}_right.png", BLACK + gain * right * WHITE)
        crop = (slice(y0, y0 + fh), slice(x0, x0 + fw))
        target = (100 + 20 * d[crop]).astype(np.uint8)
        target[: fh // 4] = 0  # an unlabelled band
        (folder / "gt_defocus_map").mkdir(exist_ok=True)
        (folder / "gt_defocus_map" / f"{scene}_gt.png").write_bytes(encode_png(target))
        sharp = left[crop]
        _png16(folder / "gt_all_in_focus_im" / f"{scene}_gt.png", sharp * 65535)
        truth[scene] = {"left": left[crop], "right": right[crop], "d": d[crop], "target": target,
                        "kernels": kernels, "sharp": sharp}
    return truth


def write_dslr(root: Path, size: tuple[int, int] = (32, 48), gain: float = 0.9, seed: int = 1) -> dict:
    """``GT_data/005_{L,R,B}.png`` (8-bit RGB; the real set is JPEG, the reader takes either) and
    ``005_D.TIF`` under ``root``; returns ``left``, ``right`` (before the gain), ``d`` and ``target``."""
    rng = np.random.default_rng(seed)
    folder = root / "GT_data"
    folder.mkdir(parents=True, exist_ok=True)
    left, right, d = shifted_pair(rng, *size)
    for name, view in (("L", left), ("R", gain * right), ("B", (left + right) / 2)):
        rgb = np.repeat(np.rint(view * 255)[..., None], 3, axis=2).astype(np.uint8)
        Image.fromarray(rgb, "RGB").save(folder / f"005_{name}.png")
    target = (100 + 30 * d).astype(np.uint8)
    target[:, :4] = 0
    Image.fromarray(target, "L").save(folder / "005_D.TIF")
    return {"left": np.rint(left * 255) / 255, "right": np.rint(right * 255) / 255, "d": d, "target": target}


def write_google_double(root: Path, size: tuple[int, int] = (16, 12), seed: int = 2) -> dict:
    """One google-dp capture whose 8-bit PD images are twice the depth map's size (as Google's release);
    returns ``left``, ``right`` (PD size), ``depth`` (8-bit) and ``confidence``."""
    rng = np.random.default_rng(seed)
    h, w = size
    left, right, _ = shifted_pair(rng, 2 * h, 2 * w)
    base = root / "test"
    cap = "20180101_capture"
    for folder, name, view in (("left_pd", "result_leftPd_center.png", left),
                               ("right_pd", "result_rightPd_center.png", right)):
        (base / folder / cap).mkdir(parents=True, exist_ok=True)
        (base / folder / cap / name).write_bytes(encode_png(np.rint(view * 255).astype(np.uint8)))
    depth = rng.integers(1, 255, size=(h, w)).astype(np.uint8)
    (base / "merged_depth" / cap).mkdir(parents=True)
    (base / "merged_depth" / cap / "result_merged_depth_center.png").write_bytes(encode_png(depth))
    confidence = rng.random((h, w)).astype(np.float32)
    (base / "merged_conf" / cap).mkdir(parents=True)
    np.save(base / "merged_conf" / cap / "result_merged_conf_center.npy", confidence)
    return {"left": np.rint(left * 255) / 255, "right": np.rint(right * 255) / 255, "depth": depth,
            "confidence": confidence}
