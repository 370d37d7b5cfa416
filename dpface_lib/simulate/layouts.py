"""Write a simulated set in the layout of a public DP dataset (``dpface simulate --layout``).

The simulator renders in the facial benchmark's layout; :func:`export_layout` rewrites every view of it in
the file layout, formats and bit depths of ``google-dp``, ``dpdd`` or ``dp5k`` (see
:mod:`dpface_lib.datasets`), so each reader can be tested against known ground truth and a model can be
trained on synthetic data in any of these layouts. What each layout keeps:

- ``google-dp``: green-channel left/right PD images as 16-bit grey PNGs, the centre view only; the depth as
  8-bit normalised inverse depth (1/Z scaled to [1, 255] on the face, 0 = invalid) with a float32
  confidence (1 on the face, 0 elsewhere); the LR-sum as ``scaled_images`` JPEG.
- ``dpdd``: left, right and combined views as 16-bit RGB PNGs named ``NNNNN_<view>_{L,R,C}.png`` and the
  all-in-focus stand-in (the albedo) as ``target/aif_NNNNN.png``, so only the sorted order pairs them.
- ``dp5k``: one capture per view with ``cam0/`` only: ``dep.png`` (uint16 mm), ``FN_<N>_{l,r,c}.png``
  (16-bit RGB), ``FN_22.png`` (the albedo as the sharp stand-in) and ``meta_data.h5`` with the focus distance
  (``-a / b``, mm), ``pixel_size`` and ``focal_length`` (mm) and ``K0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dpface_lib.fileio import atomic_save_npy, atomic_save_png, atomic_write, atomic_write_bytes
from dpface_lib.layout import read_calibration

LAYOUTS = ("facedp", "google-dp", "dpdd", "dp5k")


def _u16(chw: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] -> ``(H, W, C)`` uint16."""
    return np.round(np.clip(np.asarray(chw).transpose(1, 2, 0), 0, 1) * 65535).astype(np.uint16)


def _inverse_depth_u8(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    inverse = np.where(mask, 1.0 / np.where(mask, depth, 1.0), np.nan)
    lo, hi = np.nanmin(inverse), np.nanmax(inverse)
    scaled = 1 + 254 * (inverse - lo) / max(hi - lo, 1e-12)
    return np.where(mask, np.round(scaled), 0).astype(np.uint8)


def _google(sample: dict[str, Any], out: Path, split: str, index: int) -> None:
    from dpface_lib.simulate.optics import encode_jpeg

    name = f"{index:05d}_{sample['sample_id'].replace('/', '_')}"
    base = out / split
    mask = sample["mask"]
    atomic_save_png(base / "left_pd" / name / "result_leftPd_center.png", _u16(sample["left"][1:2]))
    atomic_save_png(base / "right_pd" / name / "result_rightPd_center.png", _u16(sample["right"][1:2]))
    atomic_save_png(base / "merged_depth" / name / "result_merged_depth_center.png",
                    _inverse_depth_u8(sample["depth"], mask))
    atomic_save_npy(base / "merged_conf" / name / "result_merged_conf_center.npy", mask.astype(np.float32))
    atomic_write_bytes(base / "scaled_images" / name / "result_scaled_image_center.jpg",
                       encode_jpeg(sample["lrsum"].transpose(1, 2, 0), quality=95))


def _dpdd(sample: dict[str, Any], out: Path, split: str, index: int) -> None:
    stem = f"{index:05d}_{sample['sample_id'].replace('/', '_')}"
    atomic_save_png(out / f"{split}_l" / "source" / f"{stem}_L.png", _u16(sample["left"]))
    atomic_save_png(out / f"{split}_r" / "source" / f"{stem}_R.png", _u16(sample["right"]))
    atomic_save_png(out / f"{split}_c" / "source" / f"{stem}_C.png", _u16(sample["lrsum"]))
    atomic_save_png(out / f"{split}_c" / "target" / f"aif_{index:05d}.png", _u16(sample["albedo"]))


def _dp5k(sample: dict[str, Any], out: Path, split: str, index: int) -> None:
    import h5py

    group_dir = Path(sample["meta"]["json"]).parent.parent
    metadata = read_calibration(group_dir, keys=("metadata",))["metadata"]
    focal_mm, f_number = float(metadata[0]), float(metadata[2])
    a, b = float(sample["a"]), float(sample["b"])
    K = np.asarray(sample["K"], dtype=np.float64)
    capture = out / split / f"{index:05d}_{sample['sample_id'].replace('/', '_')}"
    cam = capture / "cam0"
    atomic_save_png(cam / "dep.png", np.round(np.where(sample["mask"], sample["depth"], 0)).astype(np.uint16))
    for view, image in (("l", sample["left"]), ("r", sample["right"]), ("c", sample["lrsum"])):
        atomic_save_png(cam / f"FN_{f_number:g}_{view}.png", _u16(image))
    atomic_save_png(cam / "FN_22.png", _u16(sample["albedo"]))

    def write(tmp: str) -> None:
        with h5py.File(tmp, "w") as h5:
            h5["focus_dis_0"] = -a / b  # b = -a / g for a thin lens
            h5["pixel_size"] = focal_mm / K[1, 1]  # mm of the stored image's pixel
            h5["focal_length"] = focal_mm
            h5["K0"] = K
            h5["AF_point_0"] = np.array([K[1, 2], K[0, 2]])  # DP5K records an autofocus point (row, col)

    atomic_write(capture / "meta_data.h5", write)


def export_layout(source: str | os.PathLike, out: str | os.PathLike, layout: str,
                  splits: tuple[str, ...] = ("train", "test")) -> dict[str, int]:
    """Rewrite the facedp set ``source`` under ``out`` in ``layout``; returns samples written per split.

    ``out`` should be a new folder (``dpface simulate`` builds it beside ``--out`` and renames it).
    """
    from dpface_lib.data import FaceDPDataset

    writers = {"google-dp": _google, "dpdd": _dpdd, "dp5k": _dp5k}
    if layout not in writers:
        raise ValueError(f"layout must be one of {sorted(writers)}, got {layout!r}")
    source, out = Path(source), Path(out)
    counts = {}
    for split in splits:
        split_file = source / f"{split}.txt"
        if not split_file.is_file() or not split_file.read_text().strip():  # absent or empty split
            continue
        dataset = FaceDPDataset(source, split)
        for i in range(len(dataset)):
            sample = {k: v.numpy() if hasattr(v, "numpy") else v for k, v in dataset[i].items()}
            writers[layout](sample, out, split, i)
        counts[split] = len(dataset)
    return counts
