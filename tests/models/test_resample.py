"""upsample_volume against F.interpolate(mode="trilinear") (the oracle), values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from dpface_lib.models.resample import linear_matrix, upsample_volume


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(
    ("shape", "size"),
    [((2, 1, 8, 32, 32), (32, 128, 128)), ((1, 2, 5, 7, 9), (11, 13, 17)), ((1, 1, 4, 3, 3), (4, 3, 3)),
     ((1, 1, 8, 12, 10), (4, 6, 5)), ((1, 1, 1, 1, 4), (3, 2, 8))],
)
def test_matches_trilinear_interpolate(shape, size, align_corners):
    x = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, size=size, mode="trilinear", align_corners=align_corners)
    torch.testing.assert_close(upsample_volume(x, size, align_corners), expected, rtol=0, atol=1e-12)


def test_gradient_matches_trilinear_interpolate():
    x = torch.randn(2, 1, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 1, 16, 24, 20, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad((upsample_volume(x, (16, 24, 20)) * weight).sum(), x)
    expected = F.interpolate(x, size=(16, 24, 20), mode="trilinear", align_corners=True)
    (g_ref,) = torch.autograd.grad((expected * weight).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda v: upsample_volume(v, (5, 7, 3), False), (x[:1, :, :2, :3, :2],))


def test_linear_matrix_rows_are_convex_and_hit_the_ends():
    m = linear_matrix(8, 32, align_corners=True, dtype=torch.float64)
    torch.testing.assert_close(m.sum(dim=1), torch.ones(32, dtype=torch.float64))
    assert (m >= 0).all() and (m > 0).sum(dim=1).max() <= 2
    assert m[0, 0] == 1 and m[-1, -1] == 1  # align_corners: the ends map onto the ends
    # a linear ramp is reproduced exactly inside the input range
    ramp = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(m @ ramp, torch.linspace(0, 7, 32, dtype=torch.float64))


def test_rejects_a_non_volume():
    with pytest.raises(ValueError, match=r"\(B, C, D, h, w\)"):
        upsample_volume(torch.zeros(1, 8, 4, 4), (8, 8, 8))
