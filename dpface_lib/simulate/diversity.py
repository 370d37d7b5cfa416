"""How different the simulated persons are: identity-only depth variation of a face model.

For ``persons`` people in one neutral, frontal, forward view (the same camera, pose and position for all),
the depth maps are compared pairwise on their common mask after removing each map's median depth there
(a head's distance is not its shape). The result is the RMS of that difference (mm), summarised over all
pairs. Only the identity changes: the scan's procedural proportions (``james``) or the morphable model's
identity modes at their own scale (``ict``).
"""

from __future__ import annotations

import itertools

import numpy as np


def identity_depth_maps(face_model: str = "ict", persons: int = 20, size: tuple[int, int] = (160, 128),
                        seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Depth maps (mm) and masks of ``persons`` people in the neutral frontal forward view of camera 2 (one
    of the rig's four most frontal cameras, 12 degrees off the face's axis)."""
    from dpface_lib.geometry import BENCHMARK_OPTICS
    from dpface_lib.simulate import ict_face
    from dpface_lib.simulate.face import sample_person
    from dpface_lib.simulate.rig import build_rig
    from dpface_lib.simulate.scene import render_view

    model = ict_face.face_model(face_model)  # refuses an unknown name
    camera = build_rig(size[0], size[1], np.random.default_rng([seed, 999]),
                       BENCHMARK_OPTICS.f_number)[1]  # 2: most frontal
    depths, masks = [], []
    for person in range(persons):
        rng = np.random.default_rng([seed, person])
        params = sample_person(rng)
        if face_model == "ict":
            params["identity"] = ict_face.load_ict_model().sample_identity(rng)
        view = render_view(model, params, "neutral", "forward", "front", camera, np.zeros(4))
        depths.append(view.depth.astype(np.float64))
        masks.append(view.mask)
    return depths, masks


def pairwise_rms_mm(depths: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """RMS depth difference (mm) of every pair on its common mask, each map minus its median there."""
    out = []
    for i, j in itertools.combinations(range(len(depths)), 2):
        common = masks[i] & masks[j]
        a, b = depths[i][common], depths[j][common]
        out.append(np.sqrt(np.mean(((a - np.median(a)) - (b - np.median(b))) ** 2)))
    return np.asarray(out)


def identity_variation(face_model: str = "ict", persons: int = 20, seed: int = 0) -> dict[str, float]:
    """``{"median_mm", "mean_mm", "p90_mm", "pairs"}`` of :func:`pairwise_rms_mm` for a face model."""
    rms = pairwise_rms_mm(*identity_depth_maps(face_model, persons, seed=seed))
    return {"median_mm": float(np.median(rms)), "mean_mm": float(rms.mean()),
            "p90_mm": float(np.percentile(rms, 90)), "pairs": float(len(rms))}
