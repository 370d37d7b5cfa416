"""Linear resampling of cost volumes as small matrix products.

``F.interpolate(..., mode="trilinear")`` is separable: it is a linear interpolation along each axis in turn.
Written as three matrix products with (out, in) interpolation matrices it gives the same numbers (to
float rounding), and its backward pass is three more matrix products. On a CPU that is several times faster
than the trilinear kernel's backward, which scatters into the input one element at a time and dominated
the regression of the cost-volume models (``benchmarks/bench_resample.py``).
"""

from __future__ import annotations

import torch

__all__ = ["linear_matrix", "upsample_volume"]


def linear_matrix(
    size_in: int, size_out: int, align_corners: bool, dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(size_out, size_in) matrix of 1-D linear interpolation, as ``F.interpolate`` samples it.

    ``align_corners=True``: output ``i`` reads the input at ``i (in - 1) / (out - 1)`` (ends on ends).
    ``align_corners=False``: at ``(i + 0.5) in / out - 0.5``, clamped at 0 (pixel centres). Each row has at
    most two non-zero weights summing to 1.
    """
    i = torch.arange(size_out, dtype=torch.float64)
    if align_corners:
        src = i * ((size_in - 1) / (size_out - 1)) if size_out > 1 else torch.zeros_like(i)
    else:
        src = ((i + 0.5) * (size_in / size_out) - 0.5).clamp(min=0.0)
    lo = src.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = src - lo
    m = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(dtype=dtype, device=device)


def upsample_volume(
    volume: torch.Tensor, size: tuple[int, int, int], align_corners: bool = True
) -> torch.Tensor:
    """Trilinear resize of (B, C, D, h, w) to (B, C, *size), equal to ``F.interpolate(mode="trilinear")``.

    Done as matrix products along D, then h, then w (the axes in the order that keeps the intermediate
    volumes smallest for an upsampling).
    """
    if volume.dim() != 5:
        raise ValueError(f"upsample_volume expects a (B, C, D, h, w) volume, got shape {tuple(volume.shape)}")
    d_in, h_in, w_in = volume.shape[-3:]
    d_out, h_out, w_out = (int(s) for s in size)
    kw = {"dtype": volume.dtype, "device": volume.device}
    md = linear_matrix(d_in, d_out, align_corners, **kw)
    mh = linear_matrix(h_in, h_out, align_corners, **kw)
    mw = linear_matrix(w_in, w_out, align_corners, **kw)
    x = torch.einsum("ed,bcdhw->bcehw", md, volume)
    x = torch.matmul(mh, x)  # (..., h, w) -> (..., H, w)
    return torch.matmul(x, mw.T)  # -> (..., H, W)
