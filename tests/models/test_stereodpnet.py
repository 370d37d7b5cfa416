"""StereoDPNet: ASM shift operators against analytic shifts and grid_sample, the ANM's hypotheses and metric
coordinate volume, the whole model's outputs, ablation switches, compiled vs reference deformable kernels,
parameter count and overfitting one sample."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpface_lib.losses import model_loss
from dpface_lib.models import build_model
from dpface_lib.models.anm import select_hypotheses
from dpface_lib.models.asm import (
    AdaptiveSamplingVolume,
    MaskingAttention,
    shift_rows_bilinear,
    shift_rows_nearest,
    shift_rows_phase,
)
from dpface_lib.models.blocks import count_parameters, hypothesis_points
from dpface_lib.models.stereodpnet import DPFeatures

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


SIZE = 32  # the smallest size the model takes (1/4 maps of 8 rows for two stride-2 hourglass stages)


def grid_sample_rows(x: torch.Tensor, shift: float, mode: str) -> torch.Tensor:
    """Independent oracle: ``grid_sample`` of (B, C, H, W) at rows ``y + shift`` (align_corners, zeros)."""
    _, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    grid = torch.stack([xs / (w - 1) * 2 - 1, (ys + shift) / (h - 1) * 2 - 1], dim=-1)[None].expand(
        len(x), -1, -1, -1
    )
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)


def make_batch(batch: int = 1, size: int = SIZE, seed: int = 0) -> dict:
    """A DP pair whose right view is the left view moved down by a smooth disparity field (rows), plus
    consistent targets: disparity, depth = a / (d - b), a plane's unit normal, K and a full mask."""
    g = torch.Generator().manual_seed(seed)
    left = F.interpolate(
        torch.rand(batch, 3, size // 4, size // 4, generator=g),
        size=(size, size),
        mode="bicubic",
        align_corners=False,
    ).clamp(0, 1)
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    disparity = (-0.5 + 1.0 * ys / (size - 1) + 0.5 * xs / (size - 1)).expand(batch, -1, -1).contiguous()
    # right(y, x) = left(y - d, x)
    grid = torch.stack(
        [xs.expand(batch, -1, -1) / (size - 1) * 2 - 1, (ys - disparity) / (size - 1) * 2 - 1], dim=-1
    )
    right = F.grid_sample(left, grid, mode="bilinear", padding_mode="border", align_corners=True)
    a = torch.full((batch,), -20000.0)  # b above every bin (-4 ... 6 px), as for a real lens: Z about 1 m
    b = torch.full((batch,), 20.0)
    normal = F.normalize(torch.tensor([0.2, -0.3, -1.0]), dim=0).view(1, 3, 1, 1).expand(batch, 3, size, size)
    K = torch.tensor([[4.0 * size, 0.0, size / 2], [0.0, 4.0 * size, size / 2], [0.0, 0.0, 1.0]]).expand(
        batch, 3, 3
    )
    return {
        "left": left,
        "right": right,
        "disparity": disparity,
        "depth": a.view(-1, 1, 1) / (disparity - b.view(-1, 1, 1)),
        "normal": normal.contiguous(),
        "mask": torch.ones(batch, size, size, dtype=torch.bool),
        "K": K.contiguous(),
        "a": a,
        "b": b,
    }


# ----------------------------------------------------------------------------------------------
# ASM shift operators


@pytest.mark.parametrize("shift", [-2.0, -1.25, -0.5, 0.0, 0.3, 0.5, 1.5, 2.75])
def test_bilinear_shift_of_ramp_is_analytic(shift):
    h = 16
    ramp = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1).expand(1, 2, h, 5)
    out = shift_rows_bilinear(ramp, shift)
    y = torch.arange(h, dtype=torch.float64)
    inside = (y + shift >= 0) & (y + shift <= h - 1)
    torch.testing.assert_close(out[0, 0, inside, 0], y[inside] + shift)
    # zero padding: rows sampled entirely outside are 0
    fully_outside = (y + shift <= -1) | (y + shift >= h)
    assert torch.all(out[0, :, fully_outside] == 0)


