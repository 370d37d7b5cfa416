"""Camera maths: intrinsics ``K``, back-projection of depth maps and surface normals.

Frames and units as in :mod:`dpface_lib.geometry` (which re-exports every public name here): depth ``Z`` in
mm along the optical axis, camera frame x right, y down, z forward (OpenCV), pixel ``(u, v)`` = (column, row)
with its centre at integer coordinates, ``[u, v, 1]^T ~ K [X, Y, Z]^T`` with
``K = [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]``. Normals face the camera (``n . P < 0``).

Every function accepts numpy arrays or torch tensors and returns the type it was given; the torch path is
differentiable and batched over leading dimensions. Invalid inputs give NaN (points) or zero vectors
(normals), never inf. The numpy/torch plumbing below is shared with :mod:`dpface_lib.geometry`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

ArrayLike = Any  # np.ndarray | torch.Tensor | float

__all__ = ["backproject", "crop_intrinsics", "intrinsics_from_vector", "intrinsics_matrix",
           "intrinsics_to_vector", "normals_from_depth", "normals_to_rgb", "scale_intrinsics", "unit_vectors"]

# ----------------------------------------------------------------------------------------------
# numpy / torch plumbing: compute in torch, hand back the caller's type.


def array_kind(x: ArrayLike) -> str:
    """``"torch"``, ``"numpy"`` or ``"scalar"``: the type :func:`from_tensor` hands a result back as."""
    if isinstance(x, torch.Tensor):
        return "torch"
    if isinstance(x, np.ndarray | np.generic):
        return "numpy"
    return "scalar"


def to_tensor(x: ArrayLike, like: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` as a floating tensor (numpy ints -> float64, torch ints -> default dtype); cast to
    ``like``'s dtype/device when given."""
    if like is not None:
        if isinstance(x, torch.Tensor):
            return x.to(dtype=like.dtype, device=like.device)
        return torch.as_tensor(np.asarray(x), dtype=like.dtype, device=like.device)
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    if not (arr.flags.c_contiguous and arr.flags.writeable):
        arr = arr.copy()
    return torch.from_numpy(arr)


def from_tensor(t: torch.Tensor, kind: str) -> ArrayLike:
    """``t`` as the caller's type ``kind`` (:func:`array_kind`): the tensor, a numpy array or a float."""
    if kind == "torch":
        return t
    out = t.detach().cpu().numpy()
    return float(out) if kind == "scalar" and out.ndim == 0 else out


def per_sample(p: ArrayLike, x: torch.Tensor, trailing: int = 0) -> torch.Tensor:
    """Per-sample parameter -> tensor broadcastable against ``x``: a shape that is a prefix of
    ``x``'s leading dims (e.g. (B,) against (B, H, W)) gets singleton trailing dims."""
    t = to_tensor(p, like=x)
    if 0 < t.ndim < x.ndim - trailing:
        t = t.reshape(t.shape + (1,) * (x.ndim - trailing - t.ndim))
    return t


def valid_depth(z: torch.Tensor) -> torch.Tensor:
    """Bool mask of usable depths: finite and > 0 (mm)."""
    return torch.isfinite(z) & (z > 0)


# ----------------------------------------------------------------------------------------------
# Intrinsics, back-projection, normals


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float, skew: float = 0.0) -> np.ndarray:
    """``K = [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]`` (float64), mapping camera points to pixel
    indices (pixel centres at integer coordinates)."""
    return np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def intrinsics_from_vector(values: ArrayLike) -> np.ndarray:
    """K (3, 3) from the benchmark's ``PARAMS.intrinsic`` vector ``[fx, fy, skew, cx, cy, ...]`` (at least 5
    entries; the rest are unused distortion slots)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 5:
        raise ValueError(f"an intrinsic vector needs [fx, fy, skew, cx, cy], got {v.size} values")
    return intrinsics_matrix(fx=v[0], fy=v[1], cx=v[3], cy=v[4], skew=v[2])


def intrinsics_to_vector(K: ArrayLike) -> list[float]:
    """The benchmark's 9-entry ``PARAMS.intrinsic`` vector ``[fx, fy, skew, cx, cy, 0, 0, 0, 0]`` of K."""
    K = np.asarray(K, dtype=np.float64)
    fx, fy, skew, cx, cy = (float(K[i, j]) for i, j in ((0, 0), (1, 1), (0, 1), (0, 2), (1, 2)))
    return [fx, fy, skew, cx, cy, 0.0, 0.0, 0.0, 0.0]


