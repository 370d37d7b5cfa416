"""Mixed precision (``train.precision: bf16-mixed``): the pieces that must stay in float32 do.

Which kernels run a CPU bfloat16 convolution depends on the ISA (oneDNN, natively or emulated, or ATen's
fallback), so every test here is marked ``isa``: ``make test-avx2`` reruns them with the ISA limited to
AVX2."""

from __future__ import annotations

import pytest
import torch
from conftest import write_tiny_dataset
from torch import nn

from dpface_lib.models import build_model, list_models
from dpface_lib.models.blocks import at_least_float32, depth_from_disparity, soft_argmin
from dpface_lib.models.safeconv import Conv2d, Conv3d, guard_convs, needs_float32

pytestmark = pytest.mark.isa

#: Whether oneDNN runs CPU bfloat16 convolutions here, as torch reports it: true on AVX-512 CPUs (natively
#: with AVX512-BF16/AMX, else emulated; either way each weight gradient is summed in float32 and rounded
#: once), false without AVX-512 or under ``ONEDNN_MAX_CPU_ISA=AVX2`` (``make test-avx2``). There ATen's
#: fallback convolution adds each sample's weight gradient into a bfloat16 sum, one rounding per sample, and
#: a batch whose samples' gradients cancel loses more: 0.0045 against oneDNN's 0.0016 for 16 samples of
#: 8x32x32, 0.0087 against 0.0019 for 64, as a bfloat16 running sum of the float32 per-sample gradients
#: gives (0.0046 and 0.0092).
ONEDNN_BF16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits: a rounding moves a value by at most this fraction of it
#: The relative weight-gradient error a bfloat16 step may have where each gradient is rounded once: bfloat16's
#: rounding of inputs, output gradient and result gives about 0.2 %; the defect guarded against 90 % or more.
ROUNDED_ONCE = 0.02
DEFECT = 0.9  # the smallest relative weight-gradient error of the oneDNN defect that safeconv guards against


def test_conv3d_leaves_autocast_on_volumes_two_levels_deep() -> None:
    torch.manual_seed(0)
    conv = Conv3d(4, 4, 3, 1, 1, bias=False)
    plain = nn.Conv3d(4, 4, 3, 1, 1, bias=False)
    plain.load_state_dict(conv.state_dict())  # same parameters and keys as nn.Conv3d
    for depth, dtype in ((2, torch.float32), (3, torch.bfloat16), (8, torch.bfloat16)):
        x = torch.randn(2, 4, depth, 6, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == dtype, depth
        if depth == 2:  # computed in float32: the float32 convolution itself
            torch.testing.assert_close(y, plain(x))
    # outside autocast it is nn.Conv3d, in any dtype
    x = torch.randn(2, 4, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(conv.double()(x), plain.double()(x))


def test_small_input_convolutions_get_the_float32_weight_gradient_under_autocast() -> None:
    """The oracle is ``torch.nn.grad.conv*_weight`` in float32 on the same (bfloat16-rounded) input and output
    gradient. Unguarded, this CPU's bfloat16 autocast gives relative errors of 0.9 to 1e37 on these shapes."""
    torch.manual_seed(0)
    w2, w3 = torch.nn.grad.conv2d_weight, torch.nn.grad.conv3d_weight
    cases = (
        (Conv2d(128, 1, 7, 1, 3, bias=False), (2, 128, 2, 2), w2),
        (Conv2d(256, 8, 5, 1, 2, bias=False), (2, 256, 1, 1), w2),
        (Conv3d(128, 8, 3, 1, 1, bias=False), (2, 128, 2, 4, 4), w3),
        (Conv3d(32, 32, (2, 3, 3), 1, 1, bias=False), (8, 32, 1, 16, 16), w3),
        (Conv3d(32, 32, (1, 3, 3), (2, 1, 1), 1, bias=False), (8, 32, 1, 16, 16), w3),
    )
    for conv, shape, oracle in cases:
        x = torch.randn(shape).bfloat16().float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.float32 and needs_float32(x, conv)
        g = torch.randn_like(y)
        y.backward(g)
        expected = oracle(x, conv.weight.shape, g, conv.stride, conv.padding, conv.dilation, conv.groups)
        torch.testing.assert_close(conv.weight.grad, expected, rtol=1e-4, atol=1e-5)
    # a large enough input stays in bfloat16, and so does a dilated axis (the defect never showed there)
    small = Conv2d(4, 4, (3, 5), 1, (1, 2))
    assert not needs_float32(torch.zeros(1, 4, 3, 5), small)
    assert needs_float32(torch.zeros(1, 4, 2, 9), small)
    assert needs_float32(torch.zeros(1, 4, 9, 4), small)
    dilated = Conv2d(4, 4, 3, 1, 16, dilation=16)
    assert not needs_float32(torch.zeros(1, 4, 8, 8), dilated)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert small(torch.randn(1, 4, 8, 8)).dtype == torch.bfloat16
        assert dilated(torch.randn(1, 4, 8, 8)).dtype == torch.bfloat16


def test_guard_convs_swaps_plain_convolutions_only_and_keeps_the_state() -> None:
    class Custom(nn.Conv2d):
        pass

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Sequential(nn.Conv3d(4, 4, 1)),
                          nn.ConvTranspose2d(4, 4, 2, 2), Custom(4, 4, 1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert guard_convs(model) is model
    kinds = [type(m) for m in (model[0], model[1][0], model[2], model[3])]
    assert kinds == [Conv2d, Conv3d, nn.ConvTranspose2d, Custom]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], v) for k, v in after.items())
    # every model the registry builds (torchvision's ResNet inside BTS included) is guarded
    for name in ("dpnet", "bts"):
        built = build_model(name, profile="tiny")
        assert not any(type(m) in (nn.Conv2d, nn.Conv3d) for m in built.modules()), name


