"""Reference rows: what each signal is worth without a trained network.

Every leaderboard shows these next to the models, each scored by the same metrics on the same split
(``dpface eval --model NAME``, or :func:`dpface_lib.evaluate.reference_tables`):

- ``constant``: the training split's median disparity everywhere (no image, no face);
- ``silhouette``: a fixed function of the distance to the face mask's edge, fitted once on the training
  persons (the face's outline alone, no DP signal): how far the mask's shape goes;
- ``bowl_oracle``: each ground truth's own least-squares quadratic surface over the mask
  (:mod:`dpface_lib.relief`). It reads the ground truth, so it is a bound, not a method: the best any
  model with no nose, eyes or lips could score;
- ``block_matching``: the classical DP matcher (:class:`dpface_lib.classical.BlockMatcher`) with its
  search range from the training split and its smoothing ``sigma`` chosen on the validation split
  (``val.txt``; the training split where a set has none), never on the split it is scored on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from torch.utils.data import default_collate

from dpface_lib.classical import BlockMatcher, ConstantPredictor, _outputs, best_constant
from dpface_lib.data import FaceDPDataset, evenly_spaced
from dpface_lib.relief import quadratic_basis, quadratic_fit

__all__ = ["REFERENCES", "BowlOracle", "SilhouettePredictor", "build_reference", "choose_block_matcher",
           "edge_distance", "fit_silhouette"]

#: the reference rows, by the name ``dpface eval --model`` takes (``-`` or ``_`` alike)
REFERENCES = ("constant", "silhouette", "bowl_oracle", "block_matching")
#: smoothing widths (px) the block matcher chooses from on the validation split
MATCHER_SIGMAS = (0.0, 2.0, 4.0, 8.0, 12.0)
#: bins of the normalised edge distance of the silhouette reference
SILHOUETTE_BINS = 16


def edge_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) distance (px) from each mask pixel to the nearest pixel outside the mask, divided by its
    largest value over the mask (so 0 at the outline, 1 at the deepest point); 0 outside the mask."""
    mask = np.asarray(mask, dtype=bool)
    dist = ndimage.distance_transform_edt(mask)
    top = float(dist.max()) if mask.any() else 0.0
    return dist / top if top > 0 else dist


def _samples(dataset: FaceDPDataset, max_samples: int | None):
    count = len(dataset)
    for i in evenly_spaced(count, count if max_samples is None else max_samples):
        yield dataset[i]


def fit_silhouette(dataset: FaceDPDataset, max_samples: int | None = 128,
                   bins: int = SILHOUETTE_BINS) -> np.ndarray:
    """(bins,) table of the mean standardised ground-truth disparity in each bin of :func:`edge_distance`.

    Each sample's disparity is standardised over its mask (zero mean, unit deviation), since the metrics
    ignore any affine map; the table is the mean over pixels of the training samples. Empty bins take the
    value of their nearest filled neighbour."""
    sums, counts = np.zeros(bins), np.zeros(bins)
    for sample in _samples(dataset, max_samples):
        mask = sample["mask"].numpy().astype(bool)
        if mask.sum() < 2:
            continue
        d = sample["disparity"].numpy().astype(np.float64)[mask]
        std = d.std()
        if not std > 0:
            continue
        index = np.minimum((edge_distance(mask)[mask] * bins).astype(int), bins - 1)
        np.add.at(sums, index, (d - d.mean()) / std)
        np.add.at(counts, index, 1)
    if not counts.any():
        raise ValueError(f"fit_silhouette: no usable training sample in {dataset.root}")
    filled = np.flatnonzero(counts)
    table = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    for i in np.flatnonzero(counts == 0):
        table[i] = table[filled[np.abs(filled - i).argmin()]]
    return table


class SilhouettePredictor(nn.Module):
    """Disparity from the face mask's outline only: ``table[bin(edge_distance(mask))]`` (no image).

    ``forward(batch)`` reads ``mask`` (B, H, W) and ``a``, ``b`` (B,); returns ``disparity`` (B, H, W)
    (standardised units: only its shape matters to the affine-invariant metrics) and ``depth``."""

    def __init__(self, table: Sequence[float]) -> None:
        super().__init__()
        values = torch.as_tensor(np.asarray(table), dtype=torch.float32)
        self.register_buffer("table", values, persistent=False)

    def extra_repr(self) -> str:
        return f"bins={self.table.numel()}"

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        masks = batch["mask"].bool().cpu().numpy()
        bins = self.table.numel()
        out = []
        for mask in masks:
            index = np.minimum((edge_distance(mask) * bins).astype(int), bins - 1)
            out.append(self.table[torch.from_numpy(index)])
        return _outputs(torch.stack(out).to(batch["mask"].device), batch)


