"""Convolution weight gradients computed as a forward convolution, for CPUs where oneDNN has no fast kernel.

The weight gradient of a convolution (stride ``s``, dilation ``d``, zero padding ``p``, one group) is

    dW[o, c, k] = Σ_{n, q} g[n, o, q] · x_pad[n, c, q·s + k·d]

over the batch ``n`` and the output positions ``q`` (per spatial axis). Swapping the roles of the batch and
channel axes, that is itself a convolution: the input ``x_pad`` seen as (C, N, ...) convolved with the output
gradient ``g`` seen as (O, N, ...) as its kernel, at stride ``d`` and dilation ``s``, gives (C, O, K', ...)
with K' >= K, of which the first K positions per axis are ``dW`` transposed. The sum is the same; only its
order differs, so the result equals the library's to float rounding (the tests compare both against float64).

Why: with oneDNN limited to AVX2 (no AVX-512), PyTorch's CPU convolution computes the weight gradient with
oneDNN's im2col + GEMM implementation (``x64:gemm:jit``), which for the small channel counts of the
``tiny`` teaching models is 2-3x slower than the forward convolution on one thread and, on a busy 2-core
machine with two threads, 10-30x slower; the forward convolution that replaces it runs oneDNN's direct AVX2
kernel. With AVX-512 oneDNN's own backward kernel is faster and is kept. The measured gain is mixed (one
float32 AVX2 thread on a loaded 2-core AMD EPYC: a 16->16 3x3x3 convolution's fwd+bwd 0.026 against 0.034 s of
CPU time, but slower for the ANM's 81-channel offset convolutions; a StereoDPNet step 1.04x), so the path
is opt-in: mode ``"off"`` by default, ``DPFACE_CONV_WEIGHT_GRAD=auto`` or ``on`` to use it.

:func:`conv_with_fast_weight_grad` is used by :class:`dpface_lib.models.safeconv.Conv2d` /
:class:`~dpface_lib.models.safeconv.Conv3d` (every plain convolution of a model built by ``build_model``)
in float32/float64 training outside autocast when :func:`enabled` says so; the input gradient is still
PyTorch's own (oneDNN's direct backward-data kernel, fast on AVX2).
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["applies", "conv_with_fast_weight_grad", "enabled", "set_mode", "weight_grad_by_forward"]

_MODES = ("auto", "on", "off")
_mode = os.environ.get("DPFACE_CONV_WEIGHT_GRAD", "off")
# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA) without AVX-512
_NO_AVX512_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


def set_mode(mode: str) -> str:
    """Select the weight-gradient path: ``"auto"`` (:func:`enabled` decides from the CPU), ``"on"`` (always
    the forward-convolution form) or ``"off"`` (always PyTorch's). Returns the previous mode. The environment
    variable ``DPFACE_CONV_WEIGHT_GRAD`` sets the initial mode."""
    global _mode
    if mode not in _MODES:
        raise ValueError(f"conv weight-gradient mode must be one of {_MODES}, got {mode!r}")
    previous, _mode = _mode, mode
    return previous


@functools.cache
def _onednn_without_avx512() -> bool:
    """True on x86-64 when oneDNN's convolutions run without AVX-512: ATen's CPU capability is below
    AVX-512 (the CPU has none, or ``ATEN_CPU_CAPABILITY`` limits it) or ``ONEDNN_MAX_CPU_ISA`` names an ISA
    without it."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16"):
        return True
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in _NO_AVX512_ISAS


def enabled() -> bool:
    """Whether convolutions use the forward-convolution weight gradient (mode ``"on"``, or ``"auto"`` on an
    x86-64 CPU whose oneDNN runs without AVX-512)."""
    if _mode == "auto":
        return _onednn_without_avx512()
    if _mode not in _MODES:
        raise ValueError(f"DPFACE_CONV_WEIGHT_GRAD must be one of {_MODES}, got {_mode!r}")
    return _mode == "on"


def weight_grad_by_forward(
    x: torch.Tensor,
    grad_output: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """Weight gradient of a one-group zero-padded convolution, computed as a forward convolution.

    Args:
        x: (N, C, *L) convolution input.
        grad_output: (N, O, *Q) gradient of the convolution's output.
        kernel_size, stride, padding, dilation: per spatial axis (1 to 3 axes).

    Returns:
        (O, C, *kernel_size) ``Σ_{n,q} grad_output[n, o, q] · x_pad[n, c, q·stride + k·dilation]``.
    """
    dims = x.dim() - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    pad = [p for axis in reversed(padding) for p in (axis, axis)]
    x_pad = F.pad(x, pad) if any(padding) else x
    full = conv(x_pad.transpose(0, 1), grad_output.transpose(0, 1), stride=dilation, dilation=stride)
    index = (slice(None), slice(None), *(slice(0, k) for k in kernel_size))
    return full[index].transpose(0, 1).contiguous()


class _ConvFastWeightGrad(torch.autograd.Function):
    """Convolution whose backward takes the input gradient from PyTorch and the weight gradient from
    :func:`weight_grad_by_forward`."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, bias is not None)
        conv = (F.conv1d, F.conv2d, F.conv3d)[x.dim() - 3]
        return conv(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conf
        grad_output = grad_output.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            zeros = [0] * len(stride)
            grad_x = torch.ops.aten.convolution_backward(
                grad_output, x, weight, None, stride, padding, dilation, False, zeros, 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = weight_grad_by_forward(x, grad_output, weight.shape[2:], stride, padding, dilation)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_output.sum(dim=[0, *range(2, grad_output.dim())])
        return grad_x, grad_w, grad_b, None, None, None


def _channels_last(x: torch.Tensor) -> bool:
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and x.shape[1] > 1 and x.is_contiguous(memory_format=fmt) and not x.is_contiguous()


def applies(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` takes the fast weight-gradient path: :func:`enabled`, a float32/float64 CPU tensor
    outside autocast, gradients recorded for the weight, one group, numeric zero padding; in mode ``"auto"``
    not for a channels-last ``x``, whose weight gradient oneDNN computes faster than this form on one
    thread (docs/benchmarks.md)."""
    return (
        enabled()
        and not (_mode == "auto" and _channels_last(x))
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and x.dtype == conv.weight.dtype
        and torch.is_grad_enabled()
        and conv.weight.requires_grad
        and not torch.is_autocast_enabled("cpu")
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and x.dim() == conv.weight.dim()
    )


def conv_with_fast_weight_grad(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with :func:`weight_grad_by_forward` as the weight gradient (call when :func:`applies`)."""
    return _ConvFastWeightGrad.apply(
        x, conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
    )
