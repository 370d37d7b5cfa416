"""Relief beyond the bowl (dpface_lib.relief) and the relief metrics (dpface_lib.metrics.relief_metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpface_lib.metrics import affine_invariant_metrics, batch_metrics, relief_metrics
from dpface_lib.relief import mean_abs_relief, quadratic_basis, relief_map

H, W = 24, 20


def _grid(h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    return x, y


def _face_mask(h: int = H, w: int = W) -> np.ndarray:
    x, y = _grid(h, w)
    return (x / 0.8) ** 2 + (y / 0.9) ** 2 < 1.0


def test_plane_and_quadratic_have_no_relief():
    x, y = _grid()
    mask = _face_mask()
    plane = 0.3 + 1.2 * x - 0.7 * y
    bowl = 1.0 + 0.2 * x - 0.4 * y + 0.9 * x**2 - 0.3 * x * y + 0.6 * y**2
    for surface in (plane, bowl):
        assert mean_abs_relief(surface, mask) < 1e-12
        out = relief_metrics(surface, surface, mask)
        assert out["relief_ai1"] < 1e-12 and out["inverted"] == 0.0


def _orthogonal_relief() -> tuple[np.ndarray, np.ndarray]:
    """A 5 x 5 ground truth ``q + r`` whose relief is exactly ``r``: ``r(x) = x^3 - 0.85 x`` on the grid
    x in {-1, -0.5, 0, 0.5, 1} is orthogonal to 1, x, x^2 (0.85 = sum x^4 / sum x^2 = 2.125 / 2.5), and,
    constant along y, to every other quadratic term."""
    x, y = _grid(5, 5)
    q = 2.0 + 0.5 * x - 0.25 * y + 0.75 * x**2 + 0.1 * x * y - 0.4 * y**2
    r = x**3 - 0.85 * x  # per row: -0.15, 0.3, 0, -0.3, 0.15
    return q, r


def test_hand_computed_five_by_five():
    q, r = _orthogonal_relief()
    gt = q + r
    full = np.ones((5, 5), dtype=bool)
    basis = quadratic_basis(5, 5)
    got = relief_map(torch.from_numpy(gt.reshape(-1)), torch.ones(25, dtype=torch.float64), basis)
    np.testing.assert_allclose(got.numpy().reshape(5, 5), r, atol=1e-12)
    assert mean_abs_relief(gt, full) == pytest.approx((0.15 + 0.3 + 0.0 + 0.3 + 0.15) / 5, abs=1e-12)
    # a bowl-only prediction keeps none of the relief: its error is the ground truth's own relief
    bowl_only = relief_metrics(2.0 * q + 3.0, gt, full)
    assert bowl_only["relief_ai1"] == pytest.approx(0.18, abs=1e-12)
    assert np.isnan(bowl_only["relief_corr"]) and bowl_only["inverted"] == 0.0
    # an affine map of the ground truth keeps all of it
    exact = relief_metrics(2.0 * gt + 3.0, gt, full)
    assert exact["relief_ai1"] == pytest.approx(0.0, abs=1e-9)
    assert exact["relief_corr"] == pytest.approx(1.0, abs=1e-9) and exact["inverted"] == 0.0
    # half the relief, aligned: the relief residual of the error is half of r
    half = relief_metrics(q + 0.5 * r, gt, full)
    assert half["relief_corr"] == pytest.approx(1.0, abs=1e-9)


def test_sign_flipped_ground_truth_is_inverted_but_perfect_for_ai1():
    rng = np.random.default_rng(0)
    x, y = _grid()
    gt = 1.0 + x**2 + 0.5 * y**2 + 0.05 * rng.standard_normal((H, W))
    mask = _face_mask()
    flipped = -gt
    assert affine_invariant_metrics(flipped, gt, mask)["ai1"] == pytest.approx(0.0, abs=1e-9)
    out = relief_metrics(flipped, gt, mask)
    assert out["inverted"] == 1.0
    assert out["relief_ai1"] == pytest.approx(0.0, abs=1e-9)  # aligned with s = -1 it matches exactly
    assert relief_metrics(gt, gt, mask)["inverted"] == 0.0


def _oracle(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, s: float, t: float) -> tuple[float, float]:
    """Independent numpy relief errors for a given alignment: np.linalg.lstsq on the masked pixels."""
    x, y = _grid(*gt.shape)
    design = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], axis=-1)[mask]

    def relief(values: np.ndarray) -> np.ndarray:
        coef = np.linalg.lstsq(design, values[mask], rcond=None)[0]
        return values[mask] - design @ coef

    rp, rg = relief(s * pred + t), relief(gt)
    return float(np.abs(rp - rg).mean()), float(np.corrcoef(rp, rg)[0, 1])


def test_matches_numpy_oracle_on_random_maps():
    from dpface_lib.metrics import fit_affine

    rng = np.random.default_rng(3)
    mask = _face_mask()
    for _ in range(3):
        gt = rng.standard_normal((H, W)).cumsum(0) * 0.1
        pred = 1.7 * gt + 0.4 * rng.standard_normal((H, W)) - 2.0
        s, t = fit_affine(pred, gt, mask, robust=True)
        want_l1, want_corr = _oracle(pred, gt, mask, s, t)
        got = relief_metrics(pred, gt, mask)
        assert got["relief_ai1"] == pytest.approx(want_l1, rel=1e-9)
        assert got["relief_corr"] == pytest.approx(want_corr, rel=1e-9)


def test_batched_torch_and_too_few_pixels():
    rng = np.random.default_rng(1)
    gt = torch.from_numpy(rng.standard_normal((3, H, W)))
    mask = torch.from_numpy(np.broadcast_to(_face_mask(), (3, H, W)).copy())
    mask[2] = False
    mask[2, 0, :5] = True  # 5 valid pixels: not scorable
    with pytest.warns(Warning):
        out = relief_metrics(gt * 2.0, gt, mask, allow_empty=True)
    assert out["relief_ai1"].shape == (3,)
    assert torch.allclose(out["relief_ai1"][:2], torch.zeros(2, dtype=torch.float64), atol=1e-9)
    assert torch.isnan(out["relief_ai1"][2])


def test_batch_metrics_report_relief_columns():
    x, y = _grid()
    gt = torch.from_numpy(1.0 + x**2 + 0.5 * y**2 + 0.1 * np.sin(6 * x)).unsqueeze(0)
    mask = torch.from_numpy(_face_mask()).unsqueeze(0)
    a, b = torch.tensor([-20000.0]), torch.tensor([25.0])
    batch = {"disparity": gt.float(), "depth": (a.reshape(-1, 1, 1) / (gt - b.reshape(-1, 1, 1))).float(),
             "mask": mask, "a": a, "b": b}
    values = batch_metrics({"disparity": -gt.float()}, batch)
    assert float(values["inverted"][0]) == 1.0
    assert float(values["relief_ai1"][0]) == pytest.approx(0.0, abs=1e-5)
