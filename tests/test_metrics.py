"""Tests for dpface_lib.metrics: analytic cases, independent oracles, invariances and properties."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from metric_oracles import affine_midrank, depth_oracle, normal_oracle, reference_spearman

from dpface_lib import metrics
from dpface_lib.metrics import (
    AFFINE_KEYS,
    DEPTH_KEYS,
    NORMAL_KEYS,
    EvaluationError,
    NotScorableWarning,
    fit_affine,
)

# The formulas are checked on samples of a few pixels, so the minimum-count rule (16 by default) is off
# here; test_fewer_than_min_valid_pixels_are_not_scorable holds the rule itself.
affine_invariant_metrics = functools.partial(metrics.affine_invariant_metrics, min_valid=1)
depth_metrics = functools.partial(metrics.depth_metrics, min_valid=1)
normal_metrics = functools.partial(metrics.normal_metrics, min_valid=1)

SETTINGS = settings(max_examples=40, deadline=None)


def _assert_close(a: dict, b: dict, keys, rtol=1e-9, atol=1e-10):
    for key in keys:
        np.testing.assert_allclose(np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float),
                                   rtol=rtol, atol=atol, err_msg=key)


# --------------------------------------------------------------------------- oracles written differently
def _reference_affine(x, y, w):
    """Literal transcription of the released algorithm with a generic solver: rows scaled by sqrt(w),
    minimum-norm least squares (np.linalg.lstsq), 5 IRLS rounds from r = 1, r = 1/max(1e-3, |res|)."""
    x, y, w = (np.asarray(a, dtype=np.float64).ravel() for a in (x, y, w))

    def fit(weight):
        sq = np.sqrt(weight)
        design = sq[:, None] * np.stack([x, np.ones_like(x)], 1)
        (s, t), *_ = np.linalg.lstsq(design, sq * y, rcond=None)
        return s * x + t - y

    res2 = fit(w)
    r = np.ones_like(x)
    for _ in range(5):
        res1 = fit(w * r)
        r = 1.0 / np.maximum(1e-3, np.abs(res1))
    return {"ai1": np.sum(w * np.abs(res1)) / w.sum(), "ai2": np.sqrt(np.sum(w * res2**2) / w.sum())}


def _best_l1_line(x, y):
    """Exact least-absolute-deviation line: an optimum passes through two data points."""
    best = np.mean(np.abs(y - np.median(y)))
    for i, j in itertools.combinations(range(len(x)), 2):
        if x[i] != x[j]:
            s = (y[j] - y[i]) / (x[j] - x[i])
            best = min(best, np.mean(np.abs(s * (x - x[i]) + y[i] - y)))
    return best


# ------------------------------------------------------------------------------------ affine-invariant
def test_exact_affine_relation_gives_zero():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-4, 12, (24, 32))
    for scale, offset in [(1.0, 0.0), (3.5, -2.0), (-0.25, 7.0)]:
        out = affine_invariant_metrics(scale * gt + offset, gt, np.ones_like(gt))
        assert out["ai1"] == pytest.approx(0, abs=1e-9)
        assert out["ai2"] == pytest.approx(0, abs=1e-9)
        assert out["spearman"] == pytest.approx(0, abs=1e-12)


def test_hand_computed_least_squares_case():
    # x = 0..3, y = (0, 1, 2, 4): means 1.5 and 1.75; sum dx^2 = 5, sum dx dy = 6.5 -> s = 1.3, t = -0.2.
    # fitted (-0.2, 1.1, 2.4, 3.7); residuals (-0.2, 0.1, 0.4, -0.3); sum res^2 = 0.30
    # -> AIWE(2) = sqrt(0.30 / 4) = sqrt(0.075).
    out = affine_invariant_metrics(np.array([[0.0, 1, 2, 3]]), np.array([[0.0, 1, 2, 4]]), np.ones((1, 4)))
    assert out["ai2"] == pytest.approx(math.sqrt(0.075), rel=1e-12)
    # same order of values in both maps -> rho_s = 1
    assert out["spearman"] == pytest.approx(0.0, abs=1e-12)


def test_hand_computed_l1_case_with_outlier():
    # y = x on three points and an outlier 7 px off: the L1 line is y = x, AIWE(1) = 7 / 4; least squares
    # is pulled by the outlier: means 1.5 / 3.25, dy = (-3.25, -2.25, -1.25, 6.75),
    # sum dx dy = 4.875 + 1.125 - 0.625 + 10.125 = 15.5, sum dx^2 = 5 -> s = 3.1, t = 3.25 - 4.65 = -1.4,
    # residuals (-1.4, 0.7, 2.8, -2.1) -> AIWE(2) = sqrt((1.96 + 0.49 + 7.84 + 4.41) / 4) = sqrt(3.675).
    out = affine_invariant_metrics(np.array([[0.0, 1, 2, 3]]), np.array([[0.0, 1, 2, 10]]))
    assert out["ai1"] == pytest.approx(1.75, rel=1e-6)
    assert out["ai2"] == pytest.approx(math.sqrt(3.675), rel=1e-12)


def test_hand_computed_spearman():
    # ranks (1, 2, 3, 4) vs (1, 3, 2, 4): rho = 1 - 6 * sum d^2 / (n (n^2 - 1)) = 1 - 6 * 2 / 60 = 0.8
    out = affine_invariant_metrics(np.array([[1.0, 2, 3, 4]]), np.array([[1.0, 3, 2, 4]]))
    assert out["spearman"] == pytest.approx(0.2, abs=1e-12)
    # mid-ranks: ties get average ranks: pred ranks (1.5, 1.5, 3, 4), gt ranks (1, 2, 3, 4); centred
    # (-1, -1, .5, 1.5) and (-1.5, -.5, .5, 1.5): cov 4.5, var 4.5 and 5 -> rho = 4.5 / sqrt(22.5)
    out = affine_invariant_metrics(np.array([[1.0, 1, 2, 3]]), np.array([[1.0, 2, 3, 4]]), spearman="midrank")
    assert out["spearman"] == pytest.approx(1 - 4.5 / math.sqrt(22.5), abs=1e-12)
    # a reversed order is as good as the right one (|rho|)
    out = affine_invariant_metrics(np.array([[4.0, 3, 2, 1]]), np.array([[1.0, 2, 3, 4]]))
    assert out["spearman"] == pytest.approx(0.0, abs=1e-12)


def test_reference_spearman_convention_hand_computed():
    """The released convention, derived by hand. Ranks r are rescaled to (r - n//2) / (n//2); rho is the
    w-weighted E[ab] - E[a]E[b] over sqrt(var var); |rho| is max(rho(rank x), rho(rank(-x)))."""
    # 1. Ties in pixel order: pred (1, 1, 2, 3) ranks (0, 1, 2, 3) -> (-1, -.5, 0, .5); gt (2, 1, 3, 4)
    #    ranks (1, 0, 2, 3) -> (-.5, -1, 0, .5). Means -1/4 each, E[ab] = 1.25 / 4, cov = 0.25, var = 0.3125
    #    each: rho = 0.8. rank(-pred) = (2, 3, 1, 0) -> rho = -1. spearman = 1 - 0.8. (Mid-ranks: 0.0513.)
    pred, gt = np.array([[1.0, 1, 2, 3]]), np.array([[2.0, 1, 3, 4]])
    assert affine_invariant_metrics(pred, gt)["spearman"] == pytest.approx(0.2, abs=1e-12)
    midrank = affine_invariant_metrics(pred, gt, spearman="midrank")["spearman"]
    assert midrank == pytest.approx(1 - 4.5 / math.sqrt(22.5), abs=1e-12)
    # 2. A masked pixel shifts the ranks: pred (3, 1, 2, 1.5), weights (1, 1, 1, 0), gt (1, 2, 3, 4).
    #    rank pred = (3, 0, 2, 1) -> (.5, -1, 0, -.5); over the weighted pixels mean -1/6, var 7/18; gt
    #    (-1, -.5, 0) mean -1/2, var 1/6; cov = 0 - 1/12 -> rho = -sqrt(3/28). rank(-pred) = (0, 3, 1, 2) ->
    #    rho = +sqrt(3/28). spearman = 1 - sqrt(3/28); mid-ranks of the three weighted pixels give 0.5.
    pred, gt, w = np.array([[3.0, 1, 2, 1.5]]), np.array([[1.0, 2, 3, 4]]), np.array([[1.0, 1, 1, 0]])
    expected = 1 - math.sqrt(3 / 28)
    assert affine_invariant_metrics(pred, gt, w)["spearman"] == pytest.approx(expected, abs=1e-12)
    assert affine_invariant_metrics(pred, gt, w, spearman="midrank")["spearman"] == pytest.approx(0.5)
    # 3. A constant prediction correlates with the pixel order: gt increasing in pixel order -> rho = 1.
    gt = np.arange(12.0).reshape(3, 4)
    assert affine_invariant_metrics(np.full((3, 4), 7.0), gt)["spearman"] == pytest.approx(0.0, abs=1e-12)
    assert affine_invariant_metrics(np.full((3, 4), 7.0), gt, spearman="midrank")["spearman"] == 1.0
    with pytest.raises(EvaluationError, match="spearman must be one of"):
        affine_invariant_metrics(gt, gt, spearman="kendall")


def test_weights_select_pixels_and_ignore_values_outside():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 5, (16, 16))
    pred = 2 * gt + 1 + rng.normal(0, 0.05, gt.shape)
    mask = rng.random(gt.shape) > 0.4
    polluted_pred, polluted_gt = pred.copy(), gt.copy()
    polluted_pred[~mask], polluted_gt[~mask] = np.nan, 1e6
    _assert_close(affine_invariant_metrics(polluted_pred, polluted_gt, mask, spearman="midrank"),
                  affine_invariant_metrics(pred[mask][None], gt[mask][None]), AFFINE_KEYS)


def test_against_reference_transcription_and_scipy():
    rng = np.random.default_rng(2)
    for _ in range(5):
        gt = rng.uniform(-4, 12, (12, 10))
        pred = rng.normal(0.5, 2.0) * gt + rng.normal(0, 1.0, gt.shape) + rng.normal()
        w = (rng.random(gt.shape) > 0.3) * rng.uniform(0.2, 2.0, gt.shape)
        out = affine_invariant_metrics(pred, gt, w)
        ref = _reference_affine(pred, gt, w)
        assert out["ai1"] == pytest.approx(ref["ai1"], rel=1e-8)
        assert out["ai2"] == pytest.approx(ref["ai2"], rel=1e-10)
        mask = w > 0
        rho = scipy.stats.spearmanr(pred[mask], gt[mask]).statistic
        out_binary = affine_invariant_metrics(pred, gt, mask, spearman="midrank")
        assert out_binary["spearman"] == pytest.approx(1 - abs(rho), abs=1e-10)
        assert out["spearman"] == pytest.approx(reference_spearman(pred, gt, w), abs=1e-10)


def test_ai1_is_never_below_the_exact_l1_optimum():
    rng = np.random.default_rng(3)
    for _ in range(10):
        x = rng.normal(size=9)
        y = 2 * x + rng.standard_t(1.5, size=9)
        ai1 = affine_invariant_metrics(x[None], y[None])["ai1"]
        best = _best_l1_line(x, y)
        assert ai1 >= best - 1e-9
        assert ai1 <= best * 1.5 + 1e-9  # 5 IRLS rounds get close to it


def test_constant_maps_and_ties_are_finite():
    gt = np.arange(12.0).reshape(3, 4)
    out = affine_invariant_metrics(np.full((3, 4), 7.0), gt)
    # constant prediction: the best affine map is the mean of gt (5.5); residuals |gt - 5.5|
    assert out["ai2"] == pytest.approx(np.sqrt(np.mean((gt - 5.5) ** 2)))
    assert out["ai1"] == pytest.approx(np.mean(np.abs(gt - np.median(gt))), rel=1e-3)
    assert affine_invariant_metrics(np.full((3, 4), 7.0), gt, spearman="midrank")["spearman"] == 1.0
    out = affine_invariant_metrics(gt, np.full((3, 4), 2.0), spearman="midrank")
    assert out["ai1"] == pytest.approx(0, abs=1e-12) and out["ai2"] == pytest.approx(0, abs=1e-12)
    assert out["spearman"] == 1.0
    torch_out = affine_invariant_metrics(torch.full((2, 3, 4), 7.0), torch.tensor(gt).expand(2, 3, 4),
                                         spearman="midrank")
    assert torch.isfinite(torch.stack(list(torch_out.values()))).all()
    assert torch_out["spearman"].tolist() == [1.0, 1.0]


def test_empty_and_bad_inputs():
    gt = np.ones((3, 4, 4))
    w = np.ones_like(gt)
    w[1] = 0
    with pytest.raises(ValueError, match="sample 1"):
        affine_invariant_metrics(gt, gt, w)
    with pytest.raises(ValueError, match="sample 1"):
        affine_invariant_metrics(torch.tensor(gt), torch.tensor(gt), torch.tensor(w))
    out = affine_invariant_metrics(torch.tensor(gt), torch.tensor(gt), torch.tensor(w), allow_empty=True)
    assert torch.isnan(out["ai1"][1]) and torch.isfinite(out["ai1"][[0, 2]]).all()
    bad = gt.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred has 1 non-finite .* sample 2"):
        affine_invariant_metrics(torch.tensor(bad), torch.tensor(gt), torch.tensor(w))
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        affine_invariant_metrics(gt, gt, -w)
    with pytest.raises(ValueError, match="shape"):
        affine_invariant_metrics(gt, gt[:, :2], w)


@st.composite
def _affine_case(draw):
    h, w = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    # integer-valued maps: plenty of ties, and affine maps below cannot merge distinct values
    ints = hnp.arrays(np.float64, (h, w), elements=st.integers(-50, 50).map(float))
    pred, gt = draw(ints), draw(ints)
    weight = draw(hnp.arrays(np.float64, (h, w), elements=st.sampled_from([0.0, 0.5, 1.0, 3.0])))
    weight[0, 0] = 1.0
    return pred, gt, weight


@SETTINGS
@given(_affine_case(), st.floats(0.01, 100.0), st.sampled_from([1.0, -1.0]), st.floats(-100.0, 100.0))
def test_affine_invariance_property(case, magnitude, sign, offset):
    pred, gt, weight = case
    base = affine_invariant_metrics(pred, gt, weight)
    moved = affine_invariant_metrics(sign * magnitude * pred + offset, gt, weight)
    _assert_close(base, moved, AFFINE_KEYS, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(_affine_case())
def test_affine_properties_and_torch_agreement(case):
    pred, gt, weight = case
    out = affine_invariant_metrics(pred, gt, weight)
    assert all(np.isfinite(v) and v >= 0 for v in out.values())
    # 1 - max(rho(rank x), rho(rank -x)): up to 2 when ties make both correlations negative (reference)
    assert 0.0 <= out["spearman"] <= 2.0
    assert 0.0 <= affine_invariant_metrics(pred, gt, weight, spearman="midrank")["spearman"] <= 1.0
    # IRLS is a majorise-minimise descent on the Huber loss rho(r) (|r| >= eps: |r|; else r^2/2eps + eps/2),
    # |r| <= rho(r) <= |r| + eps/2, started at the least-squares fit:
    # AIWE(1) <= mean |r_LS| + eps/2 <= AIWE(2) + eps/2
    assert out["ai1"] <= out["ai2"] + 0.5e-3 + 1e-9
    as_batch = [torch.tensor(a)[None] for a in (pred, gt, weight)]
    batch = affine_invariant_metrics(*as_batch)
    _assert_close(out, {k: v[0] for k, v in batch.items()}, AFFINE_KEYS, rtol=1e-7, atol=1e-9)
    # against the independent numpy oracles
    oracle = affine_midrank(pred, gt, weight)
    _assert_close(out, oracle, ("ai1", "ai2"), rtol=1e-7, atol=1e-9)
    midrank = affine_invariant_metrics(pred, gt, weight, spearman="midrank")
    assert midrank["spearman"] == pytest.approx(oracle["spearman"], abs=1e-9)
    if np.count_nonzero(weight) > 1:  # one weighted pixel: the oracle's Pearson is 0 / 0
        assert out["spearman"] == pytest.approx(reference_spearman(pred, gt, weight), abs=1e-9)


@SETTINGS
@given(_affine_case(), st.integers(0, 35))
def test_integer_weight_equals_repeating_the_pixel(case, flat_index):
    pred, gt, weight = case
    weight = np.ones_like(weight)
    k = flat_index % weight.size
    weight.ravel()[k] = 3.0
    repeat = np.ones(weight.size, dtype=int)
    repeat[k] = 3
    expanded = [np.repeat(a.ravel(), repeat)[None] for a in (pred, gt)]
    _assert_close(affine_invariant_metrics(pred, gt, weight, spearman="midrank"),
                  affine_invariant_metrics(*expanded, spearman="midrank"), AFFINE_KEYS, rtol=1e-7, atol=1e-9)


def test_batch_equals_single_samples_and_the_oracles():
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 6, (5, 9, 11)).astype(float)  # many ties, per-row sort groups must not mix
    pred = gt * rng.normal(size=(5, 1, 1)) + rng.integers(0, 3, gt.shape)
    w = (rng.random(gt.shape) > 0.2).astype(float)
    pred[2] = 4.0  # a constant sample in the middle of the batch
    batch = affine_invariant_metrics(torch.tensor(pred), torch.tensor(gt), torch.tensor(w))
    numpy_stack = affine_invariant_metrics(pred, gt, w)
    for i in range(5):
        single = affine_invariant_metrics(pred[i], gt[i], w[i])
        _assert_close(single, {k: v[i] for k, v in batch.items()}, AFFINE_KEYS)
        _assert_close(single, {k: v[i] for k, v in numpy_stack.items()}, AFFINE_KEYS)
        _assert_close(single, affine_midrank(pred[i], gt[i], w[i]), ("ai1", "ai2"))
        assert single["spearman"] == pytest.approx(reference_spearman(pred[i], gt[i], w[i]), abs=1e-10)
    assert batch["ai1"].shape == (5,) and batch["ai1"].dtype == torch.float64


# ---------------------------------------------------------------------------------------------- depth
def test_depth_hand_computed():
    gt = np.array([[100.0, 200.0, 400.0, 800.0]])
    pred = np.array([[100.5, 200.0, 406.0, 1000.0]])
    # ratios 1.005, 1, 1.015, 1.25; abs errors .5, 0, 6, 200
    out = depth_metrics(pred, gt, np.ones_like(gt, dtype=bool))
    assert out["absrel"] == pytest.approx((0.005 + 0 + 0.015 + 0.25) / 4)
    assert out["absdiff"] == pytest.approx((0.5 + 0 + 6 + 200) / 4)
    assert out["sqrel"] == pytest.approx((0.25 / 100 + 0 + 36 / 400 + 40000 / 800) / 4)
    assert out["rmse"] == pytest.approx(math.sqrt((0.25 + 36 + 40000) / 4))
    logs = [math.log(1.005), 0.0, math.log(1.015), math.log(1.25)]
    assert out["rmse_log"] == pytest.approx(math.sqrt(sum(v * v for v in logs) / 4))
    assert (out["delta1"], out["delta2"], out["delta3"]) == (0.5, 0.75, 0.75)


def test_depth_mask_invalid_gt_and_clipping():
    gt = np.array([[100.0, 0.0, np.nan, 300.0, 0.5]])
    pred = np.array([[100.0, 5.0, 7.0, np.nan, 0.5]])
    out = depth_metrics(pred, gt, None, depth_range_mm=(1.0, 600.0))
    # valid pixels: 100 (exact) and 300 (NaN prediction -> far end 600: error 300)
    assert out["absdiff"] == pytest.approx(150.0) and out["delta1"] == 0.5
    out = depth_metrics(np.array([[-50.0, 100.0]]), np.array([[100.0, 100.0]]), depth_range_mm=(1.0, 1e5))
    assert out["absdiff"] == pytest.approx(99.0 / 2)  # negative depth -> 1 mm
    with pytest.raises(ValueError, match="sample 0"):
        depth_metrics(pred, gt, np.zeros_like(gt, dtype=bool))
    with pytest.raises(ValueError, match="depth_range_mm"):
        depth_metrics(pred, gt, depth_range_mm=(5.0, 1.0))


@st.composite
def _depth_case(draw):
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    gt = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 2000.0)))
    pred = draw(hnp.arrays(np.float64, shape, elements=st.floats(-100.0, 3000.0) | st.just(np.nan)))
    mask = draw(hnp.arrays(np.bool_, shape))
    return pred, gt, mask


@SETTINGS
@given(_depth_case())
def test_depth_properties_and_torch_agreement(case):
    pred, gt, mask = case
    out = depth_metrics(pred, gt, mask, allow_empty=True)
    batch = depth_metrics(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask), allow_empty=True)
    usable = (mask & (gt >= 1.0)).reshape(len(gt), -1).any(1)  # gt below the near end is missing
    for key in DEPTH_KEYS:
        values = out[key]
        assert np.isnan(values[~usable]).all()
        assert np.isfinite(values[usable]).all() and (values[usable] >= 0).all()
        if key.startswith("delta"):
            assert (values[usable] <= 1).all()
        np.testing.assert_allclose(batch[key].numpy(), values, rtol=1e-9, atol=1e-12, err_msg=key)
        oracle = [np.nan if row is None else row[key] for row in depth_oracle(pred, gt, mask)]
        np.testing.assert_allclose(values, oracle, rtol=1e-9, atol=1e-12, err_msg=key)
    assert (out["delta1"] <= out["delta2"])[usable].all() and (out["delta2"] <= out["delta3"])[usable].all()


# -------------------------------------------------------------------------------------------- normals
def _rotate_about_x(normals: np.ndarray, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    rotation = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.einsum("ij,jhw->ihw", rotation, normals)


def _random_normals(rng, h, w):
    n = rng.normal(size=(3, h, w))
    n[2] = -np.abs(n[2]) - 0.1
    return n / np.linalg.norm(n, axis=0)


def test_normals_rotated_by_known_angle():
    rng = np.random.default_rng(5)
    gt = np.zeros((3, 6, 6))  # facing the camera, perpendicular to the rotation axis x
    gt[2] = -1.0
    out = normal_metrics(_rotate_about_x(gt, 10.0), gt)
    for key in ("mean_deg", "median_deg", "rmse_deg"):
        assert out[key] == pytest.approx(10.0, abs=1e-9)
    assert (out["within_11_25"], out["within_22_5"], out["within_30"]) == (1.0, 1.0, 1.0)
    # half the pixels at 10 deg, half at 40 deg: mean = median = 25, rmse = sqrt((100 + 1600) / 2)
    pred = _rotate_about_x(gt, 10.0)
    pred[:, 3:] = _rotate_about_x(gt, 40.0)[:, 3:]
    out = normal_metrics(3.0 * pred, gt)  # length does not matter
    assert out["mean_deg"] == pytest.approx(25.0) and out["median_deg"] == pytest.approx(25.0)
    assert out["rmse_deg"] == pytest.approx(math.sqrt(850.0))
    assert (out["within_11_25"], out["within_22_5"], out["within_30"]) == (0.5, 0.5, 0.5)
    # opposite normals are 180 deg apart; a zero prediction counts as 90 deg
    assert normal_metrics(-gt, gt)["mean_deg"] == pytest.approx(180.0)
    assert normal_metrics(np.zeros_like(gt), gt)["mean_deg"] == pytest.approx(90.0)
    # tiny angles are resolved (arccos of a dot product would round 1e-6 deg to 0)
    assert normal_metrics(_rotate_about_x(gt, 1e-6), gt)["mean_deg"] == pytest.approx(1e-6, rel=1e-4)
    # an arbitrary orientation rotated by 10 deg about an axis perpendicular to it
    n = _random_normals(rng, 1, 1)[:, 0, 0]
    axis = np.cross(n, rng.normal(size=3))
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + math.sin(math.radians(10)) * k + (1 - math.cos(math.radians(10))) * k @ k
    assert normal_metrics((rotation @ n)[:, None, None], n[:, None, None])["mean_deg"] == pytest.approx(10.0)


def test_normals_mask_empty_and_agreement():
    rng = np.random.default_rng(6)
    gt = np.stack([_random_normals(rng, 7, 5) for _ in range(4)])
    pred = gt + rng.normal(0, 0.3, gt.shape)
    mask = rng.random((4, 7, 5)) > 0.3
    pred[~np.broadcast_to(mask[:, None], pred.shape)] = np.nan  # ignored outside the mask
    numpy_out = normal_metrics(pred, gt, mask)
    torch_out = normal_metrics(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask))
    oracle = normal_oracle(pred, gt, mask)
    for key in NORMAL_KEYS:
        np.testing.assert_allclose(torch_out[key].numpy(), numpy_out[key], rtol=1e-9, err_msg=key)
        np.testing.assert_allclose(numpy_out[key], [row[key] for row in oracle], rtol=1e-9, err_msg=key)
        assert ((numpy_out[key] >= 0) & np.isfinite(numpy_out[key])).all()
    single = normal_metrics(pred[1], gt[1], mask[1])
    assert single["median_deg"] == pytest.approx(numpy_out["median_deg"][1])
    mask[2] = False
    with pytest.raises(ValueError, match="sample 2"):
        normal_metrics(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask))
    out = normal_metrics(pred, gt, mask, allow_empty=True)
    assert np.isnan(out["mean_deg"][2]) and np.isfinite(out["mean_deg"][[0, 1, 3]]).all()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        normal_metrics(pred[:, :2], gt[:, :2])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(7)
    gt = torch.tensor(rng.uniform(1, 5, (3, 16, 16)))
    pred = gt * 2 + torch.tensor(rng.normal(0, 0.1, gt.shape))
    mask = torch.tensor(rng.random(gt.shape) > 0.2)
    for fn in (affine_invariant_metrics, depth_metrics):
        cpu, gpu = fn(pred, gt, mask), fn(pred.cuda(), gt.cuda(), mask.cuda())
        for key, value in cpu.items():
            assert gpu[key].is_cuda
            torch.testing.assert_close(gpu[key].cpu(), value, rtol=1e-9, atol=1e-12)


def test_fit_affine_recovers_the_map_and_matches_the_metrics():
    rng = np.random.default_rng(8)
    gt = rng.uniform(-4, 12, (10, 12))
    pred = (gt - 3.0) / 2.5  # gt = 2.5 pred + 3
    assert fit_affine(pred, gt) == pytest.approx((2.5, 3.0))
    assert fit_affine(torch.tensor(pred), torch.tensor(gt), robust=True) == pytest.approx((2.5, 3.0))
    noisy = pred + rng.normal(0, 0.2, pred.shape)
    mask = rng.random(gt.shape) > 0.3
    s, t = fit_affine(noisy, gt, mask)
    aligned = s * noisy + t
    assert np.sqrt(np.mean((aligned - gt)[mask] ** 2)) == pytest.approx(
        affine_invariant_metrics(noisy, gt, mask)["ai2"])
    s, t = fit_affine(noisy, gt, mask, robust=True)
    assert np.mean(np.abs(s * noisy + t - gt)[mask]) == pytest.approx(
        affine_invariant_metrics(noisy, gt, mask)["ai1"])
    with pytest.raises(ValueError, match="no valid pixel"):
        fit_affine(pred, gt, np.zeros_like(gt))


# ----------------------------------------------------------------------------- minimum valid pixels
def test_fewer_than_min_valid_pixels_are_not_scorable():
    """One valid pixel fits any prediction exactly (ai1 = 0): below min_valid (16 by default) a sample is
    NaN with a warning naming it, never perfect; at 16 pixels it is scored."""
    rng = np.random.default_rng(3)
    gt, pred = rng.uniform(1, 2, (2, 8, 8)), rng.uniform(1, 2, (2, 8, 8))
    mask = np.zeros((2, 8, 8), bool)
    mask[0, 0, 0] = True  # one pixel
    mask[1, :2] = True  # 16 pixels
    with pytest.warns(NotScorableWarning, match=r"fewer than 16 valid pixels.*\{0: 1\}"):
        out = metrics.affine_invariant_metrics(pred, gt, mask)
    assert np.isnan(out["ai1"][0]) and out["ai1"][1] > 0
    assert metrics.affine_invariant_metrics(pred, gt, mask, min_valid=1)["ai1"][0] == 0.0  # the old answer
    with pytest.warns(NotScorableWarning, match="depth_metrics"):
        assert np.isnan(metrics.depth_metrics(pred, gt, mask)["absrel"][0])
    with pytest.warns(NotScorableWarning, match="normal_metrics"):
        normals = metrics.normal_metrics(np.stack([pred] * 3, 1), np.stack([gt] * 3, 1), mask)
    assert np.isnan(normals["mean_deg"][0]) and np.isfinite(normals["mean_deg"][1])
    with pytest.raises(EvaluationError, match="min_valid"):
        metrics.depth_metrics(pred, gt, mask, min_valid=0)
