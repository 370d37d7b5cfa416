"""DPNet: direct DP disparity regression (Garg et al., "Learning Single Camera Depth Estimation using
Dual-Pixels", ICCV 2019), as re-implemented in the face benchmark.

The two views are stacked into 6 channels; a residual encoder with depthwise-separable convolutions
downsamples to 1/32, a decoder with skip connections comes back to full resolution, and a 7×7 head at
each of five scales regresses disparity directly (no cost volume). All five outputs are upsampled
bilinearly to the input size: [full, 1/2, 1/4, 1/8, 1/16] in loss-weight order.

Difference from the release (docs/models.md): paddings are chosen so every stride-2 stage halves the
map exactly and every decoder stage doubles it, so any H, W divisible by 32 works; the release's
paddings (tuned to 768×576, e.g. 1×1 convs with padding 1 that grow maps by 2 px) only change map sizes,
never the layers or their parameter counts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.models.blocks import (
    check_divisible,
    disparity_outputs,
    imagenet_normalize,
    init_xavier,
    require_keys,
)

PRELU_INIT = 0.05


def basic(
    cin: int,
    cout: int,
    kernel: int,
    stride: int = 1,
    pad: int = 0,
    bn: bool = True,
    act: bool = True,
    transposed: bool = False,
) -> nn.Sequential:
    """Conv (or ConvTranspose) without bias -> optional BatchNorm -> optional PReLU(0.05)."""
    conv_cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    layers: list[nn.Module] = [conv_cls(cin, cout, kernel, stride, pad, bias=False)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(nn.PReLU(init=PRELU_INIT))
    return nn.Sequential(*layers)


def separable(cin: int, cout: int, kernel: int = 3, pad: int = 1) -> nn.Sequential:
    """Depthwise k×k (groups = cin) -> pointwise 1×1 -> BatchNorm -> PReLU(0.05); no biases."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, kernel, 1, pad, groups=cin, bias=False),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.PReLU(init=PRELU_INIT),
    )


class Encoder(nn.Module):
    """Residual encoder unit: PReLU(main(x) + skip(x)); (B, cin, H, W) -> (B, cout, H/s, W/s).

    main = basic 3×3 (cin -> mid, stride s) -> separable 3×3 (mid) -> basic 1×1 (mid -> cout);
    skip = basic 1×1 (cin -> cout) -> 3×3 max-pool (stride s).
    """

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.main = nn.Sequential(basic(cin, mid, 3, stride, 1), separable(mid, mid), basic(mid, cout, 1))
        self.skip = nn.Sequential(basic(cin, cout, 1), nn.MaxPool2d(3, stride, 1))
        self.act = nn.PReLU(init=PRELU_INIT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.main(x) + self.skip(x))


class StemEncoder(nn.Module):
    """First unit: basic 7×7 stride-2 conv (cin -> cout) concatenated with a 7×7 stride-2 max-pool of the
    input -> (B, cout + cin, H/2, W/2)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = basic(cin, cout, 7, 2, 3)
        self.pool = nn.MaxPool2d(7, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.pool(x)], dim=1)


def decoder(cin: int, mid: int) -> nn.Sequential:
    """Transposed 4×4 stride-2 basic conv (cin -> mid, ×2 size) -> separable 3×3 -> 1×1 -> 3×3."""
    return nn.Sequential(
        basic(cin, mid, 4, 2, 1, transposed=True),
        separable(mid, mid, 3, 1),
        separable(mid, mid, 1, 0),
        separable(mid, mid, 3, 1),
    )


def _stage(cin: int, mid: int, cout: int, stride: int, repeats: int) -> nn.Sequential:
    return nn.Sequential(
        Encoder(cin, mid, cout, stride), *[Encoder(cout, mid, cout, 1) for _ in range(repeats)]
    )


class DPNet(nn.Module):
    """DPNet on the stacked DP views.

    Input batch keys: ``left``, ``right`` (B, 3, H, W) in [0, 1], H and W multiples of 32; ``a``, ``b``.
    Output: ``disparity`` (B, H, W) px, ``disparities`` (B, 5, H, W) from the finest to the coarsest
    head, ``depth`` (B, H, W) mm.

    Args:
        width: multiplier of all channel counts (1.0 = the paper's 11/32/64/128/128 encoder).
        loss_weights: smooth-L1 weights of the five outputs.
    """

    loss_terms = {"smooth_l1": 1.0}

    def __init__(
        self, width: float = 1.0, loss_weights: Sequence[float] = (1.0, 0.75294, 0.18824, 0.047059, 0.011765)
    ) -> None:
        super().__init__()
        if len(loss_weights) != 5:
            raise ValueError(f"DPNet has 5 outputs; loss_weights has {len(loss_weights)} entries")
        self.loss_weights = [float(w) for w in loss_weights]

        def c(n: int) -> int:
            return max(2, round(n * width))

        e1, e2, e3, e4, e5 = c(11), c(32), c(64), c(128), c(128)
        m16, m32, stem = c(16), c(32), c(8)
        self.enc1 = nn.Sequential(StemEncoder(6, stem), Encoder(stem + 6, e1, e1, 1))
        self.enc2 = _stage(e1, m16, e2, 2, 2)
        self.enc3 = _stage(e2, m16, e3, 2, 2)
        self.enc4 = _stage(e3, m32, e4, 2, 2)
        self.enc5 = _stage(e4, m32, e5, 2, 2)
        # decoder steps: (input ch, decoder width, encoder skip ch, output ch of the 1×1 `_b` conv)
        steps = [(e5, m32, e4, e4), (e4, m16, e3, e3), (e3, m16, e2, e2), (e2, m16, e1, e2)]
        self.decoders = nn.ModuleList([decoder(cin, mid) for cin, mid, _, _ in steps])
        self.skips = nn.ModuleList([separable(skip, mid) for _, mid, skip, _ in steps])
        self.acts = nn.ModuleList([nn.PReLU(init=PRELU_INIT) for _ in steps])
        self.expands = nn.ModuleList([basic(mid, out, 1, bn=False, act=False) for _, mid, _, out in steps])
        self.last = nn.Sequential(decoder(e2, stem), basic(stem, stem, 1, bn=False, act=False))
        head_channels = [stem, e2, e2, e3, e4]  # full, 1/2, 1/4, 1/8, 1/16
        self.heads = nn.ModuleList([basic(ch, 1, 7, 1, 3) for ch in head_channels])
        init_xavier(self)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        require_keys(batch, ("left", "right", "a", "b"), "DPNet")
        left, right = batch["left"], batch["right"]
        check_divisible(left, 32, "DPNet")
        x = torch.cat([imagenet_normalize(left), imagenet_normalize(right)], dim=1)
        skips = []
        for enc in (self.enc1, self.enc2, self.enc3, self.enc4):
            x = enc(x)
            skips.append(x)
        y = self.enc5(x)
        scales = []  # 1/16, 1/8, 1/4, 1/2
        for dec, skip, act, expand, enc_out in zip(
            self.decoders, self.skips, self.acts, self.expands, reversed(skips), strict=True
        ):
            y = expand(act(dec(y) + skip(enc_out)))
            scales.append(y)
        full = self.last(y)
        size = tuple(left.shape[-2:])
        maps = [full, *reversed(scales)]
        disparities = [
            F.interpolate(head(m), size=size, mode="bilinear", align_corners=True).squeeze(1)
            for head, m in zip(self.heads, maps, strict=True)
        ]
        return disparity_outputs(disparities, batch)
