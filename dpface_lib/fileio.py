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
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


class OutputError(OSError):
    """An output folder that cannot be used (read-only, the current folder); the message names the option
    and the path."""


class ArrayFileError(ValueError):
    """An array file that cannot be read as what the caller expects; the message names the file."""


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _file_mode() -> int:
    return 0o666 & ~_umask()


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


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(out: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders ``.<name>.<pid>-*.tmp`` that :func:`atomic_folder` left beside ``out``
    when its process was killed (the pid no longer runs); returns what was removed. A ``.<name>.old-<pid>``
    folder (a complete previous output kept by a kill during a replacement) is left alone."""
    out = Path(out)
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+)-[^/]*\.tmp")
    removed = []
    if not out.parent.is_dir():
        return removed
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir() and int(match[1]) != os.getpid() and not _process_alive(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def temporary_folder_beside(out: str | os.PathLike, tag: str = "") -> Path:
    """A new empty folder ``.<name>.<pid>-<tag>XXXX.tmp`` beside ``out`` (same file system, so it can be
    renamed into place), which :func:`remove_stale_temporaries` deletes once this process is gone."""
    out = Path(out)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}-{tag}", suffix=".tmp", dir=out.parent))


def _usable_output(out: Path, option: str) -> str:
    """The label ``'<option> <out>'`` for messages; refuses the current folder (or one above it)."""
    label = f"{option} {out}" if option else str(out)
    resolved, here = out.resolve(), Path.cwd().resolve()
    if not resolved.name or here.is_relative_to(resolved):
        raise OutputError(f"{label}: is the current folder or one above it; name a new folder for the output")
    return label


@contextmanager
def atomic_folder(out: str | os.PathLike, *, overwrite: bool = False,
                  option: str = "--out") -> Iterator[Path]:
    """Build a command's output folder out of sight and put it in place whole.

    Yields a new temporary folder beside ``out``; when the block ends normally it becomes ``out`` (by
    rename), when it raises it is deleted and ``out`` is left as it was. An existing non-empty ``out`` is
    refused with :class:`FileExistsError` unless ``overwrite``, which replaces it whole (never a mix of old
    and new files). A kill between the two renames of a replacement leaves the previous folder complete,
    as ``.<name>.old-<pid>`` beside ``out``; the temporary folder of a killed run is removed by the next
    run for the same ``out``. ``option`` (the command-line option that named ``out``) goes into the
    messages: the current folder as ``out``, or a parent that cannot be written (read-only, no
    permission), raise :class:`OutputError` naming it.
    """
    out = Path(out)
    label = _usable_output(out, option)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{label}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{label}: output folder exists and is not empty; pass --overwrite to replace "
                              "it or choose a new one")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        tmp = temporary_folder_beside(out)
    except OSError as exc:
        raise OutputError(f"{label}: cannot create the output folder in {out.parent} "
                          f"({exc.strerror or exc})") from exc
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the output gets an ordinary mode
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


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` archive ``path`` (never unpickled). A missing file, a damaged archive, a
    single ``.npy`` array under an ``.npz`` name or a pickled member raise :class:`ArrayFileError`
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ArrayFileError(f"{path}: file does not exist")
    errors = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        data = np.load(path, allow_pickle=False)
    except errors as exc:
        raise ArrayFileError(f"{path}: not a readable .npz archive ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ArrayFileError(f"{path}: holds a single .npy array, not an .npz archive of named arrays "
                             "(np.savez writes one)")
    with data:
        try:
            return {key: np.asarray(data[key]) for key in data.files}
        except errors as exc:
            raise ArrayFileError(f"{path}: damaged .npz archive ({' '.join(str(exc).split())})") from exc


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
