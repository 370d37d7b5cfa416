"""Figures shared by the notebooks: image panels (prediction against ground truth), learning curves against
reference lines, and face point clouds.

Plotting only: every number shown is computed elsewhere (geometry, metrics, evaluate) and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dpface_lib.geometry import backproject, normals_to_rgb

__all__ = ["MAX_COLUMNS", "Panel", "face_points", "learning_curves", "map_panels", "measured_vs_true",
           "normal_image", "point_cloud_figure", "prediction_panels", "relief_panels", "robust_range",
           "sample_panels", "shared_range", "show_panels"]

#: One image panel: (title, image (H, W) or (H, W, 3), colormap or None for RGB, (vmin, vmax) or None),
#: optionally followed by the unit of the colour bar (e.g. ``"px"``, ``"mm"``).
Panel = tuple  # (str, np.ndarray, str | None, tuple[float, float] | None[, str])
#: Panels per row of :func:`show_panels` unless asked otherwise: wider strips get unreadably small.
MAX_COLUMNS = 4


def robust_range(image: np.ndarray, mask: np.ndarray | None = None,
                 percent: float = 1.0) -> tuple[float, float]:
    """(low, high) percentiles ``percent`` and ``100 - percent`` of the finite pixels (inside ``mask``):
    a colour range that a few edge pixels cannot stretch."""
    values = np.asarray(image, dtype=np.float64)
    keep = np.isfinite(values) if mask is None else np.isfinite(values) & np.asarray(mask, dtype=bool)
    if not keep.any():
        return 0.0, 1.0
    low, high = np.percentile(values[keep], [percent, 100.0 - percent])
    return float(low), float(high)


def shared_range(*maps: np.ndarray, mask: np.ndarray | None = None, percent: float = 1.0,
                 symmetric: bool = False) -> tuple[float, float]:
    """One colour range for several maps of the same quantity (ground truth and predictions): the
    :func:`robust_range` of their pooled finite pixels (inside ``mask``), so equal colours mean equal values.

    ``symmetric=True`` centres the range on 0 (for signed errors and differences).
    """
    pooled = [np.asarray(m, dtype=np.float64)[np.asarray(mask, dtype=bool)] if mask is not None
              else np.asarray(m, dtype=np.float64).ravel() for m in maps]
    low, high = robust_range(np.concatenate(pooled) if pooled else np.zeros(0), percent=percent)
    if symmetric:
        high = max(abs(low), abs(high))
        low = -high
    return low, high


def map_panels(maps: Mapping[str, np.ndarray], mask: np.ndarray | None = None, *, unit: str = "px",
               cmap: str = "viridis", error_of: tuple[str, str] | None = None,
               error_cmap: str = "magma") -> list[Panel]:
    """Panels of maps of one quantity on one shared colour scale (:func:`shared_range`), pixels outside
    ``mask`` blank; with ``error_of=(pred, gt)`` a last panel ``|pred - gt|`` on its own scale from 0.

    Args:
        maps: ``{title: (H, W) map}``, e.g. ``{"GT disparity": gt, "prediction": pred}``.
        mask: (H, W) bool, the pixels that count (all when None).
        unit: the unit of the values (colour bar label).
    """
    keep = np.ones(next(iter(maps.values())).shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    shown = {name: np.where(keep, np.asarray(m, dtype=np.float64), np.nan) for name, m in maps.items()}
    limits = shared_range(*shown.values(), mask=keep)
    panels: list[Panel] = [(name, m, cmap, limits, unit) for name, m in shown.items()]
    if error_of is not None:
        error = np.abs(shown[error_of[0]] - shown[error_of[1]])
        panels.append((f"|{error_of[0]} - {error_of[1]}|", error, error_cmap,
                       (0.0, robust_range(error, keep)[1]), unit))
    return panels


def relief_panels(gt: np.ndarray, aligned: np.ndarray, mask: np.ndarray, unit: str = "px") -> list[Panel]:
    """Two panels of the relief beyond the smooth bowl (:mod:`dpface_lib.relief`) on one symmetric colour
    scale: the ground truth's and the affine-aligned prediction's, so a missing nose shows as a blank.

    Args: (H, W) ground truth and aligned prediction (same units, e.g. px), (H, W) bool mask."""
    from dpface_lib.relief import relief_image

    keep = np.asarray(mask, dtype=bool)
    relief = lambda values: relief_image(values, keep)  # noqa: E731
    maps = {"GT relief beyond the bowl": relief(gt), "predicted relief (aligned)": relief(aligned)}
    # 3rd-97th percentile: the chin's edge, where no quadratic fits, would stretch the scale to 2 px
    top = max(abs(v) for v in robust_range(maps["GT relief beyond the bowl"], keep, 3.0))
    return [(name, m, "RdBu_r", (-top, top), unit) for name, m in maps.items()]


def measured_vs_true(ax, true: np.ndarray, measured: np.ndarray, colour: np.ndarray | None = None, *,
                     unit: str = "px", colour_label: str = "", max_points: int = 4000,
                     seed: int = 0) -> float:
    """Scatter of measured against true values (1-D arrays of the same pixels) with the identity line;
    points coloured by ``colour`` (with a colour bar labelled ``colour_label``) when given.

    Returns the RMS error ``sqrt(mean((measured - true)^2))`` over all points (the plot shows a seeded
    subset of at most ``max_points``), also written in the title.
    """
    import matplotlib.pyplot as plt

    true = np.asarray(true, dtype=np.float64).ravel()
    measured = np.asarray(measured, dtype=np.float64).ravel()
    rms = float(np.sqrt(np.mean((measured - true) ** 2))) if true.size else float("nan")
    idx = np.arange(true.size)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    artist = ax.scatter(true[idx], measured[idx], s=3, alpha=0.6,
                        c=None if colour is None else np.asarray(colour).ravel()[idx], cmap="viridis")
    if colour is not None:
        plt.colorbar(artist, ax=ax, fraction=0.046, label=colour_label)
    lo, hi = robust_range(np.concatenate([true, measured]), percent=0.5)
    pad = 0.05 * (hi - lo + 1e-9)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="measured = true")
    ax.set(xlabel=f"true ({unit})", ylabel=f"measured ({unit})", title=f"RMS error {rms:.3f} {unit}")
    ax.legend(fontsize=7, loc="upper left")
    return rms


def normal_image(normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours of (3, H, W) normals with the kit's one convention (``geometry.normals_to_rgb``,
    ``(n + 1) / 2``), white outside ``mask``."""
    return np.where(np.asarray(mask, dtype=bool)[..., None], normals_to_rgb(np.asarray(normals)), 1.0)


