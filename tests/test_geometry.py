"""Tests for dpface_lib.geometry: thin lens, DP disparity, back-projection and normals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dpface_lib import geometry as geo

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# The release quotes a = -23971.92, b = 24.71332 for the benchmark lens; that needs the stored image's
# fy to be about 6466.56 px (solved from a = -k (fy/N) f g/(g - f) once, by hand, to 7 digits).
FY_RELEASE = 6466.564343


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-9}


# ------------------------------------------------------------------------------------------------ optics


class TestOptics:
    def test_benchmark_lens_derived_quantities(self) -> None:
        o = geo.BENCHMARK_OPTICS
        assert (o.focal_mm, o.focus_mm, o.f_number, o.pixel_um) == (135.0, 970.0, 5.657, 5.36)
        assert o.aperture_mm == pytest.approx(135.0 / 5.657)  # 23.864 mm
        # thin-lens equation 1/f = 1/g + 1/s for the sensor distance
        assert 1.0 / o.sensor_distance_mm == pytest.approx(1.0 / 135.0 - 1.0 / 970.0)
        assert o.magnification == pytest.approx(o.sensor_distance_mm / 970.0)
        assert o.fy_full_px == pytest.approx(135.0 / 0.00536)  # 25186.6 px at full resolution
        assert o.image_distance_mm(970.0) == pytest.approx(o.sensor_distance_mm)

    @pytest.mark.parametrize(
        "kwargs, word",
        [
            ({"focal_mm": 135.0, "focus_mm": 100.0, "f_number": 4.0, "pixel_um": 5.0}, "focus_mm"),
            ({"focal_mm": 50.0, "focus_mm": 900.0, "f_number": -2.0, "pixel_um": 5.0}, "f_number"),
            ({"focal_mm": math.nan, "focus_mm": 900.0, "f_number": 2.0, "pixel_um": 5.0}, "focal_mm"),
            ({"focal_mm": 50.0, "focus_mm": 900.0, "f_number": 2.0, "pixel_um": 0.0}, "pixel_um"),
        ],
    )
    def test_exception(self, kwargs, word) -> None:
        with pytest.raises(ValueError, match=word):
            geo.Optics(**kwargs)

    def test_frozen(self) -> None:
        with pytest.raises(AttributeError):
            geo.BENCHMARK_OPTICS.focus_mm = 800.0  # type: ignore[misc]


class TestCircleOfConfusion:
    def test_against_ray_geometry(self) -> None:
        # Oracle: image distance v from 1/f = 1/Z + 1/v, sensor at s = v(g); the cone of diameter A at the
        # lens and 0 at v has diameter A |s - v| / v at the sensor; sign + when the rays cross before it.
        f, g, n_f = 50.0, 1200.0, 2.8
        o = geo.Optics(f, g, n_f, 4.0)
        z = np.array([300.0, 800.0, 1200.0, 2500.0, 1e7])
        v = 1.0 / (1.0 / f - 1.0 / z)
        s = 1.0 / (1.0 / f - 1.0 / g)
        expected = (f / n_f) * (s - v) / v
        np.testing.assert_allclose(geo.circle_of_confusion(z, o), expected, rtol=1e-12, atol=1e-12)
        assert expected[-1] == pytest.approx(o.coc_at_infinity_mm, rel=2e-4)  # 1 - g/Z = 1 - 1.2e-4

    def test_sign_and_pixels(self) -> None:
        o = geo.BENCHMARK_OPTICS
        c = geo.circle_of_confusion(np.array([700.0, 970.0, 1500.0]), o)
        assert c[0] < 0 and c[1] == pytest.approx(0.0, abs=1e-12) and c[2] > 0
        c_px = geo.circle_of_confusion(np.array([700.0, 1500.0]), o, fy_px=o.fy_full_px)
        np.testing.assert_allclose(c_px, c[[0, 2]] / (o.pixel_um * 1e-3), rtol=1e-12)

    def test_invalid_is_nan(self) -> None:
        out = geo.circle_of_confusion(np.array([0.0, -5.0, np.inf, np.nan]), geo.BENCHMARK_OPTICS)
        assert np.isnan(out).all()


# ------------------------------------------------------------------------------------------------ a, b


class TestThinLensAB:
    def test_benchmark_lens_by_hand(self) -> None:
        # Hand arithmetic via the sensor distance, independent of the module's closed form:
        f, g, n_f, k, fy = 135.0, 970.0, 5.657, 0.13372, FY_RELEASE
        s = 1.0 / (1.0 / 135.0 - 1.0 / 970.0)  # 156.82635... mm
        assert s == pytest.approx(156.826347, abs=1e-5)
        aperture = f / n_f  # 23.86424... mm
        coc_inf_mm = aperture * (s - f) / f  # Z -> inf focuses at v = f: cone diameter A (s - f) / f
        coc_inf_px = coc_inf_mm * fy / f  # sensor mm -> stored-image px
        b_hand = k * coc_inf_px  # disparity at infinity = a/inf + b = b
        a_hand = -b_hand * g  # zero disparity at the focus distance
        a, b = geo.thin_lens_ab(geo.BENCHMARK_OPTICS, fy, k)
        assert a == pytest.approx(a_hand, rel=1e-12)
        assert b == pytest.approx(b_hand, rel=1e-12)
        # the release's quoted numbers
        assert a == pytest.approx(-23971.92, abs=0.01)
        assert b == pytest.approx(24.71332, abs=1e-4)

    def test_default_fy_is_full_resolution(self) -> None:
        o = geo.BENCHMARK_OPTICS
        a_full = geo.thin_lens_ab(o, o.fy_full_px, geo.BENCHMARK_K_DP)[0]
        assert geo.thin_lens_ab(o)[0] == pytest.approx(a_full)

    def test_zero_disparity_at_focus(self) -> None:
        for o in (geo.BENCHMARK_OPTICS, geo.Optics(50.0, 600.0, 1.8, 1.4)):
            a, b = geo.thin_lens_ab(o, 3000.0, 0.2)
            assert geo.depth_to_disparity(o.focus_mm, a, b) == pytest.approx(0.0, abs=1e-10)
            assert geo.zero_disparity_depth(a, b) == pytest.approx(o.focus_mm, rel=1e-12)
            assert a < 0 < b  # beyond focus -> positive disparity
            far, near = 2.0 * o.focus_mm, 0.8 * o.focus_mm
            assert geo.depth_to_disparity(far, a, b) > 0 > geo.depth_to_disparity(near, a, b)

    def test_disparity_is_k_times_coc(self) -> None:
        o, fy, k = geo.BENCHMARK_OPTICS, 6000.0, 0.15
        z = np.linspace(500.0, 3000.0, 11)
        a, b = geo.thin_lens_ab(o, fy, k)
        coc_px = geo.circle_of_confusion(z, o, fy)
        np.testing.assert_allclose(geo.depth_to_disparity(z, a, b), k * coc_px, rtol=1e-12)

    def test_array_fy(self) -> None:
        fy = torch.tensor([FY_RELEASE, 2 * FY_RELEASE], dtype=torch.float64)
        a, b = geo.thin_lens_ab(geo.BENCHMARK_OPTICS, fy)
        torch.testing.assert_close(a[1], 2 * a[0])
        torch.testing.assert_close(-a / b, torch.full((2,), 970.0, dtype=torch.float64))


class TestBenchmarkTable:
    def test_zero_disparity_depths(self) -> None:
        # Z at d = 0 for each camera as listed with the calibrated table (rounded to 0.1 mm there).
        expected = {1: 818.5, 2: 809.0, 3: 817.1, 4: 806.1, 5: 804.2, 6: 817.5, 7: 810.3, 8: 804.6}
        assert sorted(geo.BENCHMARK_CAMERA_AB) == list(range(1, 9))
        for cam, (a, b) in geo.BENCHMARK_CAMERA_AB.items():
            assert a < 0 < b
            assert geo.zero_disparity_depth(a, b) == pytest.approx(expected[cam], abs=0.06)
        # disparity range -4 ... 11.5 px of the networks covers ~0.73-1.26 m for camera 1
        a, b = geo.BENCHMARK_CAMERA_AB[1]
        assert geo.disparity_to_depth(-4.0, a, b) == pytest.approx(729.9, abs=0.06)
        assert geo.disparity_to_depth(11.5, a, b) == pytest.approx(1256.5, abs=0.06)


# ------------------------------------------------------------------------------------------------ d <-> Z


A1, B1 = geo.BENCHMARK_CAMERA_AB[1]


class TestDepthDisparity:
    def test_roundtrip_numpy(self) -> None:
        for np_dtype, rtol in ((np.float32, 1e-5), (np.float64, 1e-12)):
            z = np.linspace(600.0, 1500.0, 37, dtype=np_dtype).reshape(37, 1)
            d = geo.depth_to_disparity(z, A1, B1)
            assert isinstance(d, np.ndarray) and d.dtype == np_dtype and d.shape == z.shape
            np.testing.assert_allclose(geo.disparity_to_depth(d, A1, B1), z, rtol=rtol)

    def test_roundtrip_torch(self, device, dtype) -> None:
        z = torch.linspace(600.0, 1500.0, 40, dtype=dtype, device=device).reshape(2, 4, 5)
        d = geo.depth_to_disparity(z, A1, B1)
        assert isinstance(d, torch.Tensor) and d.dtype == dtype and d.device == z.device
        torch.testing.assert_close(geo.disparity_to_depth(d, A1, B1), z, **_tol(dtype))

    def test_batched_parameters(self, device) -> None:
        z = torch.full((3, 4, 5), 900.0, dtype=torch.float64, device=device)
        a = torch.tensor([A1, -20000.0, -30000.0], dtype=torch.float64, device=device)
        b = torch.tensor([B1, 20.0, 40.0], dtype=torch.float64, device=device)
        d = geo.depth_to_disparity(z, a, b)
        for i in range(3):
            torch.testing.assert_close(d[i], a[i] / 900.0 + b[i] + torch.zeros_like(d[i]))
        torch.testing.assert_close(geo.disparity_to_depth(d, a, b), z)

    def test_invalid_depth_is_nan(self) -> None:
        z = np.array([0.0, -1.0, np.inf, -np.inf, np.nan, 800.0])
        d = geo.depth_to_disparity(z, A1, B1)
        assert np.isnan(d[:5]).all() and np.isfinite(d[5])
        d_t = geo.depth_to_disparity(torch.tensor(z, dtype=torch.float32), A1, B1)
        assert torch.isnan(d_t[:5]).all() and not torch.isinf(d_t).any()

    def test_invalid_disparity_is_nan(self, dtype) -> None:
        # d == b: depth at infinity; d > b: negative depth; non-finite input
        d = torch.tensor([B1, B1 + 0.5, 1e6, math.inf, -math.inf, math.nan, 0.0], dtype=dtype)
        b = float(torch.tensor(B1, dtype=dtype))  # exactly representable in dtype, so d[0] - b == 0
        z = geo.disparity_to_depth(d, A1, b)
        assert torch.isnan(z[:6]).all()
        assert not torch.isinf(z).any()
        assert float(z[6]) == pytest.approx(-A1 / B1, rel=1e-5)
        z_np = geo.disparity_to_depth(d.numpy(), A1, b)
        assert np.isnan(z_np[:6]).all() and not np.isinf(z_np).any()

    def test_scalar_in_scalar_out(self) -> None:
        z = geo.disparity_to_depth(0.0, A1, B1)
        assert isinstance(z, float) and z == pytest.approx(-A1 / B1)

    def test_numpy_torch_agree(self) -> None:
        rng = np.random.default_rng(0)
        z = rng.uniform(-100.0, 3000.0, size=(6, 7))
        d_np = geo.depth_to_disparity(z, A1, B1)
        d_t = geo.depth_to_disparity(torch.from_numpy(z), A1, B1)
        np.testing.assert_allclose(d_t.numpy(), d_np, equal_nan=True)
        np.testing.assert_allclose(
            geo.disparity_to_depth(torch.from_numpy(d_np), A1, B1).numpy(),
            geo.disparity_to_depth(d_np, A1, B1),
            equal_nan=True,
        )

    def test_depth_error_per_pixel(self) -> None:
        # central finite difference of Z(d) as the oracle
        z = np.array([800.0, 900.0, 1000.0])
        d = geo.depth_to_disparity(z, A1, B1)
        h = 1e-4
        fd = (geo.disparity_to_depth(d + h, A1, B1) - geo.disparity_to_depth(d - h, A1, B1)) / (2 * h)
        np.testing.assert_allclose(geo.depth_error_per_pixel(z, A1), np.abs(fd), rtol=1e-6)
        # ~24 mm per px at 800 mm and ~37 mm per px at 1 m for camera 1
        assert geo.depth_error_per_pixel(1000.0, A1) == pytest.approx(1e6 / 26996.49, rel=1e-6)

    def test_gradcheck(self) -> None:
        z = torch.linspace(600.0, 1400.0, 12, dtype=torch.float64).reshape(3, 4).requires_grad_()
        a = torch.tensor(A1, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(B1, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(geo.depth_to_disparity, (z, a, b))
        d = geo.depth_to_disparity(z.detach(), A1, B1).requires_grad_()
        assert torch.autograd.gradcheck(geo.disparity_to_depth, (d, a, b))

    def test_gradient_finite_at_invalid(self) -> None:
        z = torch.tensor([0.0, -3.0, 900.0], dtype=torch.float64, requires_grad=True)
        geo.depth_to_disparity(z, A1, B1).nansum().backward()
        assert torch.isfinite(z.grad).all() and (z.grad[:2] == 0).all()
        d = torch.tensor([B1, B1 + 1.0, 0.0], dtype=torch.float64, requires_grad=True)
        geo.disparity_to_depth(d, A1, B1).nansum().backward()
        assert torch.isfinite(d.grad).all() and (d.grad[:2] == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    z=st.floats(min_value=50.0, max_value=1e5),
    a=st.floats(min_value=-5e4, max_value=-100.0),
    focus=st.floats(min_value=200.0, max_value=1e4),
)
def test_roundtrip_property(z: float, a: float, focus: float) -> None:
    b = -a / focus
    d = geo.depth_to_disparity(np.array([z]), a, b)
    assert d[0] < b  # finite depth never reaches the disparity at infinity
    assert geo.disparity_to_depth(d, a, b)[0] == pytest.approx(z, rel=1e-9)
    assert (d[0] > 0) == (z > focus) or abs(z - focus) < 1e-6 * focus


@settings(max_examples=60, deadline=None)
@given(d=st.floats(min_value=-60.0, max_value=60.0, exclude_max=True), cam=st.integers(1, 8))
def test_disparity_roundtrip_property(d: float, cam: int) -> None:
    a, b = geo.BENCHMARK_CAMERA_AB[cam]
    z = geo.disparity_to_depth(torch.tensor([d], dtype=torch.float64), a, b)
    if d < b:
        assert z[0] > 0
        assert float(geo.depth_to_disparity(z, a, b)[0]) == pytest.approx(d, abs=1e-9)
    else:
        assert torch.isnan(z[0])


# ------------------------------------------------------------------------------------------------ K


K_TEST = geo.intrinsics_matrix(fx=420.0, fy=400.0, cx=31.3, cy=22.7, skew=1.5)


class TestIntrinsics:
    def test_matrix(self) -> None:
        np.testing.assert_array_equal(K_TEST, [[420.0, 1.5, 31.3], [0.0, 400.0, 22.7], [0.0, 0.0, 1.0]])

    def test_scale_maps_pixel_centres(self) -> None:
        # a camera point projects to (u, v); after resizing, pixel centres move as u -> s (u + 0.5) - 0.5
        p = np.array([12.0, -7.0, 950.0])
        uv = (K_TEST @ p)[:2] / p[2]
        k2 = geo.scale_intrinsics(K_TEST, 0.5, 0.25)
        uv2 = (k2 @ p)[:2] / p[2]
        np.testing.assert_allclose(uv2, [0.5 * (uv[0] + 0.5) - 0.5, 0.25 * (uv[1] + 0.5) - 0.5], rtol=1e-12)
        k_t = geo.scale_intrinsics(torch.from_numpy(np.stack([K_TEST, K_TEST])), 0.5, 0.25)
        np.testing.assert_allclose(k_t[1].numpy(), k2)

    def test_crop(self) -> None:
        k = geo.crop_intrinsics(K_TEST, 5, 7)
        p = np.array([12.0, -7.0, 950.0])
        np.testing.assert_allclose((k @ p)[:2] / p[2], (K_TEST @ p)[:2] / p[2] - [5, 7], rtol=1e-12)


# ------------------------------------------------------------------------------------------------ 3-D


class TestBackproject:
    def test_reprojects_to_pixel_grid(self, device, dtype) -> None:
        z = torch.linspace(700.0, 1100.0, 48 * 64, dtype=dtype, device=device).reshape(48, 64)
        pts = geo.backproject(z, torch.from_numpy(K_TEST))
        assert pts.shape == (48, 64, 3) and pts.dtype == dtype
        proj = pts.double() @ torch.from_numpy(K_TEST).to(device).T
        uv = proj[..., :2] / proj[..., 2:]
        v, u = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")
        torch.testing.assert_close(uv, torch.stack([u, v], -1).double().to(device), atol=2e-3, rtol=0)
        torch.testing.assert_close(pts[..., 2], z)

    def test_batched_and_invalid(self) -> None:
        z = np.full((2, 4, 5), 900.0)
        z[1, 2, 3] = 0.0
        ks = np.stack([K_TEST, geo.crop_intrinsics(K_TEST, 2, 1)])
        pts = geo.backproject(z, ks)
        assert isinstance(pts, np.ndarray) and pts.shape == (2, 4, 5, 3)
        np.testing.assert_allclose(pts[0], geo.backproject(z[0], ks[0]))
        assert np.isnan(pts[1, 2, 3]).all() and np.isfinite(np.delete(pts[1].reshape(-1, 3), 13, 0)).all()

    def test_gradcheck(self) -> None:
        z = (800.0 + 50.0 * torch.rand(5, 6, dtype=torch.float64)).requires_grad_()
        k = torch.from_numpy(K_TEST).clone().requires_grad_()
        assert torch.autograd.gradcheck(geo.backproject, (z, k))


def _plane_depth(normal: np.ndarray, offset: float, K: np.ndarray, h: int, w: int) -> np.ndarray:
    """Depth of the plane n . P = offset seen through K: P = Z r with r = K^-1 [u, v, 1], r_z = 1."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T
    return offset / (rays @ normal)


