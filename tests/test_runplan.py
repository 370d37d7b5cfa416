"""The pipeline's host record, its step measurement and estimate, and its one progress bar (a tiny fake
pipeline: two training runs that write what 05 writes, and one other notebook)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
import torch
from conftest import write_tiny_dataset

from dpface_lib.config import resolve_precision, training_config
from dpface_lib.pipeline import run_pipeline
from dpface_lib.runplan import HOST_FILE, OTHER_NOTEBOOK_S, Progress, stamp_run_info

# what 05 writes in its folder: Lightning's hparams.yaml (with the resolved precision) and run_info.json
FAKE_TRAINING = """
import json
from pathlib import Path

import yaml
out = Path(out_dir)
out.mkdir(parents=True, exist_ok=True)
hparams = {"config": {"train": {"precision": "precision-of-" + model}}}
(out / "hparams.yaml").write_text(yaml.safe_dump(hparams))
(out / "run_info.json").write_text(json.dumps({"model": model, "steps": max_steps, "train_seconds": 1.0}))
"""
TRAINING_PARAMETERS = ("model = 'dpnet'\nprofile = 'tiny'\ndata_root = None\nmax_steps = 48\ncrop = None\n"
                       "batch_size = None\nval_points = 3\nval_samples = 32\nout_dir = None")


def _notebook(path: Path, body: str, params: str) -> Path:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "dpface", "display_name": "Python (DP-Face kit)",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_fake_pipeline_measures_estimates_records_the_host_and_reports_progress(tmp_path: Path,
                                                                               capsys) -> None:
    root = write_tiny_dataset(tmp_path / "data", size=(64, 64), n_views=1, lights=(1,))
    _notebook(tmp_path / "train.ipynb", FAKE_TRAINING, TRAINING_PARAMETERS)
    _notebook(tmp_path / "other.ipynb", "print(x)", "x = 1")
    (tmp_path / "p.yaml").write_text(f"""
steps:
  - {{name: tour, notebook: other.ipynb}}
  - name: train
    notebook: train.ipynb
    parameters: {{data_root: "{root}", max_steps: 40, crop: [64, 64], batch_size: 2, val_points: 2}}
    grid: {{model: [dpnet, bts]}}
