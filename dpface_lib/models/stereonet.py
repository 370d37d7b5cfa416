"""StereoNet for DP disparity (Khamis et al., "StereoNet: Guided Hierarchical Refinement for Real-Time
Edge-Aware Depth Prediction", ECCV 2018), following the X-StereoLab port used by the benchmark.

A light siamese tower (three 5×5 stride-2 convs -> 1/8 resolution, six residual blocks) feeds a
**difference** cost volume along the rows at ``levels`` disparities; four 3-D conv-bn-LeakyReLU layers
filter it and a soft-argmin gives a coarse disparity, which is upsampled and refined by an edge-aware
residual network guided by the reference (left) image.

Differences from the release (docs/models.md):

* no ×8 rescale of the upsampled disparity (the values are already full-resolution px) and no ReLU on
  the refined output (DP disparities are signed);
* the cost volume samples the regression bins themselves (``bin / 2^k`` rows at 1/8 resolution, linear
  interpolation) instead of ``int()`` of quarter-resolution levels applied at 1/8;
* residual blocks apply both of their convolutions (``residual_convs=2``, the paper's block; the release
  defines the second conv but skips it, ``residual_convs=1``);
* ``disparities`` = [refined, coarse] and ``disparity`` = refined (the release evaluates the coarse one).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.models.blocks import (
    SHIFT_MODES,
    check_divisible,
    conv_bn,
    conv_bn_3d,
    difference_cost_volume,
    disparity_bins,
    disparity_levels,
    disparity_outputs,
    imagenet_normalize,
    init_msra_normal,
    require_keys,
    soft_argmin,
)
from dpface_lib.models.safeconv import Conv3d

SLOPE = 0.2


class LeakyResidual(nn.Module):
    """x + [conv-bn-LeakyReLU(0.2) (-> conv-bn when ``convs == 2``)], all 3×3 with the given dilation."""

    def __init__(self, channels: int, dilation: int = 1, convs: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [*conv_bn(channels, channels, 3, 1, 1, dilation), nn.LeakyReLU(SLOPE)]
        if convs == 2:
            layers += [*conv_bn(channels, channels, 3, 1, 1, dilation)]
        elif convs != 1:
            raise ValueError(f"residual_convs must be 1 or 2, got {convs}")
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class StereoNet(nn.Module):
    """StereoNet on the two DP views.

    Input batch keys: ``left``, ``right`` (B, 3, H, W) in [0, 1], H and W multiples of ``2**downsample``;
    ``a``, ``b``. Output: ``disparity`` (B, H, W) px (refined), ``disparities`` (B, 2, H, W) =
    [refined, coarse], ``depth`` (B, H, W) mm.

    Args:
        min_disp, max_disp: full-resolution range (px); bins ``min + j (max - min) / levels``.
        levels: cost levels at 1/2^k resolution (8 in the release: bins −4, −2, …, 10 px).
        downsample: k, number of stride-2 convs (3 -> 1/8).
        channels: tower width (32).
        residual_convs: convs per residual block (2 = paper, 1 = release behaviour).
        refine_dilations: dilations of the refinement's residual blocks.
        shift_mode: row sampling of the cost volume (``"linear"`` or ``"integer"``).
        loss_weights: smooth-L1 weights of [refined, coarse].
    """

    loss_terms = {"smooth_l1": 1.0}

    def __init__(
        self,
        min_disp: float = -4.0,
        max_disp: float = 12.0,
        levels: int = 8,
        downsample: int = 3,
        channels: int = 32,
        residual_convs: int = 2,
        refine_dilations: Sequence[int] = (1, 2, 4, 8, 1, 1),
        shift_mode: str = "linear",
        loss_weights: Sequence[float] = (1.0, 1.0),
    ) -> None:
        super().__init__()
        if shift_mode not in SHIFT_MODES:
            raise ValueError(f"shift_mode must be one of {SHIFT_MODES}, got {shift_mode!r}")
        if len(loss_weights) != 2:
            raise ValueError(f"StereoNet has 2 outputs; loss_weights has {len(loss_weights)} entries")
        self.min_disp, self.max_disp, self.levels = float(min_disp), float(max_disp), levels
        self.downsample, self.shift_mode = downsample, shift_mode
        self.loss_weights = [float(w) for w in loss_weights]
        c = channels
        down = [nn.Conv2d(3 if i == 0 else c, c, 5, 2, 2) for i in range(downsample)]
        self.tower = nn.Sequential(
            *down, *[LeakyResidual(c, 1, residual_convs) for _ in range(6)], nn.Conv2d(c, c, 3, 1, 1)
        )
        filt: list[nn.Module] = []
        for _ in range(4):
            filt += [*conv_bn_3d(c, c), nn.LeakyReLU(SLOPE)]
        self.filter = nn.Sequential(*filt, Conv3d(c, 1, 3, 1, 1))
        self.refine = nn.Sequential(
            *conv_bn(4, c),
            nn.LeakyReLU(SLOPE),
            *[LeakyResidual(c, d, residual_convs) for d in refine_dilations],
            nn.Conv2d(c, 1, 3, 1, 1),
        )
        self.register_buffer("bins", disparity_bins(min_disp, max_disp, levels), persistent=False)
        init_msra_normal(self)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        require_keys(batch, ("left", "right", "a", "b"), "StereoNet")
        left, right = batch["left"], batch["right"]
        check_divisible(left, 2**self.downsample, "StereoNet")
        ref_img = imagenet_normalize(left)
        ref, tgt = self.tower(torch.cat([ref_img, imagenet_normalize(right)])).chunk(2)
        shifts = disparity_levels(self.min_disp, self.max_disp, self.levels, scale=2**self.downsample)
        volume = difference_cost_volume(ref, tgt, shifts, self.shift_mode)
        coarse = soft_argmin(self.filter(volume).squeeze(1), self.bins)  # (B, h, w), full-res px
        size = tuple(left.shape[-2:])
        up = F.interpolate(coarse.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        refined = up + self.refine(torch.cat([up, ref_img], dim=1))
        return disparity_outputs([refined.squeeze(1), up.squeeze(1)], batch)