# nearest: no exact .5 ties, where grid_sample's normalised grid rounds either way
@pytest.mark.parametrize(
    ("shift", "mode"),
    [(s, "bilinear") for s in (-1.75, -0.5, 0.25, 0.5, 1.0, 2.5)]
    + [(s, "nearest") for s in (-1.75, -0.4, 0.25, 0.6, 1.0, 2.3)],
)
def test_shift_operators_match_grid_sample(shift, mode):
    x = torch.rand(2, 3, 12, 9, dtype=torch.float64)
    ours = shift_rows_bilinear(x, shift) if mode == "bilinear" else shift_rows_nearest(x, shift)
    torch.testing.assert_close(ours, grid_sample_rows(x, shift, mode))


@pytest.mark.parametrize("shift", [-3, -1, 0, 2, 5])
def test_phase_shift_by_integer_is_circular_roll(shift):
    x = torch.rand(2, 3, 10, 7, dtype=torch.float64)
    torch.testing.assert_close(shift_rows_phase(x, float(shift)), torch.roll(x, -shift, dims=-2))


@pytest.mark.parametrize("height", [16, 15])
def test_phase_shift_of_band_limited_signal_is_exact(height):
    # x(y) = cos(2π f y / H + φ) sampled at y + s is cos(2π f (y + s) / H + φ) for any fractional s
    y = torch.arange(height, dtype=torch.float64)
    freq, phase, s = 3.0, 0.4, 0.37
    x = torch.cos(2 * math.pi * freq * y / height + phase).view(1, 1, height, 1)
    expected = torch.cos(2 * math.pi * freq * (y + s) / height + phase)
    torch.testing.assert_close(shift_rows_phase(x, s)[0, 0, :, 0], expected)


def test_phase_shift_many_equals_one_at_a_time():
    x = torch.rand(1, 2, 12, 5, dtype=torch.float64)
    shifts = [-0.5, 0.25, 1.1]
    many = shift_rows_phase(x, shifts)
    assert many.shape == (1, 2, 3, 12, 5)
    for i, s in enumerate(shifts):
        torch.testing.assert_close(many[:, :, i], shift_rows_phase(x, s))


