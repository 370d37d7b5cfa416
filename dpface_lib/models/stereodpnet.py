"""StereoDPNet (Kang et al., "Facial Depth and Normal Estimation using Single Dual-Pixel Camera", ECCV 2022).

Pipeline for a DP pair (B, 3, H, W), H and W multiples of 16:

1. **DP feature extractor** (shared by both views): three stride-2 stages of dilated residual "DP blocks",
   a feature pyramid (torchvision FPN, Lin et al. CVPR 2017) over 1/4, 1/8 and 1/16, the coarse levels
   upsampled to 1/4 and fused -> C channels at (H/4, W/4).
2. **Adaptive sampling module** (:mod:`dpface_lib.models.asm`): a concat cost volume (B, 2C, L, H/4, W/4)
   whose levels are sub-pixel row shifts by several operators fused with learned attention.
3. **3-D aggregation**: PSMNet's stacked hourglass (Chang & Chen, CVPR 2018); three outputs.
4. **Regression**: each output is upsampled trilinearly to (4L, H, W) and soft-argmin'ed over 4L bins.
5. **Adaptive normal module** (:mod:`dpface_lib.models.anm`): normals from the last hourglass volume
   around the final disparity.

Levels and bins: the L cost levels are ``linspace(min_disp, max_disp, L)`` full-resolution px and the 4L
regression bins ``linspace(min_disp, max_disp, 4L)`` (``blocks.disparity_levels(..., align_corners=True)``):
exactly the disparities at which the
align-corners trilinear upsampling places the bins, so a bin's label and the shift it was computed from
agree (the release labels the bins ``min + 0.5 j``, a 1.1× stretch of the sampled shifts).

Disparity convention: rows, ``right(y, x) = left(y - d, x)``, px at full resolution; ``left`` is the
reference view.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork

from dpface_lib.models.anm import AdaptiveNormalModule
from dpface_lib.models.asm import ASM_MODES, AdaptiveSamplingVolume
from dpface_lib.models.blocks import (
    check_divisible,
    conv_bn,
    conv_bn_relu,
    disparity_bins,
    disparity_levels,
    disparity_outputs,
    expected_disparity,
    imagenet_normalize,
    init_msra_normal,
    require_keys,
    softmax_bins,
    volume_channels,
)
from dpface_lib.models.hourglass import StackedHourglass
from dpface_lib.models.resample import upsample_volume

__all__ = ["DPBlock", "DPFeatures", "StereoDPNet"]


def _separable(channels: int) -> nn.Sequential:
    """Depthwise 3×3 -> pointwise 1×1 (no biases) -> BN -> PReLU(0.05)."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.PReLU(init=0.05),
    )


