"""Classical DP matching (dpface_lib.classical): known-answer tests of the shift, the cost volume, the
sub-pixel fit, the block matcher and the constant baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, map_coordinates
from torch.utils.data import Subset

from dpface_lib import DATA_SAMPLES
from dpface_lib.classical import (
    BlockMatcher,
    ConstantPredictor,
    best_constant,
    dp_cost_volume,
    row_shift,
    subpixel_parabola,
)

H, W = 96, 64
BORDER = 16  # window / 2 + shift margin: the interior where every window sees valid texture


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _texture(seed: int = 0) -> np.ndarray:
    """(H, W) periodic band-limited random texture around 0.5 (float64)."""
    noise = np.random.default_rng(seed).standard_normal((H, W))
    tex = gaussian_filter(noise, 1.5, mode="wrap")
    return 0.5 + 0.15 * tex / tex.std()


def _fourier_row_shift(image: np.ndarray, d: float) -> np.ndarray:
    """Independent reference: out(y) = image(y - d) by a phase ramp along rows (periodic image)."""
    k = np.fft.fftfreq(image.shape[0])[:, None]
    return np.real(np.fft.ifft(np.fft.fft(image, axis=0) * np.exp(-2j * np.pi * k * d), axis=0))


def _batch(left: np.ndarray, right: np.ndarray) -> dict[str, torch.Tensor]:
    def rgb(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32)[None, None].repeat(1, 3, 1, 1)

    return {"left": rgb(left), "right": rgb(right), "a": torch.tensor([-25000.0]), "b": torch.tensor([30.0])}


def test_row_shift_direction_interpolation_and_edges() -> None:
    x = torch.arange(6.0).reshape(1, 1, 6, 1).repeat(2, 3, 1, 2)
    down = row_shift(x, 1.0)  # out[y] = x[y - 1]: content moves down, the first row is replicated
    assert torch.equal(down[0, 0, :, 0], torch.tensor([0.0, 0, 1, 2, 3, 4]))
    half = row_shift(x, -0.25)  # out[y] = x[y + 0.25], the last row replicated
    assert torch.allclose(half[1, 2, :, 1], torch.tensor([0.25, 1.25, 2.25, 3.25, 4.25, 5.0]))
    assert row_shift(x, 0.0) is x and row_shift(x, 2.5).shape == x.shape


def test_cost_volume_minimum_at_the_integer_disparity() -> None:
    tex = _texture(1)
    left = torch.tensor(tex, dtype=torch.float32)[None, None]
    right = torch.tensor(np.roll(tex, 2, axis=0), dtype=torch.float32)[None, None]  # right(y) = left(y - 2)
    shifts = torch.arange(-3.0, 5.0)
    for kind in ("ncc", "sad"):
        cost = dp_cost_volume(left, right, shifts, window=9, kind=kind)
        assert cost.shape == (1, 8, H, W)
        best = shifts[cost.argmin(1)][0, BORDER:-BORDER, BORDER:-BORDER]
        assert bool((best == 2.0).all()), kind
    with pytest.raises(ValueError):
        dp_cost_volume(left, right, shifts, kind="census")


@pytest.mark.parametrize("step", [1.0, 0.5])
def test_subpixel_parabola_recovers_the_vertex_of_a_sampled_parabola(step: float) -> None:
    shifts = torch.arange(-3.0, 4.0 + 1e-9, step, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    # vertices at least half a step inside the range, so the nearest candidate has two neighbours
    vertex = torch.empty(2, 5, 7, dtype=torch.float64)
    vertex.uniform_(-3 + step / 2, 4 - step / 2, generator=generator)
    curvature = torch.linspace(0.5, 3.0, 7, dtype=torch.float64)
    # cost(s) = k (s - v)^2 + m: the parabola through the 3 samples around the minimum is the curve itself
    cost = curvature * (shifts.view(1, -1, 1, 1) - vertex.unsqueeze(1)) ** 2 + 0.3
    assert torch.allclose(subpixel_parabola(cost, shifts), vertex, atol=1e-9)
    # a minimum beyond the last candidate stays on it (no extrapolation)
    edge = (shifts.view(1, -1, 1, 1) - 9.0) ** 2
    assert torch.allclose(subpixel_parabola(edge, shifts), torch.tensor(4.0, dtype=torch.float64))


@pytest.mark.parametrize("disparity", [0.6, -1.3])
def test_block_matcher_recovers_a_subpixel_row_shift(disparity: float) -> None:
    tex = _texture(2)
    right = _fourier_row_shift(tex, disparity)  # right(y) = left(y - d)
    matcher = BlockMatcher()
    assert sum(p.numel() for p in matcher.parameters()) == 0
    out = matcher(_batch(tex, right))
    inner = out["disparity"][0, BORDER:-BORDER, BORDER:-BORDER]
    assert out["disparity"].shape == (1, H, W) and out["disparity"].dtype == torch.float32
    assert abs(float(inner.median()) - disparity) < 0.1
    unsmoothed = BlockMatcher(smooth_sigma=0)(_batch(tex, right))["disparity"][0]
    assert float((unsmoothed[BORDER:-BORDER, BORDER:-BORDER] - disparity).abs().median()) < 0.1
    assert torch.allclose(out["depth"], -25000.0 / (out["disparity"] - 30.0))


def test_block_matcher_recovers_a_planar_ramp_with_its_sign() -> None:
    tex = _texture(3)
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    truth = -1.0 + 2.5 * xs / (W - 1) + 0.004 * ys  # near (negative) on the left, far (positive) on the right
    right = map_coordinates(tex, [ys - truth, xs], order=3, mode="grid-wrap")  # right(y, x) = left(y - d, x)
    inner = (slice(BORDER, -BORDER), slice(BORDER, -BORDER))
    est = BlockMatcher(smooth_sigma=2.0)(_batch(tex, right))["disparity"][0].numpy()[inner]
    design = np.c_[xs[inner].ravel(), ys[inner].ravel(), np.ones(est.size)]
    slope_x, slope_y, offset = np.linalg.lstsq(design, est.ravel(), rcond=None)[0]
    assert slope_x == pytest.approx(2.5 / (W - 1), rel=0.1)
    assert slope_y == pytest.approx(0.004, abs=0.002)
    assert offset == pytest.approx(-1.0, abs=0.1)
    assert np.median(np.abs(est - truth[inner])) < 0.05


def test_best_constant_is_the_median_and_the_constant_predictor() -> None:
    masked = [1.0, 2.0, 3.0, 10.0, 100.0]
    samples = [
        {"disparity": torch.tensor([[1.0, -50.0], [2.0, 3.0]]),
         "mask": torch.tensor([[True, False], [True, True]])},
        {"disparity": torch.tensor([[10.0, 100.0, 7.0]]), "mask": torch.tensor([[True, True, False]])},
        {"disparity": torch.tensor([[-1e6]]), "mask": torch.tensor([[True]])},
    ]
    value = best_constant(samples[:2])
    assert value == 3.0 == float(np.median(masked))

    def l1(c: float) -> float:
        return float(np.abs(np.array(masked) - c).sum())

    assert all(l1(value) < l1(value + delta) for delta in (-0.5, -0.01, 0.01, 0.5))
    assert best_constant(samples) == 2.5  # six values with the third sample: midpoint of 2 and 3
    assert best_constant(samples, max_samples=2) == 1.5  # evenly spaced: samples 0 and 2
    assert best_constant(iter(samples), max_samples=2) == 3.0  # an iterator: the first two
    with pytest.raises(ValueError):
        best_constant([{"disparity": torch.zeros(2, 2), "mask": torch.zeros(2, 2, dtype=torch.bool)}])

    batch = {"left": torch.zeros(2, 3, 4, 5), "a": torch.tensor([-20000.0, -30000.0]),
             "b": torch.tensor([25.0, 30.0])}
    out = ConstantPredictor(value)(batch)
    assert out["disparity"].shape == (2, 4, 5) and bool((out["disparity"] == 3.0).all())
    assert torch.allclose(out["depth"][:, 0, 0], torch.tensor([20000.0 / 22.0, 30000.0 / 27.0]))


def test_block_matcher_beats_the_constant_through_evaluate_model() -> None:
    from dpface_lib.data import FaceDPDataset
    from dpface_lib.evaluate import evaluate_model

    test = Subset(FaceDPDataset(DATA_SAMPLES, "test"), range(4))
    constant = best_constant(FaceDPDataset(DATA_SAMPLES, "train"), max_samples=8)
    assert -1.5 < constant < 2.0
    matcher = evaluate_model(BlockMatcher(), test, name="block_matching", batch_size=4)
    baseline = evaluate_model(ConstantPredictor(constant), test, name="constant", batch_size=4)
    assert len(matcher) == len(baseline) == 4
    assert set(matcher["model"]) == {"block_matching"} and (matcher["affine_space"] == "disparity").all()
    ai1, ai1_constant = matcher["ai1"].mean(), baseline["ai1"].mean()
    assert math.isfinite(ai1) and math.isfinite(ai1_constant)
    assert ai1 < 0.8 * ai1_constant