def test_asm_levels_are_each_levels_own_shift():
    """The released first-call grid cache made every slice identical; here slice i is level i's shift."""
    levels = [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    asm = AdaptiveSamplingVolume(4, levels, modes=("bilinear",), use_attention=False)
    left, right = torch.rand(2, 4, 16, 12, dtype=torch.float64).unbind(0)
    left, right = left[None], right[None]
    volume = asm(left, right)["volume"]
    assert volume.shape == (1, 8, 8, 16, 12)
    for i, d in enumerate(levels):
        half = d / 4 / 2
        torch.testing.assert_close(volume[:, :4, i], grid_sample_rows(left, -half, "bilinear"))
        torch.testing.assert_close(volume[:, 4:, i], grid_sample_rows(right, half, "bilinear"))
    for i in range(len(levels) - 1):
        assert (volume[:, :, i] - volume[:, :, i + 1]).abs().max() > 1e-3
    # calling again at another size works (nothing cached from the first call)
    assert asm(left[..., :8, :], right[..., :8, :])["volume"].shape == (1, 8, 8, 8, 12)


def test_asm_difference_volume_is_left_minus_right_and_vanishes_at_the_true_disparity():
    levels = [-4.0, 0.0, 4.0, 8.0]
    asm = AdaptiveSamplingVolume(3, levels, modes=("bilinear",), use_attention=False, volume="difference")
    torch.manual_seed(0)
    left = torch.rand(1, 3, 16, 6, dtype=torch.float64)
    right = torch.zeros_like(left)
    right[..., 1:, :] = left[..., :-1, :]  # right(y) = left(y - 1): 1 px at 1/4 is level 4.0
    volume = asm(left, right)["volume"]
    assert volume.shape == (1, 3, 4, 16, 6)
    for i, d in enumerate(levels):
        half = d / 4 / 2
        want = grid_sample_rows(left, -half, "bilinear") - grid_sample_rows(right, half, "bilinear")
        torch.testing.assert_close(volume[:, :, i], want)
    energy = volume[..., 2:-2, :].abs().sum(dim=(0, 1, 3, 4))
    assert energy.argmin().item() == 2 and energy[2] < 1e-12
    with pytest.raises(ValueError, match="volume must be one of"):
        AdaptiveSamplingVolume(3, levels, volume="product")


def test_dp_features_without_the_pyramid_are_the_quarter_block_alone():
    torch.manual_seed(0)
    full = DPFeatures(8, 1, pyramid=True).eval()
    fine = DPFeatures(8, 1, pyramid=False).eval()
    fine.load_state_dict({k: v for k, v in full.state_dict().items()
                          if k.startswith(("firstconv.", "block1."))})
    image = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        out = fine(image)
        want = full.block1(full.firstconv(image))
    assert out.shape == (2, 8, 8, 12)
    torch.testing.assert_close(out, want)
    assert not hasattr(fine, "fpn") and count_parameters(fine) < count_parameters(full)


def test_anm_detach_keeps_the_normal_loss_out_of_the_matching_layers():
    batch = make_batch(batch=1)
    grads = {}
    for detach in (False, True):
        model = tiny(anm_detach=detach).train()
        out = model(batch)
        (1 - out["normal"][:, 2]).mean().backward()  # a normal-only loss
        grads[detach] = (model.features.block1.skip.weight.grad, model.anm.parameters().__next__().grad)
    trunk_joint, anm_joint = grads[False]
    trunk_detached, anm_detached = grads[True]
    assert trunk_joint is not None and trunk_joint.abs().sum() > 0
    assert trunk_detached is None or trunk_detached.abs().sum() == 0
    assert anm_detached is not None and anm_detached.abs().sum() > 0


def test_asm_slices_differ_with_every_operator_and_attention():
    asm = AdaptiveSamplingVolume(4, [-4.0, 0.0, 4.0, 8.0], use_attention=True).eval()
    volume = asm(torch.rand(1, 4, 16, 8), torch.rand(1, 4, 16, 8))
    assert volume["attention"].shape == (1, 2, 4, 3, 16, 8)
    torch.testing.assert_close(volume["attention"].sum(dim=3), torch.ones(1, 2, 4, 16, 8))
    v = volume["volume"]
    assert all((v[:, :, i] - v[:, :, j]).abs().max() > 1e-3 for i in range(4) for j in range(i + 1, 4))


def test_asm_matching_slice_aligns_a_shifted_pair():
    """right(y) = left(y - d): the slice at level d (and no other) makes both halves of the volume agree."""
    d_full = 4.0  # full-resolution px -> 1 px at the 1/4 feature resolution
    left = torch.rand(1, 3, 32, 6, dtype=torch.float64)
    right = torch.roll(left, int(d_full / 4), dims=-2)
    asm = AdaptiveSamplingVolume(3, [-4.0, 0.0, 4.0, 8.0], modes=("phase",), use_attention=False)
    v = asm(left, right)["volume"]
    errors = [(v[:, :3, i] - v[:, 3:, i]).abs().max().item() for i in range(4)]
    assert errors[2] < 1e-9 and min(errors[:2] + errors[3:]) > 1e-2


def test_masking_attention_weights_and_identical_candidates():
    attention = MaskingAttention(4).eval()
    x = torch.rand(2, 4, 1, 8, 8).expand(-1, -1, 3, -1, -1)
    out, weights = attention(x)
    torch.testing.assert_close(weights.sum(dim=2), torch.ones(2, 4, 8, 8))
    torch.testing.assert_close(out, x[:, :, 0] / 3)  # mean of x·w over 3 candidates whose weights sum to 1
    assert count_parameters(attention) == 4 * 4 * 9 + 2 * 4 + 4 * 4 + 2 * 4
    mean_only, no_weights = MaskingAttention(4, enabled=False)(x)
    assert no_weights is None and count_parameters(MaskingAttention(4, enabled=False)) == 0
    torch.testing.assert_close(mean_only, x.mean(dim=2))


# ----------------------------------------------------------------------------------------------
# ANM pieces


def test_select_hypotheses_picks_nearest_levels_sorted():
    levels = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    volume = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 2, 8, 2, 3)
    disparity = torch.cat(
        [torch.full((1, 4, 12), 0.9), torch.full((1, 4, 12), 9.5)], dim=1
    )  # 1/4 rows: 0.9, 9.5
    features, hyps, index = select_hypotheses(volume, disparity, levels, top_k=4)
    assert features.shape == (1, 2, 4, 2, 3) and hyps.shape == (1, 4, 2, 3)
    torch.testing.assert_close(hyps[0, :, 0, 0], torch.tensor([-2.0, 0.0, 2.0, 4.0]))
    torch.testing.assert_close(hyps[0, :, 1, 0], torch.tensor([4.0, 6.0, 8.0, 10.0]))
    torch.testing.assert_close(features[0, 0], index.float()[0])  # the gathered slices are the chosen levels


