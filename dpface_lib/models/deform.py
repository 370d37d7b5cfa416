"""3D deformable convolution layers (used by StereoDPNet's adaptive normal module).

``DeformConv3d`` holds the weights of a 3D convolution whose kernel taps are read at learned fractional
positions (Dai et al., "Deformable Convolutional Networks", ICCV 2017; modulation from Zhu et al.,
"Deformable ConvNets v2", CVPR 2019). ``DeformConv3dPack`` predicts those offsets itself from its input with a
plain ``nn.Conv3d`` initialised to zero, so a freshly built layer behaves exactly like ``nn.Conv3d``.

The op is ``dpface_kernels.deform_conv3d`` (compiled CPU/CUDA kernels, or the pure-PyTorch reference).
"""

from __future__ import annotations

import math

import dpface_kernels
import torch
from dpface_kernels.shapes import triple
from torch import nn

__all__ = ["DeformConv3d", "DeformConv3dPack"]

IntOr3 = int | tuple[int, int, int]


class DeformConv3d(nn.Module):
    """3D deformable convolution with explicit offsets (and optional modulation mask).

    forward(input (N, C, T, H, W), offset (N, offset_groups*3*K, T', H', W'), mask (N, offset_groups*K, T',
    H', W') or None) -> (N, out_channels, T', H', W'), K = kT*kH*kW. Offsets are (dt, dh, dw) per kernel tap
    in voxels, taps ordered t-major then h then w. Weights are initialised like ``nn.Conv3d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOr3 = 3,
        stride: IntOr3 = 1,
        padding: IntOr3 = 0,
        dilation: IntOr3 = 1,
        groups: int = 1,
        offset_groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"DeformConv3d: in_channels={in_channels} and out_channels={out_channels} must be "
                f"divisible by groups={groups}"
            )
        if in_channels % offset_groups:
            raise ValueError(
                f"DeformConv3d: in_channels={in_channels} must be divisible by offset_groups={offset_groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = triple(stride, "stride")
        self.padding = triple(padding, "padding")
        self.dilation = triple(dilation, "dilation")
        self.groups, self.offset_groups = groups, offset_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    @property
    def kernel_points(self) -> int:
        """K = kT*kH*kW, the number of sampling points per output voxel."""
        return math.prod(self.kernel_size)

    def reset_parameters(self) -> None:
        """Kaiming-uniform(a=√5) weights and U(±1/√fan_in) bias, as ``nn.Conv3d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(
        self, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return dpface_kernels.deform_conv3d(
            input,
            offset,
            self.weight,
            self.bias,
            mask,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.offset_groups,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
            f"offset_groups={self.offset_groups}, bias={self.bias is not None}"
        )


class DeformConv3dPack(DeformConv3d):
    """``DeformConv3d`` that predicts its own offsets (and, if ``modulated``, its mask) from the input.

    The predictor is an ``nn.Conv3d`` with the same kernel, stride, padding and dilation, producing
    offset_groups*3*K offset channels (plus offset_groups*K mask logits when modulated, squashed by a
    sigmoid as in DCNv2). It starts at zero, so the initial offsets are zero and the layer equals
    ``nn.Conv3d`` (times 0.5 when modulated). forward(input (N, C, T, H, W)) -> (N, out_channels, T', H', W');
    the last offsets are kept in ``self.last_offset`` (N, offset_groups*3*K, T', H', W') for inspection.
    """

    def __init__(self, *args, modulated: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.modulated = modulated
        per_point = 4 if modulated else 3
        self.conv_offset = nn.Conv3d(
            self.in_channels,
            self.offset_groups * per_point * self.kernel_points,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=True,
        )
        self.last_offset: torch.Tensor | None = None
        self.init_offset()

    def init_offset(self) -> None:
        """Zero the offset predictor: offsets start at 0 (and mask logits at 0, i.e. mask 0.5)."""
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        predicted = self.conv_offset(input)
        n_offset = self.offset_groups * 3 * self.kernel_points
        offset = predicted[:, :n_offset]
        mask = torch.sigmoid(predicted[:, n_offset:]) if self.modulated else None
        self.last_offset = offset.detach()
        return super().forward(input, offset, mask)
