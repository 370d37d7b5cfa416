"""The facial dual-pixel benchmark's on-disk layout, file by file (``docs/dataset_layout.md``).

``ROOT/{train,test}.txt`` list group folders; a group holds
``IMG/{LEFT,RIGHT,LRSUM}/IMG_{cam}_{view}_{light}.JPG``, ``DEPTH|NORMAL|MASK|ALBEDO/*.npy``,
``JSON/INFO_{cam}_{view}_{light}.json`` and ``CALIBRATION/*.npy``. This module reads one file of each
kind and checks it; :mod:`dpface_lib.data` builds the index, samples and the torch dataset on top.

Safety: JSON is parsed with :mod:`json`; ``PARAMS`` strings such as ``"array([1.0, 2.0])"`` are decoded with
:func:`ast.literal_eval` on the bracketed part only (never ``eval``); ``.npy`` files load with
``allow_pickle=False``; every path taken from a split file or a JSON must resolve inside the dataset root
(:func:`inside_root`). Every problem raises :class:`DatasetError` naming the file and what is wrong.
"""

from __future__ import annotations

import ast
import json
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dpface_lib.geometry import BENCHMARK_CAMERA_AB
from dpface_lib.images import ImageError, read_image, to_rgb

__all__ = [
    "DatasetError", "DatasetWarning", "check_pair_colour", "info_bool", "info_int", "inside_root",
    "load_image", "load_npy", "parse_literal_array", "read_calibration", "read_json_record", "read_split",
    "resolve_data_path", "select_ab", "warn_if_no_face",
]

IMAGE_KEYS = ("left", "right", "lrsum")
ARRAY_KEYS = ("depth", "normal", "mask", "albedo")
REQUIRED_INFO = ("valid", "camidx", "lightidx", "gender", "expression", "position", "direction")
REQUIRED_PATH = ("left", "right", "lrsum", "depth", "normal", "albedo")
REQUIRED_PARAMS = ("intrinsic", "pose")
#: Group folders of the real benchmark ("2020-1-16_group3"); their JSON ``abvalue`` is not used in "auto"
#: mode.
REAL_GROUP_PATTERN = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}_group\d+$")
JSON_NAME_PATTERN = re.compile(r"^INFO_(\d+)_(\d+)_(\d+)\.json$")
_ARRAY_WRAPPER = re.compile(r"^\s*(?:(?:np|numpy)\s*\.\s*)?array\s*\((.*)\)\s*$", re.S)
_DTYPE_SUFFIX = re.compile(r",\s*dtype\s*=\s*[\w.]+\s*$")


class DatasetError(ValueError):
    """A dataset file is missing, unreadable or inconsistent; the message names the file and the problem."""


class DatasetWarning(UserWarning):
    """A sample that reads but carries less than it seems to (e.g. no face pixel); names the file."""