""")
    out = tmp_path / "run"
    rows = run_pipeline(tmp_path / "p.yaml", out, cell_progress=False)
    assert [r["status"] for r in rows] == ["ok"] * 3
    err = capsys.readouterr().err

    host = json.loads((out / HOST_FILE).read_text())
    assert host["isa"] == torch.backends.cpu.get_cpu_capability() and host["torch"] == torch.__version__
    assert host["threads"] == torch.get_num_threads() and host["cpu"] and isinstance(host["features"], list)
    # the precision each model trains in here: BTS's profile says 32-true, the others `auto`
    expected = {m: str(resolve_precision(training_config(m, "tiny")["train"]["precision"], "cpu"))
                for m in ("dpnet", "bts")}
    assert host["precision"] == expected and host["precision"]["bts"] == "32-true"
    for model in ("dpnet", "bts"):
        measured = host["measured"][model]
        assert 0 < measured["step_s"] < host["measure_seconds"] and measured["eval_sample_s"] > 0
        assert measured["batch_size"] == 2 and measured["precision"] == expected[model]
        # 40 steps at the measured step, plus scoring 2 x 32 curve samples, 32 first ones and the test split
        seconds = host["estimate_seconds"][f"train__model-{model}"]
        assert seconds >= 40 * measured["step_s"] + OTHER_NOTEBOOK_S - 0.1
    assert host["estimate_seconds"]["tour"] == OTHER_NOTEBOOK_S
    assert host["estimate_total_seconds"] == pytest.approx(sum(host["estimate_seconds"].values()), abs=0.2)

    # each training run's run_info.json now names its host and its own precision (from hparams.yaml)
    for model in ("dpnet", "bts"):
        info = json.loads((out / f"train__model-{model}" / "run_info.json").read_text())
        assert info["model"] == model and info["train_seconds"] == 1.0  # the notebook's facts are kept
        assert info["host"]["precision"] == f"precision-of-{model}"
        assert info["host"]["isa"] == host["isa"] and info["host"]["features"] == host["features"]

    # printed before the first notebook: the host, each model's step and precision, the estimate
    assert f"host: {host['cpu']}" in err and "estimate: 3 notebook(s) in about" in err
    assert err.index("estimate:") < err.index("pipeline: tour done")
    assert "train__model-bts" in err and "32-true" in err
    # not a terminal: one plain progress line per notebook, the last at 100 % of the estimate
    lines = [line for line in err.splitlines() if line.startswith("pipeline: ")]
    assert len(lines) == 3 and "3 of 3 notebook(s), 100 % of the estimate" in lines[-1]


def test_no_estimate_still_records_the_host(tmp_path: Path, capsys) -> None:
    _notebook(tmp_path / "train.ipynb", FAKE_TRAINING, TRAINING_PARAMETERS)
    (tmp_path / "p.yaml").write_text("steps:\n  - {name: train, notebook: train.ipynb}\n")
    run_pipeline(tmp_path / "p.yaml", tmp_path / "run", cell_progress=False, estimate=False)
    host = json.loads((tmp_path / "run" / HOST_FILE).read_text())
    assert host["measured"] == {} and host["estimate_seconds"] == {"train": OTHER_NOTEBOOK_S}
    info = json.loads((tmp_path / "run" / "train" / "run_info.json").read_text())
    assert info["host"]["precision"] == "precision-of-dpnet"


def test_stamp_without_hparams_takes_the_model_s_precision_from_the_host(tmp_path: Path) -> None:
    assert not stamp_run_info(tmp_path, {"precision": "32-true"})  # nothing to stamp
    (tmp_path / "run_info.json").write_text(json.dumps({"model": "nnet"}))
    assert stamp_run_info(tmp_path, {"cpu": "c", "precision": {"nnet": "bf16-mixed", "bts": "32-true"}})
    assert json.loads((tmp_path / "run_info.json").read_text())["host"] == {"cpu": "c",
                                                                           "precision": "bf16-mixed"}


def test_progress_bar_counts_estimated_seconds_with_an_eta() -> None:
    runs = [SimpleNamespace(name=n) for n in ("a", "b", "c")]
    stream = io.StringIO()
    bar = Progress(runs, {"a": 10.0, "b": 30.0}, stream=stream, tty=False)  # c: the nominal share
    assert bar.total == 40.0 + OTHER_NOTEBOOK_S
    seen = [run.name for run in bar]
    assert seen == ["a", "b", "c"]
    lines = stream.getvalue().splitlines()
    share_after_b = round(100 * 40 / (40 + OTHER_NOTEBOOK_S))
    assert lines[1].startswith(f"pipeline: b done; 2 of 3 notebook(s), {share_after_b} % of the estimate")
    assert "about" in lines[1] and lines[2].endswith("about 0 s left")
    # on a terminal: a tqdm bar in estimated seconds, with the run's name and the paced time left
    tty = io.StringIO()
    for _ in Progress(runs, {"a": 10.0, "b": 30.0}, stream=tty, tty=True):
        pass
    text = tty.getvalue()
    total = round(40 + OTHER_NOTEBOOK_S)
    assert "pipeline" in text and f"{total}/{total} estimated s" in text
    assert "a; about" in text and "left" in text


def test_progress_paces_the_time_left_by_the_measured_runs_only() -> None:
    """A notebook with a nominal share that runs 20x longer than it must not multiply the estimate of the
    measured training runs after it; a training run twice as slow as measured doubles what is left."""
    runs = [SimpleNamespace(name=n) for n in ("tour", "train_a", "train_b", "train_c")]
    seconds = {"tour": 30.0, "train_a": 100.0, "train_b": 100.0, "train_c": 100.0}
    ticks = iter([0.0, 600.0, 800.0, 1000.0, 1200.0])  # start, then the end of each run
    stream = io.StringIO()
    bar = Progress(runs, seconds, stream=stream, tty=False, measured={"train_a", "train_b", "train_c"},
                   clock=lambda: next(ticks))
    list(bar)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("about 5 min left")  # 300 estimated s at the nominal pace, not 600/30 x 300 s
    assert lines[1].endswith("about 7 min left")  # train_a took 200 s for 100: 200 s x 2 = 400 s
    assert lines[3].endswith("about 0 s left")
