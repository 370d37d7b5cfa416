"""Small worked examples used by the tutorial notebooks: a head-sized ellipsoid (02), row-wise matching
of a DP pair (03) and a toy volume whose content moves by a different amount in every column (08).

Each returns plain arrays or tensors; the notebooks plot them (:mod:`dpface_lib.viz`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["best_fixed_conv3d", "head_ellipsoid", "learn_offsets", "match_rows", "shifted_sheet"]


def head_ellipsoid(nose_mm: float = 900.0, semi_axes_mm: tuple[float, float, float] = (75.0, 100.0, 90.0),
                   grid_mm: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Depth (H, W) mm of the front half of an ellipsoid facing the camera, nose tip at ``nose_mm``,
    semi-axes (x, y, depth), sampled on a ``grid_mm`` grid (0 outside), and its (H, W) bool mask."""
    ax_x, ax_y, ax_z = semi_axes_mm
    y, x = np.mgrid[-(ax_y + 10):ax_y + 11:grid_mm, -(ax_x + 11):ax_x + 12:grid_mm].astype(float)
    r2 = (x / ax_x) ** 2 + (y / ax_y) ** 2
    face = r2 < 1.0
    depth = np.where(face, nose_mm + ax_z * (1.0 - np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))), 0.0)
    return depth, face


def match_rows(left: np.ndarray, right: np.ndarray, window: int,
               shifts: tuple[float, float] = (-4.0, 4.0)) -> tuple[np.ndarray, np.ndarray]:
    """Disparity (H, W) px of a DP pair by row-wise NCC over whole-pixel shifts in ``shifts`` with a parabola
    fit (:mod:`dpface_lib.classical`), and the local texture: std of the grey left view over the window.

    Args:
        left, right: (H, W, 3) float images in [0, 1]; window: odd side of the square window (px).
    """
    from dpface_lib.classical import box_filter, dp_cost_volume, grey, subpixel_parabola

    lt, rt = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).permute(2, 0, 1)[None]
              for x in (left, right))
    candidates = torch.arange(shifts[0], shifts[1] + 0.5)
    disparity = subpixel_parabola(dp_cost_volume(lt, rt, candidates, window=window), candidates)[0]
    g = grey(lt)
    texture = (box_filter(g * g, window) - box_filter(g, window) ** 2).clamp_min(0).sqrt()[0, 0]
    return disparity.numpy(), texture.numpy()


def shifted_sheet(size: tuple[int, int, int], max_shift: float,
                  width: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The toy of notebook 08: a tilted Gaussian sheet ``t = 2 + h / 4`` in a (T, H, W) volume, and the target
    that moves it along t by ``s(w) = max_shift sin(2 pi w / W)``, i.e. ``target(t) = input(t + s)``.

    Returns ``(input, target, shift)``: (1, 1, T, H, W) float64 volumes and the (T, H, W) shift in voxels.
    """
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in size), indexing="ij")
    sheet = 2.0 + 0.25 * h
    shift = max_shift * torch.sin(2 * torch.pi * w / size[2])
    volume = torch.exp(-0.5 * ((t - sheet) / width) ** 2)[None, None]
    target = torch.exp(-0.5 * ((t + shift - sheet) / width) ** 2)[None, None]
    return volume, target, shift


def best_fixed_conv3d(volume: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The best fixed 3x3x3 convolution (+ bias) of ``volume`` towards ``target`` (both (1, 1, T, H, W)):
    exact least squares over the 27 neighbours of every voxel, zero padding. Returns its output."""
    patches = F.pad(volume, (1,) * 6).unfold(2, 3, 1).unfold(3, 3, 1).unfold(4, 3, 1).reshape(-1, 27)
    design = torch.cat([patches, torch.ones(len(patches), 1, dtype=volume.dtype)], 1)
    coef = torch.linalg.lstsq(design, target.reshape(-1, 1)).solution
    return (design @ coef).reshape(target.shape)


def learn_offsets(volume: torch.Tensor, target: torch.Tensor, steps: int,
                  lr: float = 0.05) -> tuple[torch.Tensor, list[float]]:
    """Offsets (1, 3, T, H, W) of a 1x1x1 deformable convolution with weight 1, learned from zero by Adam on
    the mean squared error to ``target``; returns them and the loss of every step."""
    import dpface_kernels

    identity = torch.ones(1, 1, 1, 1, 1, dtype=volume.dtype)
    learned = torch.zeros(1, 3, *volume.shape[2:], dtype=volume.dtype, requires_grad=True)
    opt = torch.optim.Adam([learned], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.mse_loss(dpface_kernels.deform_conv3d(volume, learned, identity), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return learned.detach(), losses
