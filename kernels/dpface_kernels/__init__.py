"""Compiled PyTorch ops of the DP-Face kit.

``deform_conv3d`` is a 3D deformable convolution (trilinear sampling at learned offsets, optional DCNv2
modulation, groups and offset groups), registered as the custom op ``torch.ops.dpface.deform_conv3d`` with CPU
(OpenMP) and CUDA kernels in ``csrc/``. Shape inference (``register_fake``) and the backward
(``register_autograd`` -> ``torch.ops.dpface.deform_conv3d_backward``) are registered here, so the op works
with autograd and ``torch.compile``. Without the compiled library the pure-PyTorch ``reference`` is used,
after one warning.
"""

from __future__ import annotations

import warnings

import torch

from . import reference
from .reference import triple

try:
    from . import _C  # loading the shared library registers the dpface ops with the dispatcher
except (ImportError, OSError) as _error:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR: Exception | None = _error
else:
    _LOAD_ERROR = None

__all__ = ["deform_conv3d", "has_compiled", "has_cuda", "reference"]

_warned_fallback = False


def has_compiled() -> bool:
    """True when the compiled op library was loaded (``torch.ops.dpface.deform_conv3d`` exists)."""
    return _C is not None


def has_cuda() -> bool:
    """True when the compiled library contains the CUDA kernels (built with nvcc)."""
    return _C is not None and bool(getattr(_C, "with_cuda", 0))


def _warn_fallback(reason: str) -> None:
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"dpface_kernels: {reason}; using the slow pure-PyTorch reference for deform_conv3d. "
            "Build the kernels with `make kernels` (pip install --no-build-isolation -e kernels).",
            RuntimeWarning,
            stacklevel=3,
        )


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
    """3D deformable convolution (DCN, Dai et al. ICCV 2017; modulated as DCNv2, Zhu et al. CVPR 2019).

    Args:
        input: (N, C, T, H, W).
        offset: (N, offset_groups*3*kT*kH*kW, T', H', W'): for offset group g and sampling point k (t-major,
            then h, then w), channels g*3*K + 3k + (0, 1, 2) hold the shift (dt, dh, dw) in voxels.
        weight: (O, C/groups, kT, kH, kW).
        bias: (O,) or None.
        mask: (N, offset_groups*kT*kH*kW, T', H', W') modulation scalars, or None (all ones).
        stride, padding, dilation: int or (t, h, w), as for ``nn.Conv3d`` (zero padding).
        groups: convolution groups; offset_groups: channel groups sharing one set of offsets.

    Returns:
        (N, O, T', H', W'). Samples are trilinear; corners outside the volume read as zero.
    """
    args = (
        triple(stride, "stride"),
        triple(padding, "padding"),
        triple(dilation, "dilation"),
        groups,
        offset_groups,
    )
    if _C is None:
        _warn_fallback(f"the compiled library is not available ({_LOAD_ERROR})")
        return reference.deform_conv3d(input, offset, weight, bias, mask, *args)
    if input.is_cuda and not has_cuda():
        _warn_fallback("the compiled library was built without CUDA kernels")
        return reference.deform_conv3d(input, offset, weight, bias, mask, *args)
    return torch.ops.dpface.deform_conv3d(input, offset, weight, bias, mask, *args)


if _C is not None:

    @torch.library.register_fake("dpface::deform_conv3d")
    def _deform_conv3d_fake(
        input, offset, weight, bias, mask, stride, padding, dilation, groups, offset_groups
    ):
        torch._check(
            input.dim() == 5 and weight.dim() == 5, lambda: "deform_conv3d: input/weight must be 5-D"
        )
        torch._check(
            offset.dtype == input.dtype and weight.dtype == input.dtype,
            lambda: "deform_conv3d: input, offset and weight must share a dtype",
        )
        out = reference.output_size(
            tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation
        )
        return input.new_empty((input.shape[0], weight.shape[0], *out))

    @torch.library.register_fake("dpface::deform_conv3d_backward")
    def _deform_conv3d_backward_fake(
        grad_output, input, offset, weight, mask, stride, padding, dilation, groups, offset_groups
    ):
        grad_mask = torch.empty_like(mask) if mask is not None else input.new_empty((0,))
        return torch.empty_like(input), torch.empty_like(offset), torch.empty_like(weight), grad_mask

    def _setup_context(ctx, inputs, output):
        input, offset, weight, bias, mask, stride, padding, dilation, groups, offset_groups = inputs
        ctx.save_for_backward(input, offset, weight, mask)
        ctx.params = (stride, padding, dilation, groups, offset_groups)
        ctx.has_bias = bias is not None
        ctx.has_mask = mask is not None

    def _backward(ctx, grad_output):
        input, offset, weight, mask = ctx.saved_tensors
        grad_input, grad_offset, grad_weight, grad_mask = torch.ops.dpface.deform_conv3d_backward(
            grad_output, input, offset, weight, mask, *ctx.params
        )
        grad_bias = grad_output.sum((0, 2, 3, 4)) if ctx.has_bias else None
        return (
            grad_input,
            grad_offset,
            grad_weight,
            grad_bias,
            grad_mask if ctx.has_mask else None,
            None,
            None,
            None,
            None,
            None,
        )

    torch.library.register_autograd("dpface::deform_conv3d", _backward, setup_context=_setup_context)
