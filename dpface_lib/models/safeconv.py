"""Convolutions that stay correct under CPU bfloat16 autocast when the input is smaller than the kernel.

On the CPU (torch 2.14.1, oneDNN), the bfloat16 backward of a convolution whose input is smaller than its
kernel along some axis returns a wrong weight gradient in some calls: non-finite, ~1e33, or finite with
the wrong sign. Measured against ``torch.nn.grad.conv2d_weight`` in float32 on an AVX512-BF16 CPU:

* 2-D, 7×7 kernel, 2×2 input, 120-256 channels: relative error 0.9 to 4e37 (the same layer with 112
  channels, or with a 3×3 input, is exact to bfloat16 rounding); 5×5 on 1×1, 9×9 on 3×3 alike;
* 3-D, 3×3×3 kernel over a volume 2 levels deep: NaN in 7-20 calls of 300 (16-32 channels);
* never for depthwise, strided or transposed convolutions, nor in float32.

One such step turns every weight into NaN. Maps that small appear at the coarsest levels (DPNet's 1/16
head on a 32 px crop, the tiny hourglasses' 2-level volumes), where float32 costs next to nothing, so
:class:`Conv2d` and :class:`Conv3d` run in float32 when any spatial side of the input is shorter than the
kernel's extent ``dilation·(k-1)+1``. :func:`guard_convs` gives every plain convolution of a built model
that behaviour; the state dict is unchanged (the classes add no parameters).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv2d", "Conv3d", "guard_convs", "input_smaller_than_kernel"]


def input_smaller_than_kernel(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> bool:
    """Whether some spatial side of ``x`` ((B, C, *spatial)) is shorter than ``conv``'s kernel extent."""
    sides = x.shape[2:]
    return any(s < d * (k - 1) + 1 for s, k, d in zip(sides, conv.kernel_size, conv.dilation, strict=True))


def _float32_needed(x: torch.Tensor, conv: nn.Conv2d | nn.Conv3d) -> bool:
    return x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and input_smaller_than_kernel(x, conv)


def _forward(conv: nn.Conv2d | nn.Conv3d, parent: type, x: torch.Tensor) -> torch.Tensor:
    if _float32_needed(x, conv):
        with torch.autocast("cpu", enabled=False):
            return parent.forward(conv, x.float() if x.element_size() < 4 else x)
    return parent.forward(conv, x)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs in float32 under CPU autocast when its input is smaller than its kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, nn.Conv2d, x)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs in float32 under CPU autocast when its input is smaller than its kernel
    (a 3×3×3 kernel over a volume 2 levels deep, the ``tiny`` hourglasses' coarsest level)."""

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
