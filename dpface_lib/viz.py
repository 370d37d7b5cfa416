"""Figures shared by the notebooks: learning curves against reference lines, and face point clouds.

Plotting only: every number shown is computed elsewhere (geometry, metrics, evaluate) and passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from dpface_lib.geometry import backproject

__all__ = ["face_points", "learning_curves", "point_cloud_figure"]


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
