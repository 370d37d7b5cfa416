"""Tests for dpface_lib.evaluate: batch metrics, model / prediction-folder evaluation, tables, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_tiny_dataset

from dpface_lib import evaluate
from dpface_lib.data import FaceDPDataset
from dpface_lib.evaluate import (
    aggregate,
    cli,
    evaluate_model,
    evaluate_predictions,
    leaderboard,
    load_runs,
    write_tables,
)
from dpface_lib.metrics import METRIC_KEYS, NORMAL_KEYS, EvaluationError, batch_metrics


class AffineOracle(torch.nn.Module):
    """Predicts an affine map of the true disparity, the depth that disparity implies through (a, b),
    and the true normals rotated by ``tilt_deg`` about the x axis."""

    def __init__(self, scale=2.0, offset=1.0, depth_factor=None, tilt_deg=0.0, depth_only=False):
        super().__init__()
        self.scale, self.offset, self.depth_factor = scale, offset, depth_factor
        self.tilt, self.depth_only = np.radians(tilt_deg), depth_only

    def forward(self, batch):
        disparity = batch["disparity"] * self.scale + self.offset
        depth = batch["depth"] * (self.depth_factor or 1.0)
        c, s = float(np.cos(self.tilt)), float(np.sin(self.tilt))
        n = batch["normal"]
        normal = torch.stack([n[:, 0], c * n[:, 1] - s * n[:, 2], s * n[:, 1] + c * n[:, 2]], 1)
        out = {"depth": depth, "normal": normal}
        return out if self.depth_only else out | {"disparity": disparity}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("eval") / "tiny")


def _batch(dataset, n=2):
    return torch.utils.data.default_collate([dataset[i] for i in range(n)])


def test_batch_metrics_empty_sample_raises_or_gives_nan(tiny_root):
    dataset = FaceDPDataset(tiny_root, "test")
    batch = _batch(dataset)
    batch["mask"][1] = False  # e.g. a training crop with no face pixel
    output = AffineOracle(scale=-3.0, offset=5.0)(batch)
    with pytest.raises(ValueError, match="sample 1"):
        batch_metrics(output, batch)
    out = batch_metrics(output, batch, allow_empty=True)
    for key in ("ai1", "absrel", "mean_deg"):
        assert float(out[key][0]) < 1e-3 and torch.isnan(out[key][1]), key


def test_batch_metrics_perfect_predictions(tiny_root):
    dataset = FaceDPDataset(tiny_root, "test")
    batch = _batch(dataset)
    out = batch_metrics(AffineOracle(scale=-3.0, offset=5.0)(batch), batch)
    assert out["affine_space"] == ["disparity", "disparity"]
    for key in ("ai1", "ai2", "spearman", "absrel", "rmse", "mean_deg", "median_deg", "invalid_depth"):
        assert torch.all(out[key] < 1e-3), key
    assert torch.all(out["delta1"] == 1.0) and torch.all(out["within_11_25"] == 1.0)
    assert set(METRIC_KEYS) <= set(out)
    assert torch.all(out["valid_px"] == batch["mask"].flatten(1).sum(1))
    # a depth scaled by 1.05 everywhere: AbsRel = 0.05, delta1 = 0, delta3 = 0 (1.05 > 1.01^3)
    out = batch_metrics(AffineOracle(depth_factor=1.05, tilt_deg=10.0)(batch), batch)
    torch.testing.assert_close(out["absrel"], torch.full((2,), 0.05, dtype=torch.float64), rtol=1e-5,
                               atol=0)
    assert torch.all(out["delta3"] == 0.0)
    # rotating unit n by 10 deg about x moves it by phi with cos(phi) = nx^2 + (1 - nx^2) cos(10 deg)
    nx2 = batch["normal"][:, 0].double() ** 2
    phi = torch.rad2deg(torch.arccos((nx2 + (1 - nx2) * np.cos(np.radians(10.0))).clamp(max=1.0)))
    expected = (phi * batch["mask"]).flatten(1).sum(1) / batch["mask"].flatten(1).sum(1)
    torch.testing.assert_close(out["mean_deg"], expected, rtol=1e-3, atol=0)
    assert torch.all(expected < 10.0) and torch.all(expected > 5.0)


def test_depth_only_model_uses_inverse_depth(tiny_root):
    batch = _batch(FaceDPDataset(tiny_root, "test"))
    out = batch_metrics(AffineOracle(depth_only=True, depth_factor=1.3)(batch), batch)
    assert out["affine_space"] == ["inverse_depth"] * 2
    # 1 / (1.3 Z) is an exact affine map of max(Z) / Z: affine-invariant errors vanish, depth errors do not
    assert torch.all(out["ai1"] < 1e-5) and torch.all(out["spearman"] < 1e-9)
    torch.testing.assert_close(out["absrel"], torch.full((2,), 0.3, dtype=torch.float64), rtol=1e-5, atol=0)


def test_disparity_only_prediction_gives_depth_through_ab(tiny_root):
    batch = _batch(FaceDPDataset(tiny_root, "test"))
    out = batch_metrics({"disparity": batch["disparity"].clone()}, batch)
    assert torch.all(out["absrel"] < 1e-5) and torch.all(out["invalid_depth"] == 0)
    assert all(torch.isnan(out[k]).all() for k in NORMAL_KEYS)  # no normals predicted
    # disparity exactly b everywhere -> depth at infinity: counted invalid, clipped, finite
    flat = {"disparity": batch["b"].reshape(-1, 1, 1).expand_as(batch["disparity"]).clone()}
    out = batch_metrics(flat, batch)
    assert torch.all(out["invalid_depth"] == 1.0) and torch.isfinite(out["rmse"]).all()
    with pytest.raises(EvaluationError, match="shape"):
        batch_metrics({"disparity": batch["disparity"][:, :-1]}, batch)
    with pytest.raises(EvaluationError, match="neither"):
        batch_metrics({"normal": batch["normal"]}, batch)


def test_model_round_trip_through_saved_predictions(tiny_root, tmp_path):
    dataset = FaceDPDataset(tiny_root, "test")
    direct = evaluate_model(AffineOracle(depth_factor=1.02, tilt_deg=5.0), dataset, name="oracle",
                            batch_size=3, save_dir=tmp_path / "pred")
    assert len(direct) == len(dataset) and set(direct["model"]) == {"oracle"}
    assert list(direct["sample_id"]) == list(dataset.frame["sample_id"])
    assert {"camidx", "lightidx", "expression", "position", "direction"} <= set(direct.columns)
    saved = sorted((tmp_path / "pred").rglob("*.npz"))
    assert len(saved) == len(dataset) and not list((tmp_path / "pred").rglob("*.tmp*"))
    with np.load(saved[0], allow_pickle=False) as data:
        assert set(data.files) == {"disparity", "depth", "normal"} and data["depth"].dtype == np.float32
    reread = evaluate_predictions(tmp_path / "pred", dataset, name="oracle")
    columns = [c for c in METRIC_KEYS if c in direct]
    pd.testing.assert_frame_equal(direct[columns], reread[columns], rtol=1e-6, atol=1e-6)


def test_prediction_folder_errors(tiny_root, tmp_path):
    dataset = FaceDPDataset(tiny_root, "test")
    with pytest.raises(EvaluationError, match="does not exist"):
        evaluate_predictions(tmp_path / "missing", dataset)
    (tmp_path / "pred").mkdir()
    with pytest.raises(EvaluationError, match="no saved prediction for sample"):
        evaluate_predictions(tmp_path / "pred", dataset)
    first = dataset[0]
    path = tmp_path / "pred" / f"{first['sample_id']}.npz"
    path.parent.mkdir(parents=True)
    np.savez(path, disparity=np.zeros((3, 3), np.float32))
    with pytest.raises(EvaluationError, match="'disparity' has shape"):
        evaluate_predictions(tmp_path / "pred", dataset)
    np.savez(path, normal=np.zeros((3, *first["mask"].shape), np.float32))
    with pytest.raises(EvaluationError, match="neither 'disparity' nor 'depth'"):
        evaluate_predictions(tmp_path / "pred", dataset)
    path.write_bytes(b"not a zip")
    with pytest.raises(EvaluationError, match="not a readable"):
        evaluate_predictions(tmp_path / "pred", dataset)


def test_non_finite_prediction_names_the_samples(tiny_root):
    batch = _batch(FaceDPDataset(tiny_root, "test"), 3)
    bad = AffineOracle()(batch)
    bad["disparity"][1] = float("nan")

    class Broken(torch.nn.Module):
        def forward(self, b):
            return bad

    with pytest.raises(EvaluationError, match="sample 1") as info:
        evaluate_model(Broken(), [batch], batch_size=None)
    assert batch["sample_id"][1] in str(info.value)


def test_tables_written_atomically_and_read_back(tiny_root, tmp_path):
    dataset = FaceDPDataset(tiny_root, "test")
    frame = evaluate_model(AffineOracle(depth_factor=1.02), dataset, name="a")
    paths = write_tables(frame, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "aggregate.csv", "aggregate.parquet", "per_sample.csv", "per_sample.parquet"]
    csv, parquet = pd.read_csv(paths["per_sample_csv"]), pd.read_parquet(paths["per_sample_parquet"])
    assert len(csv) == len(parquet) == len(dataset)
    pd.testing.assert_series_equal(csv["absrel"], parquet["absrel"])
    agg = pd.read_csv(paths["aggregate_csv"])
    assert agg.loc[0, "n"] == len(dataset)
    assert agg.loc[0, "absrel"] == pytest.approx(frame["absrel"].mean())


def test_load_runs_and_leaderboard(tmp_path):
    rng = np.random.default_rng(0)
    for model, level in (("good", 0.1), ("bad", 1.0)):
        frame = pd.DataFrame({"model": model, "sample_id": [f"g/{i}" for i in range(4)],
                              "camidx": [1, 1, 2, 2], "ai1": level + rng.uniform(0, 0.01, 4),
                              "delta1": [1 - level / 2] * 4})
        write_tables(frame, tmp_path / "runs" / f"{model}_run" / "eval")
    (tmp_path / "runs" / "notes").mkdir()
    runs = load_runs(tmp_path / "runs")
    assert len(runs) == 8 and set(runs["run"]) == {"good_run/eval", "bad_run/eval"}
    board = leaderboard(runs)
    assert list(board["model"]) == ["good", "bad"] and list(board["n"]) == [4, 4]
    assert list(leaderboard(runs, sort_by="delta1")["model"]) == ["good", "bad"]  # higher is better
    stacked = leaderboard([runs[runs.model == "bad"], runs[runs.model == "good"]])
    assert list(stacked["model"]) == ["good", "bad"]
    by_camera = aggregate(runs, ["model", "camidx"])
    assert len(by_camera) == 4 and set(by_camera["n"]) == {2}
    assert load_runs(tmp_path / "nothing").empty and leaderboard(load_runs(tmp_path / "nothing")).empty


def test_cli_with_predictions_and_checkpoint(tiny_root, tmp_path, monkeypatch, capsys):
    dataset = FaceDPDataset(tiny_root, "test")
    evaluate_model(AffineOracle(), dataset, save_dir=tmp_path / "pred")
    rc = cli(["--predictions", str(tmp_path / "pred"), "--data-root", str(tiny_root), "--split", "test",
              "--out", str(tmp_path / "out")])
    assert rc == 0 and (tmp_path / "out" / "per_sample.parquet").is_file()
    assert len(pd.read_csv(tmp_path / "out" / "per_sample.csv")) == len(dataset)
    assert cli(["--predictions", str(tmp_path / "none"), "--data-root", str(tiny_root), "--out",
                str(tmp_path / "o2")]) == 2
    assert "predictions folder does not exist" in capsys.readouterr().err
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"0")
    rc = cli(["--checkpoint", str(checkpoint), "--data-root", str(tiny_root), "--out", str(tmp_path / "o3")])
    assert rc == 2
    assert f"{checkpoint}: not a readable checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()
    calls = []
    fake = lambda path, map_location: calls.append((path, map_location)) or AffineOracle()  # noqa: E731
    monkeypatch.setattr(evaluate, "load_model", fake)
    rc = cli(["--checkpoint", str(checkpoint), "--data-root", str(tiny_root), "--out", str(tmp_path / "o4"),
              "--batch-size", "2", "--save-predictions", str(tmp_path / "p4")])
    assert rc == 0 and calls == [(checkpoint, "cpu")]
    table = pd.read_csv(tmp_path / "o4" / "per_sample.csv")
    assert set(table["model"]) == {"model"} and (table["ai1"] < 1e-3).all()
    assert len(list((tmp_path / "p4").rglob("*.npz"))) == len(dataset)
