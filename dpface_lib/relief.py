"""A face's relief: what is left of a map after its best smooth bowl is removed.

Inside a face mask, most of a disparity map is a smooth bowl (the head's curvature and tilt); the nose,
brows, eye sockets and lips are a small residual on top of it. A model that learns only the bowl can
score well on affine-invariant errors while missing every facial feature, so the kit also scores the
residual (``dpface_lib.metrics.relief_metrics``). The bowl is the weighted least-squares quadratic
surface over the mask,

    q(x, y) = c0 + c1 x + c2 y + c3 x^2 + c4 x y + c5 y^2,

in pixel coordinates normalised to [-1, 1] over the image (so the fit is well conditioned at any size),
and the relief is ``map - q``. The fit is linear in the map, so the relief of ``s * m + t`` is
``s * relief(m)``, a plane or quadratic has relief 0, and ``relief(m1 - m2) = relief(m1) - relief(m2)``.

Every function works per sample on flattened pixel vectors (torch, float64) and is used by the metrics,
the data card and the figures.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["QUADRATIC_TERMS", "mean_abs_relief", "quadratic_basis", "quadratic_fit", "relief_image",
           "relief_map", "weighted_corr"]

#: number of terms of the quadratic surface
QUADRATIC_TERMS = 6


def quadratic_basis(height: int, width: int, *, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """(H * W, 6) design matrix ``[1, x, y, x^2, x y, y^2]`` of every pixel, row-major, with ``x`` (columns)
    and ``y`` (rows) mapped linearly onto [-1, 1]."""
    y = torch.linspace(-1.0, 1.0, height, dtype=dtype, device=device)
    x = torch.linspace(-1.0, 1.0, width, dtype=dtype, device=device)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    return torch.stack([torch.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy], dim=1)


def quadratic_fit(values: torch.Tensor, weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The weighted least-squares quadratic surface of one sample, evaluated at every pixel.

    Args:
        values: (N,) map values (any finite value where ``weight`` is 0 is ignored; NaN is zeroed there).
        weight: (N,) >= 0; pixels with weight 0 do not enter the fit.
        basis: (N, 6) from :func:`quadratic_basis`.

    Returns: (N,) the fitted surface. The pseudo-inverse gives the minimum-norm solution, so fewer than 6
    weighted pixels or a degenerate layout (all on one line) still give a surface instead of an error.
    """
    w = weight.to(basis.dtype)
    v = torch.where(w > 0, values.to(basis.dtype), 0.0)
    sw = w.sqrt().unsqueeze(1)
    coef = torch.linalg.pinv(sw * basis) @ (sw.squeeze(1) * v)
    return basis @ coef


def relief_map(values: torch.Tensor, weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(N,) ``values - quadratic_fit(values)``: the relief beyond the bowl (0 where ``weight`` is 0)."""
    v = torch.where(weight > 0, values.to(basis.dtype), 0.0)
    return torch.where(weight > 0, v - quadratic_fit(v, weight, basis), 0.0)


def weighted_corr(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted Pearson correlation of two (N,) vectors; NaN when either is constant over the weights."""
    w = weight.to(torch.float64)
    sw = w.sum()
    a = a.to(torch.float64) - (w * a).sum() / sw
    b = b.to(torch.float64) - (w * b).sum() / sw
    va, vb = (w * a * a).sum(), (w * b * b).sum()
    denom = (va * vb).sqrt()
    return torch.where(denom > 0, (w * a * b).sum() / torch.where(denom > 0, denom, 1.0), torch.nan)


def relief_image(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W) relief beyond the bowl of one numpy map over a bool mask, NaN outside the mask."""
    keep = np.asarray(mask, dtype=bool)
    v = torch.from_numpy(np.where(keep, values, 0.0).reshape(-1).astype(np.float64))
    w = torch.from_numpy(keep.reshape(-1).astype(np.float64))
    r = relief_map(v, w, quadratic_basis(*keep.shape)).numpy().reshape(keep.shape)
    return np.where(keep, r, np.nan)


def mean_abs_relief(disparity: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute relief (same units as ``disparity``, e.g. px) of one (H, W) map over a bool mask."""
    keep = np.asarray(mask, dtype=bool)
    return float(np.abs(relief_image(disparity, keep)[keep]).mean()) if keep.any() else 0.0