class DPBlock(nn.Module):
    """Dilated residual block of the DP feature extractor: (B, C, H, W) -> (B, t·C, H / s, W / s).

    Two conv-bn-PReLU layers, three parallel 3×3 branches with dilations 1, 3, 5 fused back to C and added
    to the first layer's output, then a stride-``s`` dilated (2) conv to ``t·C`` and a depthwise-separable
    conv, plus a 1×1 strided projection of the input.
    """

    def __init__(self, channels: int, stride: int = 1, expand: int = 1) -> None:
        super().__init__()
        c, out = channels, expand * channels
        self.conv1 = nn.Sequential(*conv_bn(c, c), nn.PReLU(init=0.05))
        self.conv2 = nn.Sequential(*conv_bn(c, c), nn.PReLU(init=0.05))
        self.branches = nn.ModuleList([conv_bn(c, c, 3, 1, d, dilation=d) for d in (1, 3, 5)])
        self.fuse = conv_bn(3 * c, c)
        self.fuse_act = nn.PReLU(init=0.05)
        self.down = nn.Sequential(*conv_bn(c, out, 3, stride, 2, dilation=2), nn.PReLU(init=0.05))
        self.separable = _separable(out)
        self.skip = nn.Conv2d(c, out, 1, stride, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.conv1(x)
        c2 = self.conv2(c1)
        fused = self.fuse(torch.cat([branch(c2) for branch in self.branches], dim=1))
        y = self.fuse_act(fused + c1)
        return self.separable(self.down(y)) + self.skip(x)


class DPFeatures(nn.Module):
    """DP feature extractor: (B, 3, H, W) -> (B, C, H/4, W/4).

    firstconv (3 conv-bn-relu, stride 2) -> DPBlock(C, s2) [1/4] -> ``stack``×DPBlock(C) -> DPBlock(C, s2, ×2)
    [1/8] -> ``stack``×DPBlock(2C) -> DPBlock(2C, s2, ×2) [1/16] -> FPN (C, 2C, 4C -> C) -> 1/8 and 1/16
    upsampled bilinearly to 1/4 -> concat 3C -> conv-bn-relu to 2C -> conv-bn-relu to C.

    ``pyramid=False`` stops at the 1/4 block (firstconv -> DPBlock(C, s2)): no coarser levels, no FPN. The
    coarse levels see the whole face and let a short run settle on its outline instead of the DP shift
    (docs/training.md); the tiny profile goes without them.
    """

    def __init__(self, channels: int = 32, stack: int = 1, pyramid: bool = True) -> None:
        super().__init__()
        c = channels
        self.pyramid = bool(pyramid)
        self.firstconv = nn.Sequential(*conv_bn_relu(3, c, 3, 2, 1), *conv_bn_relu(c, c), *conv_bn_relu(c, c))
        self.block1 = DPBlock(c, 2, 1)
        if not self.pyramid:
            return
        self.block2 = nn.Sequential(*[DPBlock(c) for _ in range(stack)], DPBlock(c, 2, 2))
        self.block3 = nn.Sequential(*[DPBlock(2 * c) for _ in range(stack)], DPBlock(2 * c, 2, 2))
        self.fpn = FeaturePyramidNetwork([c, 2 * c, 4 * c], c)
        self.lastconv = nn.Sequential(*conv_bn_relu(3 * c, 2 * c), *conv_bn_relu(2 * c, c))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out1 = self.block1(self.firstconv(image))
        if not self.pyramid:
            return out1
        out2 = self.block2(out1)
        out3 = self.block3(out2)
        pyramid = list(self.fpn(OrderedDict(q=out1, e=out2, s=out3)).values())
        size = pyramid[0].shape[-2:]
        coarse = [F.interpolate(p, size=size, mode="bilinear", align_corners=True) for p in pyramid[1:]]
        return self.lastconv(torch.cat([pyramid[0], *coarse], dim=1))


class StereoDPNet(nn.Module):
    """StereoDPNet: DP disparity with the ASM cost volume and surface normals with the ANM.

    Input batch keys: ``left``, ``right`` (B, 3, H, W) in [0, 1], H and W multiples of 16; ``a``, ``b`` (B,);
    ``K`` (B, 3, 3) when ``use_anm``.

    Output dict: ``disparity`` (B, H, W) px; ``disparities`` (B, 3, H, W) [final, 2nd, 1st hourglass] in
    training and eval mode (the validation loss uses all three); ``depth`` (B, H, W) mm (0 where invalid);
    ``normal`` (B, 3, H, W) unit length (only with ``use_anm``); for inspection ``cost_volume_probabilities``
    (B, 4L, H, W) of the final output, ``attention`` (B, 2, L, M, H/4, W/4) (with learned attention),
    ``anm_offsets`` (B, 2, 81, k, H/4, W/4) (with deformable layers) and ``anm_hypotheses``
    (B, k, H/4, W/4) px.

    Args:
        min_disp, max_disp: full-resolution disparity range (px) spanned by the levels and bins.
        levels: cost-volume levels L (multiple of 4).
        channels: feature width C (32).
        block_stack: DP blocks between the strided ones (1).
        asm_modes: shift operators of the ASM (subset of nearest, bilinear, phase).
        use_attention: learned attention over the operators (else their mean).
        use_anm: predict normals; use_deform: deformable 3-D convolutions inside the ANM.
        anm_channels, anm_head_channels, anm_top_k: ANM width, 2-D head widths, hypotheses per pixel.
        anm_squash: the paper's ``2 sigmoid - 1`` on the ANM head outputs (``False``: raw outputs averaged).
        loss_weights: smooth-L1 weights of the three disparity outputs; normal_loss_weight: cosine term.
        volume: the ASM volume, ``"concat"`` (the paper's) or ``"difference"`` (left minus right; the tiny
            profile's, docs/training.md).
        feature_pyramid: the paper's FPN over 1/4, 1/8 and 1/16 (``True``) or the 1/4 DP block alone
            (:class:`DPFeatures`).
        anm_detach: ``True`` stops the normal loss's gradient at the ANM's inputs (the last hourglass volume
            and the disparity), so the cosine term trains the ANM and not the matching layers (the tiny
            profile's; the paper trains both jointly, ``False``).
    """

    def __init__(
        self,
        min_disp: float = -4.0,
        max_disp: float = 12.0,
        levels: int = 8,
        channels: int = 32,
        block_stack: int = 1,
        asm_modes: Sequence[str] = ASM_MODES,
        use_attention: bool = True,
        use_anm: bool = True,
        use_deform: bool = True,
        anm_channels: int = 64,
        anm_head_channels: Sequence[int] = (96, 96, 64, 64, 32),
        anm_top_k: int = 4,
        anm_squash: bool = True,
        loss_weights: Sequence[float] = (1.0, 0.7, 0.5),
        normal_loss_weight: float = 1.0,
        volume: str = "concat",
        feature_pyramid: bool = True,
        anm_detach: bool = False,
    ) -> None:
        super().__init__()
        if levels % 4:
            raise ValueError(f"levels must be a multiple of 4 (two stride-2 hourglass stages), got {levels}")
        if not max_disp > min_disp:
            raise ValueError(f"max_disp ({max_disp}) must exceed min_disp ({min_disp})")
        if len(loss_weights) != 3:
            raise ValueError(
                f"StereoDPNet has 3 disparity outputs; loss_weights has {len(loss_weights)} entries"
            )
        self.min_disp, self.max_disp, self.levels = float(min_disp), float(max_disp), int(levels)
        self.use_anm = bool(use_anm)
        self.anm_detach = bool(anm_detach)
        self.loss_weights = [float(w) for w in loss_weights]
        self.loss_terms = {"smooth_l1": 1.0, **({"cosine": float(normal_loss_weight)} if use_anm else {})}
        levels_px = disparity_levels(self.min_disp, self.max_disp, self.levels, align_corners=True)
        level_disparities = torch.tensor(levels_px, dtype=torch.float64)
        self.register_buffer("level_disparities", level_disparities.float(), persistent=False)
        self.register_buffer(
            "bins", disparity_bins(self.min_disp, self.max_disp, 4 * self.levels, align_corners=True),
            persistent=False,
        )
        self.features = DPFeatures(channels, block_stack, feature_pyramid)
        self.asm = AdaptiveSamplingVolume(
            channels, level_disparities.tolist(), asm_modes, use_attention, volume=volume
        )
        self.aggregation = StackedHourglass(volume_channels(channels, volume), channels)
        self.anm = (
            AdaptiveNormalModule(
                channels,
                anm_channels,
                anm_head_channels,
                top_k=anm_top_k,
                use_deform=use_deform,
                squash=anm_squash,
            )
            if use_anm
            else None
        )
        init_msra_normal(self)
        if self.anm is not None:
            self.anm.reset_offsets()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        require_keys(batch, ("left", "right", "a", "b", *(("K",) if self.use_anm else ())), "StereoDPNet")
        left, right = batch["left"], batch["right"]
        check_divisible(left, 16, "StereoDPNet")
        if right.shape != left.shape:
            raise ValueError(f"StereoDPNet: left {tuple(left.shape)} and right {tuple(right.shape)} differ")
        size = tuple(left.shape[-2:])
        # one pass over both views: shared weights, and in training BatchNorm normalises both views with
        # the same batch statistics (per-view statistics would shift one view's features against the
        # other's by more than the sub-pixel DP signal)
        ref, tgt = self.features(imagenet_normalize(torch.cat([left, right]))).chunk(2)
        asm = self.asm(ref, tgt)
        # the 3-D convolutions run channels-last (N, D, H, W, C in memory): oneDNN's direct kernels then need
        # no layout conversion of the activations per call (1.5-2x faster on the CPU, docs/benchmarks.md)
        volume = asm["volume"].contiguous(memory_format=torch.channels_last_3d)
        costs, last_volume = self.aggregation.forward_with_features(volume)
        probabilities = []
        for cost in costs:
            up = upsample_volume(cost, (self.bins.numel(), *size), align_corners=True)
            probabilities.append(softmax_bins(up.squeeze(1)))
        disparities = [expected_disparity(p, self.bins) for p in probabilities]
        out = disparity_outputs(disparities, batch)
        out["cost_volume_probabilities"] = probabilities[0].detach()
        if asm["attention"] is not None:
            out["attention"] = asm["attention"].detach()
        if self.anm is not None:
            volume_in, disparity_in = last_volume, out["disparity"]
            if self.anm_detach:  # the normal loss trains the ANM only, not the matching trunk
                volume_in, disparity_in = volume_in.detach(), disparity_in.detach()
            anm = self.anm(
                volume_in, disparity_in, self.level_disparities, batch["K"], batch["a"], batch["b"]
            )
            out["normal"] = anm["normal"]
            out["anm_hypotheses"] = anm["hypotheses"]
            if anm["offsets"]:
                out["anm_offsets"] = torch.stack(anm["offsets"], dim=1).detach()
        return out
