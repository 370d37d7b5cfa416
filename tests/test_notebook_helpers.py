"""dpface_lib.notebook and the figure helpers of dpface_lib.viz / viz_optics that the notebooks share."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from dpface_lib import REPO_ROOT
from dpface_lib import geometry as geo
from dpface_lib.notebook import BATCH_ENV, batch_run, camera_setup, progress, short_path
from dpface_lib.viz import MAX_COLUMNS, map_panels, measured_vs_true, shared_range, show_panels


def test_short_path_hides_the_machines_folders(tmp_path) -> None:
    assert short_path(REPO_ROOT / "runs" / "x" / "a.csv") == "runs/x/a.csv"
    assert short_path(tmp_path / "run" / "t.csv", tmp_path / "run") == "t.csv"
    assert not short_path("/opt/somewhere/deep/file.txt").startswith("/")


def test_batch_run_turns_progress_bars_off(monkeypatch) -> None:
    monkeypatch.setenv(BATCH_ENV, "1")
    assert batch_run() and list(progress(range(3))) == [0, 1, 2]
    monkeypatch.setenv(BATCH_ENV, "0")
    assert not batch_run()


@pytest.mark.parametrize("camera", ["benchmark", "teaching"])
def test_camera_setup_is_a_consistent_thin_lens(camera: str) -> None:
    cam = camera_setup(camera)
    lens = geo.Optics(focal_mm=cam["focal_mm"], focus_mm=cam["focus_mm"], f_number=cam["f_number"],
                      pixel_um=cam["pixel_um"])
    assert lens.fy_full_px * cam["resize"] == pytest.approx(cam["fy_px"])
    a, b = geo.thin_lens_ab(lens, cam["fy_px"], cam["k_dp"])
    assert geo.zero_disparity_depth(a, b) == pytest.approx(cam["focus_mm"])  # d = 0 on the focus plane
    assert cam["search_px"][0] < 0 < cam["search_px"][1] and len(cam["cameras"]) == 8
    if camera == "teaching":  # camera 1 of the rig is the camera described
        assert cam["cameras"][1] == pytest.approx((a, b))
    with pytest.raises(ValueError, match="camera must be"):
        camera_setup("phone")


def test_shared_range_pools_the_maps_and_symmetric_centres_on_zero() -> None:
    a, b = np.linspace(0, 1, 101), np.linspace(2, 3, 101)
    assert shared_range(a, b, percent=0.0) == (0.0, 3.0)
    assert shared_range(a - 2, percent=0.0, symmetric=True) == (-2.0, 2.0)


def test_map_panels_share_one_scale_and_add_the_error() -> None:
    gt = np.arange(12.0).reshape(3, 4)
    panels = map_panels({"gt": gt, "pred": gt + 1}, mask=gt > 0, error_of=("pred", "gt"))
    assert panels[0][3] == panels[1][3] and panels[0][4] == "px"
    assert np.nanmax(panels[2][1]) == pytest.approx(1.0) and np.isnan(panels[2][1][0, 0])


def test_show_panels_wraps_at_four_and_labels_units() -> None:
    panels = [(f"p{i}", np.ones((4, 4)) * i, "viridis", (0.0, 9.0), "mm") for i in range(6)]
    axes = show_panels(panels)
    fig = axes[0].figure
    assert len(axes) == 2 * MAX_COLUMNS
    assert [ax.get_ylabel() for ax in fig.axes[len(axes):]] == ["mm"] * 6  # one labelled colour bar each


def test_measured_vs_true_returns_the_rms_error() -> None:
    import matplotlib.pyplot as plt

    true = np.linspace(-1, 1, 50)
    _, ax = plt.subplots()
    assert measured_vs_true(ax, true, true + 0.3, colour=np.abs(true)) == pytest.approx(0.3)
