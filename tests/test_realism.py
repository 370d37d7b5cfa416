"""The realism measurements: PSNR, the noise fit on noise of a known law, and blur-model rendering whose
disparity and ranking are known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dpface_lib.classical import BlockMatcher
from dpface_lib.realism import (
    fit_noise,
    flat_block_noise,
    noise_comparison,
    psnr,
    render_scene,
    scene_realism,
    summarise,
)
from dpface_lib.simulate.optics import disparity_per_coc


def _texture(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((size, size))
    for axis in (0, 1, 0, 1):
        x = (np.roll(x, 1, axis) + x + np.roll(x, -1, axis)) / 3
    return (0.2 + 0.6 * (x - x.min()) / (x.max() - x.min())).astype(np.float32)


def test_psnr_of_a_constant_offset() -> None:
    a = np.zeros((8, 8))
    assert psnr(a + 0.01, a) == pytest.approx(40.0)
    mask = np.zeros((8, 8), bool)
    mask[:2] = True
    b = a.copy()
    b[2:] = 0.5  # outside the mask: ignored
    assert psnr(b + 0.1, a + 0.1, mask) == float("inf")


def test_noise_fit_recovers_a_known_poisson_gaussian_law() -> None:
    rng = np.random.default_rng(3)
    levels = np.linspace(0.05, 0.6, 256)
    clean = np.repeat(np.repeat(levels.reshape(16, 16), 32, 0), 32, 1)  # flat 32 px patches at 256 levels
    gain, floor = 1 / 400, 3e-5
    noisy = clean + np.sqrt(gain * clean + floor) * rng.standard_normal(clean.shape)
    means, variances = flat_block_noise(noisy, block=8, keep=0.5)
    fitted_gain, fitted_floor = fit_noise(means, variances)
    assert fitted_gain == pytest.approx(gain, rel=0.1)
    assert fitted_floor == pytest.approx(floor, abs=2e-5)
    table = noise_comparison(means, variances, full_well=400, read_sigma=np.sqrt(3e-5))
    assert np.allclose(table["ratio"], 1.0, atol=0.15)  # the same law, measured


def test_rendered_views_shift_with_the_sign_and_size_of_the_coc() -> None:
    sharp = _texture(96)
    match = BlockMatcher(-3, 3, step=0.1, window=11, smooth_sigma=0)

    def shift(coc: float) -> float:
        left, right = render_scene(sharp, np.full(sharp.shape, coc, np.float32), "soft")
        batch = {"left": torch.from_numpy(left)[None, None], "right": torch.from_numpy(right)[None, None],
                 "a": torch.ones(1), "b": torch.zeros(1)}
        return float(match(batch)["disparity"][0, 20:-20, 20:-20].median())

    far, near, half = shift(8.0), shift(-8.0), shift(4.0)
    assert far > 0.3 and near == pytest.approx(-far, rel=0.1)  # the sign of the CoC turns the pair over
    assert far / half == pytest.approx(2.0, rel=0.2)  # linear in the CoC
    # a shift-only matcher on asymmetric half-aperture blurs reads the centroid separation k c only roughly
    assert 0.5 < far / (disparity_per_coc(psf="soft") * 8.0) < 2.0


def test_the_model_a_scene_was_rendered_with_ranks_first() -> None:
    sharp = _texture(64, seed=1)
    g = np.tile(np.linspace(0.2, 0.9, 64, dtype=np.float32)[:, None], (1, 64))  # defocus target
    coc = 12.0 * g - 2.0
    left, right = render_scene(sharp, coc, "soft")
    item = {"sample_id": "s", "left": torch.from_numpy(left)[None], "right": torch.from_numpy(right)[None],
            "inverse_depth": torch.from_numpy(g), "mask": torch.ones(64, 64, dtype=torch.bool),
            "all_in_focus": torch.from_numpy(sharp)[None]}
    rows = scene_realism(item, models=("soft", "half-disc"), gain_window=15, factors=(1.0,),
                         matcher=BlockMatcher(-3, 3, step=0.25, window=9, smooth_sigma=4))
    scores = {row["model"]: row["psnr_lr"] for row in rows}
    assert scores["soft"] > scores["half-disc"]
    soft = next(row for row in rows if row["model"] == "soft")
    assert soft["coc_scale"] == pytest.approx(12.0, rel=0.25)  # the fitted map ground truth -> CoC
    table = summarise(pd.DataFrame(rows))
    assert list(table.index) == ["soft", "half-disc"] and list(table["rank"]) == [1, 2]
