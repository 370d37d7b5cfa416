"""PSMNet's 3-D cost aggregation (Chang & Chen, CVPR 2018): three stacked hourglasses with intermediate
supervision, shared by PSMNet and StereoDPNet (which also samples the last hourglass's feature volume)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.models.blocks import conv_bn_3d, conv_bn_relu_3d
from dpface_lib.models.safeconv import Conv3d

__all__ = ["Hourglass3d", "StackedHourglass"]


class Hourglass3d(nn.Module):
    """One PSMNet 3-D hourglass (C -> 2C at 1/2 -> 2C at 1/4 -> back to C), with the pre/post skips.

    forward(x (B, C, D, h, w), presqu, postsqu) -> (out (B, C, D, h, w), pre, post); D, h, w must be
    multiples of 4.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c2 = 2 * channels
        self.conv1 = conv_bn_relu_3d(channels, c2, 3, 2, 1)
        self.conv2 = conv_bn_3d(c2, c2, 3, 1, 1)
        self.conv3 = conv_bn_relu_3d(c2, c2, 3, 2, 1)
        self.conv4 = conv_bn_relu_3d(c2, c2, 3, 1, 1)
        self.conv5 = nn.Sequential(
            nn.ConvTranspose3d(c2, c2, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm3d(c2)
        )
        self.conv6 = nn.Sequential(
            nn.ConvTranspose3d(c2, channels, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm3d(channels)
        )

    def forward(self, x, presqu=None, postsqu=None):
        pre = self.conv2(self.conv1(x))
        pre = F.relu(pre + postsqu) if postsqu is not None else F.relu(pre)
        out = self.conv4(self.conv3(pre))
        post = F.relu(self.conv5(out) + (presqu if presqu is not None else pre))
        return self.conv6(post), pre, post


class StackedHourglass(nn.Module):
    """PSMNet aggregation: dres0, dres1, three hourglasses and three classifier heads.

    forward(volume (B, cin, D, h, w)) -> [cost3, cost2, cost1], each (B, 1, D, h, w), final first.
    """

    def __init__(self, in_channels: int = 64, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.dres0 = nn.Sequential(*conv_bn_relu_3d(in_channels, c), *conv_bn_relu_3d(c, c))
        self.dres1 = nn.Sequential(*conv_bn_relu_3d(c, c), *conv_bn_3d(c, c))
        self.hourglasses = nn.ModuleList([Hourglass3d(c) for _ in range(3)])
        self.heads = nn.ModuleList(
            [nn.Sequential(*conv_bn_relu_3d(c, c), Conv3d(c, 1, 3, 1, 1, bias=False)) for _ in range(3)]
        )

    def forward(self, volume: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_with_features(volume)[0]

    def forward_with_features(self, volume: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Like ``forward``, also returning the last hourglass's feature volume out3 (B, C, L, h, w),
        which StereoDPNet's normal module samples."""
        cost0 = self.dres0(volume)
        cost0 = self.dres1(cost0) + cost0
        hg1, hg2, hg3 = self.hourglasses
        out1, pre1, post1 = hg1(cost0)
        out1 = out1 + cost0
        out2, _, post2 = hg2(out1, pre1, post1)
        out2 = out2 + cost0
        out3, _, _ = hg3(out2, pre1, post2)
        out3 = out3 + cost0
        cost1 = self.heads[0](out1)
        cost2 = self.heads[1](out2) + cost1
        cost3 = self.heads[2](out3) + cost2
        return [cost3, cost2, cost1], out3
