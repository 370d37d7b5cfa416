"""Building blocks shared by the DP models.

Conventions (all models):

* The DP disparity axis is the image **rows** (H). A disparity ``d`` (px) means the right view is the
  left view moved down by ``d`` rows: ``right(y, x) ≈ left(y - d, x)``, i.e. ``left(y) ≈ right(y + d)``.
  Cost volumes therefore take the left view as reference and sample the right view at ``y + d``.
* Images enter as float tensors in [0, 1]; :func:`imagenet_normalize` applies the ImageNet statistics
  that the original models were trained with.
* Cost volumes are (B, C, D, h, w): D disparity levels between the feature maps' rows and columns.

References: PSMNet (Chang & Chen, CVPR 2018) for the stacked-hourglass aggregation and the concat
volume; GC-Net (Kendall et al., ICCV 2017) for the soft-argmin disparity regression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dpface_lib.geometry import backproject, disparity_to_depth, scale_intrinsics
from dpface_lib.models.resample import upsample_volume
from dpface_lib.models.safeconv import Conv3d

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SHIFT_MODES = ("integer", "linear")
#: Cost volumes of the stereo models: PSMNet's concatenation ``[ref, tgt]`` (2C channels) or StereoNet's
#: difference ``ref - tgt`` (C channels).
VOLUME_KINDS = ("concat", "difference")


# ----------------------------------------------------------------------------------------------
# Input / output helpers


def imagenet_normalize(image: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) image in [0, 1] -> ImageNet-normalised (x - mean) / std."""
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(image.shape)}")
    mean = image.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def require_keys(batch: dict, keys: Sequence[str], model: str) -> None:
    """Raise a KeyError naming the model and the missing batch keys."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{model} needs batch keys {list(keys)}; missing {missing} (have {sorted(batch)})")


def check_divisible(image: torch.Tensor, factor: int, model: str) -> None:
    """Raise a ValueError when the image's H or W is not a multiple of ``factor``."""
    h, w = image.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"{model} needs H and W divisible by {factor}; got H={h}, W={w} (crop or pad first)")


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is in a narrower float (bfloat16/float16 under mixed precision), else as is.

    Disparity regression and the disparity -> depth conversion need it: bfloat16 holds a 1 px disparity to
    0.004 px and a 1,000 mm depth to 4 mm, coarser than a face's relief in disparity steps.
    """
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def depth_from_disparity(disparity: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Depth (mm) ``Z = a / (d - b)`` via :func:`dpface_lib.geometry.disparity_to_depth`.

    Args:
        disparity: (B, H, W) DP disparity in px.
        a, b: (B,) or scalars, the per-sample Disp2Depth constants.

    Returns:
        (B, H, W) depth in mm; 0 where the depth is not a finite positive number (as the batch's
        ``depth`` marks invalid pixels), so the output never holds NaN.
    """
    from dpface_lib.geometry import disparity_to_depth

    disparity = at_least_float32(disparity)
    depth = disparity_to_depth(disparity, a.to(disparity), b.to(disparity))
    return torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)


def disparity_outputs(disparities: Sequence[torch.Tensor], batch: dict) -> dict[str, torch.Tensor]:
    """Output dict of a disparity model.

    Args:
        disparities: N tensors (B, H, W) in px, in loss-weight order; the first one is the final
            prediction.
        batch: the input batch (``a``, ``b`` give the depth).

    Returns:
        ``disparity`` (B, H, W), ``disparities`` (B, N, H, W), ``depth`` (B, H, W) mm.
    """
    stacked = torch.stack(list(disparities), dim=1)
    final = stacked[:, 0]
    return {
        "disparity": final,
        "disparities": stacked,
        "depth": depth_from_disparity(final, batch["a"], batch["b"]),
    }


# ----------------------------------------------------------------------------------------------
# Convolutions


