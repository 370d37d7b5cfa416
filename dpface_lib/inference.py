"""Running a model on one dual-pixel pair of any size: the core of ``dpface predict`` and of evaluation on
datasets whose items are predicted whole (:func:`dpface_lib.evaluate.evaluate_dp_dataset`)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dpface_lib.simulate.rig import NOMINAL_FOCAL_PER_HEIGHT

__all__ = ["DEFAULT_FOCAL_PER_HEIGHT", "MULTIPLE", "PredictError", "predict_pair"]

#: Focal length per image height assumed without intrinsics (the simulated rig's framing).
DEFAULT_FOCAL_PER_HEIGHT = NOMINAL_FOCAL_PER_HEIGHT
#: Inputs are padded to a multiple of the networks' coarsest stride.
MULTIPLE = 16


class PredictError(ValueError):
    """Bad input for ``dpface predict``; the message names the file or option and the problem."""


def _pad(image: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")


def predict_pair(
    model: torch.nn.Module,
    left: np.ndarray,
    right: np.ndarray,
    a: float,
    b: float,
    K: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Run ``model`` on one DP pair.

    Args:
        left, right: (H, W, 3) float images in [0, 1], same size (any size; padded to a multiple of 16).
        a, b: Disp2Depth constants (``d = a / Z + b``, Z in mm, d in px).
        K: (3, 3) intrinsics of the images, or None for ``fx = fy = 2.705 H`` and the image centre.

    Returns:
        ``disparity`` (H, W) px, ``depth`` (H, W) mm (0 where undefined), and ``normal`` (3, H, W) when the
        model predicts normals; float32 numpy arrays.
    """
    if left.shape != right.shape:
        raise PredictError(
            f"left image is {left.shape[1]}x{left.shape[0]} (WxH) but right image is "
            f"{right.shape[1]}x{right.shape[0]}: the DP views of one exposure have the same size"
        )
    h, w = left.shape[:2]
    if K is None:
        f = DEFAULT_FOCAL_PER_HEIGHT * h
        K = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])

    def tensor(image: np.ndarray) -> torch.Tensor:
        return _pad(
            torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None], MULTIPLE
        )

    batch = {
        "left": tensor(left),
        "right": tensor(right),
        "a": torch.tensor([float(a)]),
        "b": torch.tensor([float(b)]),
        "K": torch.as_tensor(K, dtype=torch.float32)[None],
    }
    model.eval()
    with torch.no_grad():
        out = model(batch)
    result = {"disparity": out["disparity"][0, :h, :w], "depth": out["depth"][0, :h, :w]}
    if "normal" in out:
        result["normal"] = out["normal"][0, :, :h, :w]
    return {k: v.float().cpu().numpy() for k, v in result.items()}
