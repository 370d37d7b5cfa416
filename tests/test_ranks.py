"""Rank statistics behind the Spearman metric (dpface_lib.ranks), against scipy's as an independent oracle."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from dpface_lib.ranks import pixel_order_ranks, sort_key, weighted_midranks, weighted_pearson


def test_sort_key_orders_like_the_floats() -> None:
    for dtype in (torch.float32, torch.float64):
        v = torch.tensor([3.5, -0.0, 0.0, -2.0, float("inf"), -float("inf"), 1e-30, -1e-30, 7.0], dtype=dtype)
        keys = sort_key(v)
        assert torch.equal(torch.argsort(keys, stable=True), torch.argsort(v, stable=True))
        assert keys[1] == keys[2]                                    # -0.0 and 0.0 tie
    nans = torch.tensor([float("nan"), 1.0, float("inf"), -float("nan"), 3.4e38])
    keys = sort_key(nans)
    assert keys[0] == keys[3] and keys[0] > keys[2] > keys[4] > keys[1]   # NaNs tie, after +inf (as numpy)


def test_weighted_midranks_with_unit_weights_are_scipys_average_ranks() -> None:
    v = np.random.default_rng(0).integers(0, 6, size=40).astype(np.float64)   # many ties
    ranks = weighted_midranks(torch.from_numpy(v), torch.ones(40, dtype=torch.float64))
    np.testing.assert_allclose(ranks.numpy() * 40, stats.rankdata(v, method="average") - 0.5)


def test_integer_weights_act_as_repeated_pixels() -> None:
    v, w = torch.tensor([0.3, 0.1, 0.2, 0.1]), torch.tensor([2.0, 1.0, 3.0, 1.0])
    repeated = torch.repeat_interleave(v, w.long())
    expanded = weighted_midranks(repeated, torch.ones_like(repeated))
    assert torch.allclose(torch.repeat_interleave(weighted_midranks(v, w), w.long()), expanded)


def test_pixel_order_ranks_break_ties_by_position_in_both_directions() -> None:
    v = torch.tensor([2.0, 1.0, 2.0, 0.0, 1.0])                     # n = 5, n // 2 = 2
    up, down = pixel_order_ranks(v, both_directions=True)
    assert torch.equal(up * 2 + 2, torch.tensor([3.0, 1.0, 4.0, 0.0, 2.0], dtype=torch.float64))
    # rank(-v): the 2s come first, still in pixel order, then the 1s, then the 0
    assert torch.equal(down * 2 + 2, torch.tensor([0.0, 2.0, 1.0, 4.0, 3.0], dtype=torch.float64))


def test_weighted_pearson_is_scipys_pearson_for_unit_weights_and_0_when_constant() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    ones = torch.ones(50, dtype=torch.float64)
    got = weighted_pearson(torch.from_numpy(a), torch.from_numpy(b), ones)
    assert abs(float(got) - stats.pearsonr(a, b).statistic) < 1e-12
    assert float(weighted_pearson(torch.zeros(50, dtype=torch.float64), torch.from_numpy(b), ones)) == 0.0