def sample_panels(sample: Mapping[str, np.ndarray], diff_gain: float = 8.0) -> list[Panel]:
    """The eight panels of one sample as ``dpface_lib.data.read_sample`` returns it: left, right, lrsum,
    the left - right difference amplified ``diff_gain`` times around grey, depth (mm) on the face, normals as
    RGB, mask, albedo."""
    mask = np.asarray(sample["mask"], dtype=bool)
    diff = (np.asarray(sample["left"]) - np.asarray(sample["right"])).mean(-1)
    return [("left", sample["left"], None, None), ("right", sample["right"], None, None),
            ("lrsum", sample["lrsum"], None, None),
            (f"(left - right) x {diff_gain:g}, around 0.5", np.clip(0.5 + diff_gain * diff, 0, 1), "RdBu_r",
             (0.0, 1.0), "0.5 + gain x difference"),
            ("depth (mm)", np.where(mask, sample["depth"], np.nan), "viridis", None, "mm"),
            ("normals as RGB", normal_image(np.moveaxis(np.asarray(sample["normal"]), -1, 0), mask), None,
             None),
            ("mask", mask.astype(float), "gray", (0.0, 1.0), "face = 1"),
            ("albedo", np.clip(sample["albedo"], 0, 1), None, None)]


def prediction_panels(sample: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray], *,
                      affine: tuple[float, float] | None = None) -> list[Panel]:
    """The standard comparison of one prediction with the ground truth, as panels for :func:`show_panels`.

    Args:
        sample: ``lrsum`` or ``left`` (3, H, W) image, ``disparity`` (H, W) px, ``mask`` (H, W) bool, and
            ``normal`` (3, H, W) when normals are compared.
        pred: ``disparity`` (H, W) px (or ``depth`` (H, W) mm, shown as inverse depth), optional ``normal``.
        affine: the (s, t) that maps the prediction onto the ground truth (``metrics.fit_affine``); the
            aligned prediction and its error are shown when given.

    Returns panels: input, then without ``affine`` the GT disparity and the raw prediction (its own colour
    range), with ``affine`` the GT and the aligned prediction on one shared scale, their difference, and
    both reliefs beyond the bowl on one symmetric scale (:func:`relief_panels`); then, where predicted,
    GT and predicted normals and the angular error in degrees.
    """
    mask = np.asarray(sample["mask"], dtype=bool)
    image = np.moveaxis(np.asarray(sample["lrsum"] if "lrsum" in sample else sample["left"]), 0, -1)
    gt = np.asarray(sample["disparity"], dtype=np.float64)
    if "disparity" in pred:
        disparity, label = np.asarray(pred["disparity"], dtype=np.float64), "prediction (px)"
    else:
        depth = np.asarray(pred["depth"], dtype=np.float64)
        disparity, label = 1.0 / np.clip(depth, 1.0, None), "1 / depth"
    shown = lambda x: np.where(mask, x, np.nan)  # noqa: E731
    unit = "px" if "disparity" in pred else "1/mm"
    panels: list[Panel] = [("input", np.clip(image, 0, 1), None, None)]
    if affine is None:
        panels += [("GT disparity (px)", shown(gt), "viridis", robust_range(gt, mask), "px"),
                   (f"{label}, own range", shown(disparity), "viridis", robust_range(disparity, mask), unit)]
    else:
        aligned = affine[0] * disparity + affine[1]
        panels += map_panels({"GT disparity": gt, "aligned prediction": aligned}, mask, unit="px",
                             error_of=("aligned prediction", "GT disparity"))
        panels += relief_panels(gt, aligned, mask)
    if "normal" in pred and "normal" in sample:
        gn, pn = np.asarray(sample["normal"], dtype=np.float64), np.asarray(pred["normal"], dtype=np.float64)
        lengths = np.maximum(np.linalg.norm(pn, axis=0) * np.linalg.norm(gn, axis=0), 1e-12)
        angle = np.degrees(np.arccos(np.clip((gn * pn).sum(0) / lengths, -1.0, 1.0)))
        panels += [("GT normals", normal_image(gn, mask), None, None),
                   ("predicted normals", normal_image(pn, mask), None, None),
                   ("normal error (deg)", shown(angle), "magma", None, "deg")]
    return panels


