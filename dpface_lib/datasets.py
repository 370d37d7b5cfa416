"""One reader interface for public dual-pixel datasets: ``open_dataset(root, split, kind)``.

Every item is a dict with ``left`` and ``right`` (float32 ``(C, H, W)`` in [0, 1]; C = 3, or 1 for one green
channel) and ``sample_id`` (str); where the dataset has them also ``depth`` (float32 ``(H, W)`` mm, 0 =
invalid) or ``inverse_depth`` (float32 ``(H, W)``, ground truth only up to an affine map), ``confidence``
(float32 weights) or ``mask`` (bool), ``a`` and ``b`` (``d = a / Z + b``, px and px·mm) and ``meta`` (dict).
Bit depths and sizes are read from the files (:mod:`dpface_lib.images`); 16-bit PNGs keep their precision.

Kinds (layouts in ``docs/datasets.md``, with sources):

- ``facedp``: the facial benchmark (Kang et al., ECCV 2022) and the kit's simulator;
- ``google-dp``: Garg et al., ICCV 2019 (Pixel 2/3): ``<split>/{left_pd,right_pd,merged_depth,merged_conf,
  scaled_images}/<capture>/result_*_<view>.*``; the ``center`` view is the evaluated one;
- ``dpdd``: Abuolaim & Brown, ECCV 2020 (Canon): ``<split>_{c,l,r}/source/*.png`` and ``<split>_c/target``,
  paired **by sorted order** (names differ between folders); no depth;
- ``pixel4-defocus``, ``dslr-dp``: real captures of Xin et al., ICCV 2021 and Punnappurath et al., ICCP 2020
  (:mod:`dpface_lib.datasets_real`), their DP shift turned onto rows (``meta["dp_axis"]`` is the file's);
- ``dp5k``: Li et al., ICCP 2023: ``<split>/<capture>/meta_data.h5`` and ``cam{0,1}/{FN_22.png, dep.png,
  FN_<N>_{l,r,c}.png}``; ``a``/``b`` follow from the thin lens (:func:`dpface_lib.geometry.thin_lens_ab`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dpface_lib.datasets_base import DPDataset, read_grey, read_views
from dpface_lib.datasets_real import dslr, dslr_root, pixel4, pixel4_root
from dpface_lib.geometry import BENCHMARK_K_DP, Optics, thin_lens_ab
from dpface_lib.layout import DatasetError, load_npy

__all__ = ["KINDS", "DPDataset", "detect_kind", "open_dataset", "rgb_pair"]

KINDS = ("facedp", "google-dp", "dpdd", "dp5k", "pixel4-defocus", "dslr-dp")
GOOGLE_VIEWS = ("left", "right", "top", "bottom", "center")
#: What ``detect_kind`` looks for, per kind (said in its error message).
SIGNATURES = {
    "facedp": "<root>/<split>.txt beside group folders holding JSON/INFO_*.json",
    "google-dp": "<root>/<split>/merged_depth/<capture>/ (or <root>/merged_depth/)",
    "dpdd": "<root>/<split>_c/source/",
    "dp5k": "<root>/<split>/<capture>/meta_data.h5 with cam0/",
    "pixel4-defocus": "<root>[/DP_data_pixel_4]/NNN_left.png with calibration/blur_kernels_left.npy",
    "dslr-dp": "<root>[/GT_data]/NNN_L.jpg with NNN_R.jpg and NNN_D.TIF",
}


def detect_kind(root: str | os.PathLike, split: str = "test") -> str:
    """The layout of ``root`` (one of :data:`KINDS`); raises :class:`DatasetError` listing what was tried."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if (root / f"{split}.txt").is_file() and any(root.glob("*/JSON/INFO_*.json")):
        return "facedp"
    if (root / split / "merged_depth").is_dir() or (root / "merged_depth").is_dir():
        return "google-dp"
    if (root / f"{split}_c" / "source").is_dir():
        return "dpdd"
    if any((root / split).glob("*/meta_data.h5")):
        return "dp5k"
    if pixel4_root(root) is not None:
        return "pixel4-defocus"
    if dslr_root(root) is not None:
        return "dslr-dp"
    tried = "; ".join(f"{kind}: {where}" for kind, where in SIGNATURES.items())
    raise DatasetError(f"{root}: not a known dual-pixel layout for split {split!r}; looked for {tried}")


