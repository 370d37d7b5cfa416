"""A disk that fills while a command writes: one-line error naming the file, exit 2, nothing left behind.

The commands run in a child process whose file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored) makes
the kernel refuse a write past a few kilobytes with ``EFBIG``, part-way through the output, exactly where a
full disk would refuse it with ``ENOSPC``; both are an ``OSError`` from the same ``write``. One in-process case
raises ``ENOSPC`` itself. The promise: no output folder, no temporary folder, and a previous output intact.
"""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpface_lib import cli
from dpface_lib.demo import DEMO_CHECKPOINT

DPFACE = [sys.executable, "-m", "dpface_lib.cli"]


def run_limited(argv: list[str], cwd: Path, limit_bytes: int) -> subprocess.CompletedProcess:
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*DPFACE, *argv], cwd=cwd, preexec_fn=limit, capture_output=True, text=True, env=env,
                          timeout=300)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def stereo_pair(folder: Path) -> list[str]:
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(folder / "l.png")
    Image.fromarray(np.roll(image, 1, axis=1)).save(folder / "r.png")
    return ["--left", "l.png", "--right", "r.png", "--a", "-20000", "--b", "25"]


def assert_one_line_error(result: subprocess.CompletedProcess, command: str, named: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[-1].startswith(f"dpface {command}: OSError: [Errno {errno.EFBIG}] File too large"), lines
    assert named in lines[-1] and "was left as it was" in lines[-1], lines[-1]


def test_predict_on_a_full_disk_keeps_the_previous_output(tmp_path: Path) -> None:
    args = stereo_pair(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "depth.npy").write_bytes(b"previous")
    result = run_limited(["predict", *args, "--out", "out", "--overwrite"], tmp_path, 10_000)
    assert_one_line_error(result, "predict", "disparity.npy")
    assert sorted(p.name for p in out.iterdir()) == ["depth.npy"] and (out / "depth.npy").read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_eval_on_a_full_disk_leaves_neither_tables_nor_predictions(tmp_path: Path) -> None:
    result = run_limited(["eval", "--checkpoint", str(DEMO_CHECKPOINT), "--out", "tables", "--save-predictions",
                          "preds"], tmp_path, 100_000)
    assert_one_line_error(result, "eval", ".npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_simulate_on_a_full_disk_leaves_no_partial_set(tmp_path: Path) -> None:
    result = run_limited(["simulate", "--out", "set", "--persons", "1", "--size", "64x64", "--cameras", "1",
                          "--quiet"], tmp_path, 20_000)
    assert_one_line_error(result, "simulate", ".npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_no_space_left_names_the_file_in_process(tmp_path: Path, capsys, monkeypatch) -> None:
    args = stereo_pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    real = Path.write_bytes
    calls = []

    def fill_up(self: Path, data: bytes) -> int:
        calls.append(self.name)
        if len(calls) == 3:  # the third file of the output finds the disk full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", fill_up)
    assert cli.main(["predict", *args, "--out", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dpface predict: OSError: [Errno {errno.ENOSPC}] No space left on device writing ")
    assert calls[2].split(".")[1] in err and "o was left as it was" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.png", "r.png"]
