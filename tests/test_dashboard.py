"""The dashboard's library side without a browser: sources from run folders, ranking, the browser state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpface_lib import cli
from dpface_lib.corruptions import CorruptedGroundTruth
from dpface_lib.dashboard import SampleBrowser, find_sources, ranked
from dpface_lib.data import DATA_SAMPLES, FaceDPDataset, evenly_spaced
from dpface_lib.evaluate import evaluate_model, write_tables


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dash") / "run"
    dataset = FaceDPDataset(DATA_SAMPLES, "test")
    samples = [dataset[i] for i in evenly_spaced(len(dataset), 6)]
    for name, kind, save in (("noisy", "noise", True), ("constant", "blur", False)):
        run = folder / ("reference/constant" if name == "constant" else f"train__model-{name}")
        frame = evaluate_model(CorruptedGroundTruth(kind, noise_rel=0.3), samples, name=name, batch_size=6,
                               save_dir=run / "predictions" if save else None)
        write_tables(frame, run)
    (folder / "train__model-noisy" / "run_info.json").write_text(json.dumps({"data_root": str(DATA_SAMPLES)}))
    return folder


def test_sources_know_their_predictions_dataset_and_what_to_rerun(run_dir: Path, tmp_path: Path) -> None:
    sources = {s.label: s for s in find_sources([run_dir])}
    assert set(sources) == {"noisy", "constant"}
    assert sources["noisy"].predictions == run_dir / "train__model-noisy" / "predictions"
    assert sources["noisy"].data_root == DATA_SAMPLES and len(sources["noisy"].table) == 6
    assert sources["constant"].predictions is None and "classical" in sources["constant"].rerun
    import shutil

    other = shutil.copytree(run_dir, tmp_path / "other")
    assert len(find_sources([run_dir, run_dir])) == 2  # a folder named twice is read once
    labels = [s.label for s in find_sources([run_dir, other])]
    assert sorted(labels) == ["constant (other/reference/constant)", "constant (run/reference/constant)",
                              "noisy (other/train__model-noisy)", "noisy (run/train__model-noisy)"]
    with pytest.raises(FileNotFoundError, match="nowhere: run folder does not exist"):
        find_sources([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no per_sample.csv"):
        find_sources([tmp_path / "empty"])


def test_browser_steps_from_the_worst_sample(run_dir: Path) -> None:
    sources = find_sources([run_dir])
    table = next(s.table for s in sources if s.label == "noisy")
    order = ranked(table, "ai1")
    assert order["ai1"].is_monotonic_decreasing
    assert ranked(table, "delta1")["delta1"].is_monotonic_increasing  # higher is better: worst is lowest
    browser = SampleBrowser(sources, metric="ai1", model="noisy", cloud=False)
    assert browser.current["sample_id"] == order["sample_id"][0] and browser.current["rank"] == 0
    assert browser.show(rank=2)["sample_id"] == order["sample_id"][2]
    assert browser.show(rank=99)["rank"] == 5  # clipped to the last sample
    browser.show(metric="ai2", rank=0)
    assert browser.current["sample_id"] == ranked(table, "ai2")["sample_id"][0]
    titles = [a.text for a in browser.figure.layout.annotations]
    assert titles == ["LR-sum input", "ground truth (px)", "noisy: aligned (px)", "noisy: error (px)"]
    sample = FaceDPDataset(DATA_SAMPLES, "test")[0]
    assert browser.figure.data[3].z.shape == tuple(sample["mask"].shape)  # one value per pixel for the hover
    browser.show(model="constant")
    assert browser.figure is None and "constant: this run saved no predictions" in browser.message


def test_dashboard_command_refuses_a_missing_run_in_one_line(tmp_path: Path, capsys) -> None:
    assert cli.main(["dashboard", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing: run folder does not exist" in err


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc; Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads the process table from /proc")
def test_sigterm_to_the_dashboard_command_stops_its_server(run_dir: Path) -> None:
    """Voila runs in its own session; ending `dpface dashboard` with SIGTERM must not orphan it."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "dpface_lib.cli", "dashboard", str(run_dir),
               "--data-root", str(DATA_SAMPLES)]
    servers: list[int] = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not re.match(r"dashboard: http://127\.0\.0\.1:\d+/", line):
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
        assert line.startswith("dashboard: http://127.0.0.1:"), f"no URL (exit status {process.poll()})"
        servers = _children(process.pid)
        assert servers, "the dashboard command started no server process"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in servers):
            time.sleep(0.2)
        alive = [pid for pid in servers if Path(f"/proc/{pid}").exists()]
        assert not alive, f"server process(es) {alive} outlived the dashboard command"
    finally:
        if process.poll() is None:
            process.kill()
        for pid in servers:  # never leave a server behind, even when the test fails
            if Path(f"/proc/{pid}").exists():
                os.killpg(pid, signal.SIGKILL)
