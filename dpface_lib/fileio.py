"""Atomic file writes: a reader sees the old file or the complete new one, never a partial file.

Every writer in the kit (simulator samples, evaluation tables, predictions, the pipeline summary)
goes through :func:`atomic_write`: the content is written to a temporary name in the destination's
folder and moved into place with ``os.replace`` (atomic on POSIX within one file system). On any
error, including KeyboardInterrupt, the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], *, suffix: str = "",
                 durable: bool = False) -> None:
    """Create ``path`` by calling ``write(tmp)`` on a temporary path in the same folder, then renaming.

    ``suffix`` is appended to the temporary name for writers that insist on an extension (e.g.
    ``np.savez_compressed`` adds ``.npz`` unless the name ends with it). Parent folders are created.
    The file gets the usual umask-based mode (``mkstemp`` would leave it 0600). ``durable`` also fsyncs the
    file before the rename (checkpoints: the new name never points at data still in the page cache).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` (never pickles) to ``path`` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())


@contextmanager
def atomic_folder(out: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a command's output folder out of sight and put it in place whole.

    Yields a new temporary folder beside ``out``; when the block ends normally it becomes ``out`` (by
    rename), when it raises it is deleted and ``out`` is left as it was. An existing non-empty ``out`` is
    refused with :class:`FileExistsError` unless ``overwrite``, which replaces it whole (never a mix of old
    and new files). A kill between the two renames of a replacement leaves the previous folder complete,
    as ``.<name>.old-<pid>`` beside ``out``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: output folder exists and is not empty; pass --overwrite to replace it "
                              "or choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
