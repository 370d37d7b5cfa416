"""Atomic writes: complete new file or untouched old one, no temporary files left, ordinary modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from dpface_lib.fileio import atomic_save_npy, atomic_write, atomic_write_bytes


def test_write_creates_parents_and_content(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"payload")
    assert target.read_bytes() == b"payload"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_text("old")

    def dies_half_way(tmp: str) -> None:
        Path(tmp).write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, dies_half_way)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_suffix_lets_npz_writers_keep_the_name(tmp_path: Path) -> None:
    target = tmp_path / "pred.npz"
    atomic_write(target, lambda tmp: np.savez_compressed(tmp, depth=np.ones(3)), suffix=".npz")
    with np.load(target, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["depth"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["pred.npz"]


def test_npy_round_trip_without_pickles(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    atomic_save_npy(tmp_path / "x.npy", array)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy", allow_pickle=False), array)
    with pytest.raises(ValueError):
        atomic_save_npy(tmp_path / "y.npy", np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "y.npy").exists()
