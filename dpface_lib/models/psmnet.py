"""PSMNet for DP disparity (Chang & Chen, "Pyramid Stereo Matching Network", CVPR 2018).

Both DP views go through one shared feature extractor (residual layers + spatial pyramid pooling,
32 channels at 1/4 resolution); a concatenation cost volume is built along the **rows** (the DP axis)
at ``levels`` quarter-resolution disparities; a stacked 3-D hourglass aggregates it; each of the three
outputs is upsampled trilinearly to ``4·levels`` full-resolution bins and regressed with soft-argmin.

Differences from the released benchmark model (see docs/models.md):

* SPP pooling uses kernels ``min(k, map size)``: the original 64/32/16/8 average pools need a 1/4 map of
  at least 64 px; on smaller maps a branch pools over the whole axis instead of failing.
* ``shift_mode="integer"`` reproduces the release's ``int()``-truncated shifts (−1, 0, 0, 0, 1, 1, 2, 2
  for −4…12 px); ``"linear"`` samples the fractional levels by linear interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.models.blocks import (
    SHIFT_MODES,
    ResidualBlock,
    check_divisible,
    check_volume_kind,
    conv_bn_relu,
    cost_volume,
    disparity_bins,
    disparity_levels,
    disparity_outputs,
    imagenet_normalize,
    init_msra_normal,
    regress_volume,
    require_keys,
    volume_channels,
)
from dpface_lib.models.hourglass import StackedHourglass


def _layer(cin: int, cout: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    first = ResidualBlock(cin, cout, stride, dilation)
    return nn.Sequential(first, *[ResidualBlock(cout, cout, 1, dilation) for _ in range(blocks - 1)])


class PSMNetFeatures(nn.Module):
    """PSMNet feature extractor: (B, cin, H, W) -> (B, C, H/4, W/4) with C = ``channels``.

    firstconv (3 conv-bn-relu, stride 2) -> layer1 (C) -> layer2 (2C, stride 2) -> layer3 (4C) ->
    layer4 (4C, dilation 2) -> SPP (4 average-pool branches of C channels) -> fuse [layer2, layer4,
    branches] (10C) with conv-bn-relu 3×3 -> 4C and a 1×1 conv -> C.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: int = 32,
        blocks: Sequence[int] = (3, 16, 3, 3),
        spp_kernels: Sequence[int] = (64, 32, 16, 8),
        spp_align_corners: bool = True,
    ) -> None:
        super().__init__()
        c = channels
        self.firstconv = nn.Sequential(
            *conv_bn_relu(in_channels, c, 3, 2, 1), *conv_bn_relu(c, c), *conv_bn_relu(c, c)
        )
        self.layer1 = _layer(c, c, blocks[0])
        self.layer2 = _layer(c, 2 * c, blocks[1], stride=2)
        self.layer3 = _layer(2 * c, 4 * c, blocks[2])
        self.layer4 = _layer(4 * c, 4 * c, blocks[3], dilation=2)
        self.spp_kernels = tuple(spp_kernels)
        self.spp_align_corners = spp_align_corners
        self.branches = nn.ModuleList([conv_bn_relu(4 * c, c, 1, 1, 0) for _ in self.spp_kernels])
        fused = 2 * c + 4 * c + c * len(self.spp_kernels)
        self.lastconv = nn.Sequential(*conv_bn_relu(fused, 4 * c), nn.Conv2d(4 * c, c, 1, bias=False))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.firstconv(image))
        skip = self.layer2(x)
        deep = self.layer4(self.layer3(skip))
        h, w = deep.shape[-2:]
        pooled = []
        for k, branch in zip(self.spp_kernels, self.branches, strict=True):
            kernel = (min(k, h), min(k, w))  # whole-axis pooling on maps smaller than the kernel
            p = branch(F.avg_pool2d(deep, kernel, kernel))
            pooled.append(
                F.interpolate(p, size=(h, w), mode="bilinear", align_corners=self.spp_align_corners)
            )
        # order as in PSMNet: layer2, layer4, then the branches from the smallest pool to the largest
        return self.lastconv(torch.cat([skip, deep, *reversed(pooled)], dim=1))


class PSMNet(nn.Module):
    """PSMNet on the two DP views.

    Input batch keys: ``left``, ``right`` (B, 3, H, W) in [0, 1] with H, W multiples of 16; ``a``, ``b``.
    Output: ``disparity`` (B, H, W) px, ``disparities`` (B, 3, H, W) = [final, 2nd, 1st hourglass],
    ``depth`` (B, H, W) mm.

    Args:
        min_disp, max_disp: full-resolution disparity range (px); bins ``min + j (max - min) / (4 levels)``.
        levels: quarter-resolution cost levels (multiple of 4); 4·levels full-resolution bins.
        channels: feature width C (32 in the paper); the aggregation uses C and 2C.
        blocks: residual blocks of layer1..layer4 (3, 16, 3, 3 in the paper).
        shift_mode: ``"integer"`` (release) or ``"linear"`` row shifts for the cost volume.
        loss_weights: smooth-L1 weights of the three outputs.
        volume: ``"concat"`` (the paper's 2C-channel volume) or ``"difference"`` (StereoNet's C-channel
            ``ref - tgt``, which the tiny profile uses; docs/training.md).
    """

    loss_terms = {"smooth_l1": 1.0}

    def __init__(
        self,
        min_disp: float = -4.0,
        max_disp: float = 12.0,
        levels: int = 8,
        channels: int = 32,
        blocks: Sequence[int] = (3, 16, 3, 3),
        shift_mode: str = "integer",
        loss_weights: Sequence[float] = (1.0, 0.7, 0.5),
        volume: str = "concat",
    ) -> None:
        super().__init__()
        self.volume = check_volume_kind(volume)
        if shift_mode not in SHIFT_MODES:
            raise ValueError(f"shift_mode must be one of {SHIFT_MODES}, got {shift_mode!r}")
        if levels % 4:
            raise ValueError(f"levels must be a multiple of 4 (two stride-2 hourglass stages), got {levels}")
        if len(loss_weights) != 3:
            raise ValueError(f"PSMNet has 3 outputs; loss_weights has {len(loss_weights)} entries")
        self.min_disp, self.max_disp, self.levels = float(min_disp), float(max_disp), levels
        self.shift_mode = shift_mode
        self.loss_weights = [float(w) for w in loss_weights]
        self.features = PSMNetFeatures(3, channels, blocks)
        self.aggregation = StackedHourglass(volume_channels(channels, volume), channels)
        self.register_buffer("bins", disparity_bins(min_disp, max_disp, 4 * levels), persistent=False)
        init_msra_normal(self)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        require_keys(batch, ("left", "right", "a", "b"), "PSMNet")
        left, right = batch["left"], batch["right"]
        check_divisible(left, 16, "PSMNet")
        # one pass over both views: shared weights, and BatchNorm sees 2B samples (batch 1 trains even
        # when an SPP branch pools to 1×1)
        ref, tgt = self.features(imagenet_normalize(torch.cat([left, right]))).chunk(2)
        shifts = disparity_levels(self.min_disp, self.max_disp, self.levels, scale=4)
        volume = cost_volume(ref, tgt, shifts, self.shift_mode, self.volume)
        size = tuple(left.shape[-2:])
        disparities = [regress_volume(c, size, self.bins) for c in self.aggregation(volume)]
        return disparity_outputs(disparities, batch)