def test_regression_and_depth_are_float32_under_autocast() -> None:
    bins = torch.linspace(-1.5, 2.5, 32)
    cost = torch.randn(2, 32, 4, 5).bfloat16()
    d = soft_argmin(cost, bins)
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, soft_argmin(cost.float(), bins))
    # 1,000 mm in bfloat16 would be rounded to 4 mm steps; the conversion runs in float32
    disparity = torch.full((1, 2, 2), 0.3, dtype=torch.bfloat16)
    a, b = torch.tensor([-600.0]), torch.tensor([0.9])
    z = depth_from_disparity(disparity, a, b)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, a / (disparity.float() - b))
    assert at_least_float32(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64


def test_cost_volume_models_give_float32_disparity_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    batch = {"left": torch.rand(1, 3, 32, 32), "right": torch.rand(1, 3, 32, 32),
             "lrsum": torch.rand(1, 3, 32, 32),
             "K": torch.eye(3)[None] * torch.tensor([[[50.0], [50.0], [1.0]]]),
             "a": torch.tensor([-600.0]), "b": torch.tensor([0.9])}
    for name in ("psmnet", "nnet"):
        model = build_model(name, profile="tiny").eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
        assert out["disparity"].dtype == torch.float32 and torch.isfinite(out["disparity"]).all(), name
        assert out["depth"].dtype == torch.float32, name


@pytest.mark.parametrize("name", list_models())
def test_every_convolution_weight_gradient_under_bf16_autocast_matches_float32(name: str, tmp_path) -> None:
    """One training step of the ``tiny`` profile at its 128 px crop under bfloat16 autocast: each
    convolution's weight gradient against ``torch.nn.grad.conv*_weight`` in float32 on the same inputs
    and output gradients (the defect :mod:`dpface_lib.models.safeconv` guards against is off by 0.9 or
    more; bfloat16 rounding by about 0.2 %). Where ATen's fallback runs the convolutions (not
    :data:`ONEDNN_BF16`), each one's tolerance adds the bound of its per-sample bfloat16 sum: the unit
    roundoff times the norms of the partial sums over the batch, in ATen's order, relative to the result; a
    convolution whose bound reaches half the defect's error is left out (under AVX2 one of NNet's 52, whose
    16 samples' gradients nearly cancel: its bound is 0.74, its error 0.079)."""
    from torch.utils.data import default_collate

    from dpface_lib.config import training_config
    from dpface_lib.datamodule import DPFaceDataModule
    from dpface_lib.train import DPFaceModule

    torch.manual_seed(0)
    root = write_tiny_dataset(tmp_path / "data", size=(128, 128), n_views=1, lights=(1,))
    config = training_config(name, "tiny", {"data": {"pack": False, "batch_size": 2}})
    module = DPFaceModule(name, "tiny", config=config).train()
    data = DPFaceDataModule(root, config["data"])
    data.setup("fit")
    batch = default_collate([data.datasets["train"][i] for i in range(2)])
    oracle: dict[nn.Module, torch.Tensor] = {}
    partial_norms: dict[nn.Module, float] = {}  # sum over calls and samples of ||running sum of samples||

    def record(conv: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        x = inputs[0].detach().bfloat16().float()
        weight_grad = torch.nn.grad.conv2d_weight if out.ndim == 4 else torch.nn.grad.conv3d_weight

        def on_grad(g: torch.Tensor) -> None:
            expected = weight_grad(x, conv.weight.shape, g.float(), conv.stride, conv.padding, conv.dilation,
                                   conv.groups)
            oracle[conv] = oracle.get(conv, 0) + expected  # a shared module (both views) sums its calls
            if not ONEDNN_BF16:  # sample by sample, as the fallback adds them (calls add up in float32)
                running = torch.zeros_like(expected)
                for b in range(x.shape[0]):
                    running += weight_grad(x[b : b + 1], conv.weight.shape, g[b : b + 1].float(), conv.stride,
                                           conv.padding, conv.dilation, conv.groups)
                    partial_norms[conv] = partial_norms.get(conv, 0.0) + float(running.norm())

        out.register_hook(on_grad)

    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    for conv in convs:
        conv.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module._loss(module(batch), batch)["loss"]
    loss.backward()
    checked = [c for c in convs if c in oracle and c.weight.grad is not None and oracle[c].norm() > 0]
    assert len(checked) >= 10, name
    errors = {c: float((c.weight.grad - oracle[c]).norm() / oracle[c].norm()) for c in checked}
    tolerance = {c: ROUNDED_ONCE + BF16_UNIT_ROUNDOFF * partial_norms.get(c, 0.0) / float(oracle[c].norm())
                 for c in checked}
    # a convolution whose samples' gradients cancel so far that its bound reaches half the defect's error
    # could hide the defect: it is not decisive, and most convolutions must be
    decisive = [c for c in checked if tolerance[c] < DEFECT / 2]
    assert len(decisive) >= max(10, len(checked) // 2), (name, len(decisive), len(checked))
    worst = max(decisive, key=lambda c: errors[c] / tolerance[c])
    assert errors[worst] < tolerance[worst], (name, worst, errors[worst], tolerance[worst], ONEDNN_BF16)
