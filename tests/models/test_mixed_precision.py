"""Mixed precision (``train.precision: bf16-mixed``): the pieces that must stay in float32 do."""

from __future__ import annotations

import torch
from torch import nn

from dpface_lib.models import build_model
from dpface_lib.models.blocks import Conv3d, at_least_float32, depth_from_disparity, soft_argmin


def test_conv3d_leaves_autocast_on_two_level_volumes_only() -> None:
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
