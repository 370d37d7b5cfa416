"""A split's files decoded once into memory-mapped arrays: the fast reader of the training loop.

Reading a view from the benchmark layout decodes three PNGs, loads four ``.npy`` files, parses its JSON
and resolves eight paths inside the dataset root: about 5-7 ms a sample on one CPU core, which is 40-50 ms
of every batch of 8 and a fifth of a small model's training step (``benchmarks/bench_data.py``).
A pack holds the same content already decoded, one array per file kind with one row per view, and reads
a view in well under a millisecond.

What a pack stores is exactly what :func:`dpface_lib.data.read_files` returns (the JSON record, the index
row, the images and arrays before any check), so a packed :class:`~dpface_lib.data.FaceDPDataset` runs
every check of :func:`~dpface_lib.data.assemble_sample` and yields the same tensors, bit for bit, as the
file reader. Images are stored as the 8- or 16-bit integers they were decoded from.

A pack is named by a hash of its views' files (path, size and modification time of every JSON and every
file it names), so an edited, added or removed file gives a new pack and a stale one is never read. It is
built atomically (a folder renamed into place) under ``runs/cache/packs/`` by default; building one deletes
the packs that can no longer be read (same views with older files, or a dataset root that is gone).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dpface_lib import REPO_ROOT
from dpface_lib.data import read_files
from dpface_lib.fileio import atomic_folder, atomic_write_bytes, exclusive_lock
from dpface_lib.layout import ARRAY_KEYS, IMAGE_KEYS, DatasetError

__all__ = ["BUILD_LOCK", "DEFAULT_PACK_DIR", "Pack", "PackError", "open_pack", "pack_key"]

#: Where :func:`open_pack` keeps packs unless told otherwise.
DEFAULT_PACK_DIR = REPO_ROOT / "runs" / "cache" / "packs"
_FORMAT = 1
#: The lock file in the pack folder that concurrent builders take (:func:`dpface_lib.fileio.exclusive_lock`).
BUILD_LOCK = ".build.lock"
_KEYS = (*IMAGE_KEYS, *ARRAY_KEYS)


class PackError(DatasetError):
    """A split cannot be packed (its views differ in size or kind); the message names the view."""


def _frame_files(frame: pd.DataFrame) -> list[str]:
    """Every file the views of ``frame`` (an :func:`~dpface_lib.data.index` frame) consist of."""
    return [*frame["json"], *(path for key in _KEYS for path in frame[key] if path is not None)]


def pack_key(root: str | os.PathLike, frame: pd.DataFrame) -> str:
    """16 hex digits naming the current content of the views in ``frame`` (paths, sizes, mtimes)."""
    digest = hashlib.sha256(json.dumps([_FORMAT, str(Path(root).resolve()), list(frame["json"])]).encode())
    for path in _frame_files(frame):
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from exc
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _image_storage(image: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """``image`` (float32 in [0, 1]) as the integers it was decoded from, and their scale (255, 65535)."""
    for scale, dtype in ((255, np.uint8), (65535, np.uint16)):
        ints = np.rint(image * scale).astype(dtype)
        if np.array_equal(ints.astype(np.float32) / np.float32(scale), image):
            return ints, scale
    raise PackError(f"{where}: image values are not 8- or 16-bit levels; this split cannot be packed")


class Pack:
    """Read-only access to a built pack: ``pack(json_path)`` returns :func:`read_files`'s dict.

    Arrays are memory-mapped on first use in each process (a pack passed to DataLoader workers is not
    copied into them)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        manifest = json.loads((self.folder / "manifest.json").read_text())
        self.scale: int = manifest["image_scale"]
        self.views: list[dict[str, Any]] = manifest["views"]
        self.rows = {view["meta"]["json"]: i for i, view in enumerate(self.views)}
        self._arrays: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.views)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def _array(self, key: str) -> np.ndarray:
        if self._arrays is None:
            self._arrays = {}
            for name in _KEYS:
                path = self.folder / f"{name}.npy"
                if not path.is_file():
                    continue
                try:
                    self._arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
                except (OSError, ValueError) as exc:
                    raise DatasetError(f"{path}: unreadable pack array ({exc}); delete {self.folder} and it "
                                       "is rebuilt on next use") from exc
        return self._arrays[key]

    def __call__(self, json_path: str) -> dict[str, Any]:
        try:
            row = self.rows[str(json_path)]
        except KeyError:
            raise DatasetError(f"{json_path}: not in the pack {self.folder}") from None
        view = self.views[row]
        raw: dict[str, Any] = {"record": view["record"], "meta": dict(view["meta"])}
        for key in IMAGE_KEYS:
            raw[key] = np.asarray(self._array(key)[row], dtype=np.float32) / np.float32(self.scale)
        for key in ARRAY_KEYS:
            raw[key] = None if view["meta"][key] is None else np.array(self._array(key)[row])
        return raw


