"""Atomic file writes (a reader sees the old file or the complete new one, never a partial file) and a lock
for cached outputs that concurrent processes may build.

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
    except OSError as exc:  # a full disk or a file-size limit: name the file, which a write() error does not
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
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
    except OSError as exc:  # e.g. the disk filled: say that nothing of the output was kept
        shutil.rmtree(tmp, ignore_errors=True)
        where = f" writing {exc.filename}" if exc.filename else ""
        raise OSError(exc.errno, f"{exc.strerror or exc}{where}; {out} was left as it was") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the duration of the block.

    Processes that build the same cached output (e.g. two training runs opening one data pack) take this
    lock around "check, then build", so one builds and the others then find the result. POSIX ``flock``;
    where the platform has none the block runs unlocked.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 or uint16 image ``(H, W)``, ``(H, W, 1|2|3|4)`` (grey, grey+alpha, RGB, RGBA).

    Unlike Pillow, this keeps 16-bit colour (48/64-bit RGB/RGBA PNGs). Samples are stored big-endian, one
    filter byte (0, none) per row, as the PNG specification (ISO/IEC 15948) lays out.
    """
    import struct
    import zlib

    array = np.asarray(array)
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png: expected uint8 or uint16, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or 0 in array.shape[:2]:
        raise ValueError(f"encode_png: expected (H, W[, 1..4]) with H, W > 0, got {array.shape}")
    height, width, channels = array.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    big_endian = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">")))
    rows = big_endian.reshape(height, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, array.dtype.itemsize * 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))


def atomic_save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """:func:`encode_png` written to ``path`` atomically."""
    atomic_write_bytes(path, encode_png(array))
