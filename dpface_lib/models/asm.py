"""Adaptive sampling module (ASM): a DP cost volume built from sub-pixel row shifts of the features.

DP disparities are small (a few pixels at full resolution, about one pixel at the quarter resolution
where the volume is built) and signed, so the levels of the volume sit at *fractional* shifts. Every
fractional shift operator has its own artefacts: nearest sampling snaps to whole rows, bilinear sampling
blurs, the Fourier phase shift rings and wraps around. The ASM of Kang et al. ("Facial Depth and Normal
Estimation using Single Dual-Pixel Camera", ECCV 2022) computes several of them and lets a small
attention network pick, per feature and pixel, which candidate to trust.

Shift convention: ``out[..., y, :] = x[..., y + s, :]`` ("sample at row y + s"), along the **rows** (the
DP axis). Level ``i`` of the volume has the full-resolution disparity ``D_i``; at the feature resolution
(1/4) that is ``δ_i = D_i / 4`` and the two views move by half of it in opposite directions: the left
(reference) features are sampled at ``y - δ_i / 2`` and the right ones at ``y + δ_i / 2``. With
``right(y) = left(y - d)`` the two sampled maps agree exactly when ``d = δ_i``, so slice ``i`` of the
volume really is the match at disparity ``D_i``. (The release moves each view by the full ``±δ_i``,
a relative shift of ``2 δ_i``, and caches the first level's sampling grid so that all levels end up
identical; here every call computes every level's own shift, nothing is cached.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.models.blocks import check_volume_kind, shift_rows
from dpface_lib.models.safeconv import Conv3d

ASM_MODES = ("nearest", "bilinear", "phase")

__all__ = [
    "ASM_MODES",
    "AdaptiveSamplingVolume",
    "MaskingAttention",
    "shift_rows_bilinear",
    "shift_rows_nearest",
    "shift_rows_phase",
    "shifted_candidates",
]


def shift_rows_nearest(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Nearest-row shift: ``out[..., y, :] = x[..., y + round(shift), :]``, zeros outside the rows.

    Ties round half to even (as ``grid_sample(mode="nearest")`` does). x: (..., H, W); shift in px.
    """
    return shift_rows(x, float(round(shift)), "integer")


