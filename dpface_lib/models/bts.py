"""BTS: monocular metric depth with local planar guidance (Lee et al., "From Big to Small: Multi-Scale
Local Planar Guidance for Monocular Depth Estimation", arXiv:1907.10326, 2019).

The benchmark runs BTS on the DP **sum** image (``lrsum``, an ordinary photo): a ResNet encoder
(skips at 1/2, 1/4, 1/8, 1/16, 1/32), a decoder of nearest-upsample + 3×3 conv + ELU stages, a dense
ASPP at 1/8 (dilations 3, 6, 12, 18, 24), and local planar guidance (LPG) layers at 1/8, 1/4 and 1/2
that turn per-pixel plane coefficients (θ, φ, distance) into full-resolution depth patches; the final
3×3 conv + sigmoid gives depth ``clamp(max_depth · σ, min=min_depth)`` in mm.

The encoder is torchvision's ResNet built **without pretrained weights** (``weights=None``): no
ImageNet checkpoint can be downloaded here, so it trains from scratch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dpface_lib.geometry import unit_vectors
from dpface_lib.models.blocks import check_divisible, imagenet_normalize, require_keys

ENCODERS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
}


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=0.01, eps=1.1e-5)


def _conv_elu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.ELU())


class UpConv(nn.Module):
    """Nearest ×2 upsampling -> 3×3 conv (no bias) -> ELU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _conv_elu(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def atrous(cin: int, cout: int, dilation: int, bn_first: bool = True) -> nn.Sequential:
    """Dense-ASPP unit: [BN] -> ReLU -> 1×1 conv (cin -> 2 cout) -> BN -> ReLU -> 3×3 dilated conv -> cout."""
    layers: list[nn.Module] = [_bn(cin)] if bn_first else []
    layers += [
        nn.ReLU(),
        nn.Conv2d(cin, 2 * cout, 1, bias=False),
        _bn(2 * cout),
        nn.ReLU(),
        nn.Conv2d(2 * cout, cout, 3, 1, dilation, dilation=dilation, bias=False),
    ]
    return nn.Sequential(*layers)


def reduction(cin: int, cout: int, final: bool = False) -> nn.Sequential:
    """1×1 conv + ELU chain halving from ``cout`` while ≥ 8 channels, then a 1×1 conv to 3 plane
    coefficients (or to 1 channel + sigmoid when ``final``)."""
    layers: list[nn.Module] = []
    while cout >= 8:
        layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.ELU()]
        cin, cout = cout, cout // 2
    layers.append(nn.Conv2d(cin, 1 if final else 3, 1, bias=False))
    if final:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def plane_coefficients(raw: torch.Tensor, max_depth: float) -> torch.Tensor:
    """(B, 3, h, w) raw -> (B, 4, h, w) plane (n1, n2, n3, dist): θ = σ·π/3, φ = σ·2π, dist = σ·max_depth,
    n = (sin θ cos φ, sin θ sin φ, cos θ)."""
    theta = torch.sigmoid(raw[:, 0]) * math.pi / 3
    phi = torch.sigmoid(raw[:, 1]) * math.pi * 2
    dist = torch.sigmoid(raw[:, 2]) * max_depth
    n = torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], dim=1)
    return torch.cat([unit_vectors(n, dim=1), dist.unsqueeze(1)], dim=1)


