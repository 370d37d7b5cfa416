"""Evaluation metrics: affine-invariant (disparity / inverse depth), absolute depth (mm) and normals (deg).

One implementation per metric, in torch (float64, any device), on the valid pixels of each sample only.
Inputs: numpy arrays or tensors of one sample ``(H, W)`` or a batch ``(B, H, W)``; numpy in gives numpy
out (floats, or ``(B,)`` arrays), tensors give float64 tensors (0-d or ``(B,)``) on the prediction's
device. Independent numpy oracles live in ``tests/metric_oracles.py``.

Only pixels with a positive weight / true mask count, and values outside them may be anything (NaN too),
except for the reference Spearman convention, which ranks every pixel. Inside the mask, ground truth and
prediction must be finite, else :class:`EvaluationError` names the sample (``depth_metrics`` instead drops
missing ground truth and clips predictions, since ``a / (d - b)`` is legitimately non-finite). A sample
with no valid pixel raises, naming it; with ``allow_empty=True`` its metrics are NaN instead. A sample with
fewer than ``min_valid`` (16) valid pixels is not scorable (one pixel fits any prediction perfectly): its
metrics are NaN and a :class:`NotScorableWarning` names it.

Sources: Garg et al., "Learning Single Camera Depth Estimation using Dual-Pixels", ICCV 2019 (AIWE(1),
AIWE(2), 1 - |rho_s|) and its released evaluation; Kang et al., ECCV 2022 (depth thresholds 1.01^k and
the normal metrics).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from dpface_lib.metric_inputs import (
    MIN_VALID_PX,
    EvaluationError,
    NotScorableWarning,
    check_finite,
    finish_outputs,
    prepare_inputs,
    valid_counts,
)
from dpface_lib.ranks import pixel_order_ranks, weighted_midranks, weighted_pearson
from dpface_lib.relief import quadratic_basis, relief_map, weighted_corr

__all__ = [
    "AFFINE_KEYS", "DEPTH_KEYS", "DEPTH_RANGE_MM", "DESCRIPTOR_KEYS", "METRIC_KEYS", "NORMAL_KEYS",
    "RELIEF_KEYS", "MIN_VALID_PX", "SPEARMAN_CONVENTIONS", "EvaluationError", "NotScorableWarning",
    "affine_invariant_metrics", "batch_metrics", "depth_metrics",
    "fit_affine", "normal_metrics", "relief_metrics",
]

AFFINE_KEYS = ("ai1", "ai2", "spearman")
RELIEF_KEYS = ("relief_ai1", "relief_corr", "inverted")
DEPTH_KEYS = ("absrel", "absdiff", "sqrel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
NORMAL_KEYS = ("mean_deg", "median_deg", "rmse_deg", "within_11_25", "within_22_5", "within_30")
#: delta_k = share of pixels with max(gt/pred, pred/gt) < 1.01**k (the facial-DP benchmark's thresholds).
DELTA_THRESHOLDS = (1.01, 1.01**2, 1.01**3)
NORMAL_THRESHOLDS_DEG = (11.25, 22.5, 30.0)
IRLS_ITERS = 5
IRLS_EPS = 1e-3
#: a weighted variance below REL_DEGENERATE * mean**2 counts as a constant map.
REL_DEGENERATE = 1e-24
METRIC_KEYS = (*AFFINE_KEYS, *RELIEF_KEYS, *DEPTH_KEYS, *NORMAL_KEYS, "invalid_depth")
DESCRIPTOR_KEYS = ("valid_px", "depth_mean_mm", "depth_range_mm", "texture")  # ground truth, per sample
#: Predicted depths are clipped into this range (mm) before the absolute depth metrics.
DEPTH_RANGE_MM = (1.0, 1e5)
#: "reference": Google's released convention (the default); "midrank": weighted mid-ranks of masked pixels.
SPEARMAN_CONVENTIONS = ("reference", "midrank")
_TINY = 1e-300


# ------------------------------------------------------------------------------ affine-invariant metrics
def affine_invariant_metrics(pred, gt, weight=None, *, spearman: str = "reference",
                             allow_empty: bool = False, min_valid: int = MIN_VALID_PX) -> dict:
    """Garg et al. (ICCV 2019) affine-invariant errors of a disparity / inverse-depth prediction.

    Args:
        pred: (H, W) or (B, H, W) predicted disparity (px) or inverse depth; any affine map of it scores
            the same.
        gt: same shape, ground-truth disparity (px) or inverse depth. Errors are in its units.
        weight: same shape, >= 0 (a 0/1 mask or a confidence), ``None`` = all ones.
        spearman: ``"reference"`` (default) or ``"midrank"``, see below.
        min_valid: fewest weighted pixels a sample needs; below it its metrics are NaN (warned about).

    Returns dict ``ai1``, ``ai2``, ``spearman``:
        - The **prediction** receives the affine map: (s, t) minimise the weighted error of
          ``s * pred + t - gt``, so residuals are in ground-truth units and the metrics are not symmetric
          in (pred, gt) (as in Google's released ``get_metrics.py``).
        - ``ai1`` = AIWE(1) = sum w |s pred + t - gt| / sum w, with (s, t) from 5 rounds of iteratively
          reweighted least squares: start with r = 1, solve the least-squares fit with per-pixel weight
          w * r, update r = 1 / max(1e-3, |residual|); the residual of the 5th solve is reported.
        - ``ai2`` = AIWE(2) = sqrt(sum w (s pred + t - gt)^2 / sum w) after one weighted least-squares fit.
        - Each fit solves the 2x2 weighted normal equations in closed form (centred, float64), with no
          ridge term (the reference's ``l2_regularizer=1e-5`` has no effect there either). A constant
          prediction (weighted variance below 1e-24 * mean^2) gets s = 0, t = weighted mean of gt: the
          same fitted map as the minimum-norm least-squares solution.
        - ``spearman`` = 1 - |rho_s|, rho_s the w-weighted Pearson correlation of the ranks of pred and gt.
          ``"reference"`` reproduces the released code, so numbers compare with published tables: ranks
          of the float32 values of **every pixel** of the map (masked ones included; non-finite values
          rank last), ties broken by pixel order, the weights applied only in the Pearson step, and
          |rho_s| taken as max(rho(rank pred, rank gt), rho(rank(-pred), rank gt)) (the two differ only
          through ties). Its quirks: pixels outside the mask shift the ranks, a constant prediction
          correlates with the pixel order, and ties can make both correlations negative (up to 2).
          ``"midrank"`` ranks only weighted pixels by weighted mid-ranks (the weight below a pixel plus
          half its tie group's) and scores a map constant over the mask as spearman = 1. Either way a
          single weighted pixel gives spearman = 1.
    Weights enter every sum as multipliers (the reference's sqrt(w) row scaling of the least squares).
    """
    name = "affine_invariant_metrics"
    if spearman not in SPEARMAN_CONVENTIONS:
        raise EvaluationError(f"{name}: spearman must be one of {SPEARMAN_CONVENTIONS}, got {spearman!r}")
    arrays = {"pred": pred, "gt": gt} | ({"weight": weight} if weight is not None else {})
    tensors, batched, numpy_out = prepare_inputs(name, arrays, 2)
    x, y = tensors["pred"].flatten(1), tensors["gt"].flatten(1)
    w = tensors["weight"].flatten(1) if weight is not None else torch.ones_like(x)
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        index = int(bad.any(1).nonzero()[0, 0])
        raise EvaluationError(f"{name}: weights must be finite and >= 0; found {int(bad[index].sum())} bad "
                               f"values in sample {index}")
    valid = w > 0
    check_finite(name, {"pred": x, "gt": y}, valid)
    counts = valid_counts(name, valid, allow_empty, min_valid)
    rows = [_affine_sample(x[i], y[i], w[i], valid[i], spearman) if counts[i] else None
            for i in range(len(counts))]
    return finish_outputs(rows, AFFINE_KEYS, batched, numpy_out, x.device)


def _affine_sample(x_all: torch.Tensor, y_all: torch.Tensor, w_all: torch.Tensor, valid: torch.Tensor,
                   spearman: str) -> dict[str, torch.Tensor]:
    """ai1, ai2, spearman of one sample; (N,) pixel vectors of the whole map."""
    x, y, w = x_all[valid], y_all[valid], w_all[valid]
    sw = w.sum()
    s, t = _wls_fit(x, y, w)
    ai2 = ((w * (s * x + t - y) ** 2).sum() / sw).sqrt()
    s1, t1 = _irls_fit(x, y, w)
    ai1 = (w * (s1 * x + t1 - y).abs()).sum() / sw
    if spearman == "reference":
        rank_x, rank_neg_x = pixel_order_ranks(x_all, both_directions=True)
        rank_y = pixel_order_ranks(y_all)[0]
        rho = torch.maximum(weighted_pearson(rank_x, rank_y, w_all),
                            weighted_pearson(rank_neg_x, rank_y, w_all))
    else:
        rho = weighted_pearson(weighted_midranks(x, w), weighted_midranks(y, w), w).abs()
    return {"ai1": ai1, "ai2": ai2, "spearman": 1.0 - rho.clamp(-1.0, 1.0)}


def _irls_fit(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) of AIWE(1): 5 rounds of reweighted least squares (see :func:`affine_invariant_metrics`)."""
    irls = torch.ones_like(x)
    for _ in range(IRLS_ITERS):
        s, t = _wls_fit(x, y, w * irls)
        irls = 1.0 / (s * x + t - y).abs().clamp_min(IRLS_EPS)
    return s, t


def _paired_pixels(name: str, pred, gt, weight):
    """Checked (B, N) float64 ``pred``, ``gt``, weight and valid mask of a metric's inputs, and
    ``(batched, numpy_out, shape)``: weights finite and >= 0, pred and gt finite where valid."""
    arrays = {"pred": pred, "gt": gt} | ({"weight": weight} if weight is not None else {})
    tensors, batched, numpy_out = prepare_inputs(name, arrays, 2)
    x, y = tensors["pred"].flatten(1), tensors["gt"].flatten(1)
    w = tensors["weight"].flatten(1) if weight is not None else torch.ones_like(x)
    if bool((~torch.isfinite(w) | (w < 0)).any()):
        raise EvaluationError(f"{name}: weights must be finite and >= 0")
    valid = w > 0
    check_finite(name, {"pred": x, "gt": y}, valid)
    return x, y, w, valid, (batched, numpy_out, tuple(tensors["pred"].shape))


def relief_metrics(pred, gt, weight=None, *, allow_empty: bool = False,
                   min_valid: int = MIN_VALID_PX) -> dict:
    """Errors of the relief beyond the smooth bowl, and the sign of the fitted scale (``dpface_lib.relief``).

    Args: as :func:`affine_invariant_metrics` (``pred``, ``gt``: (H, W) or (B, H, W) disparity in px or
    inverse depth; ``weight`` >= 0).

    Returns dict ``relief_ai1``, ``relief_corr``, ``inverted``:
        - The prediction is aligned as for ``ai1`` (``s * pred + t`` with the IRLS fit), then each map's
          weighted least-squares quadratic surface over the valid pixels is removed, from the ground
          truth and from the aligned prediction (:func:`dpface_lib.relief.relief_map`).
        - ``relief_ai1`` = sum w |relief(aligned) - relief(gt)| / sum w, in ground-truth units (px). A
          perfect prediction scores 0; any quadratic prediction scores the ground truth's own mean
          absolute relief.
        - ``relief_corr``: the weighted Pearson correlation of the two reliefs (1 = every feature in place,
          0 = none; NaN for a quadratic prediction, whose relief is 0).
        - ``inverted``: 1.0 where the fitted scale ``s`` is <= 0 (a hollow face, or a constant), else 0.0.
          ``ai1`` and ``ai2`` accept a negative scale; this flag does not.
    """
    name = "relief_metrics"
    x, y, w, valid, (batched, numpy_out, shape) = _paired_pixels(name, pred, gt, weight)
    counts = valid_counts(name, valid, allow_empty, min_valid)
    basis = quadratic_basis(*shape[-2:], device=x.device)
    rows = []
    for i, count in enumerate(counts):
        if not count:
            rows.append(None)
            continue
        v, wv = valid[i], torch.where(valid[i], w[i], 0.0)
        s, t = _irls_fit(x[i][v], y[i][v], w[i][v])
        aligned = torch.where(v, s * x[i] + t, 0.0)
        r_pred, r_gt = relief_map(aligned, wv, basis), relief_map(torch.where(v, y[i], 0.0), wv, basis)
        flat = (wv * r_pred**2).sum() <= 1e-18 * (wv * aligned**2).sum()  # a quadratic, up to rounding
        corr = torch.where(flat, torch.nan, weighted_corr(r_pred, r_gt, wv))
        rows.append({"relief_ai1": (wv * (r_pred - r_gt).abs()).sum() / wv.sum(), "relief_corr": corr,
                     "inverted": (s <= 0).to(torch.float64)})
    return finish_outputs(rows, RELIEF_KEYS, batched, numpy_out, x.device)


def fit_affine(pred, gt, weight=None, *, robust: bool = False) -> tuple[float, float]:
    """The (s, t) of ``s * pred + t ~ gt`` used by :func:`affine_invariant_metrics` for one sample
    (numpy or torch (H, W)): weighted least squares (AIWE(2)), or with ``robust=True`` the 5-round IRLS
    fit of AIWE(1). ``s * pred + t`` is the affine-aligned prediction, in ground-truth units."""
    name = "fit_affine"
    x, y, w, valid, _ = _paired_pixels(name, pred, gt, weight)
    valid_counts(name, valid, allow_empty=False)
    x, y, w = x[valid], y[valid], w[valid]
    irls = torch.ones_like(x)
    for _ in range(IRLS_ITERS if robust else 1):  # the first round is the plain weighted fit
        s, t = _wls_fit(x, y, w * irls)
        irls = 1.0 / (s * x + t - y).abs().clamp_min(IRLS_EPS)
    return float(s), float(t)


def _wls_fit(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, t) minimising sum w (s x + t - y)^2 over (N,) vectors: the closed-form centred 2x2 solve."""
    sw = w.sum().clamp_min(_TINY)
    mx, my = (w * x).sum() / sw, (w * y).sum() / sw
    dx = x - mx
    vxx = (w * dx * dx).sum()
    vxy = (w * dx * (y - my)).sum()
    constant = vxx <= REL_DEGENERATE * sw * mx * mx + _TINY
    s = torch.where(constant, 0.0, vxy / torch.where(constant, 1.0, vxx))
    return s, my - s * mx


# ------------------------------------------------------------------------------------- depth metrics
def depth_metrics(pred_mm, gt_mm, mask=None, *, depth_range_mm: tuple[float, float] = (1.0, 1e5),
                  allow_empty: bool = False, min_valid: int = MIN_VALID_PX) -> dict:
    """Absolute depth errors (Eigen et al. 2014 set; thresholds 1.01^k of the facial-DP benchmark).

    Args:
        pred_mm: (H, W) or (B, H, W) predicted depth in mm.
        gt_mm: same shape, ground-truth depth in mm.
        mask: same shape, bool (or 0/1); ``None`` = all pixels. Pixels whose ground truth is not finite or
            lies below the near end of ``depth_range_mm`` (0 = no data) are dropped from the mask.
        depth_range_mm: predictions are clipped into this range before scoring; NaN and +inf count as the
            far end, -inf as the near end. A depth from ``a / (d - b)`` is non-finite or negative where
            the predicted disparity crosses b, and such pixels then score as large but finite errors.

    Returns dict (per sample; averages over the valid pixels; gt g, prediction p):
        absrel = mean |g - p| / g;  absdiff = mean |g - p| (mm);  sqrel = mean (g - p)^2 / g (mm);
        rmse = sqrt(mean (g - p)^2) (mm);  rmse_log = sqrt(mean (ln g - ln p)^2);
        delta1..3 = share in [0, 1] of pixels with max(g / p, p / g) < 1.01, 1.01^2, 1.01^3.
    """
    name = "depth_metrics"
    low, high = depth_range_mm
    if not 0 < low < high:
        raise EvaluationError(f"{name}: depth_range_mm must satisfy 0 < low < high, got {depth_range_mm}")
    arrays = {"pred": pred_mm, "gt": gt_mm} | ({"mask": mask} if mask is not None else {})
    tensors, batched, numpy_out = prepare_inputs(name, arrays, 2)
    p_all, g_all = tensors["pred"].flatten(1), tensors["gt"].flatten(1)
    valid = torch.isfinite(g_all) & (g_all >= low)
    if mask is not None:
        valid &= tensors["mask"].flatten(1) != 0
    counts = valid_counts(name, valid, allow_empty, min_valid)
    rows: list[dict[str, torch.Tensor] | None] = []
    for i, count in enumerate(counts):
        if not count:
            rows.append(None)
            continue
        g = g_all[i][valid[i]]
        p = torch.nan_to_num(p_all[i][valid[i]], nan=high, posinf=high, neginf=low).clamp(low, high)
        diff = g - p
        absolute, square, r = diff.abs(), diff * diff, g / p
        ratio = torch.maximum(r, 1.0 / r)
        row = {"absrel": (absolute / g).mean(), "absdiff": absolute.mean(), "sqrel": (square / g).mean(),
               "rmse": square.mean().sqrt(), "rmse_log": r.log().square().mean().sqrt()}
        for k, threshold in enumerate(DELTA_THRESHOLDS, start=1):
            row[f"delta{k}"] = (ratio < threshold).to(torch.float64).mean()
        rows.append(row)
    return finish_outputs(rows, DEPTH_KEYS, batched, numpy_out, g_all.device)


# ------------------------------------------------------------------------------------ normal metrics
def normal_metrics(pred, gt, mask=None, *, allow_empty: bool = False, min_valid: int = MIN_VALID_PX) -> dict:
    """Angular error between predicted and ground-truth surface normals.

    Args:
        pred: (3, H, W) or (B, 3, H, W) normals (any length: both maps are normalised over the channel
            axis; a zero vector counts as 90 deg from everything).
        gt: same shape, ground-truth normals.
        mask: (H, W) or (B, H, W) bool; ``None`` = pixels whose gt is non-zero.

    Returns dict: ``mean_deg``, ``median_deg`` (the mean of the two middle values for an even count),
    ``rmse_deg`` = sqrt(mean theta^2), and ``within_11_25``, ``within_22_5``, ``within_30``: the share in
    [0, 1] (a fraction, not percent) of pixels with theta <= 11.25, 22.5, 30 deg.
    theta = atan2(|n x m|, n . m) in degrees (accurate near 0 where arccos is not).
    """
    name = "normal_metrics"
    tensors, batched, numpy_out = prepare_inputs(name, {"pred": pred, "gt": gt}, 3)
    n_all, m_all = tensors["pred"], tensors["gt"]
    if n_all.shape[1] != 3:
        raise EvaluationError(f"{name}: pred {tuple(np.shape(pred))} and gt {tuple(np.shape(gt))} must both "
                               "be (3, H, W) or (B, 3, H, W)")
    if mask is None:
        valid = (m_all != 0).any(1)
    else:
        valid = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask,
                                device=n_all.device) != 0
        valid = valid.unsqueeze(0) if valid.ndim == 2 else valid
        if valid.shape != m_all[:, 0].shape:
            raise EvaluationError(f"{name}: mask {tuple(np.shape(mask))} does not match normals "
                                   f"{tuple(np.shape(gt))}")
    n_all, m_all, valid = n_all.flatten(2), m_all.flatten(2), valid.flatten(1)
    check_finite(name, {"pred": n_all.abs().sum(1), "gt": m_all.abs().sum(1)}, valid)
    counts = valid_counts(name, valid, allow_empty, min_valid)
    rows: list[dict[str, torch.Tensor] | None] = []
    for i, count in enumerate(counts):
        if not count:
            rows.append(None)
            continue
        theta = _angle_deg(n_all[i][:, valid[i]], m_all[i][:, valid[i]])
        low = torch.kthvalue(theta, (count + 1) // 2).values
        high = torch.kthvalue(theta, count // 2 + 1).values
        row = {"mean_deg": theta.mean(), "median_deg": 0.5 * (low + high),
               "rmse_deg": (theta**2).mean().sqrt()}
        for key, limit in zip(NORMAL_KEYS[3:], NORMAL_THRESHOLDS_DEG, strict=True):
            row[key] = (theta <= limit).to(torch.float64).mean()
        rows.append(row)
    return finish_outputs(rows, NORMAL_KEYS, batched, numpy_out, n_all.device)


def _angle_deg(n: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Angle (deg) between (3, N) vector fields after normalisation; zero vectors give 90 deg."""
    def length(v: torch.Tensor) -> torch.Tensor:  # per column; faster than norm(dim=0) on a (3, N) tensor
        return (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt()

    n_len, m_len = length(n), length(m)
    n, m = n / n_len.clamp_min(_TINY), m / m_len.clamp_min(_TINY)
    dot = n[0] * m[0] + n[1] * m[1] + n[2] * m[2]
    theta = torch.rad2deg(torch.atan2(length(torch.linalg.cross(n, m, dim=0)), dot))
    return torch.where((n_len == 0) | (m_len == 0), 90.0, theta)


# ------------------------------------------------------------------------------------------ per batch
def batch_metrics(output: Mapping[str, torch.Tensor], batch: Mapping[str, Any], *,
                  allow_empty: bool = False, spearman: str = "reference",
                  min_valid: int = MIN_VALID_PX) -> dict[str, Any]:
    """Every metric for a batch: ``output`` as a model returns it, ``batch`` the (collated) dataset dict.

    Args:
        output: ``disparity`` (B, H, W) px and/or ``depth`` (B, H, W) mm, optional ``normal`` (B, 3, H, W).
        batch: needs ``disparity``, ``depth``, ``mask`` (B, H, W), ``a``, ``b`` (B,), and ``normal``
            (B, 3, H, W) when normals are predicted; ``lrsum`` (B, 3, H, W) for the texture descriptor.
        allow_empty: give NaN metrics for samples without valid pixels instead of raising (training
            validation on random crops). spearman: see :func:`affine_invariant_metrics`.
        min_valid: a sample with fewer valid pixels is not scorable: NaN metrics, one NotScorableWarning.

    Returns: dict of (B,) float64 tensors for :data:`METRIC_KEYS`, :data:`DESCRIPTOR_KEYS` and ``scorable``
    (1.0, or 0.0 for a sample with NaN metrics), plus ``affine_space`` (a list of B strings).
    """
    with warnings.catch_warnings():  # one warning for the batch instead of one per metric family
        warnings.simplefilter("ignore", NotScorableWarning)
        values = _batch_metrics(output, batch, allow_empty, spearman, min_valid)
    n_valid = values["valid_px"]
    few = {i: int(n) for i, n in enumerate(n_valid.tolist()) if 0 < n < min_valid}
    if few:
        warnings.warn(f"batch_metrics: not scorable, metrics NaN: {len(few)} sample(s) with fewer than "
                      f"{min_valid} valid pixels (sample: count {few})", NotScorableWarning, stacklevel=2)
        values["invalid_depth"] = torch.where(n_valid < min_valid, torch.nan, values["invalid_depth"])
    values["scorable"] = (n_valid >= min_valid).to(torch.float64)
    return values


def _batch_metrics(output: Mapping[str, torch.Tensor], batch: Mapping[str, Any], allow_empty: bool,
                   spearman: str, min_valid: int) -> dict[str, Any]:
    mask = batch["mask"].bool()
    size = tuple(mask.shape)
    for key in ("disparity", "depth", "normal"):
        if key in output and tuple(output[key].shape[-2:]) != size[-2:]:
            raise EvaluationError(f"predicted {key} has shape {tuple(output[key].shape)}, "
                                  f"ground truth {size}")
    if "disparity" not in output and "depth" not in output:
        raise EvaluationError(f"prediction has neither 'disparity' nor 'depth' (keys: {sorted(output)})")
    device = mask.device
    a = torch.as_tensor(batch["a"], device=device).to(torch.float64).reshape(-1, 1, 1)
    b = torch.as_tensor(batch["b"], device=device).to(torch.float64).reshape(-1, 1, 1)
    gt_depth = batch["depth"].to(torch.float64)
    low, high = DEPTH_RANGE_MM
    if "depth" in output:
        pred_depth = output["depth"].detach().to(torch.float64)
    else:
        d = output["disparity"].detach().to(torch.float64)
        pred_depth = a / (d - b)  # Z = a / (d - b); d == b -> +-inf, clipped by depth_metrics
    invalid = mask & ~(torch.isfinite(pred_depth) & (pred_depth > 0))
    if "disparity" in output:
        space = "disparity"
        pred_affine, gt_affine = output["disparity"].detach(), batch["disparity"]
        affine = affine_invariant_metrics(pred_affine, gt_affine, mask,
                                          allow_empty=allow_empty, spearman=spearman, min_valid=min_valid)
    else:
        space = "inverse_depth"
        clipped = torch.nan_to_num(pred_depth, nan=high, posinf=high, neginf=low).clamp(low, high)
        z_far = torch.where(mask, gt_depth, 0.0).flatten(1).amax(1).reshape(-1, 1, 1)
        gt_inverse = torch.where(mask, z_far / gt_depth.clamp_min(low), 0.0)
        pred_affine, gt_affine = 1.0 / clipped, gt_inverse
        affine = affine_invariant_metrics(pred_affine, gt_affine, mask, allow_empty=allow_empty,
                                          spearman=spearman, min_valid=min_valid)
    values = dict(affine)
    values |= relief_metrics(pred_affine, gt_affine, mask, allow_empty=allow_empty, min_valid=min_valid)
    values |= depth_metrics(pred_depth, gt_depth, mask, depth_range_mm=DEPTH_RANGE_MM,
                            allow_empty=allow_empty, min_valid=min_valid)
    n_valid = mask.flatten(1).sum(1).to(torch.float64)
    values["invalid_depth"] = invalid.flatten(1).sum(1) / n_valid.clamp_min(1)
    if "normal" in output:
        values |= normal_metrics(output["normal"].detach(), batch["normal"], mask, allow_empty=allow_empty,
                                 min_valid=min_valid)
    else:
        values |= {key: torch.full_like(n_valid, float("nan")) for key in NORMAL_KEYS}
    values |= _descriptors(batch, mask, gt_depth, n_valid)
    values["affine_space"] = [space] * len(n_valid)
    return values


def _descriptors(batch: dict[str, Any], mask: torch.Tensor, gt_depth: torch.Tensor, n_valid: torch.Tensor):
    """Per-sample ground-truth descriptors: valid pixel count, mean depth (mm), depth range p98 - p2 (mm),
    texture = mean gradient magnitude of the grey LR-sum image inside the mask (intensity per px)."""
    depth_nan = torch.where(mask, gt_depth, float("nan")).flatten(1)
    p02, p98 = torch.nanquantile(depth_nan, torch.tensor([0.02, 0.98], dtype=torch.float64,
                                                         device=mask.device), dim=1)
    out = {"valid_px": n_valid, "depth_mean_mm": torch.nanmean(depth_nan, 1), "depth_range_mm": p98 - p02}
    if "lrsum" in batch:
        grey = batch["lrsum"].to(torch.float64).mean(1)
        gy, gx = grey[:, 1:, :-1] - grey[:, :-1, :-1], grey[:, :-1, 1:] - grey[:, :-1, :-1]
        inner = (mask[:, 1:, :-1] & mask[:, :-1, 1:] & mask[:, :-1, :-1]).to(torch.float64)
        grad = (gx**2 + gy**2).sqrt()
        out["texture"] = (inner * grad).flatten(1).sum(1) / inner.flatten(1).sum(1).clamp_min(1)
    else:
        out["texture"] = torch.full_like(n_valid, float("nan"))
    return out
