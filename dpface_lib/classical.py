r"""Classical (learning-free) DP disparity: a row-wise block matcher and a constant baseline.

Sign convention (as in :mod:`dpface_lib.geometry`): DP disparity runs along the image **rows** (axis H),
``d > 0`` beyond the focus plane, and the right view is the left view moved down by ``d`` rows,
``right(y, x) ~ left(y - d, x)``. A candidate disparity ``s`` is therefore scored by comparing ``right``
with ``left`` shifted by ``+s`` rows (:func:`row_shift`); the best ``s`` at a pixel is its disparity (px).

The matcher is the textbook recipe: a cost volume over candidate disparities (windowed zero-mean
normalised cross-correlation, or absolute differences), winner-take-all over the candidates, a parabola
through the best cost and its two neighbours for the sub-pixel part, and a confidence-weighted blur.
Learned DP methods (Garg et al., "Learning Single Camera Depth Estimation using Dual-Pixels", ICCV 2019;
Wadhwa et al., "Synthetic Depth-of-Field with a Single-Camera Mobile Phone", SIGGRAPH 2018, which also
starts from DP block matching) are measured against this kind of baseline.

Depth is ``Z = a / (d - b)`` (mm), 0 where undefined
(:func:`dpface_lib.models.blocks.depth_from_disparity`, as for the networks).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sized
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.data import evenly_spaced
from dpface_lib.models.blocks import depth_from_disparity, shift_rows

__all__ = [
    "COST_KINDS",
    "BlockMatcher",
    "ConstantPredictor",
    "best_constant",
    "box_filter",
    "dp_cost_volume",
    "grey",
    "row_shift",
    "subpixel_parabola",
]

COST_KINDS = ("ncc", "sad")
#: variance floor of the NCC denominator (intensity^2, images in [0, 1]); keeps flat windows finite.
NCC_EPS = 1e-6


def row_shift(image: torch.Tensor, shift_px: float) -> torch.Tensor:
    """Move ``image`` down by ``shift_px`` rows: ``out[..., y, x] = image[..., y - shift_px, x]``.

    Linear interpolation between the two neighbouring whole-row shifts (the library's
    :func:`dpface_lib.models.blocks.shift_rows`), with edge replication instead of zeros: rows that come
    from outside the image repeat the first / last row. ``right ~ row_shift(left, d)`` for a DP pair.

    Args:
        image: (..., H, W) tensor, e.g. (B, C, H, W).
        shift_px: rows (px), may be fractional and of either sign.

    Returns:
        Tensor like ``image``.
    """
    shift_px = float(shift_px)
    if shift_px == 0.0:
        return image
    height, width = image.shape[-2:]
    shift_px = max(-float(height), min(float(height), shift_px))  # beyond H rows: all the edge row
    pad = math.ceil(abs(shift_px)) + 1
    flat = image.reshape(-1, 1, height, width)
    padded = F.pad(flat, (0, 0, pad, pad), mode="replicate")
    out = shift_rows(padded, -shift_px, "linear")[..., pad : pad + height, :]
    return out.reshape(image.shape)


def grey(image: torch.Tensor, channel: int | None = None) -> torch.Tensor:
    """(B, C, H, W) image -> (B, 1, H, W): the channel mean, or one channel (e.g. 1 = green)."""
    return image.mean(1, keepdim=True) if channel is None else image[:, channel : channel + 1]


def box_filter(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over a ``window`` x ``window`` box (odd, px) of each (H, W) plane of (N, C, H, W), edges
    replicated, same size out."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd number of px >= 1, got {window}")
    if window == 1:
        return x
    r = window // 2
    return F.avg_pool2d(F.pad(x, (r, r, r, r), mode="replicate"), window, stride=1)


def dp_cost_volume(left: torch.Tensor, right: torch.Tensor, shifts: torch.Tensor, window: int = 15,
                   kind: str = "ncc", channel: int | None = None) -> torch.Tensor:
    """Matching cost of every candidate disparity at every pixel (lower = better match).

    Slice ``i`` compares ``right`` with ``left`` shifted down by ``shifts[i]`` rows
    (``right(y) ~ left(y - d)``), so the argmin over ``i`` estimates the DP disparity ``d``.

    Args:
        left, right: (B, C, H, W) half-images (intensity, e.g. [0, 1]); made grey with :func:`grey`.
        shifts: (S,) candidate disparities (px), any spacing, sub-pixel allowed.
        window: odd side (px) of the square box window.
        kind: ``"ncc"``: 1 - zero-mean normalised cross-correlation over the window (in [0, 2]; invariant
            to gain and offset between the views); ``"sad"``: box mean of |right - shifted left|.
        channel: ``None`` = mean of the channels, else that channel only.

    Returns:
        (B, S, H, W) cost, float32.
    """
    if kind not in COST_KINDS:
        raise ValueError(f"kind must be one of {COST_KINDS}, got {kind!r}")
    shifts = torch.as_tensor(shifts).flatten()
    lg, rg = grey(left.float(), channel), grey(right.float(), channel)
    batch, _, height, width = lg.shape
    moved = torch.cat([row_shift(lg, float(s)) for s in shifts], 1)  # (B, S, H, W)
    if kind == "sad":
        return box_filter((moved - rg).abs(), window)
    mean_r, mean_l = box_filter(rg, window), box_filter(moved, window)
    var_r = (box_filter(rg * rg, window) - mean_r**2).clamp_min(0)
    var_l = (box_filter(moved * moved, window) - mean_l**2).clamp_min(0)
    cov = box_filter(moved * rg, window) - mean_l * mean_r
    return 1.0 - cov / torch.sqrt((var_l + NCC_EPS) * (var_r + NCC_EPS))


def subpixel_parabola(cost: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    r"""Winner-take-all disparity refined by a parabola through the best cost and its two neighbours.

    With ``i = argmin_s cost`` and ``c_-, c_0, c_+`` the costs at ``i - 1, i, i + 1``, the parabola
    through the three points (abscissa in steps from ``i``) has its vertex at

    .. math:: t^* = \frac{c_- - c_+}{2\,(c_- - 2 c_0 + c_+)},

    clamped to [-0.5, 0.5] (the minimum lies closer to ``i`` than to its neighbours); the disparity is
    ``shifts[i] + t* step``. ``t* = 0`` where the curvature is not positive or ``i`` is the first or last
    candidate. Assumes equally spaced ``shifts`` (step = ``shifts[1] - shifts[0]``).

    Args:
        cost: (B, S, H, W) cost volume (lower = better).
        shifts: (S,) candidate disparities (px), increasing, equally spaced.

    Returns:
        (B, H, W) disparity (px), the dtype of ``cost``.
    """
    shifts = torch.as_tensor(shifts, dtype=cost.dtype, device=cost.device).flatten()
    count = shifts.numel()
    if cost.shape[1] != count:
        raise ValueError(f"cost has {cost.shape[1]} candidates, shifts {count}")
    best = cost.argmin(1, keepdim=True)  # (B, 1, H, W)
    disparity = shifts[best.squeeze(1)]
    if count < 3:
        return disparity
    mid = best.clamp(1, count - 2)
    c_minus, c_zero, c_plus = (cost.gather(1, mid + k).squeeze(1) for k in (-1, 0, 1))
    curvature = c_minus - 2.0 * c_zero + c_plus
    inner = (best.squeeze(1) == mid.squeeze(1)) & (curvature > 1e-12)
    offset = 0.5 * (c_minus - c_plus) / torch.where(inner, curvature, torch.ones_like(curvature))
    offset = torch.where(inner, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))
    return disparity + offset * (shifts[1] - shifts[0])


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (std ``sigma`` px, radius 3 sigma, edges replicated) of (N, C, H, W)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)


def _outputs(disparity: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """{"disparity": (B, H, W) px, "depth": (B, H, W) mm = a / (d - b)} with ``batch["a"], ["b"]`` (B,); the
    depth is 0 where undefined, as for every model (:func:`dpface_lib.models.blocks.depth_from_disparity`)."""
    a, b = (torch.as_tensor(batch[k], dtype=disparity.dtype).reshape(-1) for k in ("a", "b"))
    return {"disparity": disparity, "depth": depth_from_disparity(disparity, a, b)}


class BlockMatcher(nn.Module):
    """Row-wise DP block matcher (no trainable parameters): cost volume -> argmin -> parabola -> blur.

    Args:
        min_disp, max_disp: candidate disparity range (px), both included when on the ``step`` grid.
        step: spacing of the candidates (px).
        window: odd side of the matching window (px).
        kind: ``"ncc"`` or ``"sad"`` (see :func:`dp_cost_volume`).
        smooth_sigma: std (px) of the final confidence-weighted Gaussian blur of the disparity
            (normalised convolution ``blur(w d) / blur(w)``, ``w = clamp(1 - best cost, 0) ** 2`` for NCC,
            i.e. the squared peak correlation; ``w = 1`` for SAD); 0 = off. The default 2 px is the light
            smoothing of the kit's reference row; a face is smooth, so wider blurs (8 px) lower the
            affine-invariant error further at the price of flattening the nose and eyes
            (``04_classical_dp_matching`` shows the trade-off).
        channel: ``None`` = grey (channel mean), else that channel of the images.

    ``forward(batch)`` reads ``left``, ``right`` (B, 3, H, W) and ``a``, ``b`` (B,) and returns
    ``{"disparity": (B, H, W) px, "depth": (B, H, W) mm}`` (float32, depth 0 where ``d >= b``).
    """

    def __init__(self, min_disp: float = -3.0, max_disp: float = 4.0, step: float = 1.0, window: int = 15,
                 kind: str = "ncc", smooth_sigma: float = 2.0, channel: int | None = None) -> None:
        super().__init__()
        if not max_disp > min_disp or not step > 0:
            raise ValueError(f"need max_disp > min_disp and step > 0, got {min_disp}, {max_disp}, {step}")
        if kind not in COST_KINDS:
            raise ValueError(f"kind must be one of {COST_KINDS}, got {kind!r}")
        count = int(math.floor((max_disp - min_disp) / step + 1e-6)) + 1
        self.register_buffer("shifts", min_disp + step * torch.arange(count, dtype=torch.float32),
                             persistent=False)
        self.window, self.kind, self.smooth_sigma, self.channel = window, kind, float(smooth_sigma), channel

    def extra_repr(self) -> str:
        s = self.shifts
        return (f"shifts={float(s[0]):g}..{float(s[-1]):g} ({s.numel()}), window={self.window}, "
                f"kind={self.kind!r}, smooth_sigma={self.smooth_sigma:g}")

    @torch.no_grad()
    def match(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) pair -> (disparity (B, H, W) px before smoothing, cost volume (B, S, H, W))."""
        cost = dp_cost_volume(left, right, self.shifts, self.window, self.kind, self.channel)
        return subpixel_parabola(cost, self.shifts), cost

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        disparity, cost = self.match(batch["left"], batch["right"])
        if self.smooth_sigma > 0:
            best = cost.amin(1, keepdim=True)
            weight = (1.0 - best).clamp_min(0) ** 2 if self.kind == "ncc" else torch.ones_like(best)
            weight = weight + 1e-6
            num = _gaussian_blur(weight * disparity.unsqueeze(1), self.smooth_sigma)
            disparity = (num / _gaussian_blur(weight, self.smooth_sigma)).squeeze(1)
        return _outputs(disparity, batch)


