"""The compiled op torch.ops.dpface.deform_conv3d: registration (opcheck, torch.compile), gradients
(gradcheck) and agreement with nn.Conv3d, torchvision's deform_conv2d and the pure-PyTorch reference, on CPU
and CUDA."""

from __future__ import annotations

import dpface_kernels
import pytest
import torch
import torch.nn.functional as F
import torchvision
from deform_cases import DEVICES, call, make_problem, shifted
from dpface_kernels import reference
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(
    not dpface_kernels.has_compiled(),
    reason=f"dpface_kernels compiled library not built ({dpface_kernels._LOAD_ERROR}); run `make kernels`",
)


def op(input, offset, weight, bias, mask, stride, padding, dilation, groups, offset_groups):
    return torch.ops.dpface.deform_conv3d(
        input, offset, weight, bias, mask, list(stride), list(padding), list(dilation), groups, offset_groups
    )[0]


def op_args(p: dict) -> tuple:
    return (
        p["input"],
        p["offset"],
        p["weight"],
        p["bias"],
        p["mask"],
        list(p["stride"]),
        list(p["padding"]),
        list(p["dilation"]),
        p["groups"],
        p["offset_groups"],
    )


def skip_without_cuda_kernels(device: str) -> None:
    if device == "cuda" and not dpface_kernels.has_cuda():
        pytest.skip("dpface_kernels was built without CUDA kernels")


