"""The pure-PyTorch reference (always tested: the oracle and the fallback) against independent oracles."""

from __future__ import annotations

import warnings

import dpface_kernels
import pytest
import torch
import torch.nn.functional as F
import torchvision
from deform_cases import call, make_problem, shifted
from dpface_kernels import reference


def test_zero_offsets_equal_conv3d():
    p = make_problem(stride=(1, 2, 1), padding=(1, 0, 2), dilation=(1, 1, 2), groups=2, size=(4, 6, 7))
    p["offset"] = torch.zeros_like(p["offset"])
    p["mask"] = torch.ones_like(p["mask"])
    expected = F.conv3d(
        p["input"], p["weight"], p["bias"], p["stride"], p["padding"], p["dilation"], p["groups"]
    )
    torch.testing.assert_close(call(reference.deform_conv3d, p), expected)
    torch.testing.assert_close(call(reference.deform_conv3d, p, mask=None), expected)


def test_integer_offsets_equal_conv3d_of_shifted_input():
    # Every sampling point moved by the same whole-voxel shift: the same as convolving the shifted volume.
    p = make_problem(with_mask=False, size=(4, 5, 6))
    shift = (1, -2, 1)
    offset = torch.tensor(shift, dtype=p["offset"].dtype).view(1, 1, 3, 1, 1, 1)
    p["offset"] = offset.expand(2, 27, 3, *p["offset"].shape[2:]).reshape(p["offset"].shape)
    expected = F.conv3d(shifted(p["input"], shift, padding=1), p["weight"], p["bias"])
    torch.testing.assert_close(call(reference.deform_conv3d, p), expected)


def test_samples_far_outside_read_zero():
    p = make_problem()
    p["offset"] = torch.full_like(p["offset"], 50.0)
    expected = p["bias"].view(1, -1, 1, 1, 1).expand(2, -1, 3, 4, 5)
    torch.testing.assert_close(call(reference.deform_conv3d, p), expected)


@pytest.mark.parametrize("with_mask", [False, True])
def test_equals_torchvision_deform_conv2d(with_mask):
    # kT = T = 1 and dt = 0: the 3D op reduces to the 2D DCN with (dh, dw) offsets.
    gen = torch.Generator().manual_seed(1)
    n, c, o, h, w, og = 2, 4, 3, 6, 7, 2
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weight = torch.randn(o, c, 3, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(o, generator=gen, dtype=torch.float64)
    off2 = torch.randn(n, og * 2 * 9, h, w, generator=gen, dtype=torch.float64) * 2
    mask = torch.rand(n, og * 9, h, w, generator=gen, dtype=torch.float64) if with_mask else None
    expected = torchvision.ops.deform_conv2d(x, off2, weight, bias, padding=(1, 1), mask=mask)
    off3 = torch.zeros(n, og, 9, 3, h, w, dtype=torch.float64)
    off3[:, :, :, 1:] = off2.view(n, og, 9, 2, h, w)
    got = reference.deform_conv3d(
        x[:, :, None],
        off3.view(n, og * 27, 1, h, w),
        weight[:, :, None],
        bias,
        None if mask is None else mask[:, :, None],
        padding=(0, 1, 1),
        offset_groups=og,
    )
    torch.testing.assert_close(got[:, :, 0], expected)


@pytest.mark.parametrize("with_mask", [False, True])
def test_reference_gradcheck(with_mask):
    p = make_problem(
        n=1,
        c=2,
        o=2,
        size=(2, 3, 3),
        kernel=(2, 2, 2),
        padding=(0, 1, 0),
        offset_groups=2,
        with_mask=with_mask,
    )
    names = ["input", "offset", "weight", "bias"] + (["mask"] if with_mask else [])
    tensors = [p[k].requires_grad_() for k in names]

    def fn(*ts):
        return call(reference.deform_conv3d, {**p, **dict(zip(names, ts, strict=True))})

    assert torch.autograd.gradcheck(fn, tensors)


def test_reference_rejects_bad_shapes():
    p = make_problem()
    with pytest.raises(ValueError, match="offset must be"):
        call(reference.deform_conv3d, p, offset=p["offset"][:, :-1])
    with pytest.raises(ValueError, match="mask must be"):
        call(reference.deform_conv3d, p, mask=p["mask"][:, :-1])
    with pytest.raises(ValueError, match="offset_groups"):
        call(reference.deform_conv3d, p, offset_groups=3)
    with pytest.raises(ValueError, match="stride"):
        reference.deform_conv3d(p["input"], p["offset"], p["weight"], stride=(1, 1))


def test_fallback_warns_once_and_uses_reference(monkeypatch):
    p = make_problem()
    monkeypatch.setattr(dpface_kernels, "_C", None)
    monkeypatch.setattr(dpface_kernels, "_warned_fallback", False)
    assert not dpface_kernels.has_compiled() and not dpface_kernels.has_cuda()
    with pytest.warns(RuntimeWarning, match="pure-PyTorch reference"):
        first = call(dpface_kernels.deform_conv3d, p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call must not warn again
        second = call(dpface_kernels.deform_conv3d, p)
    torch.testing.assert_close(first, call(reference.deform_conv3d, p))
    torch.testing.assert_close(second, first)


@pytest.mark.skipif(not dpface_kernels.has_compiled(), reason="needs the compiled library")
def test_device_without_a_kernel_warns_once_and_uses_reference(monkeypatch):
    """Tensors on a device the compiled library has no kernel for (Apple's MPS) take the reference, after
    one warning naming the device; here the CPU plays that device. The compiled op differs from the reference
    in the last bits, so exact equality shows which one ran."""
    p = make_problem()
    monkeypatch.setattr(dpface_kernels, "KERNEL_DEVICES", ("cuda", "meta"))
    monkeypatch.setattr(dpface_kernels, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="no kernel for cpu tensors"):
        first = call(dpface_kernels.deform_conv3d, p)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = call(dpface_kernels.deform_conv3d, p)
    expected = call(reference.deform_conv3d, p)
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
