"""Figures of the DP optics notebooks (02, 03): half-aperture rays, blur and disparity against depth, the
affine family of inverse depth, and measured against true disparity on a face.

Plotting only; the optics come from :mod:`dpface_lib.geometry`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from dpface_lib import geometry as geo
from dpface_lib.viz import measured_vs_true, shared_range

__all__ = ["affine_family_figure", "coc_disparity_figure", "draw_half_aperture_rays", "half_aperture_figure",
           "measured_disparity_figure"]


def draw_half_aperture_rays(ax, depth: float, focus: float = 4.0, focal: float = 1.0, aperture: float = 2.0,
                            n_rays: int = 5, zoom: float = 3.0) -> float:
    """Rays from an on-axis point at ``depth`` through the upper (red) and lower (blue) half of a thin lens.

    Toy units (``focal`` 1); the image side (lens to sensor) is drawn ``zoom`` times wider and the object side
    compressed. Bars beside the sensor show where each half lands. Returns the signed blur on the sensor.
    """
    sensor = focal * focus / (focus - focal)  # s = f g / (g - f)
    image = focal * depth / (depth - focal)   # v = f Z / (Z - f)
    x_obj, x_focus = -3.0 * math.sqrt(depth / focus), -3.0
    ax.axvline(x_focus, color="0.7", ls=":", lw=1)
    ax.text(x_focus, 1.3, "focus plane", ha="center", fontsize=8, color="0.4")
    ax.plot([0, 0], [-aperture / 2, aperture / 2], color="k", lw=3)
    ax.text(0, -1.3, "lens", ha="center", fontsize=8)
    ax.plot([zoom * sensor] * 2, [-1.1, 1.1], color="0.3", lw=4, alpha=0.4)
    ax.text(zoom * sensor, -1.3, "sensor", ha="center", fontsize=8)
    ax.plot(x_obj, 0, "ko")
    heights = np.linspace(0.1, aperture / 2, n_rays)
    for sign, color in ((1, "tab:red"), (-1, "tab:blue")):
        hits = sign * heights * (1.0 - sensor / image)  # where each ray meets the sensor plane
        for y, y_s in zip(sign * heights, hits, strict=True):
            ax.plot([x_obj, 0, zoom * sensor], [0, y, y_s], color=color, lw=0.8, alpha=0.8)
        ax.plot([zoom * sensor + 0.15] * 2, [hits.min(), hits.max()], color=color, lw=6,
                solid_capstyle="butt")
    coc = aperture * (sensor - image) / image
    side = "beyond" if depth > focus else ("in front of" if depth < focus else "on")
    ax.set_title(f"point {side} the focus plane (Z = {depth:g}, g = {focus:g})\nsigned CoC = {coc:+.2f}",
                 fontsize=9)
    ax.set_xlim(-6.3, zoom * sensor + 0.5)
    ax.set_ylim(-1.45, 1.45)
    ax.axis("off")
    return float(coc)


def half_aperture_figure(depths: tuple[float, ...] = (2.0, 4.0, 16.0), focus: float = 4.0):
    """One :func:`draw_half_aperture_rays` panel per depth (toy units), in front of, on and beyond focus."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(depths), figsize=(4.3 * len(depths), 3.4), squeeze=False)
    for ax, depth in zip(axes[0], depths, strict=True):
        draw_half_aperture_rays(ax, depth, focus=focus)
    fig.suptitle("red: upper half of the aperture, blue: lower half; bars: where each half lands on the "
                 "sensor (object side not to scale)", fontsize=10)
    fig.tight_layout()
    return fig


