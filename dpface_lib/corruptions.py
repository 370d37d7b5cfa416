"""Ground truth through controlled corruptions: "models" whose errors are known, to see what each metric
measures (notebook 07).

A :class:`CorruptedGroundTruth` is a module like a trained model (``forward(batch)`` returns ``disparity``
(B, H, W) px, ``depth`` (B, H, W) mm and ``normal`` (B, 3, H, W)), so it goes through
``evaluate.evaluate_model`` unchanged. The normals are derived from the corrupted depth
(``geometry.normals_from_depth``), so a corruption of the disparity shows in the normals too.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from dpface_lib.geometry import disparity_to_depth, normals_from_depth

__all__ = ["KINDS", "CorruptedGroundTruth"]

#: The corruptions: none, a global affine map (invisible to the affine-invariant metrics), Gaussian noise,
#: both, a blur of the face (normalised convolution inside the mask), and holes filled with the face mean.
KINDS = ("identity", "affine", "noise", "affine+noise", "blur", "holes")


class CorruptedGroundTruth(nn.Module):
    """The ground-truth disparity of each sample through one corruption, deterministic per sample.

    Args:
        kind: one of :data:`KINDS`.
        noise_rel: noise std as a fraction of the face's disparity std.
        affine_scale, affine_offset: the map ``s d + t`` (px) of the affine kinds.
        blur_sigma_px: Gaussian blur sigma (px).
        hole_fraction: share of the face covered by square holes.
        seed: with the sample id, seeds the noise and the holes (stable across processes).
    """

    def __init__(self, kind: str, *, noise_rel: float = 0.1, affine_scale: float = 1.5,
                 affine_offset: float = 0.5, blur_sigma_px: float = 3.0, hole_fraction: float = 0.1,
                 seed: int = 0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown corruption {kind!r}; one of {KINDS}")
        self.kind, self.noise_rel, self.seed = kind, noise_rel, seed
        self.affine = (affine_scale, affine_offset)
        self.blur_sigma_px, self.hole_fraction = blur_sigma_px, hole_fraction

    def corrupt(self, disparity: np.ndarray, mask: np.ndarray, sample_id: str) -> np.ndarray:
        """(H, W) corrupted copy of ``disparity`` (px); ``mask`` (H, W) bool is the face."""
        rng = np.random.default_rng(zlib.crc32(f"{self.seed}:{sample_id}".encode()))
        d = np.asarray(disparity, dtype=np.float64)
        inside = d[mask].mean()
        if self.kind in ("noise", "affine+noise"):
            d = d + rng.normal(0, self.noise_rel * d[mask].std(), d.shape)
        if self.kind in ("affine", "affine+noise"):
            d = self.affine[0] * d + self.affine[1]
        if self.kind == "blur":  # normalised convolution: the background does not bleed in
            weight = gaussian_filter(mask.astype(float), self.blur_sigma_px)
            blurred = gaussian_filter(np.where(mask, d, 0.0), self.blur_sigma_px) / np.maximum(weight, 1e-6)
            d = np.where(mask, blurred, d)
        if self.kind == "holes":
            h, w = d.shape
            holes = np.zeros_like(mask)
            while (holes & mask).sum() < self.hole_fraction * mask.sum():
                y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, max(4, h // 10))
                holes[max(0, y - r):y + r, max(0, x - r):x + r] = True
            d = np.where(holes, inside, d)
        return d

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        mask = batch["mask"].numpy()
        disparity = np.stack([self.corrupt(batch["disparity"][i].double().numpy(), mask[i], sid)
                              for i, sid in enumerate(batch["sample_id"])])
        disparity = torch.from_numpy(disparity).float()
        depth = disparity_to_depth(disparity, batch["a"][:, None, None], batch["b"][:, None, None])
        normal = normals_from_depth(torch.nan_to_num(depth, nan=0.0), batch["K"], batch["mask"])
        return {"disparity": disparity, "depth": depth, "normal": normal.float()}
