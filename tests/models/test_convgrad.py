"""The convolution weight gradient computed as a forward convolution (dpface_lib.models.convgrad) against the
definition in float64 (an explicit sum over shifted inputs), through autograd against PyTorch's own
convolution, and the channels-last 3-D aggregation of StereoDPNet against the default layout."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dpface_lib.models import build_model, convgrad
from dpface_lib.models.safeconv import Conv2d, Conv3d

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def weight_grad_by_definition(x, g, kernel, stride, padding, dilation):
    """dW[o, c, k] = Σ_{n, q} g[n, o, q] x_pad[n, c, q·s + k·d], one kernel tap at a time (float64)."""
    x, g = x.double(), g.double()
    pad = [p for axis in reversed(padding) for p in (axis, axis)]
    xp = F.pad(x, pad)
    out_size = g.shape[2:]
    grad = torch.zeros(g.shape[1], x.shape[1], *kernel, dtype=torch.float64)
    for tap in itertools.product(*(range(k) for k in kernel)):
        index = tuple(
            slice(k * d, k * d + (q - 1) * s + 1, s)
            for k, d, q, s in zip(tap, dilation, out_size, stride, strict=True)
        )
        window = xp[(slice(None), slice(None), *index)]  # (N, C, *Q)
        grad[(slice(None), slice(None), *tap)] = torch.einsum("no...,nc...->oc", g, window)
    return grad


CASES = [  # (input shape, out channels, kernel, stride, padding, dilation)
    ((2, 5, 9, 11), 3, (3, 3), (1, 1), (1, 1), (1, 1)),
    ((2, 4, 12, 10), 6, (3, 3), (2, 2), (2, 2), (2, 2)),
    ((3, 3, 16, 16), 2, (3, 3), (1, 1), (4, 4), (4, 4)),
    ((2, 4, 6, 9, 7), 5, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    ((2, 3, 8, 8, 8), 4, (3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1)),
    ((2, 6, 3, 8, 9), 3, (1, 3, 3), (1, 1, 1), (0, 1, 1), (1, 1, 1)),
    ((2, 6, 3, 8, 9), 7, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1)),
]


@pytest.mark.parametrize("shape, out, kernel, stride, padding, dilation", CASES)
def test_weight_grad_by_forward_matches_the_definition(shape, out, kernel, stride, padding, dilation):
    g_ = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g_)
    conv = (F.conv2d, F.conv3d)[len(kernel) - 2]
    y = conv(x, torch.zeros(out, shape[1], *kernel), None, stride, padding, dilation)
    g = torch.randn(y.shape, generator=g_)
    expected = weight_grad_by_definition(x, g, kernel, stride, padding, dilation)
    got = convgrad.weight_grad_by_forward(x, g, kernel, stride, padding, dilation)
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    x_cl = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    got_cl = convgrad.weight_grad_by_forward(x_cl, g, kernel, stride, padding, dilation)
    torch.testing.assert_close(got_cl.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


@pytest.mark.parametrize("cls, shape, kwargs", [
    (Conv2d, (2, 4, 10, 12), {"kernel_size": 3, "padding": 2, "dilation": 2, "bias": True}),
    (Conv3d, (2, 4, 4, 8, 8), {"kernel_size": 3, "padding": 1, "stride": 2, "bias": False}),
])
def test_conv_gradients_equal_pytorch_with_the_fast_weight_gradient(cls, shape, kwargs):
    torch.manual_seed(0)
    conv = cls(shape[1], 5, **kwargs).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    previous = convgrad.set_mode("on")
    try:
        assert convgrad.applies(conv, x)
        assert torch.autograd.gradcheck(lambda inp, w: convgrad._ConvFastWeightGrad.apply(
            inp, w, conv.bias, conv.stride, conv.padding, conv.dilation), (x, conv.weight))
        y_fast = conv(x)
        grads_fast = torch.autograd.grad(y_fast.square().sum(), [x, *conv.parameters()])
        convgrad.set_mode("off")
        assert not convgrad.applies(conv, x)
        y_ref = conv(x)
        grads_ref = torch.autograd.grad(y_ref.square().sum(), [x, *conv.parameters()])
    finally:
        convgrad.set_mode(previous)
    torch.testing.assert_close(y_fast, y_ref)
    for a, b in zip(grads_fast, grads_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_fast_path_stays_off_under_autocast_without_grad_and_for_groups():
    conv = Conv2d(4, 4, 3, padding=1)
    depthwise = Conv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(1, 4, 8, 8)
    previous = convgrad.set_mode("on")
    try:
        assert convgrad.applies(conv, x) and not convgrad.applies(depthwise, x)
        with torch.no_grad():
            assert not convgrad.applies(conv, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not convgrad.applies(conv, x)
        convgrad.set_mode("auto")
        x_cl = x.contiguous(memory_format=torch.channels_last)
        assert not convgrad.applies(conv, x_cl) or not convgrad.enabled()
    finally:
        convgrad.set_mode(previous)
    with pytest.raises(ValueError, match="must be one of"):
        convgrad.set_mode("fast")


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_stereodpnet_aggregation_channels_last_equals_default_layout(mode):
    """The hourglass on a channels-last volume (as StereoDPNet now runs it) gives the default layout's
    outputs and gradients to float32 rounding, with either weight-gradient path."""
    torch.manual_seed(0)
    model = build_model("stereodpnet", "tiny").train()
    in_channels = next(m for m in model.aggregation.modules() if isinstance(m, torch.nn.Conv3d)).in_channels
    volume = torch.randn(2, in_channels, 4, 8, 8)
    results = []
    previous = convgrad.set_mode(mode)
    try:
        for fmt in (torch.contiguous_format, torch.channels_last_3d):
            model.zero_grad()
            v = volume.clone().contiguous(memory_format=fmt).requires_grad_()
            costs, last = model.aggregation.forward_with_features(v)
            (sum(c.square().mean() for c in costs) + last.square().mean()).backward()
            grads = [p.grad.clone() for p in model.aggregation.parameters()]
            results.append(([c.detach() for c in costs] + [last.detach(), v.grad], grads))
    finally:
        convgrad.set_mode(previous)
    (out_a, grads_a), (out_b, grads_b) = results
    # training-mode BatchNorm divides by small batch deviations, which magnifies float32 rounding a little
    for a, b in zip(out_a + grads_a, out_b + grads_b, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4 * a.abs().max().item())
