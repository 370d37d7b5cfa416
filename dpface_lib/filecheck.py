"""Cheap checks of a dataset's files when the dataset is built: sizes and headers, never full decodes.

:class:`dpface_lib.data.FaceDPDataset` reads a sample's images and arrays only when the sample is asked for,
so a broken file used to surface at the first batch that met it, minutes into a run. Before that, the
dataset now looks at every file of every sample for what costs a few hundred bytes of reading each:

- every file named by a record exists and is not empty;
- an image starts with the signature of a format the reader decodes (JPEG, PNG, TIFF, BMP, PNM);
- a ``.npy`` file has a valid header (read with numpy's own header parser, which never unpickles), a
  numeric dtype (an object dtype means pickled Python objects), and exactly the bytes its header
  promises (a shorter file is truncated).

What needs a decode (JPEG data, NaN in an array, shapes that disagree) is still checked when a sample is
read. ``docs/reliability.md`` lists the measured cost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from dpface_lib.layout import ARRAY_KEYS, IMAGE_KEYS, DatasetError

__all__ = ["IMAGE_SIGNATURES", "check_dataset_files", "file_problem", "sample_problem"]

#: Leading bytes of the image formats :func:`dpface_lib.images.read_image` decodes.
IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM",
                    *(b"P%d" % k for k in range(1, 7)))


def file_problem(path: str | os.PathLike, kind: str) -> str | None:
    """What is wrong with one file from its size and header (``kind``: "image" or "array"), or None."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            return f"{path}: not a file"
        if size == 0:
            return f"{path}: file is empty"
        with open(path, "rb") as handle:
            if kind == "image":
                head = handle.read(8)
                if not head.startswith(IMAGE_SIGNATURES):
                    return f"{path}: not a readable image (the header {head[:4]!r} is no known image format)"
                return None
            return _npy_problem(path, handle, size)
    except FileNotFoundError:
        return f"{path}: {'image file' if kind == 'image' else 'file'} is missing"
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or exc})"


def _npy_problem(path: Path, handle, size: int) -> str | None:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        return f"{path}: unreadable or truncated .npy (bad header: {' '.join(str(exc).split())})"
    if dtype.hasobject:
        return f"{path}: holds Python objects (object dtype); refusing to unpickle"
    if dtype.kind not in "biuf":
        return f"{path}: expected a numeric array, found dtype {dtype}"
    expected = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return f"{path}: unreadable or {state} .npy ({size} bytes; header {shape} {dtype} needs {expected})"
    return None


def sample_problem(files: Mapping[str, str | None], seen: dict[str, str | None] | None = None) -> str | None:
    """The first problem among one sample's files (an :func:`dpface_lib.data.index` row), or None.
    ``seen`` (path -> problem) spares a second look at a file that several samples share (a view's depth,
    normals, mask and albedo serve every light)."""
    seen = {} if seen is None else seen
    for key in (*IMAGE_KEYS, *ARRAY_KEYS):
        path = files.get(key)
        if path is None:
            continue
        if path not in seen:
            seen[path] = file_problem(path, "image" if key in IMAGE_KEYS else "array")
        if seen[path]:
            return seen[path]
    return None


def check_dataset_files(rows: Iterable[Mapping[str, str | None]], where: str) -> None:
    """Check every sample's files (:func:`sample_problem`, each file once); raise one
    :class:`DatasetError` that says how many samples are bad and names the first problem. ``where``
    names the dataset in the message."""
    total, bad, first, seen = 0, 0, None, {}
    for row in rows:
        total += 1
        problem = sample_problem(row, seen)
        if problem:
            bad += 1
            first = first or problem
    if bad:
        raise DatasetError(f"{where}: {bad} of {total} samples have broken files (sizes and headers checked "
                           f"when the dataset was built); first: {first}; skip_bad=True leaves them out")