def _sphere(center: np.ndarray, radius: float, K: np.ndarray, h: int, w: int):
    """Ray-cast a sphere: depth (0 where missed) and outward unit normals (3, H, W)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([u, v, np.ones_like(u)], -1) @ np.linalg.inv(K).T  # r_z = 1, so t == depth
    rr = (rays * rays).sum(-1)
    rc = rays @ center
    disc = rc**2 - rr * (center @ center - radius**2)
    hit = disc > 0
    t = np.where(hit, (rc - np.sqrt(np.where(hit, disc, 0.0))) / rr, 0.0)
    normal = (t[..., None] * rays - center) / radius
    return t, np.moveaxis(normal, -1, 0), hit


def _angles_deg(n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
    cos = np.clip((n1 * n2).sum(0), -1.0, 1.0)
    return np.degrees(np.arccos(cos))


class TestNormalsFromDepth:
    def test_tilted_plane_exact(self) -> None:
        n_true = np.array([0.3, -0.4, -1.0])
        n_true /= np.linalg.norm(n_true)
        z = _plane_depth(n_true, offset=-900.0, K=K_TEST, h=40, w=50)  # n . P = -900 mm: in front
        assert (z > 0).all()
        mask = np.ones_like(z, dtype=bool)
        mask[10:14, 20:23] = False  # a hole: one-sided differences around it
        n = geo.normals_from_depth(z, K_TEST, mask)
        assert n.shape == (3, 40, 50)
        err = _angles_deg(n[:, mask], n_true[:, None])
        assert err.max() < 1e-5
        assert (n[:, ~mask] == 0).all()

    def test_fronto_parallel_faces_camera(self, device, dtype) -> None:
        z = torch.full((2, 6, 7), 1000.0, dtype=dtype, device=device)
        n = geo.normals_from_depth(z, torch.from_numpy(K_TEST).to(device))
        assert n.shape == (2, 3, 6, 7) and n.dtype == dtype
        torch.testing.assert_close(n[:, 2], -torch.ones(2, 6, 7, dtype=dtype, device=device))

    def test_sphere(self) -> None:
        h, w = 120, 160
        k = geo.intrinsics_matrix(fx=900.0, fy=880.0, cx=79.5, cy=59.5)
        z, n_true, hit = _sphere(np.array([8.0, -5.0, 900.0]), 70.0, k, h, w)
        n = geo.normals_from_depth(z, k, hit)
        assert (n[:, ~hit] == 0).all()
        norms = np.linalg.norm(n[:, hit], axis=0)
        np.testing.assert_allclose(norms, 1.0, rtol=1e-9)
        assert (n[2, hit] < 0).mean() > 0.99
        inner = hit.copy()  # erode the silhouette by 3 px
        for _ in range(3):
            inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        err = _angles_deg(n[:, inner], n_true[:, inner])
        assert inner.sum() > 0.6 * hit.sum()
        assert np.median(err) < 0.5
        # torch agrees with numpy
        n_t = geo.normals_from_depth(torch.from_numpy(z), torch.from_numpy(k), torch.from_numpy(hit))
        np.testing.assert_allclose(n_t.numpy(), n, atol=1e-12)

    def test_undefined_pixels_are_zero(self) -> None:
        z = np.full((5, 5), 900.0)
        z[0, :] = np.nan  # invalid row
        z[:, 4] = -1.0
        mask = np.ones((5, 5), bool)
        mask[2, 1:3] = False  # (2, 0) loses its only neighbour along the row
        n = geo.normals_from_depth(z, K_TEST, mask)
        assert (n[:, 0] == 0).all() and (n[:, :, 4] == 0).all()
        assert (n[:, 2, 0] == 0).all()  # no valid neighbour along its row
        np.testing.assert_allclose(np.linalg.norm(n[:, 3, :4], axis=0), 1.0)

    def test_gradcheck(self) -> None:
        k = torch.from_numpy(K_TEST)
        v, u = torch.meshgrid(torch.arange(4.0), torch.arange(5.0), indexing="ij")
        z = (900.0 + 3.0 * u + 2.0 * v + 0.4 * u * v).double().requires_grad_()
        mask = torch.ones(4, 5, dtype=torch.bool)
        mask[1, 2] = False  # exercises the one-sided branches
        assert torch.autograd.gradcheck(lambda d: geo.normals_from_depth(d, k, mask), (z,))

    def test_gradient_finite_with_invalid(self) -> None:
        z = torch.full((5, 6), 900.0, dtype=torch.float64)
        z[1, 1] = 0.0
        z[3, 4] = math.nan
        z.requires_grad_()
        geo.normals_from_depth(z, torch.from_numpy(K_TEST)).sum().backward()
        assert torch.isfinite(z.grad).all()


def test_normals_to_rgb() -> None:
    n = np.zeros((3, 2, 2))
    n[:, 0, 0] = [0.0, 0.0, -1.0]
    n[:, 1, 1] = [1.0, 0.0, 0.0]
    rgb = geo.normals_to_rgb(n)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(rgb[1, 1], [1.0, 0.5, 0.5])
    assert (rgb[0, 1] == 0).all()


def test_intrinsics_vector_round_trip() -> None:
    """The benchmark's PARAMS.intrinsic layout [fx, fy, skew, cx, cy, 0, 0, 0, 0] <-> K."""
    K = geo.intrinsics_matrix(fx=420.0, fy=400.0, cx=31.3, cy=22.7, skew=1.5)
    vector = geo.intrinsics_to_vector(K)
    assert vector == [420.0, 400.0, 1.5, 31.3, 22.7, 0.0, 0.0, 0.0, 0.0]
    np.testing.assert_array_equal(geo.intrinsics_from_vector(vector), K)
    np.testing.assert_array_equal(geo.intrinsics_from_vector(vector[:5]), K)
    with pytest.raises(ValueError, match="needs"):
        geo.intrinsics_from_vector([1.0, 2.0])


@pytest.mark.parametrize("dim", [1, -1, 0])
def test_unit_vectors_match_f_normalize_in_value_and_gradient(dim: int) -> None:
    torch.manual_seed(0)
    v = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    v[0, :, 0, 0] = 0.0      # zero vectors (a masked pixel) and tiny ones below eps
    v[1, :, 1, 1] = 1e-9
    eps = 1e-6
    mine = v.clone().requires_grad_(True)
    ref = v.clone().requires_grad_(True)
    out = geo.unit_vectors(mine, dim=dim, eps=eps)
    expected = torch.nn.functional.normalize(ref, dim=dim, eps=eps)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-15)
    weight = torch.randn_like(v)
    (out * weight).sum().backward()
    (expected * weight).sum().backward()
    torch.testing.assert_close(mine.grad, ref.grad, rtol=1e-10, atol=1e-12)
    assert torch.isfinite(mine.grad).all()
    lengths = out.square().sum(dim).sqrt()
    assert torch.allclose(lengths[lengths > 0.5], torch.ones((), dtype=torch.float64), atol=1e-12)
    assert torch.autograd.gradcheck(lambda x: geo.unit_vectors(x, dim=dim, eps=eps),
                                    (torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True),))