def _build(root: Path, jsons: list[str], label: str, folder: Path, progress: bool) -> None:
    if not jsons:
        raise PackError(f"{root}: {label} has no view to pack")
    arrays: dict[str, np.ndarray] = {}
    views, scale = [], None
    with atomic_folder(folder, overwrite=True) as tmp:
        for row, json_path in enumerate(tqdm(jsons, desc=f"packing {label}", disable=not progress,
                                             unit="view")):
            raw = read_files(Path(json_path), root)
            for key in _KEYS:
                value = raw[key]
                if value is None:
                    if key != "mask":
                        raise PackError(f"{json_path}: names no {key} file")
                    continue
                if key in IMAGE_KEYS:
                    value, this_scale = _image_storage(value, raw["meta"][key])
                    if scale is None:
                        scale = this_scale
                    elif this_scale != scale:
                        raise PackError(f"{raw['meta'][key]}: {this_scale.bit_length()}-bit, unlike the "
                                        "split's earlier images; this split cannot be packed")
                if key not in arrays:
                    arrays[key] = np.lib.format.open_memmap(tmp / f"{key}.npy", mode="w+", dtype=value.dtype,
                                                            shape=(len(jsons), *value.shape))
                target = arrays[key]
                if value.shape != target.shape[1:] or value.dtype != target.dtype:
                    raise PackError(f"{raw['meta'][key]}: {value.dtype} {value.shape} unlike the split's "
                                    f"first view ({target.dtype} {target.shape[1:]}); this split cannot "
                                    "be packed")
                target[row] = value
            views.append({"record": raw["record"], "meta": raw["meta"]})
        for array in arrays.values():
            array.flush()
        arrays.clear()
        manifest = {"format": _FORMAT, "root": str(root), "label": label, "selection": _selection(jsons),
                    "image_scale": scale,
                    "views": views}
        atomic_write_bytes(tmp / "manifest.json", json.dumps(manifest).encode())


def _selection(jsons: list[str]) -> str:
    """Names a list of views independently of their files' content."""
    return hashlib.sha256("\n".join(jsons).encode()).hexdigest()[:16]


def _prune(pack_dir: Path, root: Path, jsons: list[str]) -> None:
    """Delete the packs that can never be read again: earlier packs of the same views (their files have
    changed since) and packs of dataset roots that no longer exist. Packs of other selections of the same
    root (another split, other filters) stay."""
    selection = _selection(jsons)
    for manifest in pack_dir.glob("*/manifest.json"):
        try:
            facts = json.loads(manifest.read_text())
            same_views = facts["root"] == str(root) and facts.get("selection") == selection
            stale = same_views or not Path(facts["root"]).is_dir()
        except (OSError, ValueError, KeyError):
            continue
        if stale:
            shutil.rmtree(manifest.parent, ignore_errors=True)


def open_pack(root: str | os.PathLike, frame: pd.DataFrame, *, label: str = "views",
              pack_dir: str | os.PathLike | None = None, build: bool = True, progress: bool = True
              ) -> Pack | None:
    """The pack of the views in ``frame`` as their files are now, built first when ``build`` (else None).

    Args:
        root: dataset root (benchmark layout).
        frame: the views to pack, an :func:`~dpface_lib.data.index` frame (e.g. ``FaceDPDataset.frame``).
        label: what the views are, for the progress bar and messages (e.g. the split name).
        pack_dir: where packs live (default :data:`DEFAULT_PACK_DIR`), one folder per :func:`pack_key`.
        build: build a missing pack (one pass over the files with a progress bar, written atomically).
        progress: show that progress bar.

    Raises :class:`PackError` when the views differ in size or kind, and
    :class:`~dpface_lib.data.DatasetError` naming the file when one cannot be read.
    """
    root = Path(root).resolve()
    folder = Path(pack_dir or DEFAULT_PACK_DIR) / f"{label}-{pack_key(root, frame)}"
    if not (folder / "manifest.json").is_file():
        if not build:
            return None
        with exclusive_lock(folder.parent / BUILD_LOCK):   # concurrent runs: one builds, the rest reuse
            if not (folder / "manifest.json").is_file():
                jsons = list(frame["json"])
                _prune(folder.parent, root, jsons)
                _build(root, jsons, label, folder, progress)
    return Pack(folder)