def scale_intrinsics(K: ArrayLike, sx: float, sy: float | None = None) -> ArrayLike:
    """``K`` after resizing the image by ``sx`` (columns) and ``sy`` (rows, default ``sx``).

    With pixel centres at integer indices, a resize maps ``u -> sx (u + 0.5) - 0.5``, so
    ``fx, skew -> sx fx, sx skew``, ``cx -> sx (cx + 0.5) - 0.5`` and likewise for rows.
    ``K`` is (..., 3, 3); returns the same type.
    """
    sy = sx if sy is None else sy
    kind = array_kind(K)
    k = to_tensor(K)
    row_scale = torch.tensor([[sx], [sy], [1.0]], dtype=k.dtype, device=k.device)
    shift = torch.zeros(3, 3, dtype=k.dtype, device=k.device)
    shift[0, 2], shift[1, 2] = 0.5 * (sx - 1.0), 0.5 * (sy - 1.0)
    return from_tensor(k * row_scale + shift, kind)


def crop_intrinsics(K: ArrayLike, x0: float, y0: float) -> ArrayLike:
    """``K`` after cropping the image at top-left column ``x0``, row ``y0``: ``cx -= x0``, ``cy -= y0``."""
    kind = array_kind(K)
    k = to_tensor(K)
    offset = torch.zeros_like(k)
    offset[..., 0, 2] = x0
    offset[..., 1, 2] = y0
    return from_tensor(k - offset, kind)


def backproject(depth_mm: ArrayLike, K: ArrayLike) -> ArrayLike:
    """Camera-frame 3-D points of a depth map.

    Pixel ``(u, v)`` (column, row; centre at integer coordinates) with depth ``Z`` lifts to
    ``Z K^-1 [u, v, 1]^T``: ``Y = Z (v - cy) / fy``, ``X = Z (u - cx - skew Y / Z) / fx``.

    Args:
        depth_mm: (..., H, W) depth along the optical axis (mm).
        K: (3, 3) or (..., 3, 3) intrinsics matching ``depth_mm``'s leading dims.

    Returns:
        (..., H, W, 3) points ``(X, Y, Z)`` in mm; NaN where the depth is <= 0 or non-finite.
    """
    kind = array_kind(depth_mm)
    z = to_tensor(depth_mm)
    k = to_tensor(K, like=z)
    H, W = z.shape[-2:]
    u = torch.arange(W, dtype=z.dtype, device=z.device)
    v = torch.arange(H, dtype=z.dtype, device=z.device)[:, None]

    def entry(i: int, j: int) -> torch.Tensor:
        return k[..., i, j][..., None, None]

    y_n = (v - entry(1, 2)) / entry(1, 1)
    x_n = (u - entry(0, 2) - entry(0, 1) * y_n) / entry(0, 0)
    x_n, y_n = torch.broadcast_tensors(x_n, y_n)
    valid = valid_depth(z)
    z_safe = torch.where(valid, z, torch.zeros_like(z))
    points = torch.stack(torch.broadcast_tensors(z_safe * x_n, z_safe * y_n, z_safe), dim=-1)
    points = torch.where(valid[..., None], points, torch.full_like(points, math.nan))
    return from_tensor(points, kind)


