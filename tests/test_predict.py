"""``dpface predict``: a tiny StereoDPNet checkpoint in the training format run on a generated DP pair, output
files and their consistency, padding of odd sizes, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dpface_lib.checkpoint import load_model
from dpface_lib.cli import main
from dpface_lib.predict import PredictError, predict_pair, read_pair_calibration
from dpface_lib.train import DPFaceModule

A, B = -46190.0, 57.3  # a lens-like b, above every disparity bin of the tiny models (-4 ... 6 px)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny StereoDPNet saved as ``dpface train`` saves it (meta + state)."""
    torch.manual_seed(0)
    module = DPFaceModule("stereodpnet", "tiny")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"dpface": module.checkpoint_meta(), "state_dict": module.state_dict()}, path)
    return path


def write_pair(folder, size=(48, 40), seed=0, shift=1):
    """A textured left view and the right view moved down by ``shift`` rows; returns the two paths."""
    rng = np.random.default_rng(seed)
    h, w = size
    left = rng.uniform(0, 255, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    left = np.asarray(Image.fromarray(left).resize((w, h + shift), Image.BICUBIC))
    right = left[:h]
    left = left[shift:]
    paths = folder / "L.png", folder / "R.png"
    Image.fromarray(left).save(paths[0])
    Image.fromarray(right).save(paths[1])
    return paths


def test_predict_writes_consistent_outputs(tmp_path, checkpoint, capsys):
    left, right = write_pair(tmp_path, size=(48, 40))  # 40 columns: not a multiple of 16 -> padded
    out = tmp_path / "pred"
    status = main(
        [
            "predict",
            "--left",
            str(left),
            "--right",
            str(right),
            "--a",
            str(A),
            "--b",
            str(B),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "not a multiple of 16" in printed and "no intrinsics" in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "depth.npy",
        "depth.png",
        "disparity.npy",
        "normal.npy",
        "normal.png",
    ]
    disparity = np.load(out / "disparity.npy", allow_pickle=False)
    depth = np.load(out / "depth.npy", allow_pickle=False)
    normal = np.load(out / "normal.npy", allow_pickle=False)
    assert disparity.shape == depth.shape == (48, 40) and normal.shape == (3, 48, 40)
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, A / (disparity - B), rtol=1e-4)  # d = a / Z + b inverted
    np.testing.assert_allclose(np.linalg.norm(normal, axis=0), 1.0, atol=1e-4)
    assert Image.open(out / "normal.png").size == (40, 48)
    # same numbers as the library call on the padded input
    model = load_model(checkpoint)
    rgb = [np.asarray(Image.open(p), dtype=np.float32) / 255 for p in (left, right)]
    direct = predict_pair(model, *rgb, A, B)
    np.testing.assert_allclose(direct["disparity"], disparity, atol=1e-5)


def test_calibration_json_forms(tmp_path, checkpoint):
    plain = tmp_path / "calib.json"
    plain.write_text(json.dumps({"a": A, "b": B, "K": [[100.0, 0, 20], [0, 100.0, 24], [0, 0, 1]]}))
    calib = read_pair_calibration(plain)
    assert calib["a"] == A and calib["b"] == B and calib["K"][0, 2] == 20
    info = tmp_path / "INFO_1_1_1.json"
    info.write_text(
        json.dumps(
            {
                "PARAMS": {
                    "abvalue": f"[{A}, {B}]",
                    "intrinsic": "array([100.0, 101.0, 0.0, 20.0, 24.0, 0, 0, 0, 0])",
                }
            }
        )
    )
    calib = read_pair_calibration(info)
    assert (calib["a"], calib["b"]) == (A, B) and calib["K"][1, 1] == 101.0
    left, right = write_pair(tmp_path, size=(32, 32))
    assert (
        main(
            [
                "predict",
                "--left",
                str(left),
                "--right",
                str(right),
                "--calib",
                str(info),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_calibration", "missing calibration"),
        ("only_a", "missing calibration"),
        ("unreadable_left", "not a readable image"),
        ("missing_right", "image file is missing"),
        ("size_mismatch", "same size"),
        ("bad_calib_json", "not a readable JSON"),
        ("calib_without_b", "missing ['b']"),
        ("missing_checkpoint", "checkpoint does not exist"),
        ("not_a_checkpoint", "cannot load"),
    ],
)
def test_bad_input_gives_clear_error_and_no_files(tmp_path, checkpoint, capsys, case, message):
    left, right = write_pair(tmp_path, size=(32, 32))
    args = ["--left", str(left), "--right", str(right), "--a", str(A), "--b", str(B)]
    ckpt = str(checkpoint)
    if case == "no_calibration":
        args = args[:4]
    elif case == "only_a":
        args = args[:6]
    elif case == "unreadable_left":
        (tmp_path / "broken.jpg").write_bytes(b"not an image")
        args[1] = str(tmp_path / "broken.jpg")
    elif case == "missing_right":
        args[3] = str(tmp_path / "nope.png")
    elif case == "size_mismatch":
        (tmp_path / "other").mkdir()
        other, _ = write_pair(tmp_path / "other", size=(48, 32), seed=1)
        args[3] = str(other)
    elif case == "bad_calib_json":
        (tmp_path / "c.json").write_text("{a: 1")
        args = args[:4] + ["--calib", str(tmp_path / "c.json")]
    elif case == "calib_without_b":
        (tmp_path / "c.json").write_text(json.dumps({"a": A}))
        args = args[:4] + ["--calib", str(tmp_path / "c.json")]
    elif case == "missing_checkpoint":
        ckpt = str(tmp_path / "none.ckpt")
    elif case == "not_a_checkpoint":
        (tmp_path / "x.ckpt").write_bytes(b"garbage")
        ckpt = str(tmp_path / "x.ckpt")
    out = tmp_path / "pred"
    assert main(["predict", *args, "--checkpoint", ckpt, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_predict_pair_rejects_mismatched_arrays(checkpoint):
    model = load_model(checkpoint)
    with pytest.raises(PredictError, match="same size"):
        predict_pair(model, np.zeros((32, 32, 3)), np.zeros((32, 48, 3)), A, B)
