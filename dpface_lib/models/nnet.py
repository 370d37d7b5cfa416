"""NNet: normal-assisted stereo for DP (Kusupati et al., "Normal Assisted Stereo Depth Estimation",
CVPR 2020), as ported in the face benchmark.

PSMNet features (1/4 resolution) -> concatenation cost volume along the rows -> a residual 3-D stack
(dres0..dres4) -> a 1-channel cost. Per cost level a dilated 2-D context network, fed with the
reference features and that level's cost, adds a residual ("refined" cost). Both costs are upsampled
trilinearly to ``4·levels`` full-resolution bins and regressed with soft-argmin.

A normal branch concatenates the aggregated volume with a **coordinate volume** (the 3-D point each
pixel would be at for each disparity level, ``Z = a / (d - b)``, back-projected with K and min-max
normalised per sample), pools the disparity axis away with stride-2 3-D convs, runs a dilated 2-D head,
upsamples ×4 and L2-normalises: unit normals in the camera frame.

Differences from the release (docs/models.md): the coordinate volume converts the quarter-resolution
levels to full-resolution px before ``Z = a / (d - b)`` (the release feeds quarter-resolution values, so
its depths are not metric); ``disparity`` is the refined output (the release evaluates the unrefined one)
and ``disparities`` = [refined, unrefined].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.geometry import unit_vectors
from dpface_lib.models.blocks import (
    SHIFT_MODES,
    check_divisible,
    check_volume_kind,
    conv_bn_3d,
    conv_bn_relu_3d,
    coordinate_volume,
    cost_volume,
    dilated_head,
    disparity_bins,
    disparity_levels,
    disparity_outputs,
    imagenet_normalize,
    init_msra_normal,
    regress_volume,
    require_keys,
    volume_channels,
)
from dpface_lib.models.psmnet import PSMNetFeatures
from dpface_lib.models.safeconv import Conv3d


class NNet(nn.Module):
    """NNet on the two DP views: disparity and surface normals.

    Input batch keys: ``left``, ``right`` (B, 3, H, W) in [0, 1], H, W multiples of 4; ``K`` (B, 3, 3);
    ``a``, ``b``. Output: ``disparity`` (B, H, W) px (refined), ``disparities`` (B, 2, H, W) =
    [refined, unrefined], ``depth`` (B, H, W) mm, ``normal`` (B, 3, H, W) unit.

    Args:
        min_disp, max_disp: full-resolution disparity range (px), bins ``min + j (max - min) / (4 levels)``.
        levels: quarter-resolution cost levels, a power of 2 (8).
        channels: feature / aggregation width C (32); context head 4C…C, normal head 3C…C.
        blocks: PSMNet residual blocks of layer1..layer4.
        shift_mode: ``"integer"`` (release) or ``"linear"`` row shifts.
        loss_weights: smooth-L1 weights of [refined, unrefined].
        normal_weight: λ of the cosine normal loss.
        volume: ``"concat"`` (the release's 2C-channel volume) or ``"difference"`` (C channels, ``ref - tgt``;
            the tiny profile's, docs/training.md).
    """

    def __init__(
        self,
        min_disp: float = -4.0,
        max_disp: float = 12.0,
        levels: int = 8,
        channels: int = 32,
        blocks: Sequence[int] = (3, 16, 3, 3),
        shift_mode: str = "integer",
        loss_weights: Sequence[float] = (1.0, 1.0),
        normal_weight: float = 1.0,
        volume: str = "concat",
    ) -> None:
        super().__init__()
        self.volume = check_volume_kind(volume)
        if shift_mode not in SHIFT_MODES:
            raise ValueError(f"shift_mode must be one of {SHIFT_MODES}, got {shift_mode!r}")
        if levels < 2 or levels & (levels - 1):
            raise ValueError(f"levels must be a power of 2 (the normal branch halves it to 1), got {levels}")
        if len(loss_weights) != 2:
            raise ValueError(f"NNet has 2 disparity outputs; loss_weights has {len(loss_weights)} entries")
        self.min_disp, self.max_disp, self.levels = float(min_disp), float(max_disp), levels
        self.shift_mode = shift_mode
        self.loss_weights = [float(w) for w in loss_weights]
        self.loss_terms = {"smooth_l1": 1.0, "cosine": float(normal_weight)}
        c = channels
        self.features = PSMNetFeatures(3, c, blocks, spp_align_corners=False)
        self.dres0 = nn.Sequential(*conv_bn_relu_3d(volume_channels(c, volume), c), *conv_bn_relu_3d(c, c))
        self.dres = nn.ModuleList(
            [nn.Sequential(*conv_bn_relu_3d(c, c), *conv_bn_3d(c, c)) for _ in range(4)]
        )
        self.classify = nn.Sequential(*conv_bn_relu_3d(c, c), Conv3d(c, 1, 3, 1, 1, bias=False))
        self.context = dilated_head(c + 1, (4 * c, 4 * c, 4 * c, 3 * c, 2 * c, c, 1))
        self.wc0 = nn.Sequential(*conv_bn_relu_3d(2 * c + 3, c), *conv_bn_relu_3d(c, c))
        pools = int(math.log2(levels))
        self.pools = nn.Sequential(
            *[m for _ in range(pools) for m in conv_bn_relu_3d(c, c, (2, 3, 3), (2, 1, 1), (0, 1, 1))]
        )
        self.normal_head = dilated_head(c, (3 * c, 3 * c, 3 * c, 2 * c, 2 * c, c, 3))
        self.register_buffer("bins", disparity_bins(min_disp, max_disp, 4 * levels), persistent=False)
        init_msra_normal(self)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        require_keys(batch, ("left", "right", "K", "a", "b"), "NNet")
        left, right = batch["left"], batch["right"]
        check_divisible(left, 4, "NNet")
        ref, tgt = self.features(imagenet_normalize(torch.cat([left, right]))).chunk(2)
        shifts = disparity_levels(self.min_disp, self.max_disp, self.levels, scale=4)
        volume = cost_volume(ref, tgt, shifts, self.shift_mode, self.volume)
        cost_in0 = self.dres0(volume)
        cost0 = cost_in0
        for block in self.dres:
            cost0 = block(cost0) + cost0
        costs = self.classify(cost0)  # (B, 1, D, h, w)

        B, _, D, h, w = costs.shape
        per_level = torch.cat([ref.unsqueeze(2).expand(-1, -1, D, -1, -1), costs], dim=1)  # (B, C+1, D, h, w)
        folded = per_level.permute(0, 2, 1, 3, 4).reshape(B * D, -1, h, w)
        residual = self.context(folded).view(B, D, 1, h, w).permute(0, 2, 1, 3, 4)
        refined_costs = costs + residual

        size = tuple(left.shape[-2:])
        unrefined = regress_volume(costs, size, self.bins, align_corners=False)
        refined = regress_volume(refined_costs, size, self.bins, align_corners=False)

        levels = torch.tensor([4.0 * s for s in shifts], dtype=left.dtype, device=left.device)
        coords = coordinate_volume(
            levels.view(1, -1, 1, 1).expand(B, -1, h, w), batch["K"], batch["a"], batch["b"], scale=4
        )
        n = self.pools(self.wc0(torch.cat([cost_in0, cost0, coords], dim=1))).sum(dim=2)
        normal = self.normal_head(n)
        normal = F.interpolate(normal, size=size, mode="bilinear", align_corners=True)
        out = disparity_outputs([refined, unrefined], batch)
        out["normal"] = unit_vectors(normal, dim=1, eps=1e-6)
        return out
