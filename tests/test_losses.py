"""Losses against hand-computed values, masks, empty masks and gradients."""

from __future__ import annotations

import math

import pytest
import torch

from dpface_lib.losses import (
    affine_align,
    affine_invariant_l1,
    cosine_normal_loss,
    disparity_normal_loss,
    model_loss,
    silog_loss,
    smooth_l1_disparity,
)


def test_smooth_l1_hand_values():
    # errors 0, 0.5, 3 and a masked-out 10: Huber(beta=1) = 0, 0.125, 2.5 -> mean 2.625 / 3
    gt = torch.zeros(1, 1, 4)
    out0 = torch.tensor([[[0.0, 0.5, 3.0, 10.0]]])
    out1 = torch.tensor([[[1.0, -1.0, 0.0, 0.0]]])  # |e| = 1 -> 0.5 each -> mean 1/3
    mask = torch.tensor([[[True, True, True, False]]])
    disparities = torch.stack([out0, out1], dim=1)
    loss = smooth_l1_disparity(disparities, gt, mask, [1.0, 0.5])
    assert loss.item() == pytest.approx(2.625 / 3 + 0.5 * (1.0 / 3))
    assert smooth_l1_disparity(disparities, gt, mask, [0.0, 2.0]).item() == pytest.approx(2.0 / 3)


def test_smooth_l1_pools_pixels_over_the_batch():
    gt = torch.zeros(2, 1, 2)
    pred = torch.tensor([[[2.0, 0.0]], [[4.0, 4.0]]]).unsqueeze(1)
    mask = torch.tensor([[[True, False]], [[True, True]]])
    # errors 2, 4, 4 -> Huber 1.5, 3.5, 3.5 -> mean over the 3 masked pixels
    assert smooth_l1_disparity(pred, gt, mask, [1.0]).item() == pytest.approx(8.5 / 3)


def test_smooth_l1_shape_errors():
    with pytest.raises(ValueError, match="2 outputs but 1 weights"):
        smooth_l1_disparity(
            torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3), torch.ones(1, 3, 3, dtype=bool), [1.0]
        )
    with pytest.raises(ValueError, match="gt shape"):
        smooth_l1_disparity(
            torch.zeros(1, 1, 3, 3), torch.zeros(1, 3, 4), torch.ones(1, 3, 4, dtype=bool), [1.0]
        )


def test_silog_hand_value():
    gt = torch.tensor([[[1000.0, 800.0, 900.0]]])
    g = torch.tensor([[[0.1, 0.3, 5.0]]])  # log-ratios; the third pixel is masked out
    pred = gt * torch.exp(g)
    mask = torch.tensor([[[True, True, False]]])
    # mean g^2 = 0.05, mean g = 0.2 -> 10 * sqrt(0.05 - 0.6 * 0.04)
    assert silog_loss(pred, gt, mask).item() == pytest.approx(10 * math.sqrt(0.026), rel=1e-5)
    assert silog_loss(pred, gt, mask, variance_focus=0.0).item() == pytest.approx(
        10 * math.sqrt(0.05), rel=1e-5
    )


def test_silog_is_scale_invariant_at_full_variance_focus():
    gt = torch.rand(2, 5, 5, dtype=torch.float64) * 500 + 700  # float64: the radicand cancels to ~0
    mask = torch.ones(2, 5, 5, dtype=torch.bool)
    pred = (2.0 * gt).requires_grad_()
    loss = silog_loss(pred, gt, mask, variance_focus=1.0)
    assert loss.item() < 1e-4
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_cosine_hand_values():
    def field(v):
        return torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)

    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    x, y = field([1, 0, 0]), field([0, 1, 0])
    assert cosine_normal_loss(x, y, mask).item() == pytest.approx(1.0)
    assert cosine_normal_loss(x, -x, mask).item() == pytest.approx(2.0)
    assert cosine_normal_loss(5 * x, x, mask).item() == pytest.approx(0.0, abs=1e-7)  # length does not matter
    assert cosine_normal_loss(field([1, 1, 0]), x, mask).item() == pytest.approx(1 - math.sqrt(0.5), rel=1e-6)


def test_cosine_mean_over_masked_pixels():
    pred = torch.zeros(1, 3, 1, 3)
    pred[0, 2] = 1.0  # all +z
    gt = torch.zeros(1, 3, 1, 3)
    gt[0, 2, 0, 0], gt[0, 0, 0, 1], gt[0, 2, 0, 2] = 1.0, 1.0, -1.0  # losses 0, 1, 2
    mask = torch.tensor([[[True, True, False]]])
    assert cosine_normal_loss(pred, gt, mask).item() == pytest.approx(0.5)
    assert cosine_normal_loss(pred, gt, torch.ones(1, 1, 3, dtype=torch.bool)).item() == pytest.approx(1.0)


