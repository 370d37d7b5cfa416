"""Reference rows without a checkpoint (dpface_lib.references, dpface eval --model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dpface_lib.data import FaceDPDataset
from dpface_lib.metrics import affine_invariant_metrics, relief_metrics
from dpface_lib.references import (
    BowlOracle,
    SilhouettePredictor,
    build_reference,
    choose_block_matcher,
    edge_distance,
    fit_silhouette,
)
from dpface_lib.relief import mean_abs_relief

ROOT = "data_samples"


def test_edge_distance_of_a_square():
    mask = np.zeros((9, 9), dtype=bool)
    mask[2:7, 2:7] = True
    d = edge_distance(mask)
    assert d[4, 4] == 1.0 and d[2, 2] == pytest.approx(1 / 3) and d[0, 0] == 0.0
    assert edge_distance(np.zeros((4, 4), dtype=bool)).max() == 0.0


def test_bowl_oracle_scores_the_ground_truths_own_relief():
    dataset = FaceDPDataset(ROOT, "test")
    sample = dataset[0]
    batch = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in sample.items()}
    pred = BowlOracle()(batch)["disparity"]
    mask = batch["mask"].bool()
    out = relief_metrics(pred[0], batch["disparity"][0], mask[0])
    # a quadratic prediction keeps no relief: its relief error is the ground truth's mean absolute relief
    want = mean_abs_relief(batch["disparity"][0].numpy(), mask[0].numpy())
    assert out["relief_ai1"] == pytest.approx(want, rel=1e-4)
    assert out["inverted"] == 0.0
    # and it beats a constant, since a face is mostly a bowl
    assert affine_invariant_metrics(pred[0], batch["disparity"][0], mask[0])["ai1"] < \
        affine_invariant_metrics(torch.zeros_like(pred[0]) + 1.0, batch["disparity"][0], mask[0])["ai1"]


def test_silhouette_is_fitted_on_training_persons_and_reads_only_the_mask():
    table = fit_silhouette(FaceDPDataset(ROOT, "train"), max_samples=16, bins=8)
    assert table.shape == (8,) and np.isfinite(table).all()
    model = SilhouettePredictor(table)
    sample = FaceDPDataset(ROOT, "test")[0]
    batch = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in sample.items()}
    out = model(batch)["disparity"]
    scrambled = dict(batch, left=torch.rand_like(batch["left"]), right=torch.rand_like(batch["right"]),
                     disparity=torch.zeros_like(batch["disparity"]))
    assert torch.equal(model(scrambled)["disparity"], out)  # no image, no ground truth
    mask = batch["mask"][0].bool()
    inside = out[0][mask]
    index = np.minimum((edge_distance(mask.numpy())[mask.numpy()] * 8).astype(int), 7)
    np.testing.assert_allclose(inside.numpy(), table[index].astype(np.float32))


def test_block_matcher_sigma_is_chosen_on_another_split():
    matcher, scores = choose_block_matcher(ROOT, "train", "val", sigmas=(0.0, 4.0), max_samples=4)
    assert set(scores) == {0.0, 4.0}  # data_samples has no val.txt: chosen on the training split
    assert matcher.smooth_sigma == min(scores, key=scores.get)


def test_unknown_reference_is_named():
    with pytest.raises(ValueError, match="bowl-oracle"):
        build_reference("bowl", ROOT)


def test_eval_model_cli_writes_tables(tmp_path):
    from dpface_lib.evaluate import cli

    out = tmp_path / "bowl"
    assert cli(["--model", "bowl-oracle", "--data-root", ROOT, "--split", "test", "--out", str(out)]) == 0
    table = pd.read_csv(out / "per_sample.csv")
    assert set(table["model"]) == {"bowl_oracle"} and len(table) == len(FaceDPDataset(ROOT, "test"))
    assert {"relief_ai1", "relief_corr", "inverted"} <= set(table.columns)
    assert (table["inverted"] == 0).all()
