"""Face geometry for the simulator: a real head scan plus procedural per-person variation.

The base surface is the textured head scan ``james.obj`` shipped with menpo3d 0.8.6 (Imperial College
London, BSD-3-Clause; see ``assets/ATTRIBUTION.md``): about 6.4k vertices, 12.2k triangles, UVs,
millimetre units, y up, the face looking along +z. Its 68 landmarks (``james.ljson``) anchor smooth
region-driven deformations (Gaussian radial weights around landmark groups), so every synthetic person
keeps a plausible human face while differing in proportions, expression and skin tone.

World frame (mm): x towards the subject's left (image right for a frontal camera), y up, z from the
face towards the cameras; the origin is the centre of the landmarks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets"
EXPRESSIONS = ("neutral", "frowning", "yawning")
DIRECTIONS = ("left", "right", "front", "upper")

#: head rotation (yaw about y, pitch about x) in degrees for each head direction
DIRECTION_ANGLES: dict[str, tuple[float, float]] = {
    "left": (25.0, 0.0),
    "right": (-25.0, 0.0),
    "front": (0.0, 0.0),
    "upper": (0.0, -18.0),
}


@dataclass(frozen=True)
class FaceModel:
    """The base head scan.

    Attributes:
        vertices: (V, 3) float64 positions (mm, world frame, centred on the landmarks).
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside.
        uv: (T, 2) float64 texture coordinates in [0, 1] (v up).
        faces_uv: (F, 3) int64 indices into ``uv``.
        texture: (Ht, Wt, 3) float32 albedo photo in [0, 1].
        landmarks: label -> (n, 3) float64 landmark positions (mm, same frame as ``vertices``).
        region: (V,) 1 for vertices of the face area (the ground-truth mask), or None to derive it from
            the landmarks (the scan).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray
    faces_uv: np.ndarray
    texture: np.ndarray
    landmarks: dict[str, np.ndarray]
    region: np.ndarray | None = None


def load_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parse a Wavefront OBJ (``v``, ``vt``, ``f`` records; polygons are fan-triangulated).

    Returns:
        ``(vertices (V, 3), uv (T, 2), faces (F, 3), faces_uv (F, 3))``; indices 0-based.

    Raises:
        ValueError: naming the file and line for a malformed record or faces without UVs.
    """
    path = Path(path)
    verts: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[int]] = []
    faces_uv: list[list[int]] = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                if parts[0] == "v":
                    verts.append([float(x) for x in parts[1:4]])
                elif parts[0] == "vt":
                    uvs.append([float(x) for x in parts[1:3]])
                elif parts[0] == "f":
                    corners = [p.split("/") for p in parts[1:]]
                    if len(corners) < 3 or any(len(c) < 2 or not c[1] for c in corners):
                        raise ValueError("face needs >= 3 corners written as v/vt")
                    vi = [int(c[0]) for c in corners]
                    ti = [int(c[1]) for c in corners]
                    vi = [i - 1 if i > 0 else len(verts) + i for i in vi]
                    ti = [i - 1 if i > 0 else len(uvs) + i for i in ti]
                    for j in range(1, len(vi) - 1):
                        faces.append([vi[0], vi[j], vi[j + 1]])
                        faces_uv.append([ti[0], ti[j], ti[j + 1]])
            except ValueError as err:
                raise ValueError(f"{path}:{lineno}: malformed {parts[0]!r} record ({err})") from None
    v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    t = np.asarray(uvs, dtype=np.float64).reshape(-1, 2)
    f = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    ft = np.asarray(faces_uv, dtype=np.int64).reshape(-1, 3)
    if len(f) == 0 or f.min() < 0 or f.max() >= len(v) or ft.min() < 0 or ft.max() >= len(t):
        raise ValueError(f"{path}: no faces, or face indices outside the vertex/uv lists")
    return v, t, f, ft


@lru_cache(maxsize=1)
def load_face_model() -> FaceModel:
    """Load the bundled head scan, its texture and landmarks (cached)."""
    from PIL import Image

    v, t, f, ft = load_obj(ASSETS / "james.obj")
    with (ASSETS / "james.ljson").open() as fh:
        lj = json.load(fh)["groups"]["LJSON"]
    points = np.asarray(lj["landmarks"]["points"], dtype=np.float64)
    centre = points.mean(axis=0)
    landmarks = {lab["label"]: points[lab["mask"]] - centre for lab in lj["labels"]}
    with Image.open(ASSETS / "james.jpg") as im:
        texture = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return FaceModel(v - centre, f, t, ft, texture, landmarks)


def _gauss(points: np.ndarray, centre: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    """Anisotropic Gaussian weight (V,) of each point around ``centre`` (mm)."""
    d = (points - centre) / sigma
    return np.exp(-0.5 * (d * d).sum(axis=1))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def sample_person(rng: np.random.Generator) -> dict[str, float]:
    """Draw one person's shape and appearance parameters (dimensionless factors, offsets in mm)."""
    return {
        "width": float(rng.uniform(0.90, 1.10)),
        "height": float(rng.uniform(0.93, 1.07)),
        "depth": float(rng.uniform(0.92, 1.08)),
        "nose_length": float(rng.uniform(-5.0, 7.0)),
        "nose_width": float(rng.uniform(0.85, 1.25)),
        "jaw_width": float(rng.uniform(0.88, 1.12)),
        "chin_drop": float(rng.uniform(-4.0, 6.0)),
        "cheeks": float(rng.uniform(-4.0, 7.0)),
        "brow_ridge": float(rng.uniform(-2.0, 4.0)),
        "skin_tone": float(rng.uniform(0.0, 1.0)),
        "skin_hue": float(rng.uniform(-1.0, 1.0)),
        "texture_phase": float(rng.uniform(0.0, 2.0 * math.pi)),
        "gender": str(rng.choice(["w", "m"])),
    }