@pytest.mark.parametrize("which", ["smooth_l1", "silog", "cosine"])
def test_empty_mask_gives_zero_with_a_gradient_path(which):
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    if which == "smooth_l1":
        pred = torch.randn(1, 2, 4, 4, requires_grad=True)
        loss = smooth_l1_disparity(pred, torch.zeros(1, 4, 4), mask, [1.0, 0.5])
    elif which == "silog":
        pred = (torch.rand(1, 4, 4) + 1).requires_grad_()
        loss = silog_loss(pred, torch.ones(1, 4, 4), mask)
    else:
        pred = torch.randn(1, 3, 4, 4, requires_grad=True)
        loss = cosine_normal_loss(pred, torch.randn(1, 3, 4, 4), mask)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_gradcheck_float64():
    torch.manual_seed(0)
    mask = torch.rand(1, 3, 4) > 0.3
    d = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    gt = torch.randn(1, 3, 4, dtype=torch.float64) * 0.1  # keeps errors away from the |e| = 1 kink
    assert torch.autograd.gradcheck(lambda p: smooth_l1_disparity(p, gt, mask, [1.0, 0.3]), (d,))
    z = (torch.rand(1, 3, 4, dtype=torch.float64) + 0.5).requires_grad_()
    zgt = torch.rand(1, 3, 4, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda p: silog_loss(p, zgt, mask), (z,))
    n = torch.randn(1, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    ngt = torch.randn(1, 3, 3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: cosine_normal_loss(p, ngt, mask), (n,))


def test_model_loss_combines_terms_with_lambdas():
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    batch = {
        "mask": mask,
        "disparity": torch.zeros(1, 2, 2),
        "depth": torch.full((1, 2, 2), 800.0),
        "normal": torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2),
    }
    outputs = {
        "disparities": torch.full((1, 2, 2, 2), 0.5),
        "depth": torch.full((1, 2, 2), 800.0),
        "normal": torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2),
    }
    parts = model_loss(outputs, batch, {"smooth_l1": 1.0, "cosine": 0.5}, [1.0, 0.5])
    assert parts["smooth_l1"].item() == pytest.approx(0.125 * 1.5)
    assert parts["cosine"].item() == pytest.approx(0.5)
    assert parts["loss"].item() == pytest.approx(0.125 * 1.5 + 0.5)
    assert model_loss(outputs, batch, {"silog": 1.0}, [1.0])["loss"].item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="unknown loss term"):
        model_loss(outputs, batch, {"l2": 1.0}, [1.0])


# ------------------------------------------------------------------------------ affine-invariant L1
def _lstsq_l1(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    """Independent oracle: numpy least squares for (s, t), then the mean absolute residual."""
    import numpy as np

    p, g = pred[mask].double().numpy(), gt[mask].double().numpy()
    design = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(design, g, rcond=None)
    return float(np.abs(s * p + t - g).mean())


def test_affine_l1_matches_a_least_squares_oracle():
    gen = torch.Generator().manual_seed(0)
    gt = torch.randn(3, 6, 5, generator=gen)
    pred = torch.randn(3, 6, 5, generator=gen)
    mask = torch.rand(3, 6, 5, generator=gen) > 0.3
    loss = affine_invariant_l1(pred.unsqueeze(1), gt, mask, [1.0])
    expected = sum(_lstsq_l1(pred[b], gt[b], mask[b]) for b in range(3)) / 3  # mean over samples
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_affine_l1_ignores_scale_and_level_but_not_a_flat_output():
    gen = torch.Generator().manual_seed(1)
    gt = torch.randn(2, 8, 8, generator=gen)
    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    mapped = torch.stack([-1.7 * gt[0] + 2.5, 0.3 * gt[1] - 4.0])  # a different affine map per sample
    assert affine_invariant_l1(mapped.unsqueeze(1), gt, mask, [1.0]).item() < 1e-5
    flat = torch.full_like(gt, 0.7)  # s -> 0: aligned to each sample's mean
    spread = (gt - gt.mean(dim=(1, 2), keepdim=True)).abs().mean(dim=(1, 2)).mean()
    flat_loss = affine_invariant_l1(flat.unsqueeze(1), gt, mask, [1.0])
    assert flat_loss.item() == pytest.approx(spread.item(), rel=1e-5)


def test_affine_align_gradcheck_and_weights():
    gen = torch.Generator().manual_seed(2)
    gt = torch.randn(2, 4, 4, dtype=torch.float64, generator=gen)
    pred = torch.randn(2, 2, 4, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    mask = torch.rand(2, 4, 4, generator=gen) > 0.2
    assert torch.autograd.gradcheck(lambda p: affine_invariant_l1(p, gt, mask, [1.0, 0.5]), (pred,))
    single = [affine_invariant_l1(pred[:, i : i + 1], gt, mask, [1.0]) for i in range(2)]
    both = affine_invariant_l1(pred, gt, mask, [1.0, 0.5])
    assert both.item() == pytest.approx(single[0].item() + 0.5 * single[1].item())
    aligned = affine_align(pred[:, 0], gt, mask)
    assert aligned.shape == gt.shape


def test_affine_l1_empty_and_partly_empty_masks():
    pred = torch.randn(2, 1, 3, 3, requires_grad=True)
    gt = torch.randn(2, 3, 3)
    empty = torch.zeros(2, 3, 3, dtype=torch.bool)
    loss = affine_invariant_l1(pred, gt, empty, [1.0])
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))
    half = empty.clone()
    half[1] = True  # sample 0 has no valid pixel: the mean runs over sample 1 only
    assert affine_invariant_l1(pred.detach(), gt, half, [1.0]).item() == pytest.approx(
        _lstsq_l1(pred.detach()[1, 0], gt[1], half[1]), rel=1e-5)


