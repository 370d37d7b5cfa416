"""Adaptive normal module (ANM): surface normals from the aggregated cost volume around the predicted
disparity (Kang et al., "Facial Depth and Normal Estimation using Single Dual-Pixel Camera", ECCV 2022).

Steps (shapes for a (B, C, L, h, w) feature volume at 1/4 resolution, image (H, W) = (4h, 4w)):

1. **Surface hypotheses.** The final disparity is sampled at 1/4 resolution (nearest) and, per pixel, the
   ``top_k`` volume levels closest to it are kept (sorted by level): features (B, C, k, h, w) and their
   full-resolution disparities ``D`` (B, k, h, w).
2. **Coordinate volume.** Each hypothesis is lifted to 3-D: ``Z = a / (D - b)`` with the batch's (a, b)
   (:func:`dpface_lib.geometry.disparity_to_depth`; ``D`` is in full-resolution px, the units (a, b) are
   calibrated for, so ``Z`` is metric; the release used quarter-resolution values here) and the
   quarter-resolution intrinsics ``K/4`` (:func:`dpface_lib.geometry.scale_intrinsics`,
   :func:`dpface_lib.geometry.backproject`). Points are min-max normalised per sample (x, y, z jointly)
   and appended to the features: (B, C + 3, k, h, w). Hypotheses without a finite positive depth
   (``D >= b`` for ``a < 0``) get the point 0 before normalisation.
3. **Deformable 3-D convolutions.** Two :class:`dpface_lib.models.deform.DeformConv3dPack` (3×3×3, offsets
   from a zero-initialised convolution, so training starts from a plain 3-D convolution) + BN3d + ReLU; or
   plain conv-bn-relu 3-D layers with ``use_deform=False``.
4. **Shared 2-D head** per hypothesis (dilated convolutions with LeakyReLU 0.1, as NNet's "convtext"),
   bilinear ×4 to full resolution, sigmoid, mean over hypotheses, ``× 2 - 1``, then unit length.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.geometry import unit_vectors
from dpface_lib.models.blocks import conv_bn_relu_3d, coordinate_volume, dilated_head

__all__ = ["AdaptiveNormalModule", "select_hypotheses"]


def select_hypotheses(
    volume: torch.Tensor, disparity: torch.Tensor, level_disparities: torch.Tensor, top_k: int, scale: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` volume levels nearest to the predicted disparity, per quarter-resolution pixel.

    Args:
        volume: (B, C, L, h, w) feature volume.
        disparity: (B, H, W) full-resolution disparity (px), H = scale·h; sampled with nearest.
        level_disparities: (L,) full-resolution disparity of each level (px).
        top_k: number of hypotheses (<= L).

    Returns:
        features (B, C, k, h, w), disparities (B, k, h, w) in full-resolution px, level indices (B, k, h, w)
        ascending per pixel.
    """
    b, c, levels, h, w = volume.shape
    if not 1 <= top_k <= levels:
        raise ValueError(f"top_k must be in 1..{levels} (volume levels), got {top_k}")
    coarse = F.interpolate(disparity.detach()[:, None], size=(h, w), mode="nearest")  # (B, 1, h, w)
    distance = (level_disparities.view(1, -1, 1, 1).to(coarse) - coarse).abs()  # (B, L, h, w)
    index = torch.topk(distance, top_k, dim=1, largest=False).indices.sort(dim=1).values
    features = torch.gather(volume, 2, index[:, None].expand(b, c, top_k, h, w))
    return features, level_disparities.to(coarse)[index], index