def local_planar_guidance(plane: torch.Tensor, ratio: int) -> torch.Tensor:
    """Expand (B, 4, h, w) planes to (B, h·r, w·r) depth: in each r×r patch with centred coordinates
    u, v = (i - (r-1)/2) / r, depth = dist / (n1 u + n2 v + n3)."""
    p = plane.repeat_interleave(ratio, dim=2).repeat_interleave(ratio, dim=3)
    offs = (torch.arange(ratio, dtype=p.dtype, device=p.device) - (ratio - 1) / 2) / ratio
    H, W = p.shape[-2:]
    u = offs.repeat(W // ratio).view(1, 1, W)
    v = offs.repeat(H // ratio).view(1, H, 1)
    return p[:, 3] / (p[:, 0] * u + p[:, 1] * v + p[:, 2])


class BTSDecoder(nn.Module):
    """BTS decoder: skips (c0..c4 channels at 1/2..1/32) -> (B, 1, H, W) in (0, 1) (depth / max_depth)."""

    def __init__(
        self, skip_channels: Sequence[int], num_features: int = 512, max_depth: float = 1500.0
    ) -> None:
        super().__init__()
        c0, c1, c2, c3, c4 = skip_channels
        nf = num_features
        self.max_depth = max_depth
        self.upconv5, self.bn5 = UpConv(c4, nf), _bn(nf)
        self.conv5 = _conv_elu(nf + c3, nf)
        self.upconv4, self.bn4 = UpConv(nf, nf // 2), _bn(nf // 2)
        self.conv4, self.bn4_2 = _conv_elu(nf // 2 + c2, nf // 2), _bn(nf // 2)
        q = nf // 4
        self.daspp = nn.ModuleList(
            [
                atrous(nf // 2, q, 3, bn_first=False),
                atrous(nf // 2 + q + c2, q, 6),
                atrous(nf + c2, q, 12),
                atrous(nf + q + c2, q, 18),
                atrous(nf + nf // 2 + c2, q, 24),
            ]
        )
        self.daspp_conv = _conv_elu(nf // 2 + 5 * q, q)
        self.reduc8 = reduction(q, q)
        self.upconv3, self.bn3 = UpConv(q, q), _bn(q)
        self.conv3 = _conv_elu(q + c1 + 1, q)
        self.reduc4 = reduction(q, nf // 8)
        self.upconv2, self.bn2 = UpConv(q, nf // 8), _bn(nf // 8)
        self.conv2 = _conv_elu(nf // 8 + c0 + 1, nf // 8)
        self.reduc2 = reduction(nf // 8, nf // 16)
        self.upconv1 = UpConv(nf // 8, nf // 16)
        self.reduc1 = reduction(nf // 16, nf // 32, final=True)
        self.conv1 = _conv_elu(nf // 16 + 4, nf // 16)
        self.get_depth = nn.Sequential(nn.Conv2d(nf // 16, 1, 3, 1, 1, bias=False), nn.Sigmoid())

    def _lpg(self, reduc: nn.Module, x: torch.Tensor, ratio: int) -> torch.Tensor:
        return (
            local_planar_guidance(plane_coefficients(reduc(x), self.max_depth), ratio).unsqueeze(1)
            / self.max_depth
        )

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        s0, s1, s2, s3, s4 = skips
        x = self.conv5(torch.cat([self.bn5(self.upconv5(F.relu(s4))), s3], dim=1))
        concat = torch.cat([self.bn4(self.upconv4(x)), s2], dim=1)
        iconv4 = self.bn4_2(self.conv4(concat))
        dense = [self.daspp[0](iconv4)]
        concat = torch.cat([concat, dense[0]], dim=1)
        for unit in self.daspp[1:]:
            dense.append(unit(concat))
            concat = torch.cat([concat, dense[-1]], dim=1)
        feat8 = self.daspp_conv(torch.cat([iconv4, *dense], dim=1))
        depth8 = self._lpg(self.reduc8, feat8, 8)  # (B, 1, H, W)

        x = self.bn3(self.upconv3(feat8))
        x = self.conv3(torch.cat([x, s1, F.interpolate(depth8, size=s1.shape[-2:], mode="nearest")], dim=1))
        depth4 = self._lpg(self.reduc4, x, 4)
        x = self.bn2(self.upconv2(x))
        x = self.conv2(torch.cat([x, s0, F.interpolate(depth4, size=s0.shape[-2:], mode="nearest")], dim=1))
        depth2 = self._lpg(self.reduc2, x, 2)
        x = self.upconv1(x)
        x = self.conv1(torch.cat([x, self.reduc1(x), depth2, depth4, depth8], dim=1))
        return self.get_depth(x)


class BTS(nn.Module):
    """BTS on the DP sum image, metric depth in mm.

    Input batch keys: ``lrsum`` (B, 3, H, W) in [0, 1], H and W multiples of 32; ``a``, ``b``.
    Output: ``depth`` (B, H, W) mm in [min_depth, max_depth], ``disparity`` (B, H, W) px = a / Z + b,
    ``disparities`` (B, 1, H, W).

    Args:
        encoder: torchvision ResNet name (resnet18/34/50/101), built with random weights.
        bts_size: decoder width (256 in the benchmark config).
        min_depth, max_depth: output range in mm (700, 1500).
        variance_focus: λ of the SILog loss.
    """

    loss_weights = [1.0]

    def __init__(
        self,
        encoder: str = "resnet50",
        bts_size: int = 256,
        min_depth: float = 700.0,
        max_depth: float = 1500.0,
        variance_focus: float = 0.6,
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
        if bts_size < 64 or bts_size % 32:
            raise ValueError(f"bts_size must be a multiple of 32 and ≥ 64, got {bts_size}")
        if not 0 < min_depth < max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.variance_focus = float(variance_focus)
        self.loss_terms = {"silog": 1.0}
        resnet = getattr(torchvision.models, encoder)(weights=None)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.pool = resnet.maxpool
        self.layers = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        self.decoder = BTSDecoder(ENCODERS[encoder], bts_size, self.max_depth)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        from dpface_lib.geometry import depth_to_disparity

        require_keys(batch, ("lrsum", "a", "b"), "BTS")
        image = batch["lrsum"]
        check_divisible(image, 32, "BTS")
        x = self.stem(imagenet_normalize(image))
        skips = [x]
        x = self.pool(x)
        for layer in self.layers:
            x = layer(x)
            skips.append(x)
        depth = (self.max_depth * self.decoder(skips)).clamp(min=self.min_depth).squeeze(1)
        disparity = depth_to_disparity(depth, batch["a"].to(depth), batch["b"].to(depth))
        return {"depth": depth, "disparity": disparity, "disparities": disparity.unsqueeze(1)}