def deform_person(model: FaceModel, params: dict[str, float]) -> np.ndarray:
    """Apply a person's proportions to the base scan.

    Region-driven smooth deformations: global width/height/depth scaling; nose length (forward) and
    width around the nose landmarks; jaw width and chin length below the mouth; cheek fullness
    (outwards and forwards) between eyes and jaw; brow-ridge prominence above the eyes.

    Returns:
        (V, 3) float64 deformed vertices (mm, world frame).
    """
    v = model.vertices.copy()
    lm = model.landmarks
    nose = lm["nose"].mean(axis=0)
    mouth = lm["mouth"].mean(axis=0)
    brows = np.concatenate([lm["leyebrow"], lm["reyebrow"]]).mean(axis=0)
    eyes_l, eyes_r = lm["leye"].mean(axis=0), lm["reye"].mean(axis=0)
    jaw_l, jaw_r = lm["chin"][3], lm["chin"][13]

    w_nose = _gauss(v, nose + [0, 0, 10.0], np.array([14.0, 22.0, 25.0]))
    v[:, 2] += params["nose_length"] * w_nose
    v[:, 0] += (v[:, 0] - nose[0]) * (params["nose_width"] - 1.0) * w_nose

    w_jaw = _smoothstep((mouth[1] + 5.0 - v[:, 1]) / 45.0) * _smoothstep((v[:, 2] + 120.0) / 60.0)
    v[:, 0] += (v[:, 0] - mouth[0]) * (params["jaw_width"] - 1.0) * w_jaw
    v[:, 1] -= params["chin_drop"] * w_jaw

    for eye, jaw in ((eyes_l, jaw_l), (eyes_r, jaw_r)):
        cheek = 0.5 * (eye + jaw)
        w = _gauss(v, cheek, np.array([22.0, 22.0, 30.0]))
        v[:, 2] += params["cheeks"] * w
        v[:, 0] += np.sign(cheek[0] - nose[0]) * 0.4 * params["cheeks"] * w

    w_brow = _gauss(v, brows + [0, 4.0, 0], np.array([40.0, 10.0, 25.0]))
    v[:, 2] += params["brow_ridge"] * w_brow

    v[:, 0] *= params["width"]
    v[:, 1] *= params["height"]
    v[:, 2] *= params["depth"]
    return v


