"""Z-buffered triangle rasteriser and Lambertian shading (numpy).

For every pixel centre ``(u, v)`` (integer coordinates, as in :mod:`dpface_lib.geometry`) the nearest
triangle along the optical axis wins. Attributes are interpolated perspective-correctly: screen-space
barycentrics ``l_i`` are re-weighted by ``1 / Z_i``, so the interpolated depth ``1 / sum(l_i / Z_i)`` is
exactly the depth of the triangle's plane on that pixel's ray, and back-projecting the depth map with
``K`` lands on the mesh.

Behind the head a textured wall (a world plane) fills every other pixel with its own depth, so that
the defocus of the background is a cue, as in the real captures; the ground-truth mask covers the face
only.
"""

from __future__ import annotations

import numpy as np

#: the background wall is the world plane z = WALL_Z_MM (behind the head)
WALL_Z_MM = -320.0
#: ambient fraction of the lighting
AMBIENT = 0.25


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit vertex normals: area-weighted sum of the adjacent face normals (winding order)."""
    p0, p1, p2 = (vertices[faces[:, i]] for i in range(3))
    fn = np.cross(p1 - p0, p2 - p0)
    vn = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(vn, faces[:, i], fn)
    norm = np.linalg.norm(vn, axis=1, keepdims=True)
    return vn / np.maximum(norm, 1e-12)


def to_camera(points_world: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(N, 3) world points -> camera frame with a (4, 4) world -> camera pose."""
    return points_world @ pose[:3, :3].T + pose[:3, 3]