def test_model_loss_affine_term():
    gt = torch.randn(1, 4, 4)
    batch = {"disparity": gt, "mask": torch.ones(1, 4, 4, dtype=torch.bool)}
    outputs = {"disparities": (3.0 * gt + 1.0).unsqueeze(1)}
    parts = model_loss(outputs, batch, {"affine_l1": 1.0, "smooth_l1": 0.1}, [1.0])
    assert parts["affine_l1"].item() < 1e-5 and parts["smooth_l1"].item() > 0.1


# ------------------------------------------------------------------------------ normals of the disparity
def _plane_batch(normal: tuple[float, float, float], size: int = 16, dtype=torch.float64) -> dict:
    """A plane ``n . P = c`` in front of the camera, rendered as depth, thin-lens disparity and normals."""
    from dpface_lib.geometry import depth_to_disparity

    K = torch.tensor([[60.0, 0.0, 7.5], [0.0, 60.0, 7.5], [0.0, 0.0, 1.0]], dtype=dtype)
    n = torch.tensor(normal, dtype=dtype)
    n = n / n.norm()
    v, u = torch.meshgrid(torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij")
    rays = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)])
    depth = -800.0 / (n[:, None, None] * rays).sum(0)  # n faces the camera (n_z < 0), c = -800 mm
    a, b = torch.tensor([-4000.0], dtype=dtype), torch.tensor([5.0], dtype=dtype)
    return {
        "disparity": depth_to_disparity(depth[None], a, b),
        "normal": n.view(1, 3, 1, 1).expand(1, 3, size, size),
        "K": K[None], "a": a, "b": b, "mask": torch.ones(1, size, size, dtype=torch.bool),
    }


@pytest.mark.parametrize("pool", [1, 2, 4])
def test_disparity_normal_loss_of_a_plane(pool):
    batch = _plane_batch((0.3, -0.2, -1.0))
    gt = batch["disparity"]
    # any affine map of the true disparity has the plane's normals
    exact = disparity_normal_loss((2.0 * gt - 0.4).unsqueeze(1), batch, batch["mask"], [1.0], pool)
    assert exact.item() < 1e-6
    # a plane tilted across (its disparity slope is orthogonal to the true one) is uncorrelated with the
    # truth: the fit flattens it (s = 0) to a fronto-parallel plane, which scores 1 - cos(tilt) = 1 - |n_z|
    other = _plane_batch((0.2, 0.3, -1.0))
    loss = disparity_normal_loss(other["disparity"].unsqueeze(1), batch, batch["mask"], [1.0], pool)
    assert loss.item() == pytest.approx(1.0 - float(-batch["normal"][0, 2, 0, 0]), rel=1e-3)


def test_disparity_normal_loss_gradcheck_weights_and_empty_mask():
    batch = _plane_batch((0.3, -0.2, -1.0), size=8)
    gen = torch.Generator().manual_seed(3)
    pred = (batch["disparity"].unsqueeze(1).repeat(1, 2, 1, 1)
            + 0.05 * torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=gen)).requires_grad_()
    mask = batch["mask"].clone()
    mask[0, :2, :3] = False
    assert torch.autograd.gradcheck(lambda p: disparity_normal_loss(p, batch, mask, [1.0, 0.5], 2), (pred,))
    single = [disparity_normal_loss(pred[:, i : i + 1], batch, mask, [1.0], 2) for i in range(2)]
    both = disparity_normal_loss(pred, batch, mask, [1.0, 0.5], 2)
    assert both.item() == pytest.approx(single[0].item() + 0.5 * single[1].item())
    empty = disparity_normal_loss(pred, batch, torch.zeros_like(mask), [1.0, 0.5], 2)
    empty.backward()
    assert empty.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))
    # valid pixels but no whole 2 x 2 block (a checkerboard): 0, still connected to the prediction
    checker = (torch.arange(8)[:, None] + torch.arange(8)) % 2 == 0
    pred.grad = None
    holes = disparity_normal_loss(pred, batch, checker[None], [1.0, 0.5], 2)
    holes.backward()
    assert holes.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_model_loss_disparity_normal_term():
    batch = _plane_batch((0.3, -0.2, -1.0), dtype=torch.float32)
    outputs = {"disparities": (0.5 * batch["disparity"] + 1.0).unsqueeze(1)}
    parts = model_loss(outputs, batch, {"affine_l1": 1.0, "disparity_normal": 2.0}, [1.0])
    assert parts["disparity_normal"].item() < 1e-4
    flat = {"disparities": torch.full_like(outputs["disparities"], 0.7)}  # aligned to the mean level
    tilted = model_loss(flat, batch, {"disparity_normal": 2.0}, [1.0])["disparity_normal"]
    assert tilted.item() > 2.0 * (1.0 - math.cos(math.radians(15)))
