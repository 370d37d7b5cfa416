"""Augmentations keep the geometry consistent: K after crops and flips (checked by back-projection), flips are
involutions, the DP relation right(y) = left(y - d) and d = a / Z + b survive flips, photometric draws are
shared by the three DP images, and everything is reproducible with a seeded generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dpface_lib.data import FaceDPDataset
from dpface_lib.transforms import (
    PCA_EIGVAL,
    PCA_EIGVEC,
    CenterCrop,
    Compose,
    PhotometricJitter,
    RandomCrop,
    RandomFlip,
    crop,
    flip,
)


@pytest.fixture
def sample(tiny_dataset: Path) -> dict:
    item = FaceDPDataset(tiny_dataset, "train", cameras=[2])[0]
    item["K"][0, 1] = 0.7  # a non-zero skew exercises its sign under flips
    return item


def lift(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) camera points Z K^-1 [u, v, 1] in float64 (independent of dpface_lib.geometry)."""
    H, W = depth.shape
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij"
    )
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    return depth.double()[..., None] * (pixels @ torch.linalg.inv(K.double()).T)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_same(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, second[key], rtol=0, atol=0, msg=key)
        else:
            assert value == second[key], key


# --------------------------------------------------------------------------------------------- crops
def test_crop_keeps_every_pixels_3d_point(sample: dict) -> None:
    out = RandomCrop((16, 20), generator=gen(3))(sample)
    x0, y0 = out["crop_origin"].tolist()
    assert out["left"].shape == (3, 16, 20) and out["mask"].shape == (16, 20)
    assert (x0, y0) != (0, 0)
    torch.testing.assert_close(
        lift(out["depth"], out["K"]), lift(sample["depth"], sample["K"])[y0 : y0 + 16, x0 : x0 + 20]
    )
    for key in ("left", "right", "lrsum", "albedo", "normal"):
        torch.testing.assert_close(out[key], sample[key][:, y0 : y0 + 16, x0 : x0 + 20])
    torch.testing.assert_close(out["K"][:, :2], sample["K"][:, :2])
    assert out["K"][0, 2] == pytest.approx(sample["K"][0, 2].item() - x0)
    assert out["K"][1, 2] == pytest.approx(sample["K"][1, 2].item() - y0)


def test_crops_compose_and_accumulate_origin(sample: dict) -> None:
    twice = crop(crop(sample, 2, 3, 20, 25), 1, 4, 10, 12)
    once = crop(sample, 3, 7, 10, 12)
    assert_same(twice, once)
    assert once["crop_origin"].tolist() == [7, 3]


def test_crop_size_rounding_and_center(sample: dict) -> None:
    out = RandomCrop(0.75, multiple_of=8, generator=gen(0))(sample)  # 18x24 -> 16x24
    assert out["depth"].shape == (16, 24)
    centre = CenterCrop(1.0, multiple_of=10)(sample)  # 24x32 -> 20x30 at (2, 1)
    assert centre["depth"].shape == (20, 30) and centre["crop_origin"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="does not fit"):
        CenterCrop((30, 10))(sample)


def test_random_crop_covers_all_origins(sample: dict) -> None:
    cropper = RandomCrop((22, 30), generator=gen(1))
    origins = {tuple(cropper(sample)["crop_origin"].tolist()) for _ in range(200)}
    assert origins == {(x, y) for x in range(3) for y in range(3)}


# --------------------------------------------------------------------------------------------- flips
@pytest.mark.parametrize(("horizontal", "vertical"), [(True, False), (False, True), (True, True)])
def test_flip_twice_is_identity(sample: dict, horizontal: bool, vertical: bool) -> None:
    once = flip(sample, horizontal=horizontal, vertical=vertical)
    twice = flip(once, horizontal=horizontal, vertical=vertical)
    assert_same(twice, {**sample, "flipped": torch.tensor([False, False])})
    assert once["flipped"].tolist() == [horizontal, vertical]


@pytest.mark.parametrize(("horizontal", "vertical"), [(True, False), (False, True)])
def test_flip_mirrors_scene_consistently(sample: dict, horizontal: bool, vertical: bool) -> None:
    """Back-projecting the flipped depth with the flipped K gives the mirrored 3-D points, and the flipped
    normals are the mirrored normals: K (principal point and skew) and normals are updated together."""
    out = flip(sample, horizontal=horizontal, vertical=vertical)
    axis, dim = (0, 1) if horizontal else (1, 0)
    mirror = torch.ones(3, dtype=torch.float64)
    mirror[axis] = -1
    expected = torch.flip(lift(sample["depth"], sample["K"]), dims=(dim,)) * mirror
    torch.testing.assert_close(lift(out["depth"], out["K"]), expected)
    torch.testing.assert_close(
        out["normal"], torch.flip(sample["normal"], dims=(dim + 1,)) * mirror[:, None, None].float()
    )
    torch.testing.assert_close(out["light"], sample["light"] * mirror.float())
    # pose stays a rotation (det +1) and maps mirrored world points to mirrored camera points
    assert torch.linalg.det(out["pose"][:3, :3].double()).item() == pytest.approx(1.0, abs=1e-5)
    world = torch.tensor([10.0, -20.0, 900.0, 1.0], dtype=torch.float64)
    m4 = torch.cat([mirror, torch.ones(1, dtype=torch.float64)])
    torch.testing.assert_close(out["pose"].double() @ (m4 * world), m4 * (sample["pose"].double() @ world))