OPCHECK_CASES = {
    "mask_bias": {},
    "plain": {"with_mask": False, "with_bias": False},
    "groups": {"groups": 2, "offset_groups": 2},
    "strided": {"stride": (2, 1, 2), "dilation": (1, 2, 1), "padding": (1, 2, 0)},
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("save_columns", [False, True])
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck(case, save_columns, device):
    skip_without_cuda_kernels(device)
    p = make_problem(n=1, c=4, o=4, size=(3, 4, 4), device=device, **OPCHECK_CASES[case])
    for name in ("input", "offset", "weight", "bias", "mask"):
        if p[name] is not None:
            p[name].requires_grad_()
    torch.library.opcheck(torch.ops.dpface.deform_conv3d.default, (*op_args(p), save_columns))


@pytest.mark.parametrize("device", DEVICES)
def test_saved_columns_are_the_reference_samples_and_give_the_same_gradients(device):
    """The forward's saved columns equal the oracle's sampled columns (modulation applied), and a backward
    that reuses them gives the gradients of one that samples again."""
    skip_without_cuda_kernels(device)
    p = make_problem(n=2, c=4, o=6, offset_scale=2.0, device=device)
    args = op_args(p)
    out, columns = torch.ops.dpface.deform_conv3d(*args, True)
    plain, empty = torch.ops.dpface.deform_conv3d(*args, False)
    assert empty.numel() == 0 and columns.shape == (2, 4 * 27, 3 * 4 * 5)
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    sampled = reference.sample_columns(
        p["input"], p["offset"], p["mask"], (3, 3, 3), p["stride"], p["padding"], p["dilation"], 1
    )
    torch.testing.assert_close(columns, sampled.reshape(columns.shape))
    grad_out = torch.randn_like(out)
    geometry = args[5:]
    reused = torch.ops.dpface.deform_conv3d_backward(
        grad_out, p["input"], p["offset"], p["weight"], p["mask"], columns, *geometry, [True, True, True]
    )
    resampled = torch.ops.dpface.deform_conv3d_backward(
        grad_out, p["input"], p["offset"], p["weight"], p["mask"], None, *geometry, [True, True, True]
    )
    # Bit-identical on the CPU; on CUDA the input gradient's atomic adds may sum in another order.
    atol = 1e-12 if device == "cuda" else 0.0
    for got, want in zip(reused, resampled, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=atol)


def test_any_thread_count_gives_the_same_result():
    """The CPU kernels split their work over torch's threads (torch.set_num_threads) into disjoint ranges:
    on a problem large enough to be split, one thread and two give bit-identical sampled columns, equal to the
    reference's, and the same gradients."""
    p = make_problem(n=1, c=8, o=4, size=(4, 12, 16), offset_groups=2, offset_scale=2.0)
    args = op_args(p)
    grad_out = torch.randn(1, 4, 4, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = {}
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            _, columns = torch.ops.dpface.deform_conv3d(*args, True)
            grads = torch.ops.dpface.deform_conv3d_backward(
                grad_out, p["input"], p["offset"], p["weight"], p["mask"], None, *args[5:], [True, True, True]
            )
            results[n_threads] = (columns, *grads)
    finally:
        torch.set_num_threads(threads)
    sampled = reference.sample_columns(
        p["input"], p["offset"], p["mask"], (3, 3, 3), p["stride"], p["padding"], p["dilation"], 2
    )
    torch.testing.assert_close(results[1][0], sampled.reshape(results[1][0].shape))
    torch.testing.assert_close(results[2][0], results[1][0], rtol=0, atol=0)
    names = ("input", "offset", "weight", "mask")
    for name, one, two in zip(names, results[1][1:], results[2][1:], strict=True):
        torch.testing.assert_close(two, one, msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wanted", ["input", "offset", "weight", "mask", "offset_and_weight"])
def test_only_the_wanted_gradients_are_computed(wanted, device):
    """Leaves without requires_grad get no gradient, and the op skips their passes (empty results); the
    gradients that are computed equal those of a full backward."""
    skip_without_cuda_kernels(device)
    p = make_problem(n=2, c=4, o=4, device=device)
    names = ("input", "offset", "weight", "mask")
    want = set(wanted.split("_and_"))
    full = dict(zip(names, torch.ops.dpface.deform_conv3d_backward(
        torch.ones(2, 4, 3, 4, 5, dtype=torch.float64, device=device),
        p["input"], p["offset"], p["weight"], p["mask"], None, *op_args(p)[5:], [True, True, True],
    ), strict=True))  # fmt: skip
    ts = {k: p[k].detach().clone().requires_grad_(k in want) for k in names}
    y = dpface_kernels.deform_conv3d(
        ts["input"], ts["offset"], ts["weight"], None, ts["mask"], p["stride"], p["padding"], p["dilation"]
    )
    y.sum().backward()
    for name in names:
        if name in want:
            torch.testing.assert_close(ts[name].grad, full[name], msg=name)
        else:
            assert ts[name].grad is None, name
    mask = [("input" in want), bool(want & {"offset", "mask"}), ("weight" in want)]
    partial = torch.ops.dpface.deform_conv3d_backward(
        torch.ones_like(y), p["input"], p["offset"], p["weight"], p["mask"], None, *op_args(p)[5:], mask
    )
    wanted_outputs = [mask[0], mask[1], mask[2], mask[1]]
    for name, result, expected in zip(names, partial, wanted_outputs, strict=True):
        assert (result.numel() > 0) == expected, name


def test_column_budget_decides_saving(monkeypatch):
    """Columns are kept only while a weight gradient is wanted and they fit SAVE_COLUMNS_MAX_BYTES."""
    p = make_problem(n=2, c=4, o=4, dtype=torch.float32)
    args = op_args(p)[5:]
    expected_bytes = 2 * 4 * 27 * 60 * 4
    assert dpface_kernels.column_bytes(p["input"], p["weight"], args) == expected_bytes
    weight = p["weight"].clone().requires_grad_()
    save = dpface_kernels._save_columns
    assert save(p["input"], weight, args)
    assert not save(p["input"], p["weight"], args)  # no weight gradient
    with torch.no_grad():
        assert not save(p["input"], weight, args)
    monkeypatch.setattr(dpface_kernels, "SAVE_COLUMNS_MAX_BYTES", expected_bytes - 1)
    assert not save(p["input"], weight, args)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph(device):
    skip_without_cuda_kernels(device)
    p = make_problem(dtype=torch.float32, device=device)

    def layer(x, offset, weight, bias, mask):
        y = dpface_kernels.deform_conv3d(x, offset, weight, bias, mask, padding=1)
        return torch.relu(y).sum()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    args = [p[k].clone().requires_grad_() for k in ("input", "offset", "weight", "bias", "mask")]
    eager_args = [a.detach().clone().requires_grad_() for a in args]
    out = compiled(*args)
    expected = layer(*eager_args)
    torch.testing.assert_close(out, expected)
    out.backward()
    expected.backward()
    for got, want in zip(args, eager_args, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


GRADCHECK_CASES = {
    "mask": {},
    "no_mask": {"with_mask": False},
    "groups": {"groups": 2, "offset_groups": 2},
    "offset_groups": {"offset_groups": 4},
    "stride_dilation": {"stride": (2, 2, 1), "dilation": (2, 1, 2), "padding": (2, 1, 1), "size": (4, 4, 5)},
    "kernel_2x1x3": {"kernel": (2, 1, 3), "padding": (0, 0, 1)},
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_gradcheck(case, device):
    skip_without_cuda_kernels(device)
    full = case == "mask"  # full Jacobians for the base case (kept tiny); random projections for the variants
    shape = (
        {"n": 1, "c": 2, "o": 2, "size": (2, 2, 3)} if full else {"n": 2, "c": 4, "o": 4, "size": (2, 3, 3)}
    )
    p = make_problem(device=device, **{**shape, **GRADCHECK_CASES[case]})
    names = [k for k in ("input", "offset", "weight", "bias", "mask") if p[k] is not None]
    tensors = [p[k].requires_grad_() for k in names]

    def fn(*ts):
        return call(dpface_kernels.deform_conv3d, {**p, **dict(zip(names, ts, strict=True))})

    # The CUDA input gradient sums with atomic adds, whose order varies between runs: two backward passes may
    # differ in the last bits, so gradcheck's reentrancy check gets a float64 round-off tolerance there.
    nondet_tol = 1e-12 if device == "cuda" else 0.0
    assert torch.autograd.gradcheck(
        fn, tensors, eps=1e-6, atol=1e-5, fast_mode=not full, nondet_tol=nondet_tol
    )


@pytest.mark.parametrize("device", DEVICES)
def test_zero_offsets_equal_conv3d(device):
    skip_without_cuda_kernels(device)
    p = make_problem(
        stride=(1, 2, 1),
        padding=(1, 0, 2),
        dilation=(1, 1, 2),
        groups=2,
        size=(4, 6, 7),
        device=device,
        dtype=torch.float32,
    )
    p["offset"] = torch.zeros_like(p["offset"])
    p["mask"] = torch.ones_like(p["mask"])
    expected = F.conv3d(
        p["input"], p["weight"], p["bias"], p["stride"], p["padding"], p["dilation"], p["groups"]
    )
    torch.testing.assert_close(call(op, p), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(call(op, p, mask=None), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_integer_offsets_equal_conv3d_of_shifted_input(device):
    skip_without_cuda_kernels(device)
    p = make_problem(with_mask=False, size=(4, 5, 6), device=device)
    shift = (-1, 2, 1)
    offset = torch.tensor(shift, dtype=p["offset"].dtype, device=device).view(1, 1, 3, 1, 1, 1)
    p["offset"] = offset.expand(2, 27, 3, *p["offset"].shape[2:]).reshape(p["offset"].shape)
    expected = F.conv3d(shifted(p["input"], shift, padding=1), p["weight"], p["bias"])
    torch.testing.assert_close(call(op, p), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_equals_torchvision_deform_conv2d(with_mask, device):
    skip_without_cuda_kernels(device)
    gen = torch.Generator().manual_seed(2)
    n, c, o, h, w, og = 2, 4, 6, 7, 6, 2

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device)

    x, weight, bias = rand(n, c, h, w), rand(o, c // 2, 3, 3), rand(o)
    out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # stride 2, padding 1, 3x3 kernel
    off2 = rand(n, og * 2 * 9, out_h, out_w, scale=2.0)  # offsets reaching outside the image
    mask = torch.rand(n, og * 9, out_h, out_w, generator=gen, dtype=torch.float64).to(device)
    mask = mask if with_mask else None
    expected = torchvision.ops.deform_conv2d(
        x, off2, weight, bias, stride=2, padding=1, dilation=1, mask=mask
    )
    off3 = torch.zeros(n, og, 9, 3, *off2.shape[2:], dtype=torch.float64, device=device)
    off3[:, :, :, 1:] = off2.view(n, og, 9, 2, *off2.shape[2:])
    got = dpface_kernels.deform_conv3d(
        x[:, :, None],
        off3.view(n, og * 27, 1, *off2.shape[2:]),
        weight[:, :, None],
        bias,
        None if mask is None else mask[:, :, None],
        stride=(1, 2, 2),
        padding=(0, 1, 1),
        groups=2,
        offset_groups=og,
    )
    torch.testing.assert_close(got[:, :, 0], expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", GRADCHECK_CASES)
def test_matches_reference_forward_and_backward(case, dtype, device):
    skip_without_cuda_kernels(device)
    # Offsets with std 3 voxels in a 4x5x6 volume: many samples fall partly or wholly outside.
    kwargs = {"size": (4, 5, 6), **GRADCHECK_CASES[case]}
    p = make_problem(n=2, c=4, o=4, dtype=dtype, device=device, offset_scale=3.0, seed=3, **kwargs)
    names = [k for k in ("input", "offset", "weight", "bias", "mask") if p[k] is not None]
    results = []
    for fn in (dpface_kernels.deform_conv3d, reference.deform_conv3d):
        ts = [p[k].detach().clone().requires_grad_() for k in names]
        y = call(fn, {**p, **dict(zip(names, ts, strict=True))})
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=dtype, device=device).view_as(y)).sum()
        results.append((y, torch.autograd.grad(loss, ts)))
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {}
    torch.testing.assert_close(results[0][0], results[1][0], **tol)
    for name, got, want in zip(names, results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f"grad of {name}: {m}")


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 2),
    c_per_group=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    kernel=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    stride=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)),
    with_mask=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_matches_reference_on_random_shapes(
    n, c_per_group, groups, kernel, stride, dilation, with_mask, seed
):
    padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    p = make_problem(
        n=n,
        c=c_per_group * groups,
        o=2 * groups,
        size=(3, 4, 5),
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        offset_groups=groups,
        with_mask=with_mask,
        offset_scale=2.0,
        seed=seed,
    )
    torch.testing.assert_close(call(op, p), call(reference.deform_conv3d, p))


def test_compiled_op_rejects_bad_arguments():
    p = make_problem()
    with pytest.raises(RuntimeError, match="offset must be"):
        call(op, p, offset=p["offset"][:, :-3])
    with pytest.raises(RuntimeError, match="mask must be"):
        call(op, p, mask=p["mask"][:, :, :2])
    with pytest.raises(RuntimeError, match="not divisible by groups"):
        call(op, p, groups=3)
    with pytest.raises(RuntimeError, match="share a dtype"):
        call(op, p, offset=p["offset"].float())


def test_non_contiguous_inputs():
    p = make_problem(size=(3, 4, 5))
    q = dict(p)
    q["input"] = p["input"].transpose(3, 4).contiguous().transpose(3, 4)
    q["offset"] = p["offset"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not q["input"].is_contiguous() and not q["offset"].is_contiguous()
    torch.testing.assert_close(call(op, q), call(op, p))


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_runs_the_op_in_float32(device):
    """Under bf16 autocast (as Lightning's "bf16-mixed" training) the op takes bfloat16 activations next to
    float32 weights, runs in float32 and gives the float32 op's output on the same (rounded) inputs, with
    gradients flowing back to the float32 weights."""
    skip_without_cuda_kernels(device)
    p = make_problem(dtype=torch.float32, device=device, seed=5)
    low = {**p, **{k: p[k].bfloat16() for k in ("input", "offset", "mask")}}
    weight = p["weight"].clone().requires_grad_()
    with torch.autocast(device, dtype=torch.bfloat16):
        got = call(dpface_kernels.deform_conv3d, {**low, "weight": weight})
    assert got.dtype == torch.float32
    rounded = {k: (v.float() if torch.is_tensor(v) else v) for k, v in low.items()}
    want = call(dpface_kernels.deform_conv3d, {**rounded, "weight": p["weight"]})
    torch.testing.assert_close(got, want)
    got.square().sum().backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0