def apply_expression(
    vertices: np.ndarray, model: FaceModel, expression: str
) -> tuple[np.ndarray, np.ndarray]:
    """Deform a person's vertices into an expression.

    ``neutral`` leaves the face unchanged; ``frowning`` lowers and draws together the brows and pulls
    the mouth corners down; ``yawning`` drops the jaw (rotation about an axis in front of the ears,
    weighted smoothly below the lip line) and pulls the stretched lip region back into a dark cavity.

    Returns:
        ``(vertices (V, 3), shade (V,))`` where ``shade`` in (0, 1] darkens the albedo (mouth cavity).
    """
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; expected one of {EXPRESSIONS}")
    v = vertices.copy()
    shade = np.ones(len(v))
    lm = model.landmarks
    if expression == "frowning":
        for brow in (lm["leyebrow"], lm["reyebrow"]):
            c = brow.mean(axis=0)
            w = _gauss(model.vertices, c, np.array([22.0, 12.0, 25.0]))
            v[:, 1] -= 3.5 * w
            v[:, 0] -= np.sign(c[0]) * 2.5 * w
            v[:, 2] += 1.5 * w
        mouth = lm["mouth"]
        for corner in (mouth[0], mouth[6]):
            w = _gauss(model.vertices, corner, 9.0)
            v[:, 1] -= 2.5 * w
    elif expression == "yawning":
        mouth = lm["mouth"]
        lip_y = mouth[12:].mean(axis=0)[1] if len(mouth) > 12 else mouth.mean(axis=0)[1]
        centre = mouth.mean(axis=0)
        base = model.vertices
        w_lower = _smoothstep((lip_y - base[:, 1]) / 6.0 + 0.5)
        w_lower *= _smoothstep((base[:, 2] + 110.0) / 50.0)
        pivot = np.array([centre[0], lip_y + 25.0, centre[2] - 75.0])
        ang = math.radians(16.0)
        rel = v - pivot
        cos_w, sin_w = np.cos(ang * w_lower), np.sin(ang * w_lower)
        y_new = rel[:, 1] * cos_w - rel[:, 2] * sin_w
        z_new = rel[:, 1] * sin_w + rel[:, 2] * cos_w
        v[:, 1], v[:, 2] = y_new + pivot[1], z_new + pivot[2]
        mouth_half_w = 0.5 * (mouth[:, 0].max() - mouth[:, 0].min())
        cavity = 4.0 * w_lower * (1.0 - w_lower)
        cavity *= _gauss(
            base, np.array([centre[0], lip_y, centre[2]]), np.array([mouth_half_w * 0.8, 12.0, 20.0])
        )
        v[:, 2] -= 18.0 * cavity
        shade = 1.0 - 0.85 * np.clip(cavity * 1.5, 0.0, 1.0)
    return v, shade


def head_rotation(direction: str) -> np.ndarray:
    """(3, 3) rotation of the head for a head direction (yaw about y, then pitch about x)."""
    if direction not in DIRECTION_ANGLES:
        raise ValueError(f"unknown head direction {direction!r}; expected one of {DIRECTIONS}")
    yaw, pitch = (math.radians(a) for a in DIRECTION_ANGLES[direction])
    ry = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    rx = np.array([[1, 0, 0], [0, math.cos(pitch), -math.sin(pitch)], [0, math.sin(pitch), math.cos(pitch)]])
    return ry @ rx


#: the point the head turns about (mm, world): behind the face, roughly at the top of the neck
HEAD_PIVOT = np.array([0.0, -20.0, -90.0])


def pose_head(vertices: np.ndarray, direction: str, offset_z: float) -> np.ndarray:
    """Rotate the head about :data:`HEAD_PIVOT` for ``direction`` and move it ``offset_z`` mm towards
    the cameras (the benchmark's forward/backward positions). Returns (V, 3) world vertices."""
    r = head_rotation(direction)
    out = (vertices - HEAD_PIVOT) @ r.T + HEAD_PIVOT
    out[:, 2] += offset_z
    return out


def skin_albedo(texture_rgb: np.ndarray, uv: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Per-person albedo from the scan's photo texture.

    Args:
        texture_rgb: (..., 3) texture colours sampled at ``uv``, in [0, 1].
        uv: (..., 2) the texture coordinates (for a smooth blotch pattern).
        params: a person from :func:`sample_person` (``skin_tone`` 0 = light .. 1 = dark, ``skin_hue``).

    Returns:
        (..., 3) float32 albedo in [0, 1].
    """
    t, h = params["skin_tone"], params["skin_hue"]
    light = np.array([1.08, 1.02, 0.98])
    dark = np.array([0.50, 0.37, 0.30])
    tone = (1.0 - t) * light + t * dark
    tone = tone * np.array([1.0 + 0.04 * h, 1.0, 1.0 - 0.05 * h])
    ph = params["texture_phase"]
    blotch = 1.0 + 0.06 * np.sin(23.0 * uv[..., 0] + ph) * np.sin(17.0 * uv[..., 1] + 2 * ph)
    return np.clip(texture_rgb * tone * blotch[..., None], 0.0, 1.0).astype(np.float32)