def test_hypothesis_points_are_metric_in_full_resolution_units():
    a, b = -26996.48848727, 32.984822  # benchmark camera 1
    fx, fy, cx, cy = 6400.0, 6466.0, 300.0, 200.0
    K = torch.tensor([[[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    D = torch.tensor([-4.0, 0.0, 6.0, 11.5], dtype=torch.float64).view(1, 4, 1, 1).expand(1, 4, 3, 5)
    points = hypothesis_points(
        D, K, torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    )
    z_expected = a / (torch.tensor([-4.0, 0.0, 6.0, 11.5], dtype=torch.float64) - b)  # 729.9 ... 1256.5 mm
    torch.testing.assert_close(points[0, :, 0, 0, 2], z_expected)
    assert 700 < z_expected.min() and z_expected.max() < 1300
    # quarter-resolution pixel (u, v) = (4, 2): centre of full-res pixels 16.5 / 8.5 -> cx/4 etc. by hand
    cx_q, cy_q = (cx + 0.5) / 4 - 0.5, (cy + 0.5) / 4 - 0.5
    torch.testing.assert_close(points[0, :, 2, 4, 0], (4 - cx_q) / (fx / 4) * z_expected)
    torch.testing.assert_close(points[0, :, 2, 4, 1], (2 - cy_q) / (fy / 4) * z_expected)
    # a hypothesis beyond d = b has no positive depth: its point is 0, not inf/NaN
    bad = hypothesis_points(
        torch.full((1, 1, 2, 2), 40.0, dtype=torch.float64),
        K,
        torch.tensor([a], dtype=torch.float64),
        torch.tensor([b], dtype=torch.float64),
    )
    assert torch.all(bad == 0)


# ----------------------------------------------------------------------------------------------
# The whole model


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("stereodpnet", profile="tiny", **overrides)


def test_forward_backward_shapes_and_unit_normals():
    model = tiny().train()
    batch = make_batch(batch=2)
    out = model(batch)
    assert out["disparity"].shape == (2, SIZE, SIZE)
    assert out["disparities"].shape == (2, 3, SIZE, SIZE)
    assert out["depth"].shape == (2, SIZE, SIZE) and out["normal"].shape == (2, 3, SIZE, SIZE)
    assert out["cost_volume_probabilities"].shape == (2, 32, SIZE, SIZE)
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, SIZE, SIZE))
    # soft-argmin stays inside the bins; depth is a / (d - b) of the final disparity
    assert out["disparity"].min() >= model.min_disp - 1e-5 and out["disparity"].max() <= model.max_disp + 1e-5
    torch.testing.assert_close(
        out["depth"], batch["a"].view(-1, 1, 1) / (out["disparity"] - batch["b"].view(-1, 1, 1))
    )
    assert torch.all(out["anm_offsets"] == 0)  # zero-initialised offset convolutions
    losses = model_loss(out, batch, model.loss_terms, model.loss_weights)
    assert set(losses) == {"smooth_l1", "cosine", "loss"}
    losses["loss"].backward()
    for part in ("features", "asm", "aggregation", "anm"):
        grads = [p.grad for p in getattr(model, part).parameters() if p.grad is not None]
        assert grads, part
        assert all(torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0, part
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out["disparities"].shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(out["disparities"][:, 0], out["disparity"])


@pytest.mark.parametrize(
    ("overrides", "absent"),
    [
        ({"use_attention": False}, {"attention"}),
        ({"asm_modes": ["phase"]}, {"attention"}),
        ({"asm_modes": ["nearest", "bilinear"]}, set()),
        ({"use_anm": False}, {"normal", "anm_offsets", "anm_hypotheses"}),
        ({"use_deform": False}, {"anm_offsets"}),
        ({"anm_squash": False}, set()),
    ],
)
def test_ablation_switches(overrides, absent):
    model = tiny(**overrides).eval()
    with torch.no_grad():
        out = model(make_batch())
    assert not absent & set(out)
    assert out["disparity"].shape == (1, SIZE, SIZE) and torch.isfinite(out["disparity"]).all()
    if overrides.get("use_attention") is False or overrides.get("asm_modes") == ["phase"]:
        assert count_parameters(model.asm) == 0
    if overrides.get("use_anm") is False:
        assert model.anm is None and "cosine" not in model.loss_terms
    if overrides.get("use_deform") is False:
        assert not any("deform" in name for name, _ in model.named_modules())
    if "normal" in out:
        torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(1, SIZE, SIZE))


def test_invalid_inputs_give_clear_errors():
    model = tiny().eval()
    batch = make_batch()
    with pytest.raises(ValueError, match="divisible by 16"):
        model({**batch, "left": batch["left"][..., :24, :], "right": batch["right"][..., :24, :]})
    with pytest.raises(KeyError, match="K"):
        model({k: v for k, v in batch.items() if k != "K"})
    with pytest.raises(ValueError, match="asm_modes"):
        tiny(asm_modes=["cubic"])
    with pytest.raises(ValueError, match="levels"):
        tiny(levels=6)


def test_compiled_and_reference_kernels_agree(monkeypatch):
    import dpface_kernels

    if not dpface_kernels.has_compiled():
        pytest.skip("dpface_kernels is not compiled (make kernels); only the reference path is available")
    torch.manual_seed(3)
    model = tiny().train()
    # non-zero offsets so that the deformable sampling is really exercised
    for layer in model.anm.deform:
        torch.nn.init.normal_(layer.conv_offset.weight, 0.0, 0.05)
    batch = make_batch(seed=1)

    def run():
        model.zero_grad()
        out = model(batch)
        model_loss(out, batch, model.loss_terms, model.loss_weights)["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.anm.named_parameters() if p.grad is not None}
        return out, grads

    compiled_out, compiled_grads = run()
    monkeypatch.setattr(dpface_kernels, "deform_conv3d", dpface_kernels.reference.deform_conv3d)
    reference_out, reference_grads = run()
    torch.testing.assert_close(compiled_out["normal"], reference_out["normal"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(compiled_out["disparity"], reference_out["disparity"])
    for name in compiled_grads:
        torch.testing.assert_close(
            compiled_grads[name], reference_grads[name], atol=1e-4, rtol=1e-3, msg=name
        )


def test_parameter_count_full_config():
    model = build_model("stereodpnet")
    parts = {
        name: count_parameters(getattr(model, name)) for name in ("features", "asm", "aggregation", "anm")
    }
    # the released model's counts (feature extractor, ASM attention, aggregation, ANM)
    assert parts["features"] == 1_137_081
    assert parts["asm"] == 10_368
    assert parts["aggregation"] == 1_885_216
    assert abs(parts["anm"] - 637_835) <= 16  # see docs/stereodpnet.md
    assert abs(count_parameters(model) - 3_670_500) / 3_670_500 < 0.05


@pytest.mark.slow
def test_overfits_one_sample():
    torch.manual_seed(0)
    model = tiny().train()
    batch = make_batch(seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for _ in range(60):
        optimizer.zero_grad()
        losses = model_loss(model(batch), batch, model.loss_terms, model.loss_weights)
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], min(history, key=lambda h: h["loss"])
    assert last["loss"] < 0.2 * first["loss"], (first, last)
    assert last["cosine"] < 0.2 * first["cosine"], (first, last)
