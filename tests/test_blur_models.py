"""The literature's DP blur models (simulate/optics.py ``psf=``): disparity = k x CoC with each model's own k,
mirror symmetry, normalised kernels, identical views in focus, and the simulator option."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dpface_lib.simulate import optics as dp

MODELS = dp.PSF_MODELS


def centroid_rows(kernel: np.ndarray) -> float:
    rows = np.arange(kernel.shape[0]) - kernel.shape[0] // 2
    return float((kernel.sum(axis=1) * rows).sum() / kernel.sum())


@pytest.mark.parametrize("psf", MODELS)
def test_disparity_is_k_times_coc_mirror_symmetric_and_normalised(psf: str) -> None:
    k = dp.disparity_per_coc(psf=psf)
    assert 0.05 < k < 0.45
    for coc in (-9.0, -3.0, 2.5, 6.0, 14.0):
        left, right = dp.dp_psf_pair(coc, psf=psf)
        assert left.sum() == pytest.approx(1.0, abs=1e-12) and right.sum() == pytest.approx(1.0, abs=1e-12)
        assert (left >= 0).all() and (right >= 0).all()
        assert np.allclose(right, left[::-1, :], atol=1e-12)  # mirror images across the DP axis
        assert centroid_rows(right) - centroid_rows(left) == pytest.approx(k * coc, abs=1e-9)
        assert np.allclose(left, left[:, ::-1], atol=1e-12)  # symmetric across the other axis


def test_each_model_has_its_own_response() -> None:
    ks = {psf: dp.disparity_per_coc(psf=psf) for psf in MODELS}
    assert ks["half-disc"] == pytest.approx(4 / (3 * math.pi), abs=2e-3)  # centroid of a half-disc
    assert ks["soft"] == pytest.approx(dp.disparity_per_coc(dp.DEFAULT_TAU), abs=1e-15)
    assert len({round(v, 4) for v in ks.values()}) == len(MODELS)
    left, right = dp.half_weights("butterworth")
    u = dp.aperture_samples()
    centre = np.hypot(u[:, 0], u[:, 1]) < 0.2
    edge = (np.hypot(u[:, 0], u[:, 1]) > 0.9) & (np.abs(u[:, 1]) < 0.2)
    assert (left + right)[centre].mean() < 0.5 * (left + right)[edge].mean()  # the high-pass dims the centre
    left, right = dp.half_weights("translating-disc")
    top = u[:, 1] > 0.95
    assert right[top].min() > 0.9 and left[top].max() < 0.1  # a graded half-disc
    with pytest.raises(ValueError, match="unknown DP blur model 'gauss'"):
        dp.half_weights("gauss")


@pytest.mark.parametrize("psf", MODELS)
def test_in_focus_scene_gives_identical_views(psf: str) -> None:
    rng = np.random.default_rng(0)
    sharp = rng.random((32, 32, 3)).astype(np.float32)
    left, right = dp.defocus_dp(sharp, np.zeros((32, 32)), psf=psf)
    assert np.allclose(left.numpy(), right.numpy(), atol=1e-6)


@pytest.mark.parametrize("psf", ["half-disc", "butterworth"])
def test_rendered_shift_matches_k_times_coc(psf: str) -> None:
    """A vertical ramp texture under a constant CoC: the views shift by k c rows against each other."""
    coc = 8.0
    rows = np.linspace(0, 1, 96)[:, None, None] * np.ones((96, 64, 3))
    left, right = dp.defocus_dp(rows.astype(np.float32), np.full((96, 64), coc), psf=psf)
    inner = slice(24, 72)
    slope = np.gradient(rows[:, 0, 0])[inner].mean()
    shift = float((left.numpy()[inner, 32, 0] - right.numpy()[inner, 32, 0]).mean() / slope)
    assert shift == pytest.approx(dp.disparity_per_coc(psf=psf) * coc, rel=0.05)


def test_simulate_psf_option_calibrates_with_the_models_k(tmp_path) -> None:
    from dpface_lib import cli
    from dpface_lib.layout import read_calibration

    a = {}
    for psf in ("soft", "translating-disc"):
        out = tmp_path / psf
        assert cli.main(["simulate", "--out", str(out), "--persons", "1", "--size", "64x64", "--cameras", "1",
                         "--views-per-person", "1", "--lights-per-view", "1", "--psf", psf, "--quiet"]) == 0
        a[psf] = read_calibration(out / "sim_group001", keys=("disp2depth",))["disp2depth"][0, 0]
    ratio = dp.disparity_per_coc(psf="translating-disc") / dp.disparity_per_coc(psf="soft")
    assert a["translating-disc"] / a["soft"] == pytest.approx(ratio, rel=1e-9)


def test_calibrated_kernels_rescale_flip_and_give_their_own_k(tmp_path) -> None:
    """Measured kernels stand in as half-disc kernels drawn on a 21 x 21 grid (two tiles, averaged)."""
    rows, cols = np.mgrid[-10:11, -10:11]
    disc = (rows**2 + cols**2 <= 100).astype(np.float64)
    left_k, right_k = disc * (rows < 0), disc * (rows > 0)
    np.save(tmp_path / "left.npy", np.stack([left_k, 3 * left_k]))
    np.save(tmp_path / "right.npy", np.stack([right_k, 3 * right_k]))
    psf = f"calibrated={tmp_path / 'left.npy'},{tmp_path / 'right.npy'}"
    k = dp.disparity_per_coc(psf=psf)
    assert k == pytest.approx(dp.disparity_per_coc(psf="half-disc"), rel=0.08)  # a rasterised half-disc
    for coc in (4.0, 12.0):
        left, right = dp.dp_psf_pair(coc, psf=psf)
        flipped_left, _ = dp.dp_psf_pair(-coc, psf=psf)
        assert np.allclose(flipped_left, left[::-1, ::-1], atol=1e-12)  # negative defocus: turned 180 degrees
        assert left.sum() == pytest.approx(1.0) and right.sum() == pytest.approx(1.0)
        assert centroid_rows(right) - centroid_rows(left) == pytest.approx(k * coc, abs=1e-9)
    np.save(tmp_path / "flat.npy", np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"flat\.npy: calibrated kernels must have shape \(tiles, k, k\)"):
        dp.half_weights(f"calibrated={tmp_path / 'flat.npy'},{tmp_path / 'right.npy'}")


def test_simulate_refuses_bad_calibrated_kernels_before_writing(tmp_path, capsys) -> None:
    from dpface_lib import cli

    np.save(tmp_path / "bad.npy", np.ones((3, 4)))
    cases = [(["--psf", "calibrated"], "needs --psf-kernels"),
             (["--psf", "calibrated", "--psf-kernels", str(tmp_path / "no.npy"), str(tmp_path / "bad.npy")],
              "no.npy: --psf-kernels file does not exist"),
             (["--psf", "calibrated", "--psf-kernels", str(tmp_path / "bad.npy"), str(tmp_path / "bad.npy")],
              "bad.npy: calibrated kernels must have shape"),
             (["--psf-kernels", str(tmp_path / "bad.npy"), str(tmp_path / "bad.npy")],
              "goes with --psf calibrated")]
    for extra, message in cases:
        argv = ["simulate", "--out", str(tmp_path / "set"), "--persons", "1", "--quiet", *extra]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "set").exists()
