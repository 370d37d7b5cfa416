"""The five baselines: shared blocks, forward/backward contract, parameter counts, overfitting."""

from __future__ import annotations

import math
import re

import pytest
import torch

from dpface_lib import REPO_ROOT
from dpface_lib.losses import model_loss
from dpface_lib.models import build_model
from dpface_lib.models.blocks import (
    concat_cost_volume,
    cost_volume,
    count_parameters,
    difference_cost_volume,
    disparity_bins,
    disparity_levels,
    regress_volume,
    shift_rows,
    soft_argmin,
    volume_channels,
)

BASELINES = ["psmnet", "dpnet", "stereonet", "nnet", "bts"]
A_MM, B_PX = -25000.0, 30.0


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def synthetic_batch(
    B: int = 1, H: int = 32, W: int = 64, d0: float = 1.0, slope: float = 0.02, seed: int = 0
):
    """A textured slanted plane seen by a DP camera, built analytically (no library code).

    The texture is a sum of random sinusoids T(y, x); left = T(y, x) and right = T(y - d(x), x) with
    d(x) = d0 + slope (x - W/2) px, i.e. the right view is the left one moved down by d rows. Depth is
    a / (d - b); the normal is one fixed unit vector; K has f = 400 px and a centred principal point.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(H, dtype=torch.float64).view(H, 1)
    x = torch.arange(W, dtype=torch.float64).view(1, W)
    d = (d0 + slope * (x - W / 2)).expand(H, W)
    waves = torch.rand(3, 6, 3, generator=g, dtype=torch.float64) * torch.tensor([0.9, 0.9, 2 * math.pi])

    def texture(rows: torch.Tensor) -> torch.Tensor:
        fy, fx, ph = (waves[..., i].view(3, 6, 1, 1) for i in range(3))
        return torch.sin(fy * rows + fx * x + ph).sum(dim=1)

    left, right = texture(y), texture(y - d)
    lo, hi = min(left.min(), right.min()), max(left.max(), right.max())
    left, right = ((left - lo) / (hi - lo)).float(), ((right - lo) / (hi - lo)).float()
    normal = torch.tensor([0.3, -0.2, -1.0])
    sample = {
        "left": left,
        "right": right,
        "lrsum": (left + right) / 2,
        "disparity": d.float(),
        "depth": (A_MM / (d - B_PX)).float(),
        "normal": (normal / normal.norm()).view(3, 1, 1).expand(3, H, W),
        "mask": torch.ones(H, W, dtype=torch.bool),
        "K": torch.tensor([[400.0, 0.0, W / 2], [0.0, 400.0, H / 2], [0.0, 0.0, 1.0]]),
        "a": torch.tensor(A_MM),
        "b": torch.tensor(B_PX),
    }
    return {k: torch.stack([v] * B).contiguous() for k, v in sample.items()}


# ----------------------------------------------------------------------------------------------
# Blocks


def test_disparity_levels_match_the_benchmark():
    levels = disparity_levels(-4, 12, 8, scale=4)
    assert levels == pytest.approx([-1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5])
    assert [int(v) for v in levels] == [-1, 0, 0, 0, 1, 1, 2, 2]  # the release's truncated shifts
    bins = disparity_bins(-4, 12, 32)
    assert bins[0] == -4 and bins[-1] == 11.5 and torch.allclose(bins.diff(), torch.full((31,), 0.5))
    with pytest.raises(ValueError, match="max_disp"):
        disparity_levels(3, 3, 8)


def test_shift_rows_integer_and_linear():
    x = torch.arange(5.0).view(5, 1) * 10  # rows 0, 10, 20, 30, 40
    assert shift_rows(x, 2, "integer").flatten().tolist() == [20, 30, 40, 0, 0]
    assert shift_rows(x, -1, "integer").flatten().tolist() == [0, 0, 10, 20, 30]
    assert shift_rows(x, 1.7, "integer").flatten().tolist() == shift_rows(x, 1, "integer").flatten().tolist()
    assert shift_rows(x, -0.5, "integer").equal(x)  # int() truncates toward zero, as the release
    # linear: out(y) = x(y + s) for a linear ramp, inside the map
    assert shift_rows(x, 0.25, "linear").flatten()[:4].tolist() == pytest.approx([2.5, 12.5, 22.5, 32.5])
    assert shift_rows(x, -1.5, "linear").flatten()[2:].tolist() == pytest.approx([5, 15, 25])
    with pytest.raises(ValueError, match="shift mode"):
        shift_rows(x, 1, "cubic")


def test_cost_volumes_match_at_the_true_disparity():
    """The right view is the left one moved down by d rows, so the slice at shift d pairs equal features."""
    left = torch.randn(1, 4, 12, 5)
    right = torch.zeros_like(left)
    right[..., 2:, :] = left[..., :-2, :]  # right(y) = left(y - 2)
    shifts = [-1.0, 0.0, 1.0, 2.0, 3.0]
    vol = concat_cost_volume(left, right, shifts, "integer")
    assert vol.shape == (1, 8, 5, 12, 5)
    ref_half, tgt_half = vol[:, :4, 3], vol[:, 4:, 3]
    assert torch.equal(ref_half[..., :10, :], tgt_half[..., :10, :])
    assert (ref_half[..., 10:, :] == 0).all()  # rows whose shifted target is outside
    diff = difference_cost_volume(left, right, shifts, "integer")
    energy = diff.abs().sum(dim=(0, 1, 3, 4))
    assert energy.argmin().item() == 3 and energy[3] == 0


def test_cost_volume_dispatches_by_kind_and_rejects_others():
    torch.manual_seed(0)
    ref, tgt = torch.randn(2, 3, 10, 6), torch.randn(2, 3, 10, 6)
    shifts = [-0.5, 0.0, 1.25]
    assert torch.equal(cost_volume(ref, tgt, shifts, "linear", "concat"),
                       concat_cost_volume(ref, tgt, shifts, "linear"))
    diff = cost_volume(ref, tgt, shifts, "linear", "difference")
    assert diff.shape == (2, volume_channels(3, "difference"), 3, 10, 6)
    # level 0.0 is the plain difference; level 1.25 interpolates the target between rows y+1 and y+2
    assert torch.allclose(diff[:, :, 1], ref - tgt)
    want = ref[..., :8, :] - (0.75 * tgt[..., 1:9, :] + 0.25 * tgt[..., 2:10, :])
    assert torch.allclose(diff[:, :, 2, :8], want, atol=1e-6)
    assert volume_channels(3, "concat") == 6
    with pytest.raises(ValueError, match="volume must be one of"):
        cost_volume(ref, tgt, shifts, "linear", "sum")


@pytest.mark.parametrize("name", ["psmnet", "nnet"])
def test_difference_volume_models_run_and_take_c_channels(name):
    torch.manual_seed(0)
    model = build_model(name, profile="tiny", volume="difference")
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert first.in_channels == model.features.lastconv[-1].out_channels
    out = model(synthetic_batch(1, 64, 96))
    assert torch.isfinite(out["disparity"]).all()


def test_soft_argmin_recovers_a_peaked_bin_and_regress_upsamples():
    values = torch.linspace(-2, 5, 8)
    cost = torch.full((2, 8, 3, 4), -50.0)
    cost[0, 5] = 50.0
    cost[1, 2] = 50.0
    d = soft_argmin(cost, values)
    assert torch.allclose(d[0], values[5].expand(3, 4)) and torch.allclose(d[1], values[2].expand(3, 4))
    flat = torch.zeros(1, 1, 8, 4, 4)  # uniform costs -> the mean of the bins
    bins = disparity_bins(-4, 12, 32)
    assert torch.allclose(regress_volume(flat, (16, 16), bins), bins.mean().expand(1, 16, 16))


# ----------------------------------------------------------------------------------------------
# Forward / backward contract


@pytest.mark.parametrize("name", BASELINES)
def test_forward_backward_contract(name):
    torch.manual_seed(0)
    model = build_model(name, profile="tiny")
    batch = synthetic_batch(1, 64, 96)
    out = model(batch)
    n_out = len(model.loss_weights)
    assert out["disparity"].shape == (1, 64, 96)
    assert out["disparities"].shape == (1, n_out, 64, 96)
    assert out["depth"].shape == (1, 64, 96)
    assert torch.equal(out["disparities"][:, 0], out["disparity"])
    for key, value in out.items():
        assert torch.isfinite(value).all(), f"{name}: non-finite {key}"
    if name == "bts":  # depth predicted in mm, disparity derived
        assert out["depth"].min() >= model.min_depth and out["depth"].max() <= model.max_depth
        assert torch.allclose(out["disparity"], A_MM / out["depth"] + B_PX, rtol=1e-5, atol=1e-4)
    else:  # disparity predicted, depth derived with a / (d - b); 0 where d >= b (no positive depth)
        valid = out["disparity"] < B_PX
        expected = torch.where(valid, A_MM / (out["disparity"] - B_PX), torch.zeros_like(out["disparity"]))
        assert torch.allclose(out["depth"], expected, rtol=1e-5)
    if name == "nnet":
        assert out["normal"].shape == (1, 3, 64, 96)
        assert torch.allclose(out["normal"].norm(dim=1), torch.ones(1, 64, 96), atol=1e-4)
    else:
        assert "normal" not in out
    losses = model_loss(out, batch, model.loss_terms, model.loss_weights)
    assert set(model.loss_terms) <= set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    with_grad = [g for g in grads if g is not None]
    assert len(with_grad) >= 0.9 * len(grads), (
        f"{name}: only {len(with_grad)}/{len(grads)} params get a gradient"
    )
    assert all(torch.isfinite(g).all() for g in with_grad)


@pytest.mark.parametrize("name", ["psmnet", "dpnet", "stereonet", "bts"])
def test_bad_input_size_is_a_clear_error(name):
    model = build_model(name, profile="tiny")
    with pytest.raises(ValueError, match="divisible"):
        model(synthetic_batch(1, 36, 58))


def test_missing_batch_key_names_it():
    model = build_model("nnet", profile="tiny")
    batch = synthetic_batch(1, 32, 32)
    del batch["K"]
    with pytest.raises(KeyError, match="'K'"):
        model(batch)


# ----------------------------------------------------------------------------------------------
# Parameter counts at the full configuration vs the table in docs/models.md


def _documented_counts() -> dict[str, float]:
    """Original parameter counts (millions) from the table in docs/models.md."""
    text = (REPO_ROOT / "docs" / "models.md").read_text()
    counts = {}
    for row in re.finditer(r"^\|\s*`(\w+)`\s*\|\s*([\d.]+)\s*M\s*\|", text, re.MULTILINE):
        counts[row.group(1)] = float(row.group(2))
    return counts


@pytest.mark.parametrize("name", BASELINES)
def test_parameter_count_matches_the_original(name):
    documented = _documented_counts()
    assert name in documented, f"docs/models.md has no parameter row for {name}"
    ours = count_parameters(build_model(name)) / 1e6
    assert ours == pytest.approx(documented[name], rel=0.05), f"{name}: {ours:.3f} M vs {documented[name]} M"


# ----------------------------------------------------------------------------------------------
# Overfitting one sample

OVERFIT = {
    "psmnet": (1e-3, 40),
    "dpnet": (1e-2, 40),
    "stereonet": (3e-3, 40),
    "nnet": (1e-3, 40),
    "bts": (3e-3, 30),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", BASELINES)
def test_overfits_one_sample(name):
    torch.manual_seed(0)
    lr, steps = OVERFIT[name]
    model = build_model(name, profile="tiny")
    batch = synthetic_batch(1, 32, 64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        loss = model_loss(model(batch), batch, model.loss_terms, model.loss_weights)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 10, f"{name}: loss {history[0]:.4f} -> {history[-1]:.4f}"