def shift_rows_bilinear(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Linear-interpolation row shift: ``out[..., y, :] = x[..., y + shift, :]`` with zero padding.

    Identical to ``grid_sample(mode="bilinear", align_corners=True, padding_mode="zeros")`` with a grid
    moved by ``shift`` rows, computed from two whole-row shifts instead of a sampling grid.
    x: (..., H, W); shift in px (fractional allowed).
    """
    return shift_rows(x, float(shift), "linear")


def _phase_ramps(height: int, shifts: torch.Tensor) -> torch.Tensor:
    """(S, H // 2 + 1, 1) complex ramps ``exp(+2πi k s / H)`` for the one-sided row spectrum."""
    k = torch.arange(height // 2 + 1, device=shifts.device, dtype=shifts.dtype)
    angle = 2.0 * math.pi * shifts[:, None] * k[None, :] / height
    return torch.polar(torch.ones_like(angle), angle)[..., None]


def shift_rows_phase(x: torch.Tensor, shifts: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Fourier (phase) row shift: a circular, band-limited shift by a fractional number of rows.

    By the shift theorem, ``x(y + s)`` has the row spectrum ``X(k) exp(+2πi k s / H)``; the result is the
    inverse transform (real input, one-sided ``rfft`` along the rows, so the Nyquist row of an even ``H``
    keeps only its real part, which is the real part of the two-sided inverse). An integer ``s`` gives
    exactly ``torch.roll(x, -s, dims=-2)``.

    Args:
        x: (..., H, W) real tensor.
        shifts: one shift (px) or a sequence/tensor of S shifts.

    Returns:
        (..., H, W) for a single shift; (..., S, H, W) for a sequence (all shifts from one forward FFT).
    """
    single = isinstance(shifts, int | float)
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    s = torch.as_tensor(
        [shifts] if single else list(shifts) if not torch.is_tensor(shifts) else shifts,
        dtype=dtype,
        device=x.device,
    ).reshape(-1)
    height = x.shape[-2]
    spectrum = torch.fft.rfft(x.to(dtype), dim=-2)  # (..., H//2+1, W)
    shifted = spectrum.unsqueeze(-3) * _phase_ramps(height, s)  # (..., S, H//2+1, W)
    out = torch.fft.irfft(shifted, n=height, dim=-2).to(x.dtype)
    return out[..., 0, :, :] if single else out


def shifted_candidates(x: torch.Tensor, shifts: Sequence[float], modes: Sequence[str]) -> torch.Tensor:
    """Every shift of ``x`` by every operator.

    Args:
        x: (B, C, h, w) feature map.
        shifts: L row shifts (px of this map).
        modes: M operator names out of :data:`ASM_MODES`.

    Returns:
        (B, L, C, M, h, w): ``[:, i, :, m]`` is ``x`` sampled at rows ``y + shifts[i]`` by operator
        ``modes[m]``.
    """
    per_mode = []
    for mode in modes:
        if mode == "phase":
            per_mode.append(shift_rows_phase(x, shifts).transpose(1, 2))  # (B, L, C, h, w)
        elif mode == "nearest":
            per_mode.append(torch.stack([shift_rows_nearest(x, s) for s in shifts], dim=1))
        elif mode == "bilinear":
            per_mode.append(torch.stack([shift_rows_bilinear(x, s) for s in shifts], dim=1))
        else:
            raise ValueError(f"unknown ASM shift mode {mode!r}; expected some of {ASM_MODES}")
    return torch.stack(per_mode, dim=3)


class MaskingAttention(nn.Module):
    """Attention over the M shift candidates of one feature map (shared by both views and all levels).

    ``m = IN(conv1x1(relu(BN(conv_{1×3×3}(x)))))`` over the candidate axis, ``w = softmax_M(sigmoid(m))``,
    output ``mean_M(x · w)``. With ``enabled=False`` the output is the plain mean over the candidates
    (the "no attention" ablation, no parameters).

    forward(x (N, C, M, h, w)) -> ((N, C, h, w), weights (N, C, M, h, w) or None)
    """

    def __init__(self, channels: int, enabled: bool = True) -> None:
        super().__init__()
        self.enabled = enabled
        if enabled:
            self.score = nn.Sequential(
                Conv3d(channels, channels, (1, 3, 3), 1, (0, 1, 1), bias=False),
                nn.BatchNorm3d(channels),
                nn.ReLU(inplace=True),
                Conv3d(channels, channels, 1, bias=False),
                nn.InstanceNorm3d(channels, affine=True),
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.enabled:
            return x.mean(dim=2), None
        weights = F.softmax(torch.sigmoid(self.score(x)), dim=2)
        return (x * weights).mean(dim=2), weights


class AdaptiveSamplingVolume(nn.Module):
    """ASM concat cost volume along the rows.

    Args:
        channels: feature width C.
        level_disparities: L full-resolution disparities (px) of the volume's levels.
        modes: shift operators, a non-empty subset of :data:`ASM_MODES`.
        use_attention: learned attention over the operators (else their mean).
        scale: feature resolution factor (4: features at 1/4 of the image).
        volume: ``"concat"`` (the paper's) or ``"difference"`` (left minus right, C channels; the tiny
            profile's, docs/training.md).

    forward(left (B, C, h, w), right (B, C, h, w)) -> dict
        ``volume`` (B, 2C, L, h, w) for ``concat``: ``[:, :C, i]`` = left sampled at ``y - δ_i/2``,
        ``[:, C:, i]`` = right sampled at ``y + δ_i/2`` (``δ_i = D_i / scale``), each fused over the
        operators; (B, C, L, h, w) for ``difference``: the first half minus the second;
        ``attention`` (B, 2, L, M, h, w) or None: the attention weights averaged over the channels
        (view 0 = left), for visualisation.
    """

    def __init__(
        self,
        channels: int,
        level_disparities: Sequence[float],
        modes: Sequence[str] = ASM_MODES,
        use_attention: bool = True,
        scale: int = 4,
        volume: str = "concat",
    ) -> None:
        super().__init__()
        self.volume = check_volume_kind(volume)
        modes = tuple(modes)
        if not modes or any(m not in ASM_MODES for m in modes) or len(set(modes)) != len(modes):
            raise ValueError(
                f"asm_modes must be a non-empty subset of {ASM_MODES} without repeats, got {modes}"
            )
        self.modes = modes
        self.level_disparities = [float(d) for d in level_disparities]
        self.scale = scale
        self.attention = MaskingAttention(channels, use_attention and len(modes) > 1)

    def half_shifts(self) -> list[float]:
        """Per-level shift of the right view at the feature resolution, ``δ_i / 2`` (px); the left view
        moves by the opposite amount."""
        return [d / self.scale / 2.0 for d in self.level_disparities]

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> dict[str, torch.Tensor | None]:
        b, c, h, w = left.shape
        half = self.half_shifts()
        levels, n_modes = len(half), len(self.modes)
        cand_left = shifted_candidates(left, [-s for s in half], self.modes)  # (B, L, C, M, h, w)
        cand_right = shifted_candidates(right, half, self.modes)
        candidates = torch.stack([cand_left, cand_right], dim=1)  # (B, 2, L, C, M, h, w)
        fused, weights = self.attention(candidates.reshape(b * 2 * levels, c, n_modes, h, w))
        fused = fused.reshape(b, 2, levels, c, h, w)
        if self.volume == "difference":
            volume = (fused[:, 0] - fused[:, 1]).transpose(1, 2)  # (B, C, L, h, w)
        else:
            volume = fused.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * c, levels, h, w)
        attention = None if weights is None else weights.mean(dim=1).reshape(b, 2, levels, n_modes, h, w)
        return {"volume": volume, "attention": attention}