class ConstantPredictor(nn.Module):
    """Predicts one disparity ``value_px`` (px) everywhere, and its depth ``a / (value - b)`` (mm).

    ``forward(batch)`` reads ``left`` (B, C, H, W) for the size and ``a``, ``b`` (B,); returns
    ``{"disparity": (B, H, W), "depth": (B, H, W)}`` float32. Under the affine-invariant metrics any
    constant is the same (the fit can only add the ground truth's weighted mean); ``value_px`` matters for
    the depth metrics. Use :func:`best_constant` for the L1-best value.
    """

    def __init__(self, value_px: float) -> None:
        super().__init__()
        self.value_px = float(value_px)

    def extra_repr(self) -> str:
        return f"value_px={self.value_px:g}"

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        left = batch["left"]
        shape = (left.shape[0], *left.shape[-2:])
        return _outputs(torch.full(shape, self.value_px, dtype=torch.float32, device=left.device), batch)


def best_constant(dataset: Iterable[Mapping[str, Any]], max_samples: int | None = None) -> float:
    """Median ground-truth disparity (px) over the masked pixels of ``dataset`` (pooled over samples).

    The median minimises the summed absolute error, so it is the best constant prediction under L1.

    Args:
        dataset: a :class:`dpface_lib.data.FaceDPDataset` (use the training split) or any sequence /
            iterable of dicts with ``disparity`` (H, W) px and ``mask`` (H, W) bool.
        max_samples: read at most this many samples (``None`` = all): evenly spaced over a sequence
            (first and last included), the first ones of a plain iterable.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    if isinstance(dataset, Sized) and hasattr(dataset, "__getitem__"):
        count = len(dataset)
        picked = evenly_spaced(count, count if max_samples is None else max_samples)
        samples: Iterable[Mapping[str, Any]] = (dataset[i] for i in picked)
    else:
        samples = itertools.islice(dataset, max_samples)
    values = []
    for sample in samples:
        disparity = torch.as_tensor(sample["disparity"], dtype=torch.float64)
        values.append(disparity[torch.as_tensor(sample["mask"]).bool()].numpy())
    pooled = np.concatenate(values) if values else np.empty(0)
    if pooled.size == 0:
        raise ValueError("best_constant: no masked pixel in the dataset")
    return float(np.median(pooled))
