"""Convolutions that stay correct under CPU bfloat16 autocast when the input is smaller than the kernel.

On the CPU (torch 2.14.1, oneDNN), the bfloat16 backward of a convolution whose input is smaller than its
kernel along some axis returns a wrong weight gradient in some calls: non-finite, ~1e33, or finite with
the wrong sign. Measured against ``torch.nn.grad.conv2d_weight`` in float32 on an AVX512-BF16 CPU:

* 2-D, 7×7 kernel, 2×2 input, 120-256 channels: relative error 0.9 to 4e37 (the same layer with 112
  channels, or with a 3×3 input, is exact to bfloat16 rounding); 5×5 on 1×1, 9×9 on 3×3 alike;
* 3-D, 3×3×3 kernel over a volume 2 levels deep: NaN in 7-20 calls of 300 (16-32 channels); a 2×3×3 kernel
  over 1 level, and a 1×3×3 kernel at stride 2 with a depth padding of 1: non-finite or off by 1.0;
* never for depthwise, strided, dilated or transposed convolutions, nor in float32 (a 3×3 kernel at
  dilation 4-32 on 8-32 px maps, 16-128 channels, is exact to rounding however far it reaches past the map).

One such step turns every weight into NaN. Maps that small appear at the coarsest levels (DPNet's 1/16
head on a 32 px crop, the tiny hourglasses' 2-level volumes), where float32 costs next to nothing, so
:class:`Conv2d` and :class:`Conv3d` run in float32 when, along an undilated axis, the input is shorter
than the kernel or the padding is as wide as it, and every 3-D convolution of a volume at most 2 levels
deep does (those NaN are rare per call, so 20 clean calls of one shape do not clear it). Dilated axes keep
bfloat16: the defect was never seen there, and NNet's context head
(dilation 16 on 32 px maps at the ``tiny`` crop) would otherwise change precision. :func:`guard_convs`
gives every plain convolution of a built model that behaviour; the state dict is unchanged (the classes
add no parameters). In float32 training outside autocast the same classes take their weight gradient from
:mod:`dpface_lib.models.convgrad` where that is faster (oneDNN without AVX-512).
"""

from __future__ import annotations

import torch
from torch import nn

from dpface_lib.models import convgrad

__all__ = ["Conv2d", "Conv3d", "guard_convs", "needs_float32"]


def needs_float32(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> bool:
    """Whether ``conv`` on ``x`` ((B, C, *spatial)) is in the defect's regime: along an undilated axis the
    input is shorter than the kernel or the padding is as wide as the kernel, or ``x`` is a volume at most
    2 levels deep (the rare NaN of the 3-D case, kept in float32 for every kernel)."""
    if x.ndim == 5 and x.shape[2] <= 2:
        return True
    axes = zip(x.shape[2:], conv.kernel_size, conv.dilation, conv.padding, strict=True)
    return any(d == 1 and (s < k or p >= k) for s, k, d, p in axes)


def _fallback_applies(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and needs_float32(x, conv)


def _forward(conv: nn.Conv2d | nn.Conv3d, parent: type, x: torch.Tensor) -> torch.Tensor:
    if _fallback_applies(x, conv):
        with torch.autocast("cpu", enabled=False):
            return parent.forward(conv, x.float() if x.element_size() < 4 else x)
    if convgrad.applies(conv, x):
        return convgrad.conv_with_fast_weight_grad(conv, x)
    return parent.forward(conv, x)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs in float32 under CPU autocast where :func:`needs_float32` says so."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, nn.Conv2d, x)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs in float32 under CPU autocast where :func:`needs_float32` says so (e.g. a
    volume 2 levels deep, the ``tiny`` hourglasses' coarsest level)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, nn.Conv3d, x)


def guard_convs(model: nn.Module) -> nn.Module:
    """Give every plain ``nn.Conv2d`` / ``nn.Conv3d`` of ``model`` (its own, or a library's such as
    torchvision's ResNet) the float32 fallback of :class:`Conv2d` / :class:`Conv3d`, in place; returns
    ``model``. Subclasses with their own ``forward`` are left alone; parameters and buffers are untouched."""
    swap = {nn.Conv2d: Conv2d, nn.Conv3d: Conv3d}
    for module in model.modules():
        if type(module) in swap:
            module.__class__ = swap[type(module)]
    return model
