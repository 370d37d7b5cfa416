"""Classical reference rows on any DP layout (``dpface eval --model constant|block-matching --kind K``).

The real captures (:mod:`dpface_lib.datasets_real`, ``google-dp``) give their ground truth only up to an
affine map (defocus or normalised inverse depth), so the rows are scored with the affine-invariant metrics
(:func:`dpface_lib.metrics.affine_invariant_metrics`: ``ai1``, ``ai2``, ``spearman`` = 1 - |rho_s|, lower is
better) against ``inverse_depth`` weighted by ``confidence``; the depth and normal metrics stay NaN.

Each set has its own matcher defaults (:data:`MATCHER_DEFAULTS`): the search range covers the set's
disparities at the resolution it is read at (kit axis: rows), and the smoothing width suits whole scenes.
For the Pixel 4 set the calibrated kernels' centroids give 5.3 px of disparity per unit of kernel scale at
full size and Xin et al.'s scenes span scales 0.1-1.6 (one side of the focus plane), i.e. about 0-4.3 px at
half size, so the range there is -2 ... 6 px.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from dpface_lib.classical import BlockMatcher, ConstantPredictor
from dpface_lib.metrics import METRIC_KEYS, EvaluationError, affine_invariant_metrics

__all__ = ["MATCHER_DEFAULTS", "READ_DEFAULTS", "real_reference", "real_reference_table"]

#: per kind: (min_disp, max_disp, step, window, smooth_sigma) in px at the resolution the set is read at
MATCHER_DEFAULTS: dict[str, tuple[float, float, float, int, float]] = {
    "pixel4-defocus": (-2.0, 6.0, 0.25, 15, 16.0),
    "dslr-dp": (-8.0, 8.0, 0.5, 15, 16.0),
    "google-dp": (-4.0, 4.0, 0.25, 15, 8.0),
    "dp5k": (-8.0, 8.0, 0.5, 15, 8.0),
    "dpdd": (-8.0, 8.0, 0.5, 15, 8.0),
}
#: per kind: reader options of the reference rows (integer area downsampling of the large frames)
READ_DEFAULTS: dict[str, dict[str, Any]] = {"pixel4-defocus": {"downsample": 2}, "dslr-dp": {"downsample": 4}}


def real_reference(name: str, kind: str, *, disp_range: tuple[float, float] | None = None,
                   step: float | None = None, window: int | None = None,
                   smooth_sigma: float | None = None) -> torch.nn.Module:
    """``constant`` or ``block-matching`` for a set of ``kind``; ``None`` options take the set's defaults."""
    key = name.replace("_", "-")
    if key == "constant":
        return ConstantPredictor(0.0)  # any constant scores the same under the affine-invariant metrics
    if key != "block-matching":
        raise EvaluationError(f"--model {name}: on a {kind} set only 'constant' and 'block-matching' run "
                              "(the other reference rows need metric depth and face masks)")
    lo, hi, s, w, sigma = MATCHER_DEFAULTS.get(kind, MATCHER_DEFAULTS["dpdd"])
    lo, hi = disp_range if disp_range is not None else (lo, hi)
    return BlockMatcher(lo, hi, step=step or s, window=window or w,
                        smooth_sigma=sigma if smooth_sigma is None else smooth_sigma)


def real_reference_table(model: torch.nn.Module, dataset: Iterable[dict[str, Any]], name: str,
                         progress: bool = False) -> pd.DataFrame:
    """Per-item table (``model``, ``sample_id``, the metric columns, ``missing_gt``) of ``model`` over the
    items of :func:`dpface_lib.datasets.open_dataset`; one green channel is matched as it is."""
    rows = []
    items = list(range(len(dataset))) if hasattr(dataset, "__len__") else None
    iterator = (dataset[i] for i in items) if items is not None else iter(dataset)
    for count, item in enumerate(iterator, 1):
        batch = {"left": item["left"][None], "right": item["right"][None], "a": torch.ones(1),
                 "b": torch.zeros(1)}
        disparity = model(batch)["disparity"][0].numpy()
        row: dict[str, Any] = {"model": name, "sample_id": item["sample_id"]}
        row.update({key: np.nan for key in METRIC_KEYS})
        if "inverse_depth" in item:
            weight = item["confidence"].numpy() if "confidence" in item else None
            row.update(affine_invariant_metrics(disparity, item["inverse_depth"].numpy(), weight,
                                                allow_empty=True))
            row["missing_gt"] = "ground truth only up to an affine map: no metric depth; no normals"
        else:
            row["missing_gt"] = "no depth ground truth"
        rows.append(row)
        if progress:
            print(f"\r{name}: {count} items", end="", flush=True)
    if progress:
        print()
    if not rows:
        raise EvaluationError("nothing to evaluate: the dataset is empty")
    return pd.DataFrame(rows)


def real_reference_frame(name: str, root: str | os.PathLike, split: str, kind: str,
                         options: dict[str, Any] | None = None, progress: bool = False) -> pd.DataFrame:
    """Open the set (with :data:`READ_DEFAULTS`) and score the reference ``name`` on it; ``options`` go to
    :func:`real_reference`."""
    from dpface_lib.datasets import open_dataset

    dataset = open_dataset(root, split, kind, **READ_DEFAULTS.get(kind, {}))
    return real_reference_table(real_reference(name, kind, **(options or {})), dataset, name, progress)