def conv_bn(
    cin: int, cout: int, kernel: int = 3, stride: int = 1, pad: int = 1, dilation: int = 1
) -> nn.Sequential:
    """Conv2d (no bias) + BatchNorm2d; the padding is ``dilation`` when dilated (PSMNet's convbn)."""
    padding = dilation if dilation > 1 else pad
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, bias=False), nn.BatchNorm2d(cout)
    )


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, pad: int = 1, dilation: int = 1):
    """:func:`conv_bn` followed by ReLU."""
    return nn.Sequential(*conv_bn(cin, cout, kernel, stride, pad, dilation), nn.ReLU(inplace=True))


def conv_bn_3d(cin: int, cout: int, kernel=3, stride=1, pad=1) -> nn.Sequential:
    """Conv3d (no bias, :class:`Conv3d`) + BatchNorm3d."""
    return nn.Sequential(Conv3d(cin, cout, kernel, stride, pad, bias=False), nn.BatchNorm3d(cout))


def conv_bn_relu_3d(cin: int, cout: int, kernel=3, stride=1, pad=1) -> nn.Sequential:
    """:func:`conv_bn_3d` followed by ReLU."""
    return nn.Sequential(*conv_bn_3d(cin, cout, kernel, stride, pad), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """PSMNet residual block: conv-bn-relu -> conv-bn, plus the input (a 1×1 conv-bn projection when the
    shape changes). No activation after the sum.

    (B, cin, H, W) -> (B, cout, H / stride, W / stride).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn_relu(cin, cout, 3, stride, 1, dilation), *conv_bn(cout, cout, 3, 1, 1, dilation)
        )
        self.project = conv_bn(cin, cout, 1, stride, 0) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.project(x)


# ----------------------------------------------------------------------------------------------
# Disparity levels, row shifts and cost volumes


def disparity_levels(min_disp: float, max_disp: float, levels: int, scale: int = 1,
                     align_corners: bool = False) -> list[float]:
    """The disparities (px at 1/``scale``) of ``levels`` cost-volume levels over [min_disp, max_disp).

    The convention follows how the volume is later upsampled, so that a level's value is the shift it was
    built from: ``align_corners=False`` (the baselines' upsampling) gives ``min/scale + i (max - min) /
    (scale levels)``, i = 0..levels-1, and never ``max_disp`` itself (with the benchmark's −4…12 px, 8
    levels and scale 4: −1, −0.5, …, 2.5); ``align_corners=True`` (StereoDPNet's trilinear upsampling, whose
    corner samples sit on both ends) gives ``linspace(min, max, levels) / scale``, both ends included.
    """
    if not max_disp > min_disp:
        raise ValueError(f"max_disp ({max_disp}) must exceed min_disp ({min_disp})")
    if align_corners:  # float64 torch.linspace: bit-for-bit the values StereoDPNet was trained with
        values = torch.linspace(float(min_disp), float(max_disp), levels, dtype=torch.float64) / scale
        return values.tolist()
    step = (max_disp - min_disp) / (scale * levels)
    return [min_disp / scale + i * step for i in range(levels)]


def disparity_bins(min_disp: float, max_disp: float, count: int, device=None, dtype=None,
                   align_corners: bool = False) -> torch.Tensor:
    """(count,) full-resolution disparity values (px) for soft-argmin, in the convention of
    :func:`disparity_levels`."""
    if align_corners:  # torch.linspace itself: the float32 values StereoDPNet's checkpoints were trained with
        return torch.linspace(float(min_disp), float(max_disp), count, device=device, dtype=dtype)
    return torch.tensor(disparity_levels(min_disp, max_disp, count, 1), device=device, dtype=dtype)


def _shift_rows_int(x: torch.Tensor, shift: int) -> torch.Tensor:
    """out[..., y, :] = x[..., y + shift, :], zero where y + shift is outside the rows."""
    h = x.shape[-2]
    if shift == 0:
        return x
    out = torch.zeros_like(x)
    if abs(shift) >= h:
        return out
    if shift > 0:
        out[..., : h - shift, :] = x[..., shift:, :]
    else:
        out[..., -shift:, :] = x[..., : h + shift, :]
    return out


def shift_rows(x: torch.Tensor, shift: float, mode: str = "linear") -> torch.Tensor:
    """Sample ``x`` at rows ``y + shift``: ``out[..., y, :] = x[..., y + shift, :]``, zeros outside.

    Args:
        x: (..., H, W) tensor.
        shift: rows (may be fractional).
        mode: ``"integer"`` truncates the shift toward zero (Python ``int()``, what the released
            PSMNet/NNet volumes do, so −0.5 and 0.5 both become 0); ``"linear"`` interpolates linearly
            between the two neighbouring integer shifts (differentiable in ``x``).

    Returns:
        Tensor like ``x``.
    """
    if mode == "integer":
        return _shift_rows_int(x, int(shift))
    if mode != "linear":
        raise ValueError(f"shift mode must be one of {SHIFT_MODES}, got {mode!r}")
    low = math.floor(shift)
    frac = shift - low
    out = _shift_rows_int(x, low)
    if frac > 1e-9:
        out = (1.0 - frac) * out + frac * _shift_rows_int(x, low + 1)
    return out


def concat_cost_volume(
    ref: torch.Tensor, tgt: torch.Tensor, shifts: Sequence[float], mode: str
) -> torch.Tensor:
    """PSMNet concatenation volume along rows.

    Args:
        ref: (B, C, h, w) reference (left) features; tgt: (B, C, h, w) target (right) features.
        shifts: D row shifts in px of the feature map.
        mode: see :func:`shift_rows`.

    Returns:
        (B, 2C, D, h, w): ``[:, :C, i] = ref`` and ``[:, C:, i] = tgt(y + shifts[i])``; both halves are
        zero on rows where the shifted target falls outside the map (fractionally at the border in
        ``linear`` mode).
    """
    ones = torch.ones_like(ref[:, :1])
    slices = []
    for s in shifts:
        valid = shift_rows(ones, s, mode)
        slices.append(torch.cat([ref * valid, shift_rows(tgt, s, mode)], dim=1))
    return torch.stack(slices, dim=2)


def difference_cost_volume(
    ref: torch.Tensor, tgt: torch.Tensor, shifts: Sequence[float], mode: str
) -> torch.Tensor:
    """StereoNet difference volume along rows: (B, C, h, w) ×2 -> (B, C, D, h, w) with
    ``[:, :, i] = ref - tgt(y + shifts[i])``, zero where the shifted target is outside the map."""
    ones = torch.ones_like(ref[:, :1])
    slices = [ref * shift_rows(ones, s, mode) - shift_rows(tgt, s, mode) for s in shifts]
    return torch.stack(slices, dim=2)


def check_volume_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`VOLUME_KINDS`, else a ValueError naming the choices."""
    if kind not in VOLUME_KINDS:
        raise ValueError(f"volume must be one of {VOLUME_KINDS}, got {kind!r}")
    return kind


def volume_channels(channels: int, kind: str) -> int:
    """Channels of a cost volume built from C-channel features: 2C (``concat``) or C (``difference``)."""
    return (2 if check_volume_kind(kind) == "concat" else 1) * channels


def cost_volume(
    ref: torch.Tensor, tgt: torch.Tensor, shifts: Sequence[float], mode: str, kind: str = "concat"
) -> torch.Tensor:
    """A row cost volume of either kind: (B, C, h, w) ×2 -> (B, :func:`volume_channels`, D, h, w).

    ``concat`` (:func:`concat_cost_volume`) lets the 3-D layers see each view's features as they are, so a
    network can read the face's outline from the reference view alone; ``difference``
    (:func:`difference_cost_volume`) keeps only what changes between the views at each shift, the matching
    signal itself (see docs/training.md for what this does to a short run on DP faces).
    """
    if check_volume_kind(kind) == "concat":
        return concat_cost_volume(ref, tgt, shifts, mode)
    return difference_cost_volume(ref, tgt, shifts, mode)


# ----------------------------------------------------------------------------------------------
# Regression


def soft_argmin(cost: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Disparity regression ``d = Σ_j softmax(cost)_j v_j`` (GC-Net / PSMNet).

    Args:
        cost: (B, D, H, W) matching scores (higher = more likely; PSMNet applies softmax to the cost as is).
        values: (D,) disparity of each bin in px.

    Returns:
        (B, H, W) expected disparity in px (float32 or wider, also under mixed precision).
    """
    return expected_disparity(softmax_bins(cost), values)


def softmax_bins(cost: torch.Tensor) -> torch.Tensor:
    """(B, D, H, W) matching scores -> their softmax over the D bins, in float32 or wider (the first half of
    :func:`soft_argmin`, for callers that also keep the probabilities)."""
    return F.softmax(at_least_float32(cost), dim=1)


def expected_disparity(prob: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``Σ_j prob_j v_j``: (B, D, H, W) bin probabilities and (D,) bin disparities (px) -> (B, H, W) px."""
    return (prob * values.view(1, -1, 1, 1).to(prob)).sum(dim=1)


def regress_volume(
    cost: torch.Tensor, size: tuple[int, int], bins: torch.Tensor, align_corners: bool = True
) -> torch.Tensor:
    """Upsample a (B, 1, D, h, w) cost trilinearly to (len(bins), H, W) and soft-argmin it -> (B, H, W) px."""
    up = upsample_volume(cost, (bins.numel(), *size), align_corners)
    return soft_argmin(up.squeeze(1), bins)


# ----------------------------------------------------------------------------------------------
# Weight initialisation


def init_msra_normal(module: nn.Module) -> None:
    """The release's init: Conv2d/Conv3d (and transposed) weights ~ N(0, sqrt(2 / (prod(kernel) · out_ch))),
    conv biases 0, BatchNorm weight 1 and bias 0, Linear bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            n = math.prod(m.kernel_size) * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def init_xavier(module: nn.Module) -> None:
    """DPNet's init: Xavier-uniform Conv2d / ConvTranspose2d weights, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


#: NNet's context-network dilations (Long et al. 2021), the default of :func:`dilated_head`.
CONTEXT_DILATIONS = (1, 2, 4, 8, 16, 1, 1)


def dilated_head(
    cin: int, widths: Sequence[int], dilations: Sequence[int] = CONTEXT_DILATIONS
) -> nn.Sequential:
    """Chain of 3×3 convs (no bias, padding = dilation), each followed by LeakyReLU(0.1), the last too."""
    layers: list[nn.Module] = []
    for cout, d in zip(widths, dilations, strict=True):
        layers += [nn.Conv2d(cin, cout, 3, 1, d, dilation=d, bias=False), nn.LeakyReLU(0.1)]
        cin = cout
    return nn.Sequential(*layers)


def hypothesis_points(
    disparities: torch.Tensor, K: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: int = 4
) -> torch.Tensor:
    """Camera-frame points of disparity hypotheses at 1/``scale`` resolution (metric, before normalisation).

    Args:
        disparities: (B, k, h, w) full-resolution disparities (px).
        K: (B, 3, 3) full-resolution intrinsics; a, b: (B,) Disp2Depth constants (``Z = a / (d - b)``, mm).

    Returns:
        (B, k, h, w, 3) points (X, Y, Z) in mm: pixel (u, v) of the 1/``scale`` grid lifted with the resized
        intrinsics to depth ``Z = a / (D - b)``; 0 where that depth is not finite and positive.
    """
    batch = disparities.shape[0]
    disparities = at_least_float32(disparities)
    depth = disparity_to_depth(
        disparities, a.reshape(batch, 1, 1, 1).to(disparities), b.reshape(batch, 1, 1, 1).to(disparities)
    )
    K_q = scale_intrinsics(K.to(disparities), 1.0 / scale)
    return torch.nan_to_num(backproject(depth, K_q[:, None]), nan=0.0)


def coordinate_volume(
    disparities: torch.Tensor, K: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: int = 4
) -> torch.Tensor:
    """:func:`hypothesis_points` min-max normalised per sample over all their values (x, y, z jointly).

    Returns:
        (B, 3, k, h, w) in [0, 1].
    """
    points = hypothesis_points(disparities, K, a, b, scale)
    batch = points.shape[0]
    flat = points.reshape(batch, -1)
    low = flat.min(dim=1).values.view(batch, 1, 1, 1, 1)
    high = flat.max(dim=1).values.view(batch, 1, 1, 1, 1)
    points = (points - low) / (high - low + 1e-6)
    return points.permute(0, 4, 1, 2, 3).contiguous()
