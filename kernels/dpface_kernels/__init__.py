"""Compiled PyTorch ops of the DP-Face kit.

``deform_conv3d`` is a 3D deformable convolution (trilinear sampling at learned offsets, optional DCNv2
modulation, groups and offset groups), registered as the custom op ``torch.ops.dpface.deform_conv3d`` with CPU
and CUDA kernels in ``csrc/``. The CPU kernel runs on torch's intra-op threads (``torch.set_num_threads``) and
builds without OpenMP (gcc, or clang: Debian's or Apple's). The op returns ``(output, columns)``: with
``save_columns`` the forward keeps its sampled columns for the weight gradient (within
:data:`SAVE_COLUMNS_MAX_BYTES`), so the backward does not sample the input again. Shape inference
(``register_fake``) and the backward (``register_autograd`` -> ``torch.ops.dpface.deform_conv3d_backward``,
which computes only the gradients autograd needs) are registered here, so the op works with autograd and
``torch.compile``. Without the compiled library, or for tensors on a device it has no kernel for (Apple's
MPS), the pure-PyTorch ``reference`` is used, after one warning that names why.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from . import reference
from .shapes import output_size, triple

try:
    from . import _C  # loading the shared library registers the dpface ops with the dispatcher
except (ImportError, OSError) as _error:  # not built, or built against another torch
    _C = None
    _LOAD_ERROR: Exception | None = _error
else:
    _LOAD_ERROR = None

__all__ = [
    "KERNEL_DEVICES", "SAVE_COLUMNS_MAX_BYTES", "column_bytes", "column_shape", "deform_conv3d",
    "has_compiled", "has_cuda", "reference",
]

_warned_fallback = False
#: Device types the compiled library serves ("meta" through its shape functions); others use the reference.
KERNEL_DEVICES = ("cpu", "cuda", "meta")


def has_compiled() -> bool:
    """True when the compiled op library was loaded (``torch.ops.dpface.deform_conv3d`` exists); False only
    when it was not built, or failed to load (``_LOAD_ERROR`` says why, and so does the one warning that
    :func:`deform_conv3d` gives before using the reference)."""
    return _C is not None


def has_cuda() -> bool:
    """True when the compiled library contains the CUDA kernels (built with nvcc)."""
    return _C is not None and bool(getattr(_C, "with_cuda", 0))


_BUILD_HINT = "build the kernels with `make kernels` (pip install --no-build-isolation -e kernels)"


def _warn_fallback(reason: str) -> None:
    """One RuntimeWarning per process, naming why the reference is used."""
    global _warned_fallback
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            f"dpface_kernels: {reason}; using the slow pure-PyTorch reference for deform_conv3d.",
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
        _warn_fallback(f"the compiled library is not available ({_LOAD_ERROR}); {_BUILD_HINT}")
        return reference.deform_conv3d(input, offset, weight, bias, mask, *args)
    if input.is_cuda and not has_cuda():
        _warn_fallback(f"the compiled library was built without CUDA kernels; {_BUILD_HINT} with nvcc")
        return reference.deform_conv3d(input, offset, weight, bias, mask, *args)
    if input.device.type not in KERNEL_DEVICES:
        _warn_fallback(f"the compiled library has no kernel for {input.device.type} tensors")
        return reference.deform_conv3d(input, offset, weight, bias, mask, *args)
    save = _save_columns(input, weight, args)
    return torch.ops.dpface.deform_conv3d(input, offset, weight, bias, mask, *args, save)[0]


#: Largest column buffer (bytes, all N samples) that the forward keeps for the backward's weight gradient;
#: larger ones are sampled again in the backward. Saving trades memory for one sampling pass: the op's peak
#: grows by N-1 per-sample column blocks (none at N = 1), and the backward gets 10-15 % faster on the CPU and
#: about 8 % on a GPU (docs/benchmarks.md). Environment variable DPFACE_SAVE_COLUMNS_MAX_MB overrides it
#: (0 = never save).
SAVE_COLUMNS_MAX_BYTES = int(float(os.environ.get("DPFACE_SAVE_COLUMNS_MAX_MB", "256")) * 2**20)


def column_shape(input: torch.Tensor, weight: torch.Tensor, args: tuple) -> tuple[int, int, int]:
    """(N, C*kT*kH*kW, T'*H'*W'): the columns of one call; ``args`` = (stride, padding, dilation, ...)."""
    stride, padding, dilation = args[:3]
    out = output_size(tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation)
    taps = weight.shape[2] * weight.shape[3] * weight.shape[4]
    return input.shape[0], input.shape[1] * taps, math.prod(out)


def column_bytes(input: torch.Tensor, weight: torch.Tensor, args: tuple) -> int:
    """Bytes of the columns of one call (:func:`column_shape`)."""
    return math.prod(column_shape(input, weight, args)) * input.element_size()


def _save_columns(input: torch.Tensor, weight: torch.Tensor, args: tuple) -> bool:
    """Keep the forward's columns when a weight gradient will be needed and they fit the budget."""
    if not (torch.is_grad_enabled() and weight.requires_grad):
        return False
    return column_bytes(input, weight, args) <= SAVE_COLUMNS_MAX_BYTES


if _C is not None:

    @torch.library.register_fake("dpface::deform_conv3d")
    def _deform_conv3d_fake(
        input, offset, weight, bias, mask, stride, padding, dilation, groups, offset_groups,
        save_columns=False,
    ):
        torch._check(
            input.dim() == 5 and weight.dim() == 5, lambda: "deform_conv3d: input/weight must be 5-D"
        )
        torch._check(
            offset.dtype == input.dtype and weight.dtype == input.dtype,
            lambda: "deform_conv3d: input, offset and weight must share a dtype",
        )
        out = output_size(
            tuple(input.shape[2:]), tuple(weight.shape[2:]), stride, padding, dilation
        )
        args = (stride, padding, dilation)
        columns_shape = column_shape(input, weight, args) if save_columns else (0,)
        return input.new_empty((input.shape[0], weight.shape[0], *out)), input.new_empty(columns_shape)

    @torch.library.register_fake("dpface::deform_conv3d_backward")
    def _deform_conv3d_backward_fake(
        grad_output, input, offset, weight, mask, columns, stride, padding, dilation, groups, offset_groups,
        output_mask,
    ):
        need_input, need_offset_mask, need_weight = output_mask
        none = input.new_empty((0,))
        return (
            torch.empty_like(input) if need_input else none,
            torch.empty_like(offset) if need_offset_mask else none,
            torch.empty_like(weight) if need_weight else none,
            torch.empty_like(mask) if (need_offset_mask and mask is not None) else none,
        )

    def _setup_context(ctx, inputs, output):
        input, offset, weight, bias, mask, stride, padding, dilation, groups, offset_groups, _save = inputs
        columns = output[1]
        ctx.mark_non_differentiable(columns)
        ctx.set_materialize_grads(False)  # else autograd allocates a zero gradient as large as the columns
        ctx.save_for_backward(input, offset, weight, mask, columns)
        ctx.params = (stride, padding, dilation, groups, offset_groups)
        ctx.has_bias = bias is not None
        ctx.has_mask = mask is not None

    def _backward(ctx, grad_output, _grad_columns):
        input, offset, weight, mask, columns = ctx.saved_tensors
        if grad_output is None:  # only possible without materialised gradients: nothing flows back
            return (None,) * 11
        need = ctx.needs_input_grad  # (input, offset, weight, bias, mask, ...)
        output_mask = [need[0], need[1] or need[4], need[2]]
        grads = (None, None, None, None)
        if any(output_mask):
            grads = torch.ops.dpface.deform_conv3d_backward(
                grad_output, input, offset, weight, mask, columns, *ctx.params, output_mask
            )
        grad_input, grad_offset, grad_weight, grad_mask = grads
        grad_bias = grad_output.sum((0, 2, 3, 4)) if ctx.has_bias and need[3] else None
        return (
            grad_input if need[0] else None,
            grad_offset if need[1] else None,
            grad_weight if need[2] else None,
            grad_bias,
            grad_mask if ctx.has_mask and need[4] else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )

    torch.library.register_autograd("dpface::deform_conv3d", _backward, setup_context=_setup_context)

    # Under autocast (Lightning's "bf16-mixed", torch.autocast) the op runs in float32: its kernels are
    # written for float and double, and trilinear sampling at sub-voxel offsets needs float32's mantissa.
    # The inputs are cast up, the output is float32, and the autocast ops that follow cast it down again.
    for _device_type in ("cpu", "cuda"):
        torch.library.register_autocast("dpface::deform_conv3d", _device_type, torch.float32)
