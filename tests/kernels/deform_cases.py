"""Shared helpers for the kernel tests: random problems of the 3D deformable convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
)
DEVICES = ["cpu", CUDA]


def make_problem(
    n: int = 2,
    c: int = 4,
    o: int = 6,
    size: tuple[int, int, int] = (3, 4, 5),
    kernel: tuple[int, int, int] = (3, 3, 3),
    stride: tuple[int, int, int] = (1, 1, 1),
    padding: tuple[int, int, int] = (1, 1, 1),
    dilation: tuple[int, int, int] = (1, 1, 1),
    groups: int = 1,
    offset_groups: int = 1,
    offset_scale: float = 1.5,
    with_mask: bool = True,
    with_bias: bool = True,
    dtype: torch.dtype = torch.float64,
    device: str = "cpu",
    seed: int = 0,
) -> dict:
    """Random input/offset/weight/bias/mask (offsets ~ N(0, offset_scale²) voxels, mask in (0, 1))."""
    gen = torch.Generator().manual_seed(seed)
    k = kernel[0] * kernel[1] * kernel[2]
    out = tuple(
        (s + 2 * p - d * (kk - 1) - 1) // st + 1
        for s, kk, st, p, d in zip(size, kernel, stride, padding, dilation, strict=True)
    )

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).to(device)

    return {
        "input": rand(n, c, *size),
        "offset": rand(n, offset_groups * 3 * k, *out, scale=offset_scale),
        "weight": rand(o, c // groups, *kernel),
        "bias": rand(o) if with_bias else None,
        "mask": torch.rand(n, offset_groups * k, *out, generator=gen, dtype=dtype).to(device)
        if with_mask
        else None,
        "stride": stride,
        "padding": padding,
        "dilation": dilation,
        "groups": groups,
        "offset_groups": offset_groups,
    }


def call(fn, p: dict, **overrides):
    """Call a deform_conv3d implementation on a problem dict."""
    q = {**p, **overrides}
    return fn(
        q["input"],
        q["offset"],
        q["weight"],
        q["bias"],
        q["mask"],
        q["stride"],
        q["padding"],
        q["dilation"],
        q["groups"],
        q["offset_groups"],
    )


def shifted(x: torch.Tensor, shift: tuple[int, int, int], padding: int) -> torch.Tensor:
    """Zero-padded volume read at a whole-voxel shift.

    y[..., i, j, l] = x(i - p + st, j - p + sh, l - p + sw), zero where that lies outside x;
    y is (N, C, T + 2p, H + 2p, W + 2p) for x (N, C, T, H, W).
    """
    margin = padding + max(abs(s) for s in shift)
    big = F.pad(x, (margin,) * 6)
    index = tuple(
        slice(margin - padding + s, margin - padding + s + n + 2 * padding)
        for s, n in zip(shift, x.shape[2:], strict=True)
    )
    return big[(..., *index)]