class AdaptiveNormalModule(nn.Module):
    """ANM: (B, C, L, h, w) aggregated volume + final disparity -> (B, 3, 4h, 4w) unit normals.

    Args:
        feature_channels: C of the aggregated volume (32 in the paper).
        channels: width of the two 3-D (deformable) layers (64).
        head_channels: widths of the 2-D head before its 3-channel output (96, 96, 64, 64, 32).
        head_dilations: dilation of each head layer including the output one (1, 2, 4, 8, 1, 1).
        top_k: surface hypotheses per pixel (4).
        use_deform: deformable 3-D convolutions (else plain conv-bn-relu 3-D).
        squash: ``2 sigmoid(x) - 1`` on each hypothesis' head output before the mean (the paper's form);
            ``False`` averages the raw outputs, which cannot saturate (see docs/stereodpnet.md).

    forward(volume, disparity (B, H, W), level_disparities (L,), K (B, 3, 3), a (B,), b (B,)) -> dict
        ``normal`` (B, 3, H, W) unit length; ``hypotheses`` (B, k, h, w) chosen full-resolution disparities;
        ``coordinates`` (B, 3, k, h, w) normalised points; ``offsets`` list of the two (B, 81, k, h, w)
        offset fields (empty without deformable layers).
    """

    def __init__(
        self,
        feature_channels: int = 32,
        channels: int = 64,
        head_channels: Sequence[int] = (96, 96, 64, 64, 32),
        head_dilations: Sequence[int] = (1, 2, 4, 8, 1, 1),
        top_k: int = 4,
        use_deform: bool = True,
        squash: bool = True,
    ) -> None:
        super().__init__()
        if len(head_dilations) != len(head_channels) + 1:
            raise ValueError(
                f"head_dilations needs {len(head_channels) + 1} entries (one per head layer), "
                f"got {len(head_dilations)}"
            )
        self.top_k = top_k
        self.squash = squash
        self.use_deform = use_deform
        cin = feature_channels + 3
        if use_deform:
            from dpface_lib.models.deform import DeformConv3dPack

            self.deform = nn.ModuleList(
                [
                    DeformConv3dPack(cin, channels, 3, padding=1, bias=True),
                    DeformConv3dPack(channels, channels, 3, padding=1, bias=True),
                ]
            )
            self.norms = nn.ModuleList([nn.BatchNorm3d(channels), nn.BatchNorm3d(channels)])
        else:
            self.plain = nn.Sequential(*conv_bn_relu_3d(cin, channels), *conv_bn_relu_3d(channels, channels))
        widths = [channels, *head_channels, 3]
        self.head = nn.Sequential(
            *[dilated_head(widths[i], [widths[i + 1]], [d]) for i, d in enumerate(head_dilations)]
        )

    def reset_offsets(self) -> None:
        """Zero the offset-predicting convolutions (the deformable layers start as plain convolutions)."""
        if self.use_deform:
            for layer in self.deform:
                layer.init_offset()

    def forward(
        self,
        volume: torch.Tensor,
        disparity: torch.Tensor,
        level_disparities: torch.Tensor,
        K: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
    ) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        features, hypotheses, _ = select_hypotheses(volume, disparity, level_disparities, self.top_k)
        coordinates = coordinate_volume(hypotheses, K, a, b)
        x = torch.cat([features, coordinates.to(features)], dim=1)  # (B, C + 3, k, h, w)
        offsets: list[torch.Tensor] = []
        if self.use_deform:
            for layer, norm in zip(self.deform, self.norms, strict=True):
                x = F.relu(norm(layer(x)), inplace=True)
                offsets.append(layer.last_offset)
        else:
            x = self.plain(x)
        batch, ch, k, h, w = x.shape
        slices = self.head(x.transpose(1, 2).reshape(batch * k, ch, h, w))  # (B·k, 3, h, w)
        slices = F.interpolate(slices, scale_factor=4, mode="bilinear", align_corners=True)
        if self.squash:
            slices = torch.sigmoid(slices) * 2.0 - 1.0
        normal = slices.reshape(batch, k, 3, 4 * h, 4 * w).mean(dim=1)
        normal = unit_vectors(normal, dim=1, eps=1e-6)
        return {"normal": normal, "hypotheses": hypotheses, "coordinates": coordinates, "offsets": offsets}