def _axis_derivative(p: torch.Tensor, ok: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Central difference of points ``p`` (..., H, W, 3) along pixel axis ``dim`` (-3 rows, -2 cols),
    one-sided where only one neighbour is valid; returns (derivative, defined mask (..., H, W))."""
    n = p.shape[dim]
    idx = torch.arange(n, device=p.device)
    nxt, prv = idx.roll(-1), idx.roll(1)  # the wrapped-around ends are masked out below
    p_next, p_prev = p.index_select(dim, nxt), p.index_select(dim, prv)
    mdim = dim + 1  # the mask has no trailing channel axis
    ok_next = ok & ok.index_select(mdim, nxt)
    ok_prev = ok & ok.index_select(mdim, prv)
    edge_shape = [1] * ok.ndim
    edge_shape[mdim] = n
    ok_next = ok_next & (idx < n - 1).reshape(edge_shape)
    ok_prev = ok_prev & (idx > 0).reshape(edge_shape)
    fwd, bwd = p_next - p, p - p_prev
    central = 0.5 * (fwd + bwd)
    one_sided = torch.where(ok_next[..., None], fwd,
                            torch.where(ok_prev[..., None], bwd, torch.zeros_like(p)))
    deriv = torch.where((ok_next & ok_prev)[..., None], central, one_sided)
    return deriv, ok_next | ok_prev


def normals_from_depth(depth_mm: ArrayLike, K: ArrayLike, mask: ArrayLike | None = None) -> ArrayLike:
    """Unit surface normals of a depth map, in the camera frame, facing the camera.

    The depth map is back-projected (:func:`backproject`) and the tangents ``dP/dv`` (rows) and
    ``dP/du`` (columns) are taken with central differences, one-sided where one neighbour is invalid
    (outside ``mask``, invalid depth, image border). The normal is ``normalize(dP/dv x dP/du)``, which
    for any depth map faces the camera: with exact tangents ``(dP/dv x dP/du) . P = -Z**3 / (fx fy) < 0``,
    so ``n . P < 0`` and ``n_z < 0`` except at grazing angles (a sign flip enforces ``n . P <= 0``
    after differencing).

    Args:
        depth_mm: (..., H, W) depth (mm); <= 0 or non-finite is invalid.
        K: (3, 3) or (..., 3, 3) intrinsics.
        mask: optional (..., H, W) bool; pixels outside are invalid and never used as neighbours.

    Returns:
        (..., 3, H, W) unit normals; the **zero vector** where undefined (invalid pixel, or no valid
        neighbour along a row or a column), matching the dataset's "0 outside the mask".
    """
    kind = array_kind(depth_mm)
    z = to_tensor(depth_mm)
    p = to_tensor(backproject(z, K))
    ok = valid_depth(z)
    if mask is not None:
        ok = ok & torch.as_tensor(mask, device=z.device).to(torch.bool)
    p = torch.where(ok[..., None], p, torch.zeros_like(p))
    d_v, ok_v = _axis_derivative(p, ok, dim=-3)
    d_u, ok_u = _axis_derivative(p, ok, dim=-2)
    n = torch.linalg.cross(d_v, d_u, dim=-1)
    sq = (n * n).sum(-1, keepdim=True)
    good = ok & ok_u & ok_v & (sq[..., 0] > torch.finfo(z.dtype).tiny)
    n = n / torch.sqrt(torch.where(good[..., None], sq, torch.ones_like(sq)))
    facing = torch.where((n * p).sum(-1, keepdim=True) > 0, -1.0, 1.0).to(n.dtype)
    n = torch.where(good[..., None], n * facing, torch.zeros_like(n))
    return from_tensor(n.movedim(-1, -3), kind)


def unit_vectors(v: torch.Tensor, dim: int = 1, eps: float = 1e-12) -> torch.Tensor:
    """``v / max(|v|, eps)`` along ``dim``: ``F.normalize``'s value and gradient (zero vectors stay zero),
    from a sum of squares, since ``linalg.vector_norm`` over a short outer dim is ~100x slower on a CPU
    (torch 2.14: 8 ms against 0.08 ms for (8, 3, 128, 128)). ``v``: (..., C, ...) float; same shape out."""
    return v / v.square().sum(dim, keepdim=True).clamp_min(eps * eps).sqrt()


def normals_to_rgb(normals: ArrayLike) -> np.ndarray:
    """Display colours for (3, H, W) or (..., 3, H, W) normals: ``(n + 1) / 2`` in RGB, returned as
    (..., H, W, 3) float in [0, 1] (numpy), zero vectors drawn black."""
    n = to_tensor(normals).detach().cpu().double()
    rgb = (n.movedim(-3, -1) + 1.0) * 0.5
    zero = (n.abs().sum(-3) == 0)[..., None]
    return torch.where(zero, torch.zeros_like(rgb), rgb).clamp(0.0, 1.0).numpy()
