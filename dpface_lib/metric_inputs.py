"""Input checks and output format shared by the metrics of :mod:`dpface_lib.metrics`.

Arrays in: numpy or torch, one sample ``(H, W)`` / ``(3, H, W)`` or a batch with a leading ``B`` axis; out:
float64 tensors ``(B, N)`` on the first tensor's device. A sample with fewer than ``min_valid`` valid pixels
is not scorable: it is counted as empty (NaN metrics) and a :class:`NotScorableWarning` names it.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

__all__ = [
    "MIN_VALID_PX", "EvaluationError", "NotScorableWarning", "check_finite", "finish_outputs",
    "prepare_inputs", "valid_counts",
]

#: Fewest valid pixels a sample needs to be scored; below it its metrics are NaN ("not scorable").
MIN_VALID_PX = 16


class EvaluationError(ValueError):
    """Inputs that cannot be scored (bad shapes, weights or values, an empty sample), or predictions that
    cannot be evaluated; the message names the metric and sample, or the file."""


class NotScorableWarning(UserWarning):
    """Samples with fewer valid pixels than ``min_valid``: their metrics are NaN, and means skip them."""


# ----------------------------------------------------------------------------------- input and output
def prepare_inputs(name: str, arrays: dict[str, Any],
                   ndim: int) -> tuple[dict[str, torch.Tensor], bool, bool]:
    """float64 tensors with a leading batch axis, on the first tensor's device (CPU for numpy input).

    Returns (tensors, batched, numpy_out)."""
    tensors = [a for a in arrays.values() if isinstance(a, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    out = {k: torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v, device=device)
           .to(torch.float64) for k, v in arrays.items()}
    first = next(iter(out.values()))
    for key, value in out.items():
        if value.ndim not in (ndim, ndim + 1) or value.shape != first.shape:
            raise EvaluationError(f"{name}: {key} has shape {tuple(value.shape)}, expected "
                                   f"{tuple(first.shape)} with {ndim} or {ndim + 1} dims")
    batched = first.ndim == ndim + 1
    if not batched:
        out = {k: v.unsqueeze(0) for k, v in out.items()}
    return out, batched, not tensors


def finish_outputs(rows: list[dict[str, torch.Tensor] | None], keys: tuple[str, ...], batched: bool,
            numpy_out: bool, device: torch.device) -> dict:
    """Stack per-sample results (None = empty sample -> NaN) into the caller's format."""
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=device)
    values = {k: torch.stack([nan if r is None else r[k].to(torch.float64) for r in rows]) for k in keys}
    if numpy_out:
        values = {k: v.cpu().numpy() for k, v in values.items()}
        return values if batched else {k: float(v[0]) for k, v in values.items()}
    return values if batched else {k: v[0] for k, v in values.items()}


def check_finite(name: str, arrays: dict[str, torch.Tensor], valid: torch.Tensor) -> None:
    """Non-finite values inside ``valid`` (B, N) raise, naming the first bad sample."""
    for key, value in arrays.items():
        bad = (valid & ~torch.isfinite(value)).flatten(1)
        per_sample = bad.sum(1)
        if bool(per_sample.any()):
            index = int(per_sample.nonzero()[0, 0])
            raise EvaluationError(f"{name}: {key} has {int(per_sample[index])} non-finite values inside "
                                   f"the mask in sample {index}")


def valid_counts(name: str, valid: torch.Tensor, allow_empty: bool, min_valid: int = 1) -> list[int]:
    """Valid pixels per sample, 0 for a sample below ``min_valid`` (warned about); a sample without any
    raises unless ``allow_empty``."""
    if isinstance(min_valid, bool) or not isinstance(min_valid, int) or min_valid < 1:
        raise EvaluationError(f"{name}: min_valid must be an integer >= 1, got {min_valid!r}")
    counts = valid.flatten(1).sum(1).tolist()
    if not allow_empty and 0 in counts:
        raise EvaluationError(
            f"{name}: sample {counts.index(0)} has no valid pixel (empty mask, all weights zero or no usable "
            "ground truth); pass allow_empty=True to get NaN for such samples")
    few = {i: int(c) for i, c in enumerate(counts) if 0 < c < min_valid}
    if few:
        warnings.warn(f"{name}: not scorable, metrics NaN: {len(few)} sample(s) with fewer than {min_valid} "
                      f"valid pixels (sample: count {few})", NotScorableWarning, stacklevel=3)
    return [0 if i in few else c for i, c in enumerate(counts)]