def rgb_pair(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """An item's ``left`` and ``right`` as ``(H, W, 3)`` float32 numpy arrays, the form the networks take
    (:func:`dpface_lib.inference.predict_pair`); one green channel is taken three times."""
    views = [item[key].expand(3, -1, -1) if item[key].shape[0] == 1 else item[key]
             for key in ("left", "right")]
    left, right = (view.permute(1, 2, 0).numpy() for view in views)
    return left, right


# ------------------------------------------------------------------------------------------- facedp
def _facedp(root: Path, split: str, **options: Any) -> DPDataset:
    from dpface_lib.data import FaceDPDataset

    inner = FaceDPDataset(root, split, **options)

    def read(item: dict[str, Any]) -> dict[str, Any]:
        sample = inner[item["index"]]
        keep = ("left", "right", "depth", "mask", "normal", "a", "b", "sample_id", "K")
        out = {k: sample[k] for k in keep}
        out["a"], out["b"] = float(sample["a"]), float(sample["b"])
        out["meta"] = dict(sample["meta"])
        return out

    return DPDataset("facedp", root, split, [{"index": i} for i in range(len(inner))], read)


# ---------------------------------------------------------------------------------------- google-dp
def _google(root: Path, split: str, view: str = "center", keep_resolution: bool = False) -> DPDataset:
    if view not in GOOGLE_VIEWS:
        raise DatasetError(f"google-dp view must be one of {GOOGLE_VIEWS}, got {view!r}")
    base = root / split if (root / split / "merged_depth").is_dir() else root
    items = []
    def one(folder: Path, suffix: str) -> Path:
        """The file ``*_<view><suffix>`` of a capture folder (as Google's evaluation globs for it)."""
        found = sorted(folder.glob(f"*_{view}{suffix}")) if folder.is_dir() else []
        return found[0] if found else folder / f"<missing>_{view}{suffix}"

    for capture in sorted(p for p in (base / "merged_depth").iterdir() if p.is_dir()):
        name = capture.name
        paths = {"left": one(base / "left_pd" / name, ".png"), "right": one(base / "right_pd" / name, ".png"),
                 "depth": one(capture, ".png"), "confidence": one(base / "merged_conf" / name, ".npy"),
                 "confidence_exr": one(base / "merged_conf" / name, ".exr")}
        if paths["depth"].is_file():
            items.append({"capture": name, **paths})

    def read(item: dict[str, Any]) -> dict[str, Any]:
        left, right = read_views(item["left"]), read_views(item["right"])
        depth, bits = read_grey(item["depth"])
        if item["confidence"].is_file():
            confidence = load_npy(item["confidence"]).astype(np.float32)
        elif item["confidence_exr"].is_file():
            raise DatasetError(f"{item['confidence_exr']}: .exr confidence needs an OpenEXR reader, which "
                               "the kit does not install; the .npy copy is read when present")
        else:
            raise DatasetError(f"{item['confidence']}: confidence file is missing")
        confidence = np.squeeze(confidence)
        if confidence.shape != depth.shape:
            raise DatasetError(f"{item['confidence']}: shape {confidence.shape} does not match the depth map "
                               f"{depth.shape}")
        target, weight = torch.from_numpy(depth.astype(np.float32)), torch.from_numpy(confidence)
        scale = 1.0
        if left.shape[1:] != depth.shape:  # the PD images may come at another resolution than the depth
            resize = torch.nn.functional.interpolate
            if keep_resolution:  # the ground truth is brought to the PD images (nearest), not the reverse
                scale = left.shape[1] / depth.shape[0]
                target, weight = (resize(x[None, None], size=left.shape[1:], mode="nearest")[0, 0]
                                  for x in (target, weight))
            else:  # area-resized PD images: every disparity shrinks by the same factor
                left, right = (resize(x[None], size=depth.shape, mode="area")[0] for x in (left, right))
        return {"left": left, "right": right, "sample_id": f"{item['capture']}/{view}",
                "inverse_depth": target, "confidence": weight,
                "meta": {"capture": item["capture"], "view": view, "depth_bits": bits, "gt_scale": scale,
                         "dp_axis": "rows", "transposed": False,
                         "note": "inverse depth up to an affine map; no (a, b); gt_scale = PD px per "
                                 "ground-truth px (the ground truth is upsampled by it)"}}

    return DPDataset("google-dp", root, split, items, read)


# --------------------------------------------------------------------------------------------- dpdd
def _dpdd(root: Path, split: str) -> DPDataset:
    folders = {"combined": root / f"{split}_c" / "source", "left": root / f"{split}_l" / "source",
               "right": root / f"{split}_r" / "source", "target": root / f"{split}_c" / "target"}
    listing = {key: sorted(folder.glob("*.png")) if folder.is_dir() else []
               for key, folder in folders.items()}
    counts = {key: len(files) for key, files in listing.items() if key != "target" or files}
    if len(set(counts.values())) > 1:
        raise DatasetError(f"{root}: DPDD folders of split {split!r} hold different numbers of PNGs "
                           f"{counts}; they are paired by sorted order, so they must match")
    items = [{key: files[i] for key, files in listing.items() if files} for i in range(len(listing["left"]))]

    def read(item: dict[str, Any]) -> dict[str, Any]:
        out = {key: read_views(item[key]) for key in ("left", "right", "combined", "target") if key in item}
        out["sample_id"] = item["combined"].stem
        out["meta"] = {"files": {k: str(v) for k, v in item.items()}, "note": "no depth in DPDD"}
        return out

    return DPDataset("dpdd", root, split, items, read)


# --------------------------------------------------------------------------------------------- dp5k
F_NUMBER = re.compile(r"^FN_(\d+(?:\.\d+)?)_l\.png$")


#: DP5K's lens and sensor as its own loader models them (85 mm thin lens, 36 mm / 1680 px pixel pitch).
DP5K_FOCAL_MM = 85.0
DP5K_PIXEL_MM = 36.0 / 1680.0


def _dp5k(root: Path, split: str, k: float = BENCHMARK_K_DP, focal_mm: float = DP5K_FOCAL_MM,
          pixel_mm: float = DP5K_PIXEL_MM) -> DPDataset:
    items = []
    for meta in sorted((root / split).glob("*/meta_data.h5")):
        for cam in (0, 1):
            folder = meta.parent / f"cam{cam}"
            for left in sorted(folder.glob("FN_*_l.png")) if folder.is_dir() else []:
                if match := F_NUMBER.match(left.name):
                    items.append({"meta": meta, "cam": cam, "folder": folder,
                                  "f_number": float(match.group(1)), "stem": left.name[:-len("_l.png")]})

    def read(item: dict[str, Any]) -> dict[str, Any]:
        facts = _h5_facts(item["meta"], item["cam"], focal_mm, pixel_mm)
        folder, stem = item["folder"], item["stem"]
        depth_path = folder / "dep.png"
        depth, bits = read_grey(depth_path)
        if bits != 16:
            raise DatasetError(f"{depth_path}: depth must be a 16-bit PNG in mm, found {bits}-bit")
        depth_mm = np.round(depth * 65535.0).astype(np.float32)
        optics = Optics(focal_mm=facts["focal_mm"], focus_mm=facts["focus_mm"], f_number=item["f_number"],
                        pixel_um=facts["pixel_mm"] * 1000.0)
        a, b = thin_lens_ab(optics, None, k)  # fy = focal / pixel pitch, as DP5K's own CoC map
        out = {"left": read_views(folder / f"{stem}_l.png"), "right": read_views(folder / f"{stem}_r.png"),
               "depth": torch.from_numpy(depth_mm), "mask": torch.from_numpy(depth_mm > 0),
               "a": float(a), "b": float(b),
               "sample_id": f"{item['meta'].parent.name}/cam{item['cam']}/{stem}",
               "meta": {"f_number": item["f_number"], "focus_mm": facts["focus_mm"], "k": k,
                        "focal_mm": facts["focal_mm"], "pixel_mm": facts["pixel_mm"]}}
        for key, name in (("combined", f"{stem}_c.png"), ("sharp", "FN_22.png")):
            if (folder / name).is_file():
                out[key] = read_views(folder / name)
        return out

    return DPDataset("dp5k", root, split, items, read)


def _h5_facts(path: Path, cam: int, focal_mm: float, pixel_mm: float) -> dict[str, Any]:
    """``focus_dis_<cam>`` (mm) from ``meta_data.h5``; the focal length and pixel pitch from the file when it
    holds them (``focal_length``, ``pixel_size``, mm), else the reader's values."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            def number(name: str, default: float | None = None) -> float:
                if name in h5:
                    return float(np.asarray(h5[name]).reshape(-1)[0])
                if default is None:
                    raise DatasetError(f"{path}: key {name!r} not found (keys: {sorted(h5)})")
                return default

            return {"focus_mm": number(f"focus_dis_{cam}"), "focal_mm": number("focal_length", focal_mm),
                    "pixel_mm": number("pixel_size", pixel_mm)}
    except OSError as exc:
        raise DatasetError(f"{path}: not a readable HDF5 file ({exc})") from exc


def open_dataset(root: str | os.PathLike, split: str = "test", kind: str = "auto",
                 **options: Any) -> DPDataset:
    """The ``split`` of the dual-pixel dataset at ``root`` as a torch ``Dataset`` of item dicts.

    ``kind``: one of :data:`KINDS` or ``"auto"`` (:func:`detect_kind`). ``options`` go to the reader:
    ``view`` (google-dp, default ``"center"``), ``keep_resolution`` (google-dp: keep the PD images at their
    own size, about twice the depth map's, and upsample the ground truth instead; default ``False`` resizes
    the PD images to the depth map, which halves every disparity); ``vignetting`` (pixel4-defocus, dslr-dp:
    correct the right view's gain, default ``True``), ``downsample`` (pixel4-defocus, dslr-dp: integer
    area-averaging factor, default 1), ``vignetting_window`` (px); ``k`` (dp5k: DP disparity per CoC pixel,
    default the benchmark sensor's, since DP5K does not calibrate it), ``focal_mm`` and ``pixel_mm`` (dp5k:
    used when ``meta_data.h5`` lacks them; defaults 85 mm and 36/1680 mm as DP5K's own loader);
    FaceDPDataset filters (facedp).
    """
    root = Path(root)
    kind = detect_kind(root, split) if kind == "auto" else kind
    readers = {"facedp": _facedp, "google-dp": _google, "dpdd": _dpdd, "dp5k": _dp5k,
               "pixel4-defocus": pixel4, "dslr-dp": dslr}
    if kind not in readers:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected 'auto' or one of {KINDS}")
    return readers[kind](root, split, **options)
