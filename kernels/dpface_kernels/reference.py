"""Pure-PyTorch 3D deformable convolution: the readable definition of the op, the test oracle and the fallback
used when the compiled library is not available.

A 3D deformable convolution (Dai et al., "Deformable Convolutional Networks", ICCV 2017, lifted from 2D to 3D;
modulation mask from Zhu et al., "Deformable ConvNets v2", CVPR 2019) computes, for output voxel p0,

    y(p0) = b + sum_k w_k * m_k(p0) * x(p0 * stride - padding + p_k * dilation + Δp_k(p0))

where p_k runs over the kT*kH*kW kernel taps (t-major, then h, then w), Δp_k = (dt, dh, dw) is a learned
fractional offset in voxels and m_k an optional modulation scalar. x at a fractional position is read with
trilinear interpolation; each of the 8 surrounding grid corners that lies outside the volume contributes zero.

Autograd differentiates this code directly: the interpolation weights are linear in the fractional part of the
position, so gradients with respect to the offsets come out of the same expression.
"""

from __future__ import annotations

import torch

from .shapes import output_size, triple

__all__ = ["deform_conv3d", "sample_columns"]


def sample_columns(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    dilation: tuple[int, int, int],
    offset_groups: int,
) -> torch.Tensor:
    """Modulated trilinear samples of every channel at every sampling point of every output voxel.

    input (N, C, T, H, W); offset (N, offset_groups*3*K, T', H', W') with channel ``3k + a`` of a group
    holding the shift of sampling point k along axis a (0 = t, 1 = h, 2 = w) in voxels; mask (N,
    offset_groups*K, T', H', W') or None. Returns (N, C, K, L) with K = kT*kH*kW and L = T'*H'*W'.
    """
    n, c, t, h, w = input.shape
    k_t, k_h, k_w = kernel
    k = k_t * k_h * k_w
    out_t, out_h, out_w = output_size((t, h, w), kernel, stride, padding, dilation)
    length = out_t * out_h * out_w
    groups = offset_groups
    dev, dt = input.device, input.dtype

    # Undeformed positions (K, L) along each axis.
    kt, kh, kw = torch.meshgrid(
        torch.arange(k_t, device=dev),
        torch.arange(k_h, device=dev),
        torch.arange(k_w, device=dev),
        indexing="ij",
    )
    ot, oh, ow = torch.meshgrid(
        torch.arange(out_t, device=dev),
        torch.arange(out_h, device=dev),
        torch.arange(out_w, device=dev),
        indexing="ij",
    )
    base = [
        (o.reshape(1, -1) * s - p + kk.reshape(-1, 1) * d).to(dt)
        for o, kk, s, p, d in zip((ot, oh, ow), (kt, kh, kw), stride, padding, dilation, strict=True)
    ]
    shift = offset.reshape(n, groups, k, 3, length)
    pos = [base[a] + shift[:, :, :, a] for a in range(3)]  # each (N, G, K, L)
    low = [torch.floor(p.detach()) for p in pos]
    frac = [p - f for p, f in zip(pos, low, strict=True)]  # differentiable w.r.t. the offsets
    low = [f.long() for f in low]

    values = input.reshape(n, groups, c // groups, t * h * w)
    sampled = torch.zeros(n, groups, c // groups, k * length, dtype=dt, device=dev)
    for corner in range(8):
        bits = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
        idx = [lo + b for lo, b in zip(low, bits, strict=True)]
        inside = (idx[0] >= 0) & (idx[0] < t) & (idx[1] >= 0) & (idx[1] < h) & (idx[2] >= 0) & (idx[2] < w)
        weight = torch.ones_like(frac[0])
        for a in range(3):
            weight = weight * (frac[a] if bits[a] else 1 - frac[a])
        weight = weight * inside
        flat = torch.where(inside, (idx[0] * h + idx[1]) * w + idx[2], torch.zeros_like(idx[0]))
        flat = flat.reshape(n, groups, 1, k * length).expand(n, groups, c // groups, k * length)
        sampled = sampled + values.gather(3, flat) * weight.reshape(n, groups, 1, k * length)
    if mask is not None:
        sampled = sampled * mask.reshape(n, groups, 1, k * length)
    return sampled.reshape(n, c, k, length)


def deform_conv3d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    stride: int | tuple[int, int, int] = 1,
    padding: int | tuple[int, int, int] = 0,
    dilation: int | tuple[int, int, int] = 1,
    groups: int = 1,
    offset_groups: int = 1,
) -> torch.Tensor:
    """3D deformable convolution in plain PyTorch (same contract as ``dpface_kernels.deform_conv3d``).

    Shapes: input (N, C, T, H, W); weight (O, C/groups, kT, kH, kW); bias (O,) or None;
    offset (N, offset_groups*3*kT*kH*kW, T', H', W'), per sampling point (dt, dh, dw) in voxels;
    mask (N, offset_groups*kT*kH*kW, T', H', W') or None. Returns (N, O, T', H', W').
    """
    stride, padding, dilation = (
        triple(stride, "stride"),
        triple(padding, "padding"),
        triple(dilation, "dilation"),
    )
    if input.dim() != 5 or weight.dim() != 5:
        raise ValueError(
            f"deform_conv3d: input and weight must be 5-D, got {tuple(input.shape)}, {tuple(weight.shape)}"
        )
    n, c = input.shape[:2]
    o, c_per_group = weight.shape[:2]
    kernel = tuple(weight.shape[2:])
    k = kernel[0] * kernel[1] * kernel[2]
    if c % groups or o % groups or c_per_group * groups != c:
        raise ValueError(
            f"deform_conv3d: weight {tuple(weight.shape)} does not fit {c} input channels in {groups} groups"
        )
    if c % offset_groups:
        raise ValueError(f"deform_conv3d: {c} input channels not divisible by offset_groups={offset_groups}")
    out = output_size(tuple(input.shape[2:]), kernel, stride, padding, dilation)
    if offset.shape != (n, offset_groups * 3 * k, *out):
        raise ValueError(
            f"deform_conv3d: offset must be {(n, offset_groups * 3 * k, *out)}, got {tuple(offset.shape)}"
        )
    if mask is not None and mask.shape != (n, offset_groups * k, *out):
        raise ValueError(
            f"deform_conv3d: mask must be {(n, offset_groups * k, *out)}, got {tuple(mask.shape)}"
        )
    columns = sample_columns(input, offset, mask, kernel, stride, padding, dilation, offset_groups)
    columns = columns.reshape(n, groups, c_per_group * k, -1)
    result = torch.einsum("gok,ngkl->ngol", weight.reshape(groups, o // groups, c_per_group * k), columns)
    result = result.reshape(n, o, *out)
    if bias is not None:
        result = result + bias.reshape(1, o, 1, 1, 1)
    return result
