"""The last weak answers to bad input (docs/reliability.md, "Named faults"): each case failed before its fix.

Every command case asserts exit status 2, one line on stderr naming the file or option and the fault, and
nothing partial left on disk.
"""

from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_dataset
from PIL import Image

from dpface_lib import cli
from dpface_lib.checkpoint import CheckpointError, load_checkpoint
from dpface_lib.data import FaceDPDataset, index, read_sample
from dpface_lib.fileio import ArrayFileError, atomic_folder, load_npz
from dpface_lib.layout import DatasetError, DatasetWarning, load_npy
from dpface_lib.metrics import NotScorableWarning, affine_invariant_metrics, batch_metrics
from dpface_lib.pipeline import PipelineError, load_pipeline

GROUP = "sim_group001"
SMALL_SET = ["--persons", "2", "--size", "32x32", "--cameras", "1", "--lights", "1", "--expressions", "neutral",
             "--positions", "forward", "--directions", "front", "--quiet"]


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def one_line(err: str) -> bool:
    return len(err.splitlines()) == 1 and "Traceback" not in err


def pair(tmp_path: Path, grey_left: bool = False) -> list[str]:
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    left = Image.fromarray(image)
    (left.convert("L") if grey_left else left).save(tmp_path / "l.png")
    Image.fromarray(np.roll(image, 1, axis=0)).save(tmp_path / "r.png")
    return ["--left", str(tmp_path / "l.png"), "--right", str(tmp_path / "r.png"), "--a", "-20000", "--b", "25"]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# ------------------------------------------------------------------------- half-made sets from simulate
def test_simulate_removes_a_killed_runs_half_made_set_and_generate_writes_splits_last(tmp_path: Path,
                                                                                    capsys) -> None:
    out = tmp_path / "set"
    stale = tmp_path / f".set.{dead_pid()}-abcd.tmp"  # what a killed run leaves beside --out
    (stale / GROUP).mkdir(parents=True)
    (stale / "train.txt").write_text(f"{GROUP}\n")
    (stale / "test.txt").write_text("")
    code, err = run(["simulate", "--out", str(out), *SMALL_SET], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # the killed run's folder is gone
    # the library call writes into its folder directly: old split files go first, new ones come last
    from dpface_lib.simulate import parse_args, writer

    again = parse_args(["--out", str(out), *SMALL_SET])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer, "_view_job", lambda job: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            writer.generate(again)
    assert not (out / "train.txt").exists() and not (out / "test.txt").exists()


# ------------------------------------------------------------------- errors that name the file and fault
def test_npz_archives_that_are_not_name_the_file(tmp_path: Path) -> None:
    zip_corrupt = tmp_path / "a.npz"
    np.savez(zip_corrupt, disparity=np.ones((4, 4)))
    zip_corrupt.write_bytes(zip_corrupt.read_bytes()[:-30])  # the central directory is cut
    with pytest.raises(ArrayFileError, match=r"a\.npz: not a readable \.npz archive"):
        load_npz(zip_corrupt)
    single = tmp_path / "b.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.ones((4, 4)))
    with pytest.raises(ArrayFileError, match=r"b\.npz: holds a single \.npy array"):
        load_npz(single)
    np.savez(tmp_path / "ok.npz", depth=np.arange(3.0))
    assert load_npz(tmp_path / "ok.npz")["depth"].tolist() == [0.0, 1.0, 2.0]
    archive_as_npy = tmp_path / "DEPTH_1.npy"
    np.savez(archive_as_npy.with_suffix(""), depth=np.ones(2))
    archive_as_npy.with_suffix(".npz").rename(archive_as_npy)
    with pytest.raises(DatasetError, match=r"DEPTH_1\.npy: expected a numeric array"):
        load_npy(archive_as_npy)


def test_a_hostile_checkpoint_does_not_relay_the_advice_to_drop_weights_only(tmp_path: Path, capsys) -> None:
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "where": Path("/tmp")}, hostile)  # a class outside the weights-only set
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(hostile)
    text = str(info.value)
    assert "hostile.ckpt" in text and "weights_only=False" not in text and "weights_only" not in text
    assert "stores objects other than tensors" in text and len(text.splitlines()) == 1
    code, err = run(["predict", *pair(tmp_path), "--checkpoint", str(hostile), "--out", str(tmp_path / "o")],
                    capsys)
    assert code == 2 and one_line(err) and "hostile.ckpt" in err and "weights_only" not in err
    assert not (tmp_path / "o").exists()


