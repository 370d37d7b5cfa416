"""One view of one synthetic person: geometry maps and the DP images under one light.

``render_view`` produces the ground truth (depth, normals, albedo, mask) and the all-in-focus scene
(head over the background wall); ``form_images`` turns that scene into the left/right/sum images under
a light: Lambertian shading -> layered DP defocus -> DP vignetting -> Poisson-Gaussian noise. JPEG
encoding is left to the writer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dpface_lib.geometry import backproject, circle_of_confusion
from dpface_lib.simulate import optics as dp
from dpface_lib.simulate.face import FaceModel, apply_expression, deform_person, pose_head, skin_albedo
from dpface_lib.simulate.render import (
    interpolate,
    lambertian,
    rasterize,
    sample_texture,
    to_camera,
    vertex_normals,
    wall,
)
from dpface_lib.simulate.rig import POSITIONS, Camera

#: scale from shaded albedo to sensor signal (keeps highlights below saturation)
EXPOSURE = 1.2
#: a face pixel must face the camera at least this much (cosine) to be in the mask
MIN_FACING = 0.15


@dataclass
class ViewRender:
    """Ground truth and scene of one (person, expression, position, direction, camera).

    Attributes (H, W image):
        depth: (H, W) float32 mm along the optical axis inside ``mask``, 0 elsewhere.
        normal: (H, W, 3) float32 unit normals (camera frame, facing the camera) inside ``mask``, 0 elsewhere.
        albedo: (H, W, 3) float32 in [0, 1] inside ``mask``, 0 elsewhere.
        mask: (H, W) bool, visible face pixels.
        scene_depth: (H, W) float64 depth of the head or the wall at every pixel (mm).
        scene_albedo: (H, W, 3) albedo of the head or the wall.
        scene_normal: (H, W, 3) camera-frame normals of the head or the wall.
    """

    depth: np.ndarray
    normal: np.ndarray
    albedo: np.ndarray
    mask: np.ndarray
    scene_depth: np.ndarray
    scene_albedo: np.ndarray
    scene_normal: np.ndarray


def person_vertices(model: FaceModel, person: dict, expression: str, position: str, direction: str):
    """World vertices (V, 3) and per-vertex albedo shade (V,) of a person in a pose."""
    if position not in POSITIONS:
        raise ValueError(f"unknown position {position!r}; expected one of {tuple(POSITIONS)}")
    if "identity" in person:  # a person of the morphable model (simulate/ict_face.py)
        from dpface_lib.simulate.ict_face import load_ict_model

        v, shade = load_ict_model().vertices(person["identity"], expression), np.ones(len(model.vertices))
    else:  # the scan with procedural proportions and expression
        v = deform_person(model, person)
        v, shade = apply_expression(v, model, expression)
    return pose_head(v, direction, POSITIONS[position]), shade


def _face_region(model: FaceModel) -> np.ndarray:
    """(V,) 1 for vertices of the face (above the chin line, in front of the ears), else 0."""
    if model.region is not None:
        return model.region
    base = model.vertices
    chin_y = model.landmarks["chin"][:, 1].min()
    return ((base[:, 1] > chin_y - 8.0) & (base[:, 2] > -45.0) & (base[:, 1] < chin_y + 230.0)).astype(float)


def render_view(
    model: FaceModel,
    person: dict,
    expression: str,
    position: str,
    direction: str,
    camera: Camera,
    wall_phase: np.ndarray,
) -> ViewRender:
    """Rasterise the posed head and the wall for one camera (see :class:`ViewRender`)."""
    h, w = camera.height, camera.width
    verts, shade = person_vertices(model, person, expression, position, direction)
    pts = to_camera(verts, camera.pose)
    normals = vertex_normals(verts, model.faces) @ camera.pose[:3, :3].T
    face_id, weights, depth = rasterize(pts, model.faces, camera.K, h, w)
    head = face_id >= 0
    n = interpolate(normals, model.faces, face_id, weights)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    fid = np.maximum(face_id, 0)
    uv_w = (model.uv[model.faces_uv[fid]] * weights[..., None]).sum(axis=-2)
    tex = sample_texture(model.texture, uv_w)
    alb = skin_albedo(tex, uv_w, person) * interpolate(shade[:, None], model.faces, face_id, weights)
    region = interpolate(_face_region(model)[:, None], model.faces, face_id, weights)[..., 0]
    # viewing ray through each pixel, for the facing test
    rays = backproject(np.ones((h, w)), camera.K)  # points at Z = 1 mm: K^-1 [u, v, 1]
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    facing = -(n * rays).sum(axis=-1)
    mask = head & (facing > MIN_FACING) & (region > 0.5)
    n = np.where((facing < 0)[..., None], -n, n)  # back faces seen through the open mesh face the camera too
    wall_depth, wall_albedo, wall_normal = wall(camera.K, camera.pose, h, w, wall_phase)
    scene_depth = np.where(head, depth, wall_depth)
    scene_albedo = np.where(head[..., None], alb, wall_albedo)
    scene_normal = np.where(head[..., None], n, wall_normal)
    m3 = mask[..., None]
    return ViewRender(
        depth=np.where(mask, depth, 0.0).astype(np.float32),
        normal=np.where(m3, n, 0.0).astype(np.float32),
        albedo=np.where(m3, alb, 0.0).astype(np.float32),
        mask=mask,
        scene_depth=scene_depth,
        scene_albedo=scene_albedo.astype(np.float32),
        scene_normal=scene_normal,
    )


def shade_scene(view: ViewRender, camera: Camera, light_world: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 all-in-focus linear radiance under a light (world direction towards it)."""
    light_cam = camera.pose[:3, :3] @ np.asarray(light_world, dtype=np.float64)
    # camera-frame normals face the camera (n_z < 0); the light direction is used as given
    return (EXPOSURE * lambertian(view.scene_albedo, view.scene_normal, light_cam)).astype(np.float32)