class BowlOracle(nn.Module):
    """Each ground truth's own least-squares quadratic surface over its mask (reads ``disparity`` and
    ``mask`` of the batch: an oracle bound, not a method). Returns ``disparity`` (B, H, W) px, ``depth``."""

    @torch.no_grad()
    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        gt, mask = batch["disparity"], batch["mask"].bool()
        height, width = gt.shape[-2:]
        basis = quadratic_basis(height, width, device=gt.device)
        bowls = [quadratic_fit(d.reshape(-1), m.reshape(-1).to(torch.float64), basis).reshape(height, width)
                 for d, m in zip(gt.to(torch.float64), mask, strict=True)]
        return _outputs(torch.stack(bowls).to(torch.float32), batch)


def _disparity_range(dataset: FaceDPDataset, max_samples: int = 64) -> tuple[float, float]:
    """Search range (px) of the matcher: the training split's 0.5th-99.5th percentile of the masked
    disparity, widened to whole px and by 1 px on either side."""
    values = np.concatenate([s["disparity"].numpy()[s["mask"].numpy().astype(bool)]
                             for s in _samples(dataset, max_samples)])
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float(math.floor(lo) - 1.0), float(math.ceil(hi) + 1.0)


def choose_block_matcher(root: str | os.PathLike, fit_split: str = "train", val_split: str | None = "val",
                         sigmas: Sequence[float] = MATCHER_SIGMAS, max_samples: int = 32,
                         progress: bool = False) -> tuple[BlockMatcher, dict[float, float]]:
    """The block matcher whose smoothing ``sigma`` has the lowest mean ai1 on ``val_split`` (the training
    split when the set has no such split), with its range from ``fit_split``.

    Returns: ``(matcher, {sigma: mean ai1 on the choice split})``."""
    from dpface_lib.metrics import affine_invariant_metrics

    lo, hi = _disparity_range(FaceDPDataset(root, fit_split))
    has_val = bool(val_split) and os.path.isfile(os.path.join(root, f"{val_split}.txt"))
    split = val_split if has_val else fit_split
    batch = default_collate(list(_samples(FaceDPDataset(root, split), max_samples)))
    scores = {}
    for sigma in sigmas:
        disp = BlockMatcher(lo, hi, step=0.5, window=15, smooth_sigma=sigma)(batch)["disparity"]
        scores[float(sigma)] = float(affine_invariant_metrics(disp, batch["disparity"], batch["mask"])["ai1"]
                                     .mean())
    best = min(scores, key=scores.get)
    return BlockMatcher(lo, hi, step=0.5, window=15, smooth_sigma=best), scores


def build_reference(name: str, root: str | os.PathLike, *, fit_split: str = "train",
                    val_split: str | None = "val", max_samples: int = 128) -> nn.Module:
    """The reference model ``name`` (:data:`REFERENCES`; ``-`` and ``_`` alike) for the set at ``root``,
    fitted on ``fit_split`` and, for the matcher, tuned on ``val_split``."""
    key = name.replace("-", "_")
    if key not in REFERENCES:
        raise ValueError(f"unknown reference model {name!r}; expected one of "
                         f"{', '.join(n.replace('_', '-') for n in REFERENCES)}")
    if key == "constant":
        return ConstantPredictor(best_constant(FaceDPDataset(root, fit_split), max_samples=max_samples))
    if key == "silhouette":
        return SilhouettePredictor(fit_silhouette(FaceDPDataset(root, fit_split), max_samples=max_samples))
    if key == "bowl_oracle":
        return BowlOracle()
    return _tuned_matcher(str(root), fit_split, val_split)


@lru_cache(maxsize=8)
def _tuned_matcher(root: str, fit_split: str, val_split: str | None) -> BlockMatcher:
    """:func:`choose_block_matcher` once per set and splits (the sigma search scores five matchers)."""
    return choose_block_matcher(root, fit_split, val_split)[0]
