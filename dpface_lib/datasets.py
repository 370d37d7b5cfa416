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
- ``dp5k``: Li et al., ICCP 2023: ``<split>/<capture>/meta_data.h5`` and ``cam{0,1}/{FN_22.png, dep.png,
  FN_<N>_{l,r,c}.png}``; ``a``/``b`` follow from the thin lens (:func:`dpface_lib.geometry.thin_lens_ab`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dpface_lib.geometry import BENCHMARK_K_DP, Optics, thin_lens_ab
from dpface_lib.images import ImageError, drop_alpha, read_image
from dpface_lib.layout import DatasetError, load_npy

__all__ = ["KINDS", "DPDataset", "detect_kind", "open_dataset", "rgb_pair"]

KINDS = ("facedp", "google-dp", "dpdd", "dp5k")
GOOGLE_VIEWS = ("left", "right", "top", "bottom", "center")
#: What ``detect_kind`` looks for, per kind (said in its error message).
SIGNATURES = {
    "facedp": "<root>/<split>.txt beside group folders holding JSON/INFO_*.json",
    "google-dp": "<root>/<split>/merged_depth/<capture>/ (or <root>/merged_depth/)",
    "dpdd": "<root>/<split>_c/source/",
    "dp5k": "<root>/<split>/<capture>/meta_data.h5 with cam0/",
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
    tried = "; ".join(f"{kind}: {where}" for kind, where in SIGNATURES.items())
    raise DatasetError(f"{root}: not a known dual-pixel layout for split {split!r}; looked for {tried}")


def _image(path: Path) -> torch.Tensor:
    """``(C, H, W)`` float32 in [0, 1] at the file's precision; alpha dropped (:func:`drop_alpha`)."""
    try:
        array, _ = read_image(path)
    except ImageError as exc:
        raise DatasetError(str(exc)) from exc
    return torch.from_numpy(np.ascontiguousarray(drop_alpha(array, path).transpose(2, 0, 1)))


def rgb_pair(item: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """An item's ``left`` and ``right`` as ``(H, W, 3)`` float32 numpy arrays, the form the networks take
    (:func:`dpface_lib.inference.predict_pair`); one green channel is taken three times."""
    views = [item[key].expand(3, -1, -1) if item[key].shape[0] == 1 else item[key]
             for key in ("left", "right")]
    left, right = (view.permute(1, 2, 0).numpy() for view in views)
    return left, right


def _grey(path: Path) -> tuple[np.ndarray, int]:
    """First channel ``(H, W)`` float32 in [0, 1] and the bit depth."""
    try:
        array, bits = read_image(path)
    except ImageError as exc:
        raise DatasetError(str(exc)) from exc
    return array[..., 0], bits


class DPDataset(Dataset):
    """Items of one dual-pixel dataset (see the module docstring); ``self.kind``, ``self.items`` (what each
    item is read from) and ``len``. Build it with :func:`open_dataset`."""

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
def _google(root: Path, split: str, view: str = "center") -> DPDataset:
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
        left, right = _image(item["left"]), _image(item["right"])
        depth, bits = _grey(item["depth"])
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
        if left.shape[1:] != depth.shape:  # the PD images may come at another resolution than the depth
            resize = torch.nn.functional.interpolate
            left, right = (resize(x[None], size=depth.shape, mode="area")[0] for x in (left, right))
        return {"left": left, "right": right, "sample_id": f"{item['capture']}/{view}",
                "inverse_depth": torch.from_numpy(depth.astype(np.float32)),
                "confidence": torch.from_numpy(confidence),
                "meta": {"capture": item["capture"], "view": view, "depth_bits": bits,
                         "note": "inverse depth up to an affine map; no (a, b)"}}

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
        out = {key: _image(item[key]) for key in ("left", "right", "combined", "target") if key in item}
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
        depth, bits = _grey(depth_path)
        if bits != 16:
            raise DatasetError(f"{depth_path}: depth must be a 16-bit PNG in mm, found {bits}-bit")
        depth_mm = np.round(depth * 65535.0).astype(np.float32)
        optics = Optics(focal_mm=facts["focal_mm"], focus_mm=facts["focus_mm"], f_number=item["f_number"],
                        pixel_um=facts["pixel_mm"] * 1000.0)
        a, b = thin_lens_ab(optics, None, k)  # fy = focal / pixel pitch, as DP5K's own CoC map
        out = {"left": _image(folder / f"{stem}_l.png"), "right": _image(folder / f"{stem}_r.png"),
               "depth": torch.from_numpy(depth_mm), "mask": torch.from_numpy(depth_mm > 0),
               "a": float(a), "b": float(b),
               "sample_id": f"{item['meta'].parent.name}/cam{item['cam']}/{stem}",
               "meta": {"f_number": item["f_number"], "focus_mm": facts["focus_mm"], "k": k,
                        "focal_mm": facts["focal_mm"], "pixel_mm": facts["pixel_mm"]}}
        for key, name in (("combined", f"{stem}_c.png"), ("sharp", "FN_22.png")):
            if (folder / name).is_file():
                out[key] = _image(folder / name)
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
    ``view`` (google-dp, default ``"center"``); ``k`` (dp5k: DP disparity per CoC pixel, default the
    benchmark sensor's, since DP5K does not calibrate it), ``focal_mm`` and ``pixel_mm`` (dp5k: used when
    ``meta_data.h5`` lacks them; defaults 85 mm and 36/1680 mm as DP5K's own loader); FaceDPDataset filters
    (facedp).
    """
    root = Path(root)
    kind = detect_kind(root, split) if kind == "auto" else kind
    readers = {"facedp": _facedp, "google-dp": _google, "dpdd": _dpdd, "dp5k": _dp5k}
    if kind not in readers:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected 'auto' or one of {KINDS}")
    return readers[kind](root, split, **options)
