"""Make ``docs/images/predict_demo.png``: the README's ``dpface predict`` example next to the ground truth.

Runs the shipped demo StereoDPNet on one held-out DP pair of ``data_samples`` exactly as ``dpface predict``
does (:func:`dpface_lib.predict.predict_pair`) and draws the input, the predicted and true depth (on a shared
scale) and the predicted and true normals. Usage: ``.venv/bin/python tools/readme_figure.py [OUT.png]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dpface_lib import DATA_SAMPLES, REPO_ROOT  # noqa: E402
from dpface_lib.data import FaceDPDataset  # noqa: E402
from dpface_lib.fileio import atomic_write  # noqa: E402
from dpface_lib.geometry import normals_to_rgb  # noqa: E402
from dpface_lib.predict import load_predictor, predict_pair  # noqa: E402

SAMPLE = "sim_group007/JSON/INFO_1_12_3.json"  # the README's example pair


def main(out: Path) -> None:
    dataset = FaceDPDataset(DATA_SAMPLES, "test")
    index = next(i for i in range(len(dataset)) if dataset[i]["meta"]["json"].endswith(SAMPLE))
    s = dataset[index]
    left, right = (s[k].permute(1, 2, 0).numpy() for k in ("left", "right"))
    result = predict_pair(load_predictor(), left, right, float(s["a"]), float(s["b"]), s["K"].numpy())
    mask = s["mask"].numpy()
    gt_z = s["depth"].numpy()
    lo, hi = np.percentile(gt_z[mask], [2, 98])
    pred_z = result["depth"]
    plo, phi = np.percentile(pred_z[mask], [2, 98])
    panels = [("left DP view", left, None, None),
              ("predicted depth (mm, own range)", np.where(mask, pred_z, np.nan), "magma", (plo, phi)),
              ("ground-truth depth (mm)", np.where(mask, gt_z, np.nan), "magma", (lo, hi)),
              ("predicted normals", np.where(mask[..., None], normals_to_rgb(result["normal"]), 1.0),
               None, None),
              ("ground-truth normals", np.where(mask[..., None], normals_to_rgb(s["normal"].numpy()), 1.0),
               None, None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.4))
    for ax, (title, image, cmap, rng) in zip(axes, panels, strict=True):
        im = ax.imshow(image, cmap=cmap, vmin=rng[0] if rng else None, vmax=rng[1] if rng else None)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        if cmap:
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"dpface predict (demo StereoDPNet) on held-out pair {SAMPLE}", fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=80, format="png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "docs" / "images" / "predict_demo.png")