def rasterize(points_cam: np.ndarray, faces: np.ndarray, K: np.ndarray, height: int, width: int):
    """Z-buffer a triangle mesh given in camera coordinates.

    Args:
        points_cam: (V, 3) vertices in the camera frame (mm, z forward).
        faces: (F, 3) vertex indices.
        K: (3, 3) intrinsics.
        height, width: image size (px).

    Returns:
        ``(face_id, weights, depth)``: (H, W) int64 index of the visible face (-1 = none); (H, W, 3)
        perspective-correct barycentric weights; (H, W) float64 depth along the optical axis (mm, 0 = none).
    """
    z = points_cam[:, 2]
    zs = np.maximum(z, 1e-6)
    u = K[0, 0] * points_cam[:, 0] / zs + K[0, 1] * points_cam[:, 1] / zs + K[0, 2]
    v = K[1, 1] * points_cam[:, 1] / zs + K[1, 2]
    fu, fv, fz = u[faces], v[faces], z[faces]
    keep = (fz > 1.0).all(axis=1)
    umin = np.ceil(fu.min(axis=1)).astype(np.int64).clip(0, width)
    umax = np.floor(fu.max(axis=1)).astype(np.int64).clip(-1, width - 1)
    vmin = np.ceil(fv.min(axis=1)).astype(np.int64).clip(0, height)
    vmax = np.floor(fv.max(axis=1)).astype(np.int64).clip(-1, height - 1)
    bw, bh = umax - umin + 1, vmax - vmin + 1
    keep &= (bw > 0) & (bh > 0)
    idx = np.nonzero(keep)[0]
    counts = bw[idx] * bh[idx]
    total = int(counts.sum())
    face_id = np.full((height, width), -1, dtype=np.int64)
    weights = np.zeros((height, width, 3))
    depth = np.zeros((height, width))
    if total == 0:
        return face_id, weights, depth
    cand = np.repeat(idx, counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    pu = umin[cand] + local % bw[cand]
    pv = vmin[cand] + local // bw[cand]
    # screen-space barycentrics from edge functions
    u0, u1, u2 = fu[cand, 0], fu[cand, 1], fu[cand, 2]
    v0, v1, v2 = fv[cand, 0], fv[cand, 1], fv[cand, 2]
    area = (u1 - u0) * (v2 - v0) - (u2 - u0) * (v1 - v0)
    ok = np.abs(area) > 1e-12
    area = np.where(ok, area, 1.0)
    l1 = ((pu - u0) * (v2 - v0) - (u2 - u0) * (pv - v0)) / area
    l2 = ((u1 - u0) * (pv - v0) - (pu - u0) * (v1 - v0)) / area
    l0 = 1.0 - l1 - l2
    eps = -1e-9
    ok &= (l0 >= eps) & (l1 >= eps) & (l2 >= eps)
    cand, pu, pv, l0, l1, l2 = cand[ok], pu[ok], pv[ok], l0[ok], l1[ok], l2[ok]
    w = np.stack([l0, l1, l2], axis=1) / fz[cand]
    inv_z = w.sum(axis=1)
    zc = 1.0 / inv_z
    pix = pv * width + pu
    order = np.lexsort((zc, pix))
    first = np.ones(len(order), dtype=bool)
    first[1:] = pix[order][1:] != pix[order][:-1]
    win = order[first]
    face_id.flat[pix[win]] = cand[win]
    weights.reshape(-1, 3)[pix[win]] = w[win] * zc[win, None]
    depth.flat[pix[win]] = zc[win]
    return face_id, weights, depth


def interpolate(attr: np.ndarray, faces: np.ndarray, face_id: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Interpolate a per-vertex attribute (V, C) to (H, W, C) (0 where no face)."""
    fid = np.maximum(face_id, 0)
    out = (attr[faces[fid]] * weights[..., None]).sum(axis=-2)
    return np.where((face_id >= 0)[..., None], out, 0.0)


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an (Ht, Wt, 3) texture at (..., 2) uv in [0, 1] (v up); returns (..., 3)."""
    ht, wt = texture.shape[:2]
    x = np.clip(uv[..., 0], 0.0, 1.0) * (wt - 1)
    y = (1.0 - np.clip(uv[..., 1], 0.0, 1.0)) * (ht - 1)
    x0 = np.clip(np.floor(x).astype(np.int64), 0, wt - 2)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, ht - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x0 + 1] * fx
    bot = texture[y0 + 1, x0] * (1 - fx) + texture[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def wall(K: np.ndarray, pose: np.ndarray, height: int, width: int, phase: np.ndarray):
    """The background wall seen by a camera.

    Returns:
        ``(depth (H, W) mm, albedo (H, W, 3), normal_cam (3,))``: ray-plane intersection depth along the
        optical axis, a procedural texture in wall coordinates (smooth stripes and blobs driven by the
        4 numbers in ``phase``), and the wall normal in the camera frame.
    """
    kinv = np.linalg.inv(K)
    vv, uu = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([uu, vv, np.ones_like(uu)], axis=-1) @ kinv.T  # z component 1: depth = t
    r, t = pose[:3, :3], pose[:3, 3]
    centre = -r.T @ t
    dirs_w = rays @ r  # R^T d for each ray
    depth = (WALL_Z_MM - centre[2]) / np.where(np.abs(dirs_w[..., 2]) > 1e-9, dirs_w[..., 2], -1e-9)
    depth = np.where(depth > 0, depth, 5000.0)
    pts = centre + dirs_w * depth[..., None]
    x, y = pts[..., 0] / 40.0, pts[..., 1] / 40.0
    pattern = (
        0.5
        + 0.22 * np.sin(1.7 * x + phase[0]) * np.cos(1.3 * y + phase[1])
        + 0.15 * np.sin(4.1 * x + 2.3 * y + phase[2])
        + 0.08 * np.sign(np.sin(7.0 * x + phase[3]) * np.sin(6.0 * y))
    )
    tint = 0.75 + 0.25 * np.array([np.cos(phase[0]), np.cos(phase[1] + 2.0), np.cos(phase[2] + 4.0)])
    albedo = np.clip(pattern[..., None] * tint, 0.02, 1.0)
    return depth, albedo, r @ np.array([0.0, 0.0, 1.0])


def lambertian(
    albedo: np.ndarray, normal: np.ndarray, light: np.ndarray, ambient: float = AMBIENT
) -> np.ndarray:
    """Radiance ``albedo (ambient + (1 - ambient) max(0, n . l))``.

    Args:
        albedo: (..., 3) in [0, 1]; normal: (..., 3) unit normals; light: (3,) unit direction towards the
        light, both in the same frame.
    """
    cos = np.clip((normal * light).sum(axis=-1, keepdims=True), 0.0, None)
    return albedo * (ambient + (1.0 - ambient) * cos)
