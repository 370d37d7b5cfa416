r"""Dual-pixel (DP) geometry: thin lens, circle of confusion, DP disparity; with the camera maths.

This is the one place to look for geometry: the camera maths (intrinsics, back-projection, normals of a
depth map) lives in :mod:`dpface_lib.camera` and every public name of it is re-exported here, so
``from dpface_lib.geometry import backproject`` works as well.

Units and frames
----------------
Depth ``Z`` is in millimetres along the optical axis; disparity is in pixels of the *stored* image;
the camera frame is x right, y down, z forward (OpenCV); pixel ``(u, v)`` = (column, row) has its
centre at integer coordinates, and ``K`` maps camera coordinates to those pixel indices:
``[u, v, 1]^T ~ K [X, Y, Z]^T`` with ``K = [[fx, skew, cx], [0, fy, cy], [0, 0, 1]]``.

From the thin lens to ``d = a / Z + b`` (step by step)
-------------------------------------------------------
Lens of focal length ``f``, f-number ``N``, aperture diameter ``A = f / N``, focused at distance ``g``.

1. Thin-lens equation ``1/f = 1/Z + 1/v``: a point at depth ``Z`` comes to focus at the image
   distance ``v(Z) = f Z / (Z - f)``. The sensor sits where the focus plane is sharp:
   ``s = v(g) = f g / (g - f)``.
2. The cone of rays through the aperture has diameter ``A`` at the lens and 0 at ``v``; at the sensor
   its diameter is, by similar triangles, ``A (s - v) / v``. Substituting ``v`` and ``s`` gives the
   *signed* circle of confusion (CoC) on the sensor, in mm::

       c(Z) = A * f / (g - f) * (1 - g / Z)

   ``c > 0`` beyond the focus plane (``Z > g``: the rays cross before the sensor), ``c < 0`` in front
   of it, ``c = 0`` at ``Z = g``, and ``c -> A f / (g - f)`` as ``Z -> inf``.
3. In stored-image pixels: the focal length in those pixels is ``fy`` (from ``K``), so one sensor mm
   is ``fy / f`` pixels and ``c_px = c * fy / f``. (At full sensor resolution ``fy = f / pixel``.)
4. A DP pixel splits the aperture into two halves. Each half-image is the scene blurred by one half of
   the CoC disc, so the two views are shifted against each other by a distance proportional to the
   CoC: ``d = k * c_px``. For an ideal split of a uniform disc ``k`` is about the distance between the
   two half-disc centroids, ``4 / (3 pi) ~ 0.42`` CoC diameters; real sensors (microlens crosstalk,
   vignetting) give less, and ``k`` is calibrated: ``k = 0.13372`` for the benchmark sensor
   (:data:`BENCHMARK_K_DP`).
   The linear CoC-disparity relation is the DP model of Garg et al., "Learning Single Camera Depth
   Estimation using Dual-Pixels" (ICCV 2019) and Punnappurath et al., "Modeling Defocus-Disparity in
   Dual-Pixel Sensors" (ICCP 2020).
5. Putting 2-4 together::

       d(Z) = k * fy / f * A * f / (g - f) * (1 - g / Z) = a / Z + b,
       a = -k * (fy / N) * f * g / (g - f),      b = -a / g  (= k * (fy / N) * f / (g - f)).

   This is the ``Disp2Depth`` model of Kang et al., "Facial Depth and Normal Estimation using Single
   Dual-Pixel Camera" (ECCV 2022), whose benchmark stores per-camera calibrated ``(a, b)``
   (:data:`BENCHMARK_CAMERA_AB`) and recovers depth as ``Z = a / (d - b)``.

Sign convention (the whole kit uses it): for a real lens ``a < 0`` and ``b > 0``, so points **beyond
the focus plane have positive disparity** and nearer points negative; disparity grows with depth and
is 0 at ``Z = -a / b`` (the focus distance, for thin-lens ``a, b``). The disparity axis is the image
**rows** (vertical), and the right view is the left view shifted by ``+d`` rows:
``right(y, x) ~ left(y - d, x)``.

Because ``(a, b)`` depend on the lens state and the sensor and are rarely known, a DP disparity map
only fixes *inverse depth up to an unknown affine map*, hence affine-invariant metrics
(Garg et al. 2019).

Every function accepts numpy arrays or torch tensors and returns the type it was given (Python
scalars give floats); the torch path is differentiable and batched over leading dimensions. Invalid
inputs give NaN, never inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dpface_lib.camera import (
    ArrayLike,
    array_kind,
    backproject,
    crop_intrinsics,
    from_tensor,
    intrinsics_from_vector,
    intrinsics_matrix,
    intrinsics_to_vector,
    normals_from_depth,
    normals_to_rgb,
    per_sample,
    scale_intrinsics,
    to_tensor,
    unit_vectors,
    valid_depth,
)

__all__ = ["BENCHMARK_CAMERA_AB", "BENCHMARK_K_DP", "BENCHMARK_OPTICS", "Optics", "backproject",
           "circle_of_confusion", "crop_intrinsics", "depth_error_per_pixel", "depth_to_disparity",
           "disparity_to_depth", "intrinsics_from_vector", "intrinsics_matrix", "intrinsics_to_vector",
           "normals_from_depth", "normals_to_rgb", "scale_intrinsics", "thin_lens_ab", "unit_vectors",
           "zero_disparity_depth"]


@dataclass(frozen=True)
class Optics:
    """A thin lens in front of a DP sensor.

    Args:
        focal_mm: focal length ``f`` (mm).
        focus_mm: focus distance ``g`` (mm, object side, from the lens); must exceed ``focal_mm``.
        f_number: ``N``; the aperture diameter is ``f / N``.
        pixel_um: sensor pixel pitch (µm) at full resolution.
    """

    focal_mm: float
    focus_mm: float
    f_number: float
    pixel_um: float

    def __post_init__(self) -> None:
        for name in ("focal_mm", "focus_mm", "f_number", "pixel_um"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"Optics.{name} must be a finite number > 0, got {value!r}")
        if self.focus_mm <= self.focal_mm:
            raise ValueError(
                f"Optics.focus_mm ({self.focus_mm}) must exceed focal_mm ({self.focal_mm}): "
                "a thin lens cannot focus closer than its focal length"
            )

    @property
    def aperture_mm(self) -> float:
        """Aperture diameter ``A = f / N`` (mm)."""
        return self.focal_mm / self.f_number

    @property
    def sensor_distance_mm(self) -> float:
        """Lens-to-sensor distance ``s = f g / (g - f)`` that keeps the focus plane sharp (mm)."""
        return self.focal_mm * self.focus_mm / (self.focus_mm - self.focal_mm)

    @property
    def magnification(self) -> float:
        """Lateral magnification at the focus plane, ``s / g = f / (g - f)``."""
        return self.focal_mm / (self.focus_mm - self.focal_mm)

    @property
    def coc_at_infinity_mm(self) -> float:
        """Limit of the signed CoC as ``Z -> inf``: ``A f / (g - f)`` (mm on the sensor)."""
        return self.aperture_mm * self.magnification

    @property
    def fy_full_px(self) -> float:
        """Focal length in full-resolution sensor pixels, ``f / pixel`` (px)."""
        return self.focal_mm / (self.pixel_um * 1e-3)

    def image_distance_mm(self, depth_mm: ArrayLike) -> ArrayLike:
        """Where a point at ``depth_mm`` comes to focus behind the lens: ``f Z / (Z - f)`` (mm)."""
        return self.focal_mm * depth_mm / (depth_mm - self.focal_mm)


#: The benchmark's lens (Kang et al. 2022 metadata): 135 mm, focused at 970 mm, f/5.657, 5.36 µm pixels.
BENCHMARK_OPTICS = Optics(focal_mm=135.0, focus_mm=970.0, f_number=5.657, pixel_um=5.36)

#: DP disparity per pixel of CoC diameter for the benchmark sensor (Kang et al. 2022 release).
BENCHMARK_K_DP = 0.13372

#: Per-camera calibrated ``(a, b)`` of the benchmark, keyed by ``camidx`` (1..8); ``d = a / Z + b``.
BENCHMARK_CAMERA_AB: dict[int, tuple[float, float]] = {
    1: (-26996.48848727, 32.984822), 2: (-25727.48737484, 31.80317696),
    3: (-24940.24188275, 30.52371982), 4: (-25821.86619949, 32.03359466),
    5: (-26735.69581971, 33.24327157), 6: (-22694.45143825, 27.76217617),
    7: (-23598.82548605, 29.1246567), 8: (-26482.94764346, 32.91372342),
}


# ----------------------------------------------------------------------------------------------
# Thin lens and DP disparity


def circle_of_confusion(depth_mm: ArrayLike, optics: Optics, fy_px: float | None = None) -> ArrayLike:
    """Signed circle-of-confusion diameter ``c(Z) = A f / (g - f) (1 - g / Z)``.

    Args:
        depth_mm: (...) depth in mm.
        optics: the lens.
        fy_px: if given, return the CoC in stored-image pixels (``c * fy_px / f``); else mm on the sensor.

    Returns:
        (...) signed CoC, positive beyond the focus plane; NaN where the depth is invalid (<= 0 or
        non-finite).
    """
    kind = array_kind(depth_mm)
    z = to_tensor(depth_mm)
    valid = valid_depth(z)
    z_safe = torch.where(valid, z, torch.ones_like(z))
    scale = optics.coc_at_infinity_mm * (1.0 if fy_px is None else fy_px / optics.focal_mm)
    coc = scale * (1.0 - optics.focus_mm / z_safe)
    return from_tensor(torch.where(valid, coc, torch.full_like(coc, math.nan)), kind)


def thin_lens_ab(optics: Optics, fy_px: ArrayLike | None = None, k: float = BENCHMARK_K_DP):
    """Thin-lens ``(a, b)`` of ``d = a / Z + b`` (``d`` in stored-image px, ``Z`` in mm).

    ``a = -k (fy / N) f g / (g - f)`` and ``b = -a / g`` (derivation in the module docstring).

    Args:
        optics: the lens.
        fy_px: vertical focal length of the stored image in px (``K[1, 1]``); ``None`` uses the full
            sensor resolution ``optics.fy_full_px``. May be an array/tensor (e.g. one fy per sample).
        k: DP disparity per pixel of CoC diameter (sensor property).

    Returns:
        ``(a, b)``: ``a`` in px·mm (negative), ``b`` in px (positive), same type as ``fy_px``.

    Example: the benchmark lens with ``fy_px = 6466.56`` gives ``a = -23971.9``, ``b = 24.7133``,
    the values quoted with the benchmark's released code.
    """
    fy = optics.fy_full_px if fy_px is None else fy_px
    g, f = optics.focus_mm, optics.focal_mm
    a = -k * (fy / optics.f_number) * f * g / (g - f)
    return a, -a / g


def depth_to_disparity(depth_mm: ArrayLike, a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """DP disparity ``d = a / Z + b`` (px).

    Args:
        depth_mm: (..., H, W) or any shape, depth in mm.
        a, b: scalars, or arrays/tensors over ``depth_mm``'s leading dims (e.g. (B,) for (B, H, W)),
            or of its full shape.

    Returns:
        Disparity like ``depth_mm``; NaN where the depth is <= 0 or non-finite.
    """
    kind = array_kind(depth_mm)
    z = to_tensor(depth_mm)
    a_t, b_t = per_sample(a, z), per_sample(b, z)
    valid = valid_depth(z)
    d = a_t / torch.where(valid, z, torch.ones_like(z)) + b_t
    return from_tensor(torch.where(valid, d, torch.full_like(d, math.nan)), kind)


def disparity_to_depth(disp_px: ArrayLike, a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Depth ``Z = a / (d - b)`` (mm) from DP disparity (px).

    Args:
        disp_px: disparity, any shape; ``a``, ``b`` as in :func:`depth_to_disparity`.

    Returns:
        Depth like ``disp_px``; NaN where the disparity is non-finite, where ``d == b`` (depth at
        infinity) and where the implied depth is not a finite positive number (for ``a < 0``: every
        ``d >= b``).
    """
    kind = array_kind(disp_px)
    d = to_tensor(disp_px)
    a_t, b_t = per_sample(a, d), per_sample(b, d)
    denom = d - b_t
    ok = torch.isfinite(denom) & (denom != 0)
    z = a_t / torch.where(ok, denom, torch.ones_like(denom))
    ok = ok & torch.isfinite(z) & (z > 0)
    return from_tensor(torch.where(ok, z, torch.full_like(z, math.nan)), kind)


def zero_disparity_depth(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """Depth (mm) where ``a / Z + b = 0``, i.e. ``-a / b`` (the focus distance for thin-lens ``a, b``)."""
    return -a / b


def depth_error_per_pixel(depth_mm: ArrayLike, a: ArrayLike) -> ArrayLike:
    """Depth change caused by one pixel of disparity error, ``|dZ/dd| = Z**2 / |a|`` (mm per px).

    From ``Z = a / (d - b)``: ``dZ/dd = -a / (d - b)**2 = -Z**2 / a``. Grows with the square of depth.
    """
    return depth_mm * depth_mm / abs(a)