def test_option_messages_name_the_option(tmp_path: Path, capsys, monkeypatch) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["simulate", "--out", str(tmp_path / "s"), "--seed", "-1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--seed" in err and "must be >= 0" in err
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    for argv in (["simulate", "--out", ".", *SMALL_SET], ["simulate", "--out", ".", *SMALL_SET, "--overwrite"],
                 ["predict", *pair(tmp_path), "--out", ".", "--overwrite"]):
        code, err = run(argv, capsys)
        assert code == 2 and one_line(err) and "--out .: is the current folder" in err, err
    assert sorted(p.name for p in work.iterdir()) == ["mine.txt"] and sorted(
        p.name for p in tmp_path.iterdir()) == ["l.png", "r.png", "work"]


# ------------------------------------------------------------------------------------- raw tracebacks
def test_a_read_only_output_folder_names_the_option(tmp_path: Path, capsys, monkeypatch) -> None:
    import tempfile

    def read_only(*args, dir=None, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(Path(dir) / "x"))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    code, err = run(["predict", *pair(tmp_path), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and one_line(err) and f"--out {tmp_path / 'o'}: cannot create the output folder" in err
    assert "Read-only file system" in err and not (tmp_path / "o").exists()
    with pytest.raises(OSError, match="--save-predictions"):
        with atomic_folder(tmp_path / "p", option="--save-predictions"):
            pass
    import dpface_lib.train as train  # any command: an OSError under a path option names that option

    run_dir = tmp_path / "ro" / "run"
    monkeypatch.setattr(train, "cli", lambda argv: (_ for _ in ()).throw(
        OSError(errno.EROFS, "Read-only file system", str(run_dir / "checkpoints"))))
    code, err = run(["train", "--model", "dpnet", "--out", str(run_dir)], capsys)
    assert code == 2 and one_line(err) and err.startswith(f"dpface train: --out {run_dir}: OSError: [Errno 30]")


def test_a_library_that_cannot_be_mapped_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import importlib

    def unmappable(name):
        raise ImportError("libtorch_cpu.so: failed to map segment from shared object")

    monkeypatch.setattr(importlib, "import_module", unmappable)
    code, err = run(["predict"], capsys)
    assert code == 2 and one_line(err) and "libtorch_cpu.so" in err and "ulimit -v" in err
    with pytest.raises(ImportError):
        cli.main(["--debug", "predict"])

    def kit_bug(name):
        raise ImportError("cannot import name 'x' from 'dpface_lib.metrics'", name="dpface_lib.metrics")

    monkeypatch.setattr(importlib, "import_module", kit_bug)
    with pytest.raises(ImportError):  # a broken import inside the kit is a bug, not hidden
        cli.main(["predict"])


def test_a_real_address_space_limit_is_one_line(tmp_path: Path) -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (300 * 2**20, 300 * 2**20))

    done = subprocess.run([sys.executable, "-m", "dpface_lib.cli", "predict", "--left", "l", "--right", "r",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, preexec_fn=limit,
                          timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2 and one_line(err) and "ulimit -v" in err, err


# ------------------------------------------------------------------------------------ silent acceptance
def test_a_grey_view_next_to_a_colour_view_is_refused(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    record = json.loads((tiny_dataset / GROUP / "JSON" / "INFO_1_1_1.json").read_text())
    left = tiny_dataset / record["PATH"]["left"]
    Image.open(left).convert("L").save(left, format="JPEG")
    with pytest.raises(DatasetError, match="grey view next to the colour view") as info:
        read_sample(tiny_dataset / GROUP / "JSON" / "INFO_1_1_1.json")
    assert "LEFT/IMG_1_1_1" in str(info.value) and "RIGHT/IMG_1_1_1" in str(info.value)
    code, err = run(["predict", *pair(tmp_path, grey_left=True), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and one_line(err) and "l.png: grey view next to the colour view" in err
    assert not (tmp_path / "o").exists()


def test_a_mask_without_face_pixels_warns(tiny_dataset: Path) -> None:
    json_path = tiny_dataset / GROUP / "JSON" / "INFO_1_1_1.json"
    mask_path = Path(read_sample(json_path)["meta"]["mask"])
    np.save(mask_path, np.zeros(np.load(mask_path).shape, bool))
    with pytest.warns(DatasetWarning, match=r"MASK_1_1\.npy \(of .*INFO_1_1_1\.json\): the mask has no face"):
        sample = read_sample(json_path)
    assert not sample["mask"].any()


def test_a_pipeline_step_named_dots_is_refused(tmp_path: Path) -> None:
    import nbformat

    nbformat.write(nbformat.v4.new_notebook(), tmp_path / "step.ipynb")
    for name in ("..", "."):
        spec = tmp_path / "p.yaml"
        spec.write_text(f'steps:\n  - {{name: "{name}", notebook: step.ipynb}}\n')
        with pytest.raises(PipelineError, match=rf"p\.yaml: step '{name}': name may only use"):
            load_pipeline(spec)


def test_a_single_valid_pixel_is_not_scorable(tiny_dataset: Path) -> None:
    gt, pred = np.random.default_rng(0).uniform(1, 2, (2, 8, 8))
    mask = np.zeros((8, 8), bool)
    mask[3, 4] = True
    with pytest.warns(NotScorableWarning, match="fewer than 16 valid pixels"):
        assert np.isnan(affine_invariant_metrics(pred, gt, mask)["ai1"])  # was a perfect 0.0
    sample = FaceDPDataset(tiny_dataset, "train")[0]
    batch = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else [v] for k, v in sample.items()}
    batch["mask"] = torch.zeros_like(batch["mask"])
    batch["mask"][0, 12, 16] = True
    output = {"disparity": torch.zeros_like(batch["disparity"]), "normal": batch["normal"]}
    with pytest.warns(NotScorableWarning, match=r"batch_metrics: .*\{0: 1\}"):
        values = batch_metrics(output, batch)
    assert values["scorable"].tolist() == [0.0] and np.isnan(values["ai1"][0].item())
    assert np.isnan(values["invalid_depth"][0].item()) and np.isnan(values["mean_deg"][0].item())


# --------------------------------------------------------------------------------------- late failures
def test_broken_files_are_counted_when_the_dataset_is_built(tiny_dataset: Path) -> None:
    depth_files = sorted((tiny_dataset / GROUP / "DEPTH").glob("*.npy"))
    depth_files[0].write_bytes(depth_files[0].read_bytes()[:-40])  # truncated
    images = sorted((tiny_dataset / GROUP / "IMG" / "RIGHT").glob("*.JPG"))
    images[-1].write_bytes(b"")  # empty
    frame = index(tiny_dataset, "train")
    bad = int(((frame["depth"] == str(depth_files[0])) | (frame["right"] == str(images[-1]))).sum())
    assert 2 < bad < len(frame)  # a depth map serves every light of its view
    with pytest.raises(DatasetError, match=rf"{bad} of {len(frame)} samples have broken files") as info:
        FaceDPDataset(tiny_dataset, "train")  # not at the first item
    assert "DEPTH_" in str(info.value) and "truncated" in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = FaceDPDataset(tiny_dataset, "train", skip_bad=True)
    assert len(kept.skipped) == bad and len(kept) == len(frame) - bad


def test_the_construction_check_stays_cheap(tmp_path: Path) -> None:
    """Headers only: building a dataset costs a small multiple of indexing its JSON records."""
    from dpface_lib.filecheck import check_dataset_files

    root = write_tiny_dataset(tmp_path / "d", n_groups=4)
    frame = index(root, "train")
    rows = frame[["left", "right", "lrsum", "depth", "normal", "mask", "albedo"]].to_dict("records") * 50
    start = time.perf_counter()
    check_dataset_files(rows, "x")
    per_sample = (time.perf_counter() - start) / len(rows)
    assert per_sample < 2e-3, f"{per_sample * 1e6:.0f} us per sample"


def test_train_negative_seed_names_the_option(tmp_path, capsys):
    from dpface_lib.train import cli

    with pytest.raises(SystemExit) as stop:
        cli(["--model", "dpnet", "--out", str(tmp_path / "run"), "--seed", "-1"])
    assert stop.value.code == 2
    assert "--seed: must be >= 0, got -1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_eval_names_a_broken_prediction_file(tmp_path):
    import numpy as np

    from dpface_lib.data import FaceDPDataset
    from dpface_lib.evaluate import EvaluationError, load_prediction

    sample = FaceDPDataset("data_samples", "test")[0]
    path = tmp_path / f"{sample['sample_id']}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(EvaluationError, match=r"\.npz: not a readable \.npz archive"):
        load_prediction(tmp_path, sample)
    with path.open("wb") as fh:  # one .npy array saved under the .npz name
        np.save(fh, np.zeros(sample["mask"].shape, np.float32))
    with pytest.raises(EvaluationError, match=str(path.name)):
        load_prediction(tmp_path, sample)
