"""Interruptions: a training run killed with SIGKILL in the middle of an epoch resumes with ``--resume
auto`` to weights bit-identical to an uninterrupted run (CPU); a killed ``dpface simulate`` leaves no
partial set, and the rerun completes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_dataset

from dpface_lib.checkpoint import load_checkpoint
from dpface_lib.data import index

pytestmark = pytest.mark.slow

DPFACE = [sys.executable, "-m", "dpface_lib.cli"]
STEPS = 40


def train_command(root: Path, out: Path, *extra: str) -> list[str]:
    # 16 training samples at batch 4: 4 steps per epoch, so checkpoints every 5 steps fall mid-epoch
    return [*DPFACE, "train", "--model", "dpnet", "--profile", "tiny", "--data-root", str(root), "--out",
            str(out), "--max-steps", str(STEPS), "--no-progress-bar", "--set", "data.crop.mode=none",
            "--set", "train.checkpoint_every_n_steps=5", "--set", "train.val_every_n_steps=null",
            "--set", "train.val_every_n_epochs=100", *extra]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigkill_mid_epoch_then_resume_auto_is_bit_identical(tmp_path: Path) -> None:
    tiny_dataset = write_tiny_dataset(tmp_path / "data", n_groups=3, size=(64, 64))  # 16 training samples
    whole = tmp_path / "whole"
    subprocess.run(train_command(tiny_dataset, whole), check=True, capture_output=True, env=environment(),
                   timeout=600)
    killed = tmp_path / "killed"
    process = subprocess.Popen(train_command(tiny_dataset, killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=environment())
    last = killed / "checkpoints" / "last.ckpt"
    step = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file():
            step = load_checkpoint(last)["global_step"]  # atomic writes: always a whole checkpoint
            if step >= 10:
                break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step = load_checkpoint(last)["global_step"]
    assert 5 <= step < STEPS and step % 4 != 0  # stopped mid-epoch
    subprocess.run(train_command(tiny_dataset, killed, "--resume", "auto"), check=True, capture_output=True,
                   env=environment(), timeout=600)
    resumed = load_checkpoint(last)
    reference = load_checkpoint(whole / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == reference["global_step"] == STEPS
    for key, value in reference["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["last.ckpt"]


def test_sigkill_simulate_leaves_no_partial_set_and_rerun_completes(tmp_path: Path) -> None:
    out = tmp_path / "set"
    command = [*DPFACE, "simulate", "--out", str(out), "--persons", "2", "--size", "64x64", "--cameras", "1,2",
               "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # wait until views are being written
        if any(p.name.endswith(".JPG") for p in tmp_path.rglob("*.JPG")):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert not out.exists()  # the set is built beside --out and renamed only when complete
    subprocess.run(command, check=True, capture_output=True, env=environment(), timeout=600)
    table = index(out, "train")
    assert len(table) > 0 and table["valid"].all()