# --------------------------------------------------------------------------------------------- small parsers
def parse_literal_array(
    value: Any, *, name: str, file: str | Path, sizes: Iterable[int] | None = None
) -> np.ndarray:
    """Decode a ``PARAMS`` value into a flat float64 array without evaluating code.

    Accepts a JSON list/number or a string such as ``"[1, 2]"``, ``"array([1., 2.])"`` or
    ``"array([1., 2.], dtype=float32)"``; ``nan``/``inf`` tokens are understood. ``sizes`` lists the accepted
    element counts. Raises :class:`DatasetError` naming ``file`` and ``name`` otherwise.
    """
    data = value
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 100_000:
            raise DatasetError(f"{file}: PARAMS.{name} is too long to be a parameter list")
        match = _ARRAY_WRAPPER.match(text)
        if match:
            text = _DTYPE_SUFFIX.sub("", match.group(1).strip())
        text = re.sub(r"\bnan\b", "None", text)
        text = re.sub(r"\binf\b", "1e999", text)
        try:
            data = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
            raise DatasetError(f"{file}: PARAMS.{name} is not a literal list of numbers: {value!r}") from exc
    try:
        raw = np.asarray(data, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{file}: PARAMS.{name} does not hold numbers: {value!r}") from exc
    if raw.ndim > 2:
        raise DatasetError(f"{file}: PARAMS.{name} has {raw.ndim} dimensions, expected a flat list")
    flat = raw.ravel()
    allowed = tuple(sizes) if sizes is not None else None
    if allowed is not None and flat.size not in allowed:
        raise DatasetError(f"{file}: PARAMS.{name} has {flat.size} values, expected one of {allowed}")
    return flat


def inside_root(root: Path, rel: str | Path, *, source: str | Path, what: str) -> Path:
    """Resolve ``rel`` against ``root`` (symlinks followed) and refuse anything that ends up outside it."""
    if any(ord(ch) < 32 for ch in str(rel)):
        raise DatasetError(f"{source}: {what} {str(rel)!r} holds control characters; not a path")
    rel_path = Path(rel)
    if rel_path.is_absolute():
        raise DatasetError(
            f"{source}: {what} {str(rel)!r} is an absolute path; only paths inside the root are allowed"
        )
    root_real = root.resolve()
    target = (root_real / rel_path).resolve()
    if not target.is_relative_to(root_real):
        raise DatasetError(
            f"{source}: {what} {str(rel)!r} resolves to {target}, outside the dataset root {root_real}"
        )
    return target


def read_split(root: str | Path, split: str) -> list[str]:
    """Group folder names listed in ``ROOT/<split>.txt`` (blank lines and ``#`` comments ignored).

    Raises :class:`DatasetError` for an unknown split, an empty list, a missing group folder or an entry that
    escapes the root.
    """
    root = Path(root)
    split_file = root / f"{split}.txt"
    if not re.fullmatch(r"[\w.-]+", split) or not split_file.is_file():
        known = sorted(p.stem for p in root.glob("*.txt")) if root.is_dir() else []
        raise DatasetError(f"{split_file}: unknown split {split!r}; splits found in {root}: {known}")
    groups: list[str] = []
    first_line: dict[str, int] = {}
    try:
        text = split_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{split_file}: not UTF-8 text ({exc})") from exc
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        group_dir = inside_root(root, entry, source=f"{split_file}:{lineno}", what="group")
        if not group_dir.is_dir():
            raise DatasetError(f"{split_file}:{lineno}: group folder {entry!r} does not exist")
        group = group_dir.relative_to(root.resolve()).as_posix()
        if group in first_line:
            raise DatasetError(f"{split_file}:{lineno}: group {entry!r} is listed again (first on line "
                               f"{first_line[group]}); each group may appear once")
        first_line[group] = lineno
        groups.append(group)
    if not groups:
        raise DatasetError(f"{split_file}: split {split!r} is empty")
    return groups


def load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise DatasetError(f"{path}: holds Python objects (object dtype); refusing to unpickle") from exc
        raise DatasetError(f"{path}: unreadable or truncated .npy ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated .npy ({exc})") from exc
    if not isinstance(array, np.ndarray):  # an .npz archive under an .npy name
        array.close()
        raise DatasetError(f"{path}: expected a numeric array, found NpzFile (an .npz archive of named "
                           "arrays, not a single .npy array)")
    if array.dtype.hasobject:
        raise DatasetError(f"{path}: expected a numeric array, found {type(array).__name__}")
    if array.dtype.kind not in "biuf":
        raise DatasetError(f"{path}: expected a numeric array, found dtype {array.dtype}")
    return array


def load_image(path: Path) -> np.ndarray:
    """RGB image as float32 (H, W, 3) in [0, 1] at the file's own precision (8 or 16 bit, see
    :mod:`dpface_lib.images`); grey is repeated to three channels, alpha is dropped (with a warning)."""
    try:
        array, _ = read_image(path)
    except ImageError as exc:
        raise DatasetError(str(exc)) from exc
    return to_rgb(array, path)


def _is_grey(image: np.ndarray) -> bool:
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def check_pair_colour(left: np.ndarray, right: np.ndarray, left_path: str | os.PathLike,
                      right_path: str | os.PathLike) -> None:
    """Refuse a dual-pixel pair (H, W, 3) whose one view is grey (three equal channels) and the other in
    colour: both views come from one sensor, and a model would read the colour difference as disparity."""
    grey_left, grey_right = _is_grey(left), _is_grey(right)
    if grey_left != grey_right:
        grey, colour = (left_path, right_path) if grey_left else (right_path, left_path)
        raise DatasetError(f"{grey}: grey view next to the colour view {colour}; the two views of a "
                           "dual-pixel pair come from one sensor: give both in grey or both in colour")


def warn_if_no_face(mask: np.ndarray, mask_path: str | Path | None, json_path: str | Path) -> None:
    """Warn (:class:`DatasetWarning`) when a sample's mask holds no pixel with depth: its ground truth is
    then all dropped, and metrics cannot score it."""
    if not mask.any():
        where = f"{mask_path} (of {json_path})" if mask_path else f"{json_path}"
        warnings.warn(f"{where}: the mask has no face pixel with depth; the sample has no usable ground "
                      "truth", DatasetWarning, stacklevel=3)


def read_calibration(group_dir: str | Path,
                     keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray | None]:
    """The arrays of ``<group>/CALIBRATION``: ``intrinsic`` (n_cams, 3, 3), ``pose`` (n_cams, 4, 4)
    world->camera (t in mm), ``light`` (n_lights, 3), ``metadata`` [focal_mm, focus_mm, f_number,
    pixel_um], ``disp2depth`` (n_cams, 2) per-camera [a, b]; ``keys`` reads only those. Missing files give
    ``None``; a missing folder or a malformed array raises."""
    calib_dir = Path(group_dir) / "CALIBRATION"
    if not calib_dir.is_dir():
        raise DatasetError(f"{calib_dir}: CALIBRATION folder is missing")
    specs = {
        "intrinsic": ("intrinsic.npy", lambda s: len(s) == 3 and s[1:] == (3, 3)),
        "pose": ("pose.npy", lambda s: len(s) == 3 and s[1:] in ((4, 4), (3, 4))),
        "light": ("light.npy", lambda s: len(s) == 2 and s[1] == 3),
        "metadata": ("Metadata.npy", lambda s: len(s) == 1 and s[0] >= 4),
        "disp2depth": ("Disp2Depth.npy", lambda s: len(s) == 2 and s[1] == 2),
    }
    out: dict[str, np.ndarray | None] = {}
    for key, (name, shape_ok) in specs.items():
        if keys is not None and key not in keys:
            continue
        path = calib_dir / name
        if not path.exists():
            out[key] = None
            continue
        array = load_npy(path).astype(np.float64)
        if not shape_ok(array.shape):
            raise DatasetError(f"{path}: unexpected shape {array.shape} for {key}")
        if key == "pose" and array.shape[1] == 3:
            array = np.concatenate([array, np.tile([[[0.0, 0.0, 0.0, 1.0]]], (len(array), 1, 1))], axis=1)
        out[key] = array
    return out


def read_json_record(json_path: Path) -> dict:
    if not json_path.is_file():
        raise DatasetError(f"{json_path}: JSON file is missing")
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{json_path}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise DatasetError(f"{json_path}: top level must be an object with INFO, PATH and PARAMS")
    for section, keys in (("INFO", REQUIRED_INFO), ("PATH", REQUIRED_PATH), ("PARAMS", REQUIRED_PARAMS)):
        block = record.get(section)
        if not isinstance(block, dict):
            raise DatasetError(f"{json_path}: missing JSON key {section}")
        for key in keys:
            if key not in block or (section == "PATH" and not isinstance(block[key], str)):
                raise DatasetError(f"{json_path}: missing JSON key {section}.{key}")
    for key, value in record["PATH"].items():  # optional paths (mask) too: a string, or null for none
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise DatasetError(f"{json_path}: PATH.{key} must be a non-empty path string or null, "
                               f"got {value!r}"[:300])
    return record


def resolve_data_path(root: Path, group_dir: Path, rel: str, *, source: Path, key: str) -> Path:
    """PATH values are relative to ROOT (group first); paths relative to the group folder are also
    accepted."""
    target = inside_root(root, rel, source=source, what=f"PATH.{key}")
    if not target.exists():
        alternative = inside_root(
            root, group_dir.relative_to(root.resolve()) / rel, source=source, what=f"PATH.{key}"
        )
        if alternative.exists():
            return alternative
        kind = "image file" if key in IMAGE_KEYS else "file"
        raise DatasetError(f"{target}: {kind} is missing (PATH.{key} of {source})")
    if target.is_dir():
        raise DatasetError(f"{source}: PATH.{key} names a folder, not a file ({target})")
    return target


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def info_bool(info: dict, key: str, json_path: Path) -> bool:
    """``INFO[key]`` as a boolean, parsed strictly: true/false, 1/0 or the strings "true"/"false"
    (any case); anything else raises :class:`DatasetError` naming the file and key."""
    value = info[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in (*_TRUE, *_FALSE):
        return value.strip().lower() in _TRUE
    raise DatasetError(f"{json_path}: INFO.{key} must be true or false, got {value!r}")


def info_int(info: dict, key: str, json_path: Path, default: int | None = None) -> int:
    """``INFO[key]`` as an integer (an int, or a string of digits); raises :class:`DatasetError` naming
    the file and key otherwise."""
    value = info.get(key, default)
    if isinstance(value, bool) or value is None:
        raise DatasetError(f"{json_path}: INFO.{key} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,9}\s*", value):
        return int(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**31:
        return int(value)
    raise DatasetError(f"{json_path}: INFO.{key} must be an integer, got {value!r}")


def select_ab(record: dict, camidx: int, group: str, ab_source: str, json_path: Path,
               group_dir: Path) -> tuple[float, float]:
    """(a, b) of a sample. ``auto``: a simulated group's own ``PARAMS.abvalue``; else the group's own
    ``CALIBRATION/Disp2Depth.npy`` row; only then the real benchmark's table. ``json`` / ``table``: that
    source alone."""
    if ab_source not in ("auto", "json", "table"):
        raise ValueError(f"ab_source must be 'auto', 'json' or 'table', not {ab_source!r}")
    raw = record["PARAMS"].get("abvalue")
    from_json = None
    if raw is not None and ab_source != "table":
        values = parse_literal_array(raw, name="abvalue", file=json_path, sizes=(2,))
        if np.all(np.isfinite(values)) and values[0] != 0:
            from_json = (float(values[0]), float(values[1]))
    if ab_source == "json" or (ab_source == "auto" and not REAL_GROUP_PATTERN.match(group)):
        if from_json is not None:
            return from_json
        if ab_source == "json":
            raise DatasetError(f"{json_path}: PARAMS.abvalue is missing or not finite (ab_source='json')")
    table_file = group_dir / "CALIBRATION" / "Disp2Depth.npy"
    if ab_source == "auto" and table_file.is_file():
        table = read_calibration(group_dir, keys=("disp2depth",))["disp2depth"]  # per sample: one file
        if not 1 <= camidx <= len(table):
            raise DatasetError(f"{table_file}: no row for camera {camidx} ({len(table)} rows)")
        a, b = (float(v) for v in table[camidx - 1])
        if not (np.isfinite(a) and np.isfinite(b) and a != 0):
            raise DatasetError(f"{table_file}: row {camidx - 1} (camera {camidx}) is not a usable (a, b)")
        return a, b
    if camidx not in BENCHMARK_CAMERA_AB:
        raise DatasetError(
            f"{json_path}: no (a, b) for camera {camidx}: PARAMS.abvalue unusable, no "
            f"{table_file.relative_to(group_dir.parent)} and camera not in the benchmark table "
            f"{sorted(BENCHMARK_CAMERA_AB)}"
        )
    a, b = BENCHMARK_CAMERA_AB[camidx]
    return float(a), float(b)