def form_images(
    view: ViewRender,
    camera: Camera,
    light_world: np.ndarray,
    rng: np.random.Generator,
    tau: float = dp.DEFAULT_TAU,
    noise: bool = True,
    stages: bool = False,
    psf: str = "soft",
) -> dict[str, torch.Tensor]:
    """Left, right and sum images (H, W, 3) float32 in [0, 1] of a view under a light.

    Steps: shading -> layered DP defocus (signed CoC of the thin lens, :mod:`optics`) -> DP vignetting
    -> Poisson-Gaussian noise on each half-image -> clip. ``lrsum = (left + right) / 2`` (the ordinary
    photo at the same exposure). With ``stages`` the intermediate results come too: ``radiance`` (H, W, 3)
    all in focus, ``coc`` (H, W) signed CoC (px), ``defocused_left/right`` and ``vignetted_left/right``.
    """
    radiance = shade_scene(view, camera, light_world)
    coc = circle_of_confusion(view.scene_depth, camera.optics, fy_px=float(camera.K[1, 1]))
    defocused = dp.defocus_dp(radiance, coc, tau=tau, psf=psf)  # psf: the DP blur model (optics.PSF_MODELS)
    gains = dp.dp_vignetting(camera.height, camera.width)
    vignetted = (defocused[0] * gains[0], defocused[1] * gains[1])
    left, right = vignetted
    if noise:
        # each half-pixel collects half of the light: noise at half the full well, then back to full scale
        left = dp.sensor_noise(left * 0.5, rng, full_well=5000.0) * 2.0
        right = dp.sensor_noise(right * 0.5, rng, full_well=5000.0) * 2.0
    left, right = left.clamp(0.0, 1.0), right.clamp(0.0, 1.0)
    out = {"left": left, "right": right, "lrsum": 0.5 * (left + right)}
    if stages:
        out |= {"radiance": torch.as_tensor(radiance), "coc": torch.as_tensor(coc),
                "defocused_left": defocused[0], "defocused_right": defocused[1],
                "vignetted_left": vignetted[0], "vignetted_right": vignetted[1]}
    return out
