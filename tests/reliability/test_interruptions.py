"""Interruptions: a training run killed with SIGKILL in the middle of an epoch resumes with ``--resume
auto`` to weights bit-identical to an uninterrupted run (CPU); a pipeline killed in the middle of a
notebook finishes with ``--resume`` and a correct summary; a killed ``dpface simulate`` leaves no partial
set, and the rerun completes it."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
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
            "--set", "train.val_every_n_epochs=100",
            # float32: this test compares weights bit for bit, which must not rest on bfloat16 kernels
            # (tests/test_train.py, _tiny_overrides)
            "--set", "train.precision=32-true", *extra]


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
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if last.is_file():
            process.send_signal(signal.SIGSTOP)  # frozen: no newer checkpoint between this read and the kill
            step = load_checkpoint(last)["global_step"]  # atomic writes: always a whole checkpoint
            if step >= 5 and step % 4 != 0:  # the last checkpoint is mid-epoch: kill here
                break
            process.send_signal(signal.SIGCONT)
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
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".set.")]  # the killed run's folder
    subprocess.run(command, check=True, capture_output=True, env=environment(), timeout=600)
    table = index(out, "train")
    assert len(table) > 0 and table["valid"].all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # which the rerun removed


def _logging_notebook(path: Path, log: Path) -> None:
    """A notebook that appends ``<name> start`` / ``<name> end`` to ``log`` around a pause of ``pause`` s."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("name = 'x'\npause = 0.0\nout_dir = None")
    params.metadata["tags"] = ["parameters"]
    body = (f"import time\nfrom pathlib import Path\nlog = Path({str(log)!r})\n"
            "with log.open('a') as fh: fh.write(f'{name} start\\n')\n"
            "time.sleep(pause)\n"
            "Path(out_dir).mkdir(parents=True, exist_ok=True)\n(Path(out_dir) / 'done.txt').write_text(name)\n"
            "with log.open('a') as fh: fh.write(f'{name} end\\n')")
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "dpface", "display_name": "Python (DP-Face kit)", "language": "python"}
    nbformat.write(nb, path)


def test_sigkill_pipeline_mid_notebook_then_resume_finishes_with_a_correct_summary(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    _logging_notebook(tmp_path / "step.ipynb", log)
    spec = tmp_path / "p.yaml"
    spec.write_text("steps:\n  - {name: first, notebook: step.ipynb, parameters: {name: first}}\n"
                    "  - {name: slow, notebook: step.ipynb, parameters: {name: slow, pause: 600}}\n"
                    "  - {name: last, notebook: step.ipynb, parameters: {name: last}}\n")
    out = tmp_path / "run"
    command = [*DPFACE, "pipeline", str(spec), "--out", str(out), "--no-cell-progress"]
    # its own session, so that the kill takes the Jupyter kernel too, as closing a terminal would
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment(),
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if log.is_file() and "slow start" in log.read_text():
            break
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the pipeline ended before it could be killed"
    assert log.read_text().splitlines() == ["first start", "first end", "slow start"]
    before = list(csv.DictReader((out / "summary.csv").open()))
    assert [(row["step"], row["status"]) for row in before] == [("first", "ok")]

    failed = subprocess.run(command, capture_output=True, text=True, env=environment(), timeout=60)
    assert failed.returncode == 2 and "--resume" in failed.stderr  # an existing run is never overwritten
    subprocess.run([*command, "--resume", "--set", "pause=0"], check=True, capture_output=True,
                   env=environment(), timeout=300)
    assert log.read_text().splitlines()[3:] == ["slow start", "slow end", "last start", "last end"]
    after = list(csv.DictReader((out / "summary.csv").open()))
    assert [(row["step"], row["status"]) for row in after] == [("first", "ok"), ("slow", "ok"), ("last", "ok")]
    assert after[0] == before[0]  # the finished step was neither re-run nor rewritten
    assert all((out / name / "done.txt").read_text() == name for name in ("first", "slow", "last"))
    assert all(nbformat.read(out / f"{name}.ipynb", as_version=4).cells for name in ("first", "slow", "last"))
