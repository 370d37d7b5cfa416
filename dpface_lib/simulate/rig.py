"""The capture rig: 8 DP cameras on an arc, 6 light directions, 2 head positions.

Like the benchmark's rig (Kang et al., ECCV 2022) the cameras sit on an arc in front of the face at two
heights, spanning about ±35° horizontally; each has its own intrinsics, pose and focus distance. The
camera model (:data:`RIGS`) fixes the lens, the distances and the field of the stored rows:

- ``benchmark-lens``: the benchmark's lens (:data:`dpface_lib.geometry.BENCHMARK_OPTICS`: 135 mm,
  f-number selectable) focused so that zero disparity falls at 805-818 mm like the calibrated benchmark
  cameras; the rows cover 300 mm at the focus distance.
- ``teaching``: a camera that exists and whose DP signal carries a face at a few hundred rows: a
  full-frame Dual Pixel sensor (Canon EOS R5: 36 x 24 mm, 8192 x 5464 pixels of 4.39 µm, Dual Pixel RAW)
  held in portrait, so the DP split runs along the image rows, behind the Canon RF 85 mm F1.2 L USM
  wide open, focused at 860-875 mm (the lens focuses down to 850 mm). The stored image is a central
  crop of the sensor, 22.8 mm high at 256 rows, downsampled about 20x (89 µm stored pixels).

Stored resolution: the image rows cover ``frame_height_mm`` at the focus distance, which fixes
``fy = H g / frame_height_mm`` and the stored-image pixel pitch ``f / fy``. Disparities scale with
``fy``, so a small image has proportionally small disparities. At a fixed framing of the face the
disparity in stored pixels grows with the aperture diameter ``f / N`` and the number of rows, and
shrinks with the square of the field's height (see ``docs/teaching_camera.md``).

Frames: world as in :mod:`dpface_lib.simulate.face` (y up, z towards the cameras); cameras follow
OpenCV (x right, y down, z forward); ``pose`` maps world to camera, ``X_cam = R X_w + t`` (mm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dpface_lib.geometry import BENCHMARK_OPTICS, Optics, intrinsics_matrix, thin_lens_ab


@dataclass(frozen=True)
class RigModel:
    """A camera model of the rig (see the module docstring).

    Attributes:
        name: the ``--camera`` name.
        focal_mm: the lens's focal length (mm).
        f_number: the f-number used when none is given.
        frame_height_mm: height of the field the stored rows cover at the focus distance (mm).
        focus_range_mm: focus distances, drawn uniformly per camera (mm).
        arc_radius_mm: distance from each camera to the landmark centre of a head in the middle
            position (mm).
        sensor_pixel_um: the sensor's own pixel pitch (µm), or None when the stored pitch is not
            derived from a real sensor.
        description: one line for the data card.
    """

    name: str
    focal_mm: float
    f_number: float
    frame_height_mm: float
    focus_range_mm: tuple[float, float]
    arc_radius_mm: float
    sensor_pixel_um: float | None
    description: str

    @property
    def nominal_focal_per_height(self) -> float:
        """fy / image height of a camera focused mid-range."""
        return 0.5 * (self.focus_range_mm[0] + self.focus_range_mm[1]) / self.frame_height_mm


#: The rig's camera models, by ``--camera`` name.
RIGS: dict[str, RigModel] = {
    "benchmark-lens": RigModel(
        "benchmark-lens", BENCHMARK_OPTICS.focal_mm, BENCHMARK_OPTICS.f_number, 300.0, (805.0, 818.0), 840.0,
        None, "the benchmark's 135 mm lens focused at 805-818 mm; the rows cover 300 mm at the focus plane"),
    "teaching": RigModel(
        "teaching", 85.0, 1.2, 210.0, (860.0, 875.0), 895.0, 4.39,
        "Canon EOS R5 (full frame, 4.39 um pixels, Dual Pixel RAW) in portrait with the RF 85 mm F1.2 L USM "
        "focused at 860-875 mm; the rows cover 210 mm at the focus plane (a central crop of the sensor)"),
}
#: the camera model used when none is named
DEFAULT_RIG = "benchmark-lens"
#: height of the field covered by the image rows at the focus distance (mm), default camera model
FRAME_HEIGHT_MM = RIGS[DEFAULT_RIG].frame_height_mm
#: Focus distances of the default camera model's cameras (mm), drawn uniformly per camera.
FOCUS_RANGE_MM = RIGS[DEFAULT_RIG].focus_range_mm
#: fy / image height of a camera focused mid-range: the focal length to assume for images of this rig
#: that come without intrinsics (``dpface predict``).
NOMINAL_FOCAL_PER_HEIGHT = RIGS[DEFAULT_RIG].nominal_focal_per_height
#: distance from each camera to the landmark centre of a head in the middle position (mm), default model
ARC_RADIUS_MM = RIGS[DEFAULT_RIG].arc_radius_mm
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
    f_number: float | None = None,
    cameras: tuple[int, ...] = tuple(range(1, 9)),
    rig: str = DEFAULT_RIG,
) -> list[Camera]:
    """The rig's cameras (all 8 are drawn so a subset keeps the same calibration).

    Per camera: focus distance uniform in the camera model's range (805-818 mm for ``benchmark-lens``),
    a slight aim jitter (±1°), ``fx`` within ±0.3 % of ``fy``, principal point within ±2 px of the
    centre. ``f_number`` None takes the camera model's; ``rig`` names the model (:data:`RIGS`).
    """
    if height < 8 or width < 8:
        raise ValueError(f"image size {height}x{width} is too small (need at least 8x8)")
    if rig not in RIGS:
        raise ValueError(f"unknown camera model {rig!r}; expected one of {sorted(RIGS)}")
    model = RIGS[rig]
    f_number = model.f_number if f_number is None else f_number
    out = []
    for idx, (az, el) in enumerate(CAMERA_ANGLES, 1):
        focus = float(rng.uniform(*model.focus_range_mm))
        jitter = rng.normal(0.0, 1.0, size=3)
        fx_scale = float(rng.uniform(0.997, 1.003))
        pp = rng.uniform(-2.0, 2.0, size=2)
        if idx not in cameras:
            continue
        a, e = math.radians(az), math.radians(el)
        radius = model.arc_radius_mm
        centre = radius * np.array([math.sin(a) * math.cos(e), math.sin(e), math.cos(a) * math.cos(e)])
        target = AIM_POINT + np.radians(jitter) * radius  # aim jitter of about 1 degree
        fy = height * focus / model.frame_height_mm
        K = intrinsics_matrix(fy * fx_scale, fy, (width - 1) / 2 + pp[0], (height - 1) / 2 + pp[1])
        optics = Optics(
            focal_mm=model.focal_mm,
            focus_mm=focus,
            f_number=float(f_number),
            pixel_um=1000.0 * model.focal_mm / fy,
        )
        out.append(
            Camera(idx, np.asarray(K, dtype=np.float64), look_at(centre, target), optics, height, width)
        )
    return out
