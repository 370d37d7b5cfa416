"""dpface_lib.models.deform: DeformConv3d / DeformConv3dPack layers (ANM shapes, zero-initialised offsets)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dpface_lib.models.deform import DeformConv3d, DeformConv3dPack


def test_pack_starts_as_conv3d_at_anm_shapes():
    torch.manual_seed(0)
    layer = DeformConv3dPack(35, 64, kernel_size=3, stride=1, padding=1)
    x = torch.randn(1, 35, 4, 6, 8)
    y = layer(x)
    assert y.shape == (1, 64, 4, 6, 8)
    assert layer.conv_offset.out_channels == 81
    assert torch.count_nonzero(layer.last_offset) == 0
    torch.testing.assert_close(y, F.conv3d(x, layer.weight, layer.bias, padding=1), atol=1e-4, rtol=1e-4)


def test_parameter_count_matches_anm_layer():
    # ANM's DCN1: weight [64,35,3,3,3] + bias, offset conv [81,35,3,3,3] + bias.
    layer = DeformConv3dPack(35, 64, kernel_size=3, padding=1)
    expected = 64 * 35 * 27 + 64 + 81 * 35 * 27 + 81
    assert sum(p.numel() for p in layer.parameters()) == expected


def test_modulated_pack_halves_conv_at_init():
    torch.manual_seed(1)
    layer = DeformConv3dPack(4, 6, kernel_size=3, padding=1, modulated=True, offset_groups=2)
    x = torch.randn(2, 4, 3, 5, 5)
    assert layer.conv_offset.out_channels == 2 * 4 * 27
    expected = F.conv3d(x, layer.weight, None, padding=1) * 0.5 + layer.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_offset_predictor_receives_gradient():
    # Offsets start at zero, but the loss still pulls on the offset predictor (needed to learn deformations).
    torch.manual_seed(2)
    layer = DeformConv3dPack(3, 4, kernel_size=3, padding=1)
    x = torch.randn(1, 3, 3, 5, 5)
    layer(x).square().sum().backward()
    assert layer.conv_offset.weight.grad.abs().sum() > 0
    assert layer.weight.grad.abs().sum() > 0


def test_explicit_offsets_move_samples():
    torch.manual_seed(3)
    layer = DeformConv3d(2, 3, kernel_size=(1, 1, 1), bias=False)
    x = torch.randn(1, 2, 3, 4, 5)
    offset = torch.zeros(1, 3, 3, 4, 5)
    offset[:, 2] = 1.0  # every sample reads one voxel to the right (+w)
    expected = F.conv3d(F.pad(x[..., 1:], (0, 1)), layer.weight)
    torch.testing.assert_close(layer(x, offset), expected, atol=1e-5, rtol=1e-5)


def test_bad_channel_counts():
    with pytest.raises(ValueError, match="groups"):
        DeformConv3d(5, 4, groups=2)
    with pytest.raises(ValueError, match="offset_groups"):
        DeformConv3d(6, 4, offset_groups=4)