@pytest.mark.parametrize(("horizontal", "vertical"), [(True, False), (False, True), (True, True)])
def test_flip_keeps_dp_relation_and_disparity_sign(sample: dict, horizontal: bool, vertical: bool) -> None:
    """Build views with right(y, x) = left(y - d, x) for d = +2 rows; after any flip the same holds with
    the same d, and the disparity map still equals a / Z + b of the flipped depth."""
    d = 2
    texture = torch.rand(3, 24, 32, generator=gen(5))
    dp = {**sample, "left": texture, "right": torch.roll(texture, shifts=d, dims=1)}
    out = flip(dp, horizontal=horizontal, vertical=vertical)
    torch.testing.assert_close(out["right"][:, d:-d], torch.roll(out["left"], shifts=d, dims=1)[:, d:-d])
    wrong_sign = torch.roll(out["left"], shifts=-d, dims=1)[:, d:-d]
    assert (out["right"][:, d:-d] - wrong_sign).abs().max() > 0.1
    mask = out["mask"]
    a, b = out["a"].double(), out["b"].double()
    torch.testing.assert_close(
        out["disparity"][mask].double(), a / out["depth"][mask].double() + b, rtol=1e-6, atol=1e-5
    )
    assert torch.all(out["disparity"][~mask] == 0) and torch.equal(out["a"], sample["a"])


def test_random_flip_probabilities(sample: dict) -> None:
    never = RandomFlip(0.0, 0.0, generator=gen(0))(sample)
    assert_same(never, {**sample, "flipped": torch.tensor([False, False])})
    always = RandomFlip(1.0, 1.0, generator=gen(0))(sample)
    assert always["flipped"].tolist() == [True, True]
    counts = sum(RandomFlip(0.5, 0.0, generator=g)(sample)["flipped"][0].item() for g in [gen(7)] * 400)
    assert 150 < counts < 250


# --------------------------------------------------------------------------------------------- photometric
def test_jitter_is_one_draw_for_all_views(sample: dict) -> None:
    jitter = PhotometricJitter(lighting=(0.05, 0.1), clamp=False, generator=gen(2))
    out = jitter(sample)
    deltas = [out[k] - sample[k] for k in ("left", "right", "lrsum")]
    for delta in deltas:  # lighting adds one colour per image, the same for the three images
        torch.testing.assert_close(delta, deltas[0])
        torch.testing.assert_close(delta, delta[:, :1, :1].expand_as(delta))
    assert deltas[0].abs().max() > 1e-4
    for key in ("albedo", "normal", "depth", "disparity", "mask", "K"):
        assert torch.equal(out[key], sample[key]), key


def test_jitter_matches_formula(sample: dict) -> None:
    jitter = PhotometricJitter(
        brightness=(0.8, 1.1), gamma=(0.8, 1.2), contrast=(0.7, 1.2), lighting=(0.5, 1.0), clamp=False
    )
    params = jitter.draw()
    out = jitter.apply(sample, params)
    grey = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    lrsum = (sample["lrsum"] * params["brightness"]) ** params["gamma"]
    mean = (grey * lrsum).sum(0).mean()
    for key in ("left", "right", "lrsum"):
        x = (sample[key] * params["brightness"]) ** params["gamma"]
        expected = mean + params["contrast"] * (x - mean) + params["lighting"].float()[:, None, None]
        torch.testing.assert_close(out[key], expected)
    assert params["lighting"].shape == (3,)
    # the lighting shift lies in the span of the PCA eigenvectors weighted by their eigenvalues
    alpha = torch.linalg.solve(torch.tensor(PCA_EIGVEC, dtype=torch.float64), params["lighting"])
    assert torch.all(alpha.abs() / torch.tensor(PCA_EIGVAL) < 10)


def test_jitter_identical_views_stay_identical(sample: dict) -> None:
    same = {**sample, "right": sample["left"].clone(), "lrsum": sample["left"].clone()}
    out = PhotometricJitter(brightness=(0.7, 1.2), gamma=(0.7, 1.2), contrast=(0.7, 1.2), generator=gen(4))(
        same
    )
    assert torch.equal(out["left"], out["right"]) and torch.equal(out["left"], out["lrsum"])
    assert 0 <= out["left"].min() and out["left"].max() <= 1


# --------------------------------------------------------------------------------------------- determinism
def pipeline(seed: int) -> Compose:
    g = gen(seed)
    return Compose(
        [
            RandomCrop((16, 16), generator=g),
            RandomFlip(0.5, 0.5, generator=g),
            PhotometricJitter(brightness=(0.7, 1.2), generator=g),
        ]
    )


def test_seeded_pipeline_is_deterministic(sample: dict) -> None:
    first, second = pipeline(11), pipeline(11)
    for _ in range(5):
        assert_same(first(sample), second(sample))
    other = pipeline(12)
    outputs = [pipeline(11)(sample)["left"], other(sample)["left"]]
    assert not torch.equal(*outputs)
    assert "RandomCrop" in repr(first)


def test_transform_inside_dataset_and_loader(tiny_dataset: Path) -> None:
    dataset = FaceDPDataset(
        tiny_dataset, "train", transform=Compose([CenterCrop((16, 24)), RandomFlip(1.0, 1.0)])
    )
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["left"].shape == (2, 3, 16, 24) and batch["crop_origin"].tolist() == [[4, 4], [4, 4]]
    assert batch["flipped"].all()
