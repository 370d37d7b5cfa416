"""Reader of the facial dual-pixel benchmark layout (and of the kit's simulated sets).

The layout is described in ``docs/dataset_layout.md``; :mod:`dpface_lib.layout` reads and checks its
files one by one (split files, JSON records, arrays, images, calibration) and keeps every path inside the
dataset root. Every problem raises :class:`DatasetError` naming the file and what is wrong.

Three entry points:

- :func:`index` -> a pandas DataFrame, one row per JSON (one view under one light), with metadata and
  file paths.
- :func:`read_sample` -> a dict of numpy arrays (images (H, W, 3) float32 in [0, 1], depth (H, W) mm, ...).
- :class:`FaceDPDataset` -> a torch ``Dataset`` of channel-first tensors with the disparity ground truth
  ``d = a / Z + b`` (px) inside the face mask.

Left/right: ``PATH.left`` is returned as ``left`` and ``PATH.right`` as ``right``, with no swapping
anywhere in the reader. With the kit's sign convention (``dpface_lib.geometry``) the right view is the left
view shifted by ``+d`` along image rows. (The original loader exchanged the two names and then swapped them
back per split and per group; the kit keeps one convention and leaves any per-group correction of real data
to configuration.)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from dpface_lib import DATA_SAMPLES, REPO_ROOT
from dpface_lib.filecheck import check_dataset_files
from dpface_lib.geometry import BENCHMARK_CAMERA_AB, depth_to_disparity, intrinsics_from_vector
from dpface_lib.layout import (
    ARRAY_KEYS,
    IMAGE_KEYS,
    JSON_NAME_PATTERN,
    DatasetError,
    check_pair_colour,
    info_bool,
    info_int,
    load_image,
    load_npy,
    parse_literal_array,
    read_calibration,
    read_json_record,
    read_split,
    resolve_data_path,
    select_ab,
    warn_if_no_face,
)

__all__ = [
    "BENCHMARK_CAMERA_AB",
    "DatasetError",
    "FaceDPDataset",
    "evenly_spaced",
    "index",
    "parse_literal_array",
    "read_calibration",
    "read_sample",
    "read_split",
    "resolve_data_root",
]

def _json_row(root: Path, json_path: Path, record: dict | None = None) -> dict[str, Any]:
    """Metadata and resolved paths of one JSON (no array is read)."""
    record = read_json_record(json_path) if record is None else record
    info, paths = record["INFO"], record["PATH"]
    group_dir = json_path.resolve().parent.parent
    name_match = JSON_NAME_PATTERN.match(json_path.name)
    for key in ("gender", "expression", "position", "direction"):
        if not isinstance(info[key], str):
            raise DatasetError(f"{json_path}: INFO.{key} must be a string, got {info[key]!r}")
    row: dict[str, Any] = {
        "group": str(info.get("group") or group_dir.name),
        "person": info_int(info, "person", json_path) if info.get("person") is not None else -1,
        "gender": info["gender"],
        "camidx": info_int(info, "camidx", json_path),
        "lightidx": info_int(info, "lightidx", json_path),
        "viewidx": info_int(info, "viewidx", json_path, name_match.group(2) if name_match else -1),
        "expression": info["expression"],
        "position": info["position"],
        "direction": info["direction"],
        "valid": info_bool(info, "valid", json_path),
        "sample_id": f"{group_dir.name}/{json_path.stem}",
        "json": str(json_path.resolve()),
    }
    for key in (*IMAGE_KEYS, *ARRAY_KEYS):
        rel = paths.get(key)
        row[key] = (
            None if rel is None else str(resolve_data_path(root, group_dir, rel, source=json_path, key=key))
        )
    return row


def _as_set(values: Any) -> set | None:
    if values is None:
        return None
    if isinstance(values, (str, int)):
        return {values}
    return set(values)


def _root_of(json_path: Path) -> Path:
    return json_path.resolve().parent.parent.parent


# --------------------------------------------------------------------------------------------- public API
def index(
    root: str | Path,
    split: str | None = None,
    *,
    skip_bad: bool = False,
    valid_only: bool = True,
    lights: Iterable[int] | int | None = None,
    cameras: Iterable[int] | int | None = None,
    views: Iterable[int] | int | None = None,
    expressions: Iterable[str] | str | None = None,
    positions: Iterable[str] | str | None = None,
    directions: Iterable[str] | str | None = None,
    genders: Iterable[str] | str | None = None,
    groups: Iterable[str] | str | None = None,
    persons: Iterable[int] | int | None = None,
) -> pd.DataFrame:
    """One row per JSON (a view under one light) of ``split`` (``None``: every group folder under ``root``).

    Columns: group, person, gender, camidx, lightidx, viewidx, expression, position, direction, valid,
    sample_id, json, and the absolute paths left, right, lrsum, depth, normal, mask (None when absent),
    albedo. Filters keep rows whose value is in the given set (``lights=[1]`` is the original training
    setting); ``valid_only`` drops ``INFO.valid == false``. Only JSON metadata and paths are checked here;
    arrays are checked by :func:`read_sample`. With ``skip_bad`` unreadable JSONs are left out and listed
    in ``df.attrs["skipped"]`` as ``(json path, reason)``, with one warning; otherwise the first problem
    raises :class:`DatasetError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root does not exist")
    if split is None:
        group_names = sorted(p.name for p in root.iterdir() if (p / "JSON").is_dir())
        if not group_names:
            raise DatasetError(f"{root}: no group folder with a JSON/ sub-folder")
    else:
        group_names = read_split(root, split)
    keep_groups, keep_lights, keep_cams, keep_views = (
        _as_set(groups),
        _as_set(lights),
        _as_set(cameras),
        _as_set(views),
    )
    rows, skipped = [], []
    for group in group_names:
        if keep_groups is not None and group not in keep_groups and Path(group).name not in keep_groups:
            continue
        json_dir = root / group / "JSON"
        if not json_dir.is_dir():
            raise DatasetError(f"{json_dir}: JSON folder of group {group!r} is missing")
        for json_path in sorted(json_dir.glob("*.json")):
            match = JSON_NAME_PATTERN.match(json_path.name)
            if not match:  # e.g. a stray copy "INFO_1_12_3 (1).json" would count a sample twice
                error = DatasetError(f"{json_path}: not a sample record name INFO_<cam>_<view>_<light>.json "
                                     "(a stray copy?); move it out of the JSON folder")
                if not skip_bad:
                    raise error
                skipped.append((str(json_path), str(error)))
                continue
            cam, view, light = (int(g) for g in match.groups())  # cheap pre-filter on the name
            if (
                (keep_cams is not None and cam not in keep_cams)
                or (keep_lights is not None and light not in keep_lights)
                or (keep_views is not None and view not in keep_views)
            ):
                continue
            try:
                rows.append(_json_row(root, json_path))
            except (DatasetError, ValueError, TypeError) as exc:
                if not skip_bad:
                    raise (
                        exc if isinstance(exc, DatasetError) else DatasetError(f"{json_path}: {exc}")
                    ) from exc
                skipped.append((str(json_path), str(exc)))
    columns = ["group", "person", "gender", "camidx", "lightidx", "viewidx", "expression", "position",
               "direction", "valid", "sample_id", "json", *IMAGE_KEYS, *ARRAY_KEYS]
    frame = pd.DataFrame(rows, columns=columns)
    keys = ["group", "camidx", "viewidx", "lightidx"]
    twice = frame[frame.duplicated(keys, keep=False)]
    if len(twice):
        first = twice.sort_values("json").groupby(keys)["json"].apply(list).iloc[0]
        raise DatasetError(f"{first[0]} and {first[1]} describe the same sample (group, camera, view and "
                           "light); each sample may have one record")
    filters = {
        "lightidx": keep_lights,
        "camidx": keep_cams,
        "viewidx": keep_views,
        "expression": _as_set(expressions),
        "position": _as_set(positions),
        "direction": _as_set(directions),
        "gender": _as_set(genders),
        "person": _as_set(persons),
    }
    for column, allowed in filters.items():
        if allowed is not None:
            frame = frame[frame[column].isin(allowed)]
    if valid_only:
        frame = frame[frame["valid"]]
    frame = frame.reset_index(drop=True)
    frame.attrs["skipped"] = skipped
    if skipped:
        warnings.warn(
            f"index({root}, {split!r}): skipped {len(skipped)} bad JSON file(s); first: {skipped[0]}",
            stacklevel=2,
        )
    return frame


def read_sample(
    json_path: str | Path, *, root: str | Path | None = None, ab_source: str = "auto"
) -> dict[str, Any]:
    """Read every file of one view (one JSON) and check that they agree.

    Returns numpy arrays:

    - ``left``, ``right``, ``lrsum``: float32 (H, W, 3) in [0, 1];
    - ``depth``: float32 (H, W) mm, 0 outside the mask;
    - ``normal``: float32 (H, W, 3), unit inside the mask, 0 outside;
    - ``mask``: bool (H, W), the stored mask (or depth > 0 when the JSON has none) restricted to depth > 0;
    - ``albedo``: float32 (H, W, 3);
    - ``K``: float64 (3, 3); ``pose``: float64 (4, 4) world->camera (mm); ``light``: float64 (3,) or None;
    - ``a``, ``b``: floats, disparity = a / Z + b (px); ``meta``: the index row (dict); ``sample_id``.

    ``root`` defaults to three levels above the JSON (``ROOT/<group>/JSON/INFO_*.json``). ``ab_source``:
    "json" uses PARAMS.abvalue, "table" the per-camera benchmark table :data:`BENCHMARK_CAMERA_AB`, "auto"
    the JSON value when present and finite except for real benchmark groups (named like
    ``2020-1-16_group3``), whose JSON values the original loader did not trust; then the group's own
    ``CALIBRATION/Disp2Depth.npy``; the table last (:func:`dpface_lib.layout.select_ab`).
    """
    json_path = Path(json_path)
    return assemble_sample(json_path, read_files(json_path, Path(root) if root is not None
                                                 else _root_of(json_path)), ab_source)


def read_files(json_path: Path, root: Path) -> dict[str, Any]:
    """The undigested content of one view: ``record`` (its JSON), ``meta`` (its :func:`index` row) and the
    arrays as :func:`dpface_lib.layout.load_image` / ``load_npy`` return them (``mask`` None when the JSON
    names none). :func:`assemble_sample` checks and digests them; :mod:`dpface_lib.pack` stores them."""
    record = read_json_record(json_path)
    meta = _json_row(root, json_path, record)
    return {
        "record": record,
        "meta": meta,
        **{key: load_image(Path(meta[key])) for key in IMAGE_KEYS},
        **{key: None if meta[key] is None else load_npy(Path(meta[key])) for key in ARRAY_KEYS},
    }


def assemble_sample(json_path: Path, raw: dict[str, Any], ab_source: str = "auto") -> dict[str, Any]:
    """:func:`read_sample` from :func:`read_files`'s output: every consistency check, then the digest."""
    record, meta = raw["record"], raw["meta"]
    images = {key: raw[key] for key in IMAGE_KEYS}
    height, width = images["left"].shape[:2]
    for key in ("right", "lrsum"):
        if images[key].shape[:2] != (height, width):
            raise DatasetError(
                f"{meta[key]}: image shape {images[key].shape[:2]} disagrees with the left image "
                f"{(height, width)}"
            )
    check_pair_colour(images["left"], images["right"], meta["left"], meta["right"])

    def check(path: str, array: np.ndarray, channels: int | None) -> None:
        expected = (height, width) if channels is None else (height, width, channels)
        if array.shape != expected:
            raise DatasetError(f"{path}: shape {array.shape} disagrees with the images (expected {expected})")

    depth = raw["depth"].astype(np.float32)
    check(meta["depth"], depth, None)
    if not np.all(np.isfinite(depth)):
        bad = int((~np.isfinite(depth)).sum())
        raise DatasetError(f"{meta['depth']}: depth holds {bad} NaN/inf value(s); use 0 for missing depth")
    valid_depth = depth > 0
    if meta["mask"] is not None:
        mask_raw = raw["mask"]
        check(meta["mask"], mask_raw, None)
        mask = (mask_raw != 0) & valid_depth  # any non-zero value is the face (docs/dataset_layout.md)
    else:
        mask = valid_depth
    warn_if_no_face(mask, meta["mask"], json_path)
    normal = raw["normal"].astype(np.float32)
    check(meta["normal"], normal, 3)
    normal = np.where(mask[..., None], normal, 0.0).astype(np.float32)
    if not np.all(np.isfinite(normal)):
        raise DatasetError(f"{meta['normal']}: normals hold NaN/inf inside the mask")
    norm = np.linalg.norm(normal, axis=-1, keepdims=True)
    normal = np.divide(normal, norm, out=np.zeros_like(normal), where=norm > 1e-6)
    albedo = raw["albedo"].astype(np.float32)
    check(meta["albedo"], albedo, 3)
    if not np.all(np.isfinite(albedo)):
        raise DatasetError(f"{meta['albedo']}: albedo holds NaN/inf")
    depth = np.where(mask, depth, 0.0).astype(np.float32)

    params = record["PARAMS"]
    intr = parse_literal_array(params["intrinsic"], name="intrinsic", file=json_path, sizes=range(5, 17))
    K = intrinsics_from_vector(intr)
    pose_values = parse_literal_array(params["pose"], name="pose", file=json_path, sizes=(12, 16))
    pose = np.eye(4)
    pose[: len(pose_values) // 4] = pose_values.reshape(-1, 4)
    light = None
    if params.get("Lvalue") is not None:
        light = parse_literal_array(params["Lvalue"], name="Lvalue", file=json_path, sizes=(3,))
    if not (np.all(np.isfinite(K)) and np.all(np.isfinite(pose))):
        raise DatasetError(f"{json_path}: PARAMS.intrinsic or PARAMS.pose holds NaN/inf")
    a, b = select_ab(record, meta["camidx"], meta["group"], ab_source, json_path, json_path.parent.parent)
    return {
        **images,
        "depth": depth,
        "normal": normal,
        "mask": mask,
        "albedo": albedo,
        "K": K,
        "pose": pose,
        "light": light,
        "a": a,
        "b": b,
        "meta": meta,
        "sample_id": meta["sample_id"],
    }


def sample_to_tensors(sample: dict[str, Any]) -> dict[str, Any]:
    """Convert a :func:`read_sample` dict into the kit's batch dict of channel-first torch tensors.

    ``left``/``right``/``lrsum``/``albedo`` (3, H, W) float32; ``depth`` (H, W) mm, 0 outside the mask;
    ``disparity`` (H, W) px = a / Z + b inside the mask (computed in float64), 0 outside; ``normal`` (3, H,
    W); ``mask`` bool (H, W); ``K`` (3, 3), ``pose`` (4, 4), ``light`` (3,) (zeros when unknown) float32;
    ``a``, ``b`` 0-d float32; ``meta`` dict; ``sample_id`` str.
    """
    mask = sample["mask"]
    disparity = np.where(
        mask, depth_to_disparity(sample["depth"].astype(np.float64), sample["a"], sample["b"]), 0.0
    )

    def chw(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))

    keys = ("group", "person", "camidx", "lightidx", "viewidx", "expression", "position", "direction", "json")
    meta = {key: sample["meta"][key] for key in keys}
    light = sample["light"] if sample["light"] is not None else np.zeros(3)
    return {
        **{key: chw(sample[key]) for key in (*IMAGE_KEYS, "albedo", "normal")},
        "depth": torch.from_numpy(np.ascontiguousarray(sample["depth"], dtype=np.float32)),
        "disparity": torch.from_numpy(disparity.astype(np.float32)),
        "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=bool)),
        "K": torch.as_tensor(sample["K"], dtype=torch.float32),
        "pose": torch.as_tensor(sample["pose"], dtype=torch.float32),
        "light": torch.as_tensor(light, dtype=torch.float32),
        "a": torch.tensor(sample["a"], dtype=torch.float32),
        "b": torch.tensor(sample["b"], dtype=torch.float32),
        "meta": meta,
        "sample_id": sample["sample_id"],
    }



def resolve_data_root(data_root: str | os.PathLike | None,
                      relative_to: str | os.PathLike = REPO_ROOT) -> Path:
    """The dataset root to read: ``data_root`` if given, else the committed ``data_samples/``.

    Relative paths are taken from ``relative_to``: the repository root for notebooks and ``pipeline.yaml``
    (which write them that way), the working directory for the command-line tools."""
    if data_root in (None, ""):
        return DATA_SAMPLES
    path = Path(data_root).expanduser()
    return path if path.is_absolute() else (Path(relative_to) / path)


def evenly_spaced(n: int, k: int) -> list[int]:
    """``min(k, n)`` distinct indices spread evenly over ``range(n)`` (first and last included), e.g. a
    fixed subset of a split for validation or a quick look: ``evenly_spaced(10, 4) == [0, 3, 6, 9]``."""
    if n <= 0 or k <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(k, n))})

class FaceDPDataset(Dataset):
    """Torch dataset over :func:`index` rows; items are :func:`sample_to_tensors` dicts passed through
    ``transform``.

    Keyword filters (``lights=[1]``, ``cameras=...``, ``expressions=...``, ...) go to :func:`index`.
    ``skip_bad=True`` reads every sample once at construction (JSON, images, arrays, consistency checks),
    keeps the good ones and lists the others in ``self.skipped`` as ``(json path, reason)``, with one
    summary warning; ``skip_bad=False`` raises :class:`DatasetError` on the first bad sample when it is read.
    Setting ``self.reader`` (json path -> :func:`read_files` dict, e.g. a :class:`dpface_lib.pack.Pack` of
    ``self.frame``) replaces the file reads of ``__getitem__``; every check of :func:`assemble_sample` still
    runs on what it returns.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None,
        transform: Callable[[dict], dict] | None = None,
        *,
        skip_bad: bool = False,
        ab_source: str = "auto",
        **filters: Any,
    ) -> None:
        self.root = Path(root)
        self.reader: Callable[[str], dict[str, Any]] | None = None
        self.split = split
        self.transform = transform
        self.ab_source = ab_source
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = index(self.root, split, skip_bad=skip_bad, **filters)
        self.skipped: list[tuple[str, str]] = list(frame.attrs.get("skipped", []))
        if skip_bad:
            good = []
            for i, json_path in enumerate(frame["json"]):
                try:
                    read_sample(json_path, root=self.root, ab_source=ab_source)
                    good.append(i)
                except DatasetError as exc:
                    self.skipped.append((json_path, str(exc)))
            frame = frame.iloc[good].reset_index(drop=True)
            if self.skipped:
                warnings.warn(
                    f"FaceDPDataset({self.root}, {split!r}): skipped {len(self.skipped)} bad sample(s); "
                    f"kept {len(frame)}; first: {self.skipped[0][0]}: {self.skipped[0][1]}",
                    stacklevel=2,
                )
        if len(frame) == 0:
            raise DatasetError(f"{self.root}: split {split!r} has no sample left after filtering")
        if not skip_bad:  # sizes and headers now, not at the first batch that meets a broken file
            check_dataset_files(frame[[*IMAGE_KEYS, *ARRAY_KEYS]].to_dict("records"), f"{root} {split!r}")
        self.frame = frame

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i = i % len(self)
        json_path = self.frame.at[i, "json"]
        sample = sample_to_tensors(
            read_sample(json_path, root=self.root, ab_source=self.ab_source) if self.reader is None
            else assemble_sample(Path(json_path), self.reader(json_path), self.ab_source)
        )
        return self.transform(sample) if self.transform is not None else sample

    def __repr__(self) -> str:
        return f"FaceDPDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