def show_panels(panels: Sequence[Panel], axes=None, *, ncols: int | None = None, size: float = 2.6):
    """Draw panels on ``axes`` (a sequence of matplotlib axes; new figure when None, wrapped at
    :data:`MAX_COLUMNS` panels a row unless ``ncols`` says otherwise), a colour bar beside every colormapped
    panel, labelled with the panel's unit when it has one. Returns the axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        ncols = ncols or min(len(panels), MAX_COLUMNS)
        nrows = -(-len(panels) // ncols)
        _, grid = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + 0.3) * nrows), squeeze=False)
        axes = grid.ravel()
        for ax in axes[len(panels):]:
            ax.axis("off")
    for ax, (title, image, cmap, limits, *unit) in zip(axes, panels, strict=False):
        artist = ax.imshow(image, cmap=cmap, vmin=limits[0] if limits else None,
                           vmax=limits[1] if limits else None)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        if cmap is not None:
            plt.colorbar(artist, ax=ax, fraction=0.046, label=unit[0] if unit else "")
    return axes


def face_points(depth_mm: np.ndarray, K: np.ndarray, mask: np.ndarray, max_points: int = 5000,
                seed: int = 0) -> np.ndarray:
    """Back-projected face pixels ``(N, 3)`` in mm (camera frame: x right, y down, z forward).

    Args:
        depth_mm: (H, W) depth in mm.
        K: (3, 3) intrinsics of the stored image.
        mask: (H, W) bool; pixels with a non-finite or non-positive depth are dropped too.
        max_points: keep at most this many points (a seeded random subset, the same for equal masks).
    """
    points = np.asarray(backproject(np.asarray(depth_mm, dtype=np.float64), np.asarray(K, dtype=np.float64)))
    keep = np.asarray(mask, dtype=bool) & np.isfinite(points).all(axis=-1) & (points[..., 2] > 0)
    idx = np.flatnonzero(keep)
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_points, replace=False))
    return points.reshape(-1, 3)[idx]


def point_cloud_figure(depths: Mapping[str, np.ndarray], K: np.ndarray, mask: np.ndarray, *,
                       title: str = "", max_points: int = 5000, height: int = 420):
    """Plotly figure with one 3-D scatter per depth map, side by side, on a shared colour scale (depth, mm).

    Args:
        depths: ``{panel title: (H, W) depth in mm}`` (e.g. ground truth and a prediction).
        K: (3, 3) intrinsics; mask: (H, W) bool face mask (the same pixels in every panel).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(depths)
    fig = make_subplots(rows=1, cols=len(names), specs=[[{"type": "scene"}] * len(names)],
                        subplot_titles=names)
    clouds = [face_points(depths[n], K, mask, max_points) for n in names]
    z_all = np.concatenate([c[:, 2] for c in clouds] + [np.zeros(0)])
    z_all = z_all if z_all.size else np.zeros(1)
    lo, hi = np.percentile(z_all, [1, 99])
    for i, cloud in enumerate(clouds, start=1):
        fig.add_trace(go.Scatter3d(x=cloud[:, 0], y=cloud[:, 1], z=cloud[:, 2], mode="markers",
                                   name=names[i - 1],
                                   marker=dict(size=1.6, color=cloud[:, 2], colorscale="Viridis", cmin=lo,
                                               cmax=hi, showscale=i == 1)), row=1, col=i)
    camera = dict(up=dict(x=0, y=-1, z=0), eye=dict(x=0.0, y=0.0, z=-2.0))  # look along +z, y down
    scene = dict(xaxis_title="X (mm)", yaxis_title="Y (mm)", zaxis_title="Z (mm)", aspectmode="data",
                 camera=camera)
    fig.update_layout(title=title, height=height, margin=dict(l=0, r=0, t=50, b=0), showlegend=False,
                      **{f"scene{'' if i == 1 else i}": scene for i in range(1, len(names) + 1)})
    return fig


def learning_curves(ax, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                    references: Mapping[str, float] | None = None, *, ylabel: str = "ai1 (px)") -> None:
    """Draw ``{label: (steps, values)}`` curves on a matplotlib axis, with ``references`` as dashed lines."""
    for label, (steps, values) in curves.items():
        ax.plot(list(steps), list(values), "o-", ms=3, label=label)
    for (label, value), color in zip((references or {}).items(), ("grey", "tab:red", "k", "tab:brown"),
                                     strict=False):
        ax.axhline(float(value), ls="--", color=color, lw=1.2, label=label)
    ax.set(xlabel="step", ylabel=ylabel)
    ax.legend(fontsize=7, ncol=2)
