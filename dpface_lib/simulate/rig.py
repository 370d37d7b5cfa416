"""The capture rig: 8 DP cameras on an arc, 6 light directions, 2 head positions.

Like the benchmark's rig (Kang et al., ECCV 2022) the cameras sit on an arc in front of the face at two
heights, spanning about ±35° horizontally; each has its own intrinsics, pose and focus distance. The
lens is the benchmark's (:data:`dpface_lib.geometry.BENCHMARK_OPTICS`: 135 mm; f-number selectable)
focused so that zero disparity falls at 805-818 mm like the calibrated benchmark cameras.

Stored resolution: the benchmark's images are tight face crops; here the image rows cover
:data:`FRAME_HEIGHT_MM` at the focus distance, which fixes ``fy = H g / FRAME_HEIGHT_MM`` and the
stored-image pixel pitch ``f / fy``. Disparities scale with ``fy``, so a small image has
proportionally small disparities (a fraction of a pixel at f/5.657 and 160 rows).

Frames: world as in :mod:`dpface_lib.simulate.face` (y up, z towards the cameras); cameras follow
OpenCV (x right, y down, z forward); ``pose`` maps world to camera, ``X_cam = R X_w + t`` (mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpface_lib.geometry import BENCHMARK_OPTICS, Optics, intrinsics_matrix, thin_lens_ab

#: height of the field covered by the image rows at the focus distance (mm)
FRAME_HEIGHT_MM = 300.0
#: Focus distances of the rig's cameras (mm), drawn uniformly per camera.
FOCUS_RANGE_MM = (805.0, 818.0)
#: fy / image height of a camera focused mid-range: the focal length to assume for images of this rig
#: that come without intrinsics (``dpface predict``).
NOMINAL_FOCAL_PER_HEIGHT = 0.5 * (FOCUS_RANGE_MM[0] + FOCUS_RANGE_MM[1]) / FRAME_HEIGHT_MM
#: distance from each camera to the landmark centre of a head in the middle position (mm)
ARC_RADIUS_MM = 840.0
#: the point the cameras aim at (mm, world): a little above the landmark centre, mid-face
AIM_POINT = np.array([0.0, 10.0, 0.0])
#: head translation towards the cameras for each position (mm): forward is nearer
POSITIONS: dict[str, float] = {"forward": 55.0, "backward": -45.0}
#: (azimuth, elevation) in degrees of cameras 1..8: upper row left to right, then lower row
CAMERA_ANGLES: tuple[tuple[float, float], ...] = (
    (-35.0, 12.0), (-12.0, 12.0), (12.0, 12.0), (35.0, 12.0),
    (-35.0, -6.0), (-12.0, -6.0), (12.0, -6.0), (35.0, -6.0),
)  # fmt: skip
#: unit directions towards lights 1..6 (world frame): front, left, right, upper-left, upper-right, below
LIGHT_DIRECTIONS = np.array(
    [[0.0, 0.25, 1.0], [-0.8, 0.3, 0.6], [0.8, 0.3, 0.6], [-0.4, 0.8, 0.6], [0.4, 0.8, 0.6], [0.0, -0.5, 0.9]]
)
LIGHT_DIRECTIONS = LIGHT_DIRECTIONS / np.linalg.norm(LIGHT_DIRECTIONS, axis=1, keepdims=True)


@dataclass(frozen=True)
class Camera:
    """One DP camera of the rig.

    Attributes:
        index: 1-based camera index (``camidx``).
        K: (3, 3) intrinsics of the stored image (px).
        pose: (4, 4) world -> camera rigid transform (mm).
        optics: the lens; ``pixel_um`` is the *stored-image* pixel pitch ``1000 f / fy``.
        height, width: stored image size (px).
    """

    index: int
    K: np.ndarray
    pose: np.ndarray
    optics: Optics
    height: int
    width: int

    def ab(self, k: float) -> tuple[float, float]:
        """``(a, b)`` of ``d = a / Z + b`` for DP disparity per CoC pixel ``k`` (thin lens)."""
        a, b = thin_lens_ab(self.optics, float(self.K[1, 1]), k)
        return float(a), float(b)

    @property
    def centre(self) -> np.ndarray:
        """(3,) camera centre in world coordinates (mm)."""
        r, t = self.pose[:3, :3], self.pose[:3, 3]
        return -r.T @ t


def look_at(
    centre: np.ndarray, target: np.ndarray, up: tuple[float, float, float] = (0.0, 1.0, 0.0)
) -> np.ndarray:
    """(4, 4) world -> camera pose of a camera at ``centre`` looking at ``target`` (OpenCV axes)."""
    z = target - centre
    z = z / np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, dtype=np.float64))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    r = np.stack([x, y, z])
    pose = np.eye(4)
    pose[:3, :3] = r
    pose[:3, 3] = -r @ centre
    return pose


def build_rig(
    height: int,
    width: int,
    rng: np.random.Generator,
    f_number: float = BENCHMARK_OPTICS.f_number,
    cameras: tuple[int, ...] = tuple(range(1, 9)),
) -> list[Camera]:
    """The rig's cameras (all 8 are drawn so a subset keeps the same calibration).

    Per camera: focus distance uniform in [805, 818] mm, a slight aim jitter (±1°), ``fx`` within
    ±0.3 % of ``fy``, principal point within ±2 px of the centre.
    """
    if height < 8 or width < 8:
        raise ValueError(f"image size {height}x{width} is too small (need at least 8x8)")
    out = []
    for idx, (az, el) in enumerate(CAMERA_ANGLES, 1):
        focus = float(rng.uniform(*FOCUS_RANGE_MM))
        jitter = rng.normal(0.0, 1.0, size=3)
        fx_scale = float(rng.uniform(0.997, 1.003))
        pp = rng.uniform(-2.0, 2.0, size=2)
        if idx not in cameras:
            continue
        a, e = math.radians(az), math.radians(el)
        centre = ARC_RADIUS_MM * np.array([math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)])
        target = AIM_POINT + np.radians(jitter) * ARC_RADIUS_MM  # aim jitter of about 1 degree
        fy = height * focus / FRAME_HEIGHT_MM
        K = intrinsics_matrix(fy * fx_scale, fy, (width - 1) / 2 + pp[0], (height - 1) / 2 + pp[1])
        optics = Optics(
            focal_mm=BENCHMARK_OPTICS.focal_mm,
            focus_mm=focus,
            f_number=float(f_number),
            pixel_um=1000.0 * BENCHMARK_OPTICS.focal_mm / fy,
        )
        out.append(
            Camera(idx, np.asarray(K, dtype=np.float64), look_at(centre, target), optics, height, width)
        )
    return out