def coc_disparity_figure(lens: geo.Optics, resize: float, k: float, depth_range_mm: tuple[float, float],
                         references: Mapping[str, tuple[float, float]] | None = None,
                         band_px: tuple[float, float] | None = None):
    """Plotly figure: the signed circle of confusion (sensor µm and stored px) and the DP disparity
    ``a / Z + b`` (px) against depth for ``lens``.

    Args:
        lens: the thin lens; its full-resolution focal length in px times ``resize`` is the stored ``fy``.
        k: DP disparity per px of blur diameter.
        depth_range_mm: (near, far) of the depth axis (near is raised above the focal length).
        references: ``{label: (a, b)}`` curves drawn dashed (e.g. a calibrated camera).
        band_px: (low, high) disparity band shaded grey (e.g. the range the models search).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fy = lens.fy_full_px * resize
    a, b = geo.thin_lens_ab(lens, fy, k)
    z = np.linspace(max(depth_range_mm[0], 1.05 * lens.focal_mm), depth_range_mm[1], 400)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("signed circle of confusion", "DP disparity"))
    fig.add_trace(go.Scatter(x=z, y=1000 * geo.circle_of_confusion(z, lens), name="CoC (µm, sensor)"), 1, 1)
    fig.add_trace(go.Scatter(x=z, y=geo.circle_of_confusion(z, lens, fy), name="CoC (stored px)"), 1, 1)
    fig.add_trace(go.Scatter(x=z, y=geo.depth_to_disparity(z, a, b), name="d = a/Z + b (px)"), 1, 2)
    for label, (a_ref, b_ref) in (references or {}).items():
        fig.add_trace(go.Scatter(x=z, y=geo.depth_to_disparity(z, a_ref, b_ref), name=label,
                                 line={"dash": "dash", "color": "grey"}), 1, 2)
    if band_px is not None:
        fig.add_hrect(y0=band_px[0], y1=band_px[1], fillcolor="grey", opacity=0.12, line_width=0,
                      row=1, col=2)
    for col in (1, 2):
        fig.add_vline(x=lens.focus_mm, line={"dash": "dot", "color": "black"}, row=1, col=col)
        fig.update_xaxes(title_text="depth Z (mm)", row=1, col=col)
    fig.update_yaxes(title_text="CoC (µm or px)", row=1, col=1)
    fig.update_yaxes(title_text="disparity (px)", row=1, col=2)
    fig.update_layout(height=380, width=950, margin={"t": 60, "b": 40},
                      title=f"f = {lens.focal_mm:.0f} mm, f/{lens.f_number:.2f}, "
                            f"focus {lens.focus_mm:.0f} mm, stored fy {fy:.0f} px → a = {a:.0f} px·mm, "
                            f"b = {b:.2f} px")
    return fig


def affine_family_figure(depth: np.ndarray, face: np.ndarray, cameras: Mapping[str, tuple[float, float]],
                         decode_ab: tuple[float, float], nose_mm: float):
    """Four panels on one head: its disparity through two cameras (shared colour scale, px), their scatter
    (an exact affine map), and the centre row's depth decoded with ``decode_ab`` next to the true depth and
    two other members of the family ``1/Z' = s/Z + t`` pinned at ``nose_mm``.

    Args:
        depth: (H, W) mm; face: (H, W) bool; cameras: two ``{label: (a, b)}`` (the first one is decoded).
    Returns ``(fig, disparities)`` with the two (H, W) disparity maps in the order of ``cameras``.
    """
    import matplotlib.pyplot as plt

    (n1, ab1), (n2, ab2) = list(cameras.items())[:2]
    maps = [geo.depth_to_disparity(depth, *ab) for ab in (ab1, ab2)]
    limits = shared_range(*maps, mask=face, percent=0.0)
    fig, ax = plt.subplots(1, 4, figsize=(15, 3.4))
    for axis, img, name in ((ax[0], maps[0], n1), (ax[1], maps[1], n2)):
        im = axis.imshow(np.where(face, img, np.nan), cmap="coolwarm", vmin=limits[0], vmax=limits[1])
        axis.set_title(f"disparity, {name}", fontsize=9)
        axis.axis("off")
        plt.colorbar(im, ax=axis, fraction=0.046, label="px")
    ax[2].plot(maps[0][face], maps[1][face], ".", ms=2)
    ax[2].set(xlabel=f"d {n1} (px)", ylabel=f"d {n2} (px)", title="the same face, two cameras")
    row = depth.shape[0] // 2
    ax[3].plot(np.where(face[row], depth[row], np.nan), "k", lw=2, label="true depth")
    decoded = geo.disparity_to_depth(maps[0], *decode_ab)
    ax[3].plot(np.where(face[row], decoded[row], np.nan), label="decoded with other (a, b)")
    for s in (0.6, 1.5):
        t = (1.0 - s) / nose_mm
        ax[3].plot(1.0 / np.where(face[row], s / depth[row].clip(1.0) + t, np.nan), ls=":",
                   label=f"1/Z' = {s}/Z {t:+.1e}")
    ax[3].set(xlabel="column (centre row)", ylabel="depth (mm)")
    ax[3].legend(fontsize=7)
    fig.tight_layout()
    return fig, maps


def measured_disparity_figure(true: np.ndarray, measured: np.ndarray, keep: np.ndarray, texture: np.ndarray,
                              title: str = ""):
    """A face's measured against true disparity: scatter coloured by texture (RMS error in its title), the
    true and the measured map on one shared colour scale (px) and their difference (px).

    Args:
        true, measured, texture: (H, W); keep: (H, W) bool, the pixels compared. Returns ``(fig, rms)``.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 3.6))
    rms = measured_vs_true(ax[0], true[keep], measured[keep], texture[keep], colour_label="texture (std)")
    limits = shared_range(true, measured, mask=keep)
    for axis, img, name in ((ax[1], true, "true a/Z + b"), (ax[2], measured, "measured")):
        im = axis.imshow(np.where(keep, img, np.nan), cmap="viridis", vmin=limits[0], vmax=limits[1])
        axis.set_title(f"{name} (px)", fontsize=9)
        plt.colorbar(im, ax=axis, fraction=0.046, label="px")
    diff = np.where(keep, measured - true, np.nan)
    bound = shared_range(diff, mask=keep, symmetric=True)[1]
    im = ax[3].imshow(diff, cmap="coolwarm", vmin=-bound, vmax=bound)
    ax[3].set_title("measured - true (px)", fontsize=9)
    plt.colorbar(im, ax=ax[3], fraction=0.046, label="px")
    for axis in ax[1:]:
        axis.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, rms
