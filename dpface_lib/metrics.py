"""Evaluation metrics: affine-invariant (disparity / inverse depth), absolute depth (mm) and normals (deg).

Every metric takes either numpy arrays of one sample, ``(H, W)`` -> a dict of Python floats (a stack
``(B, H, W)`` -> a dict of ``(B,)`` arrays, computed one sample at a time), or torch tensors ``(B, H, W)``
(or ``(H, W)``) -> a dict of ``(B,)`` (or 0-d) float64 tensors, computed for the whole batch at once
(no Python loop over samples; usable on any device). If any argument is a tensor the torch path is
taken and the others are moved to the prediction's device. Both paths compute in float64 and are
written independently, so each checks the other.

Pixels and samples
- Only pixels with a positive weight / true mask count; values outside may be anything (NaN included).
- Inside the mask, ground truth and prediction must be finite, else ``ValueError`` names the sample;
  ``depth_metrics`` instead drops missing ground truth (non-finite, or below its near limit, e.g. 0) and
  clips predictions (see there), because a predicted depth ``a / (d - b)`` is legitimately non-finite.
- A sample with no valid pixel raises ``ValueError("... sample i ...")``; with ``allow_empty=True``
  its metrics are NaN instead (and only then can a NaN appear).

Sources: Garg et al., "Learning Single Camera Depth Estimation using Dual-Pixels", ICCV 2019 (AIWE(1),
AIWE(2), 1 - |rho_s|) and its released evaluation; Kang et al., ECCV 2022 (depth thresholds 1.01^k and
the normal metrics).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

AFFINE_KEYS = ("ai1", "ai2", "spearman")
DEPTH_KEYS = ("absrel", "absdiff", "sqrel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
NORMAL_KEYS = ("mean_deg", "median_deg", "rmse_deg", "within_11_25", "within_22_5", "within_30")
#: delta_k = share of pixels with max(gt/pred, pred/gt) < 1.01**k (the facial-DP benchmark's thresholds).
DELTA_THRESHOLDS = (1.01, 1.01**2, 1.01**3)
NORMAL_THRESHOLDS_DEG = (11.25, 22.5, 30.0)
IRLS_ITERS = 5
IRLS_EPS = 1e-3
#: a weighted variance below REL_DEGENERATE * mean**2 counts as a constant map.
REL_DEGENERATE = 1e-24
_TINY = 1e-300


# ----------------------------------------------------------------------------------------- input checks
def _is_torch(*arrays: Any) -> bool:
    return any(isinstance(a, torch.Tensor) for a in arrays)


def _torch_inputs(name: str, arrays: dict[str, Any], ndim: int) -> tuple[dict[str, torch.Tensor], bool]:
    """float64 tensors on the first tensor's device, with a leading batch axis; returns (arrays, batched)."""
    device = next(a.device for a in arrays.values() if isinstance(a, torch.Tensor))
    out = {k: torch.as_tensor(v, device=device).to(torch.float64) for k, v in arrays.items()}
    first = next(iter(out.values()))
    batched = first.ndim == ndim + 1
    for key, value in out.items():
        if value.ndim not in (ndim, ndim + 1) or value.shape != first.shape:
            raise ValueError(f"{name}: {key} has shape {tuple(value.shape)}, expected {tuple(first.shape)} "
                             f"with {ndim} or {ndim + 1} dims")
    if not batched:
        out = {k: v.unsqueeze(0) for k, v in out.items()}
    return out, batched


def _numpy_samples(name: str, arrays: dict[str, Any], ndim: int) -> tuple[list[dict[str, np.ndarray]], bool]:
    out = {k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()}
    first = next(iter(out.values()))
    for key, value in out.items():
        if value.ndim not in (ndim, ndim + 1) or value.shape != first.shape:
            raise ValueError(f"{name}: {key} has shape {value.shape}, expected {first.shape} "
                             f"with {ndim} or {ndim + 1} dims")
    if first.ndim == ndim:
        return [out], False
    return [{k: v[i] for k, v in out.items()} for i in range(first.shape[0])], True


def _check_weight(name: str, weight, index: int | None = None) -> None:
    bad = ~np.isfinite(weight) | (weight < 0)
    if bad.any():
        where = f" in sample {index}" if index is not None else ""
        raise ValueError(f"{name}: weights must be finite and >= 0; found {int(bad.sum())} bad values{where}")


def _check_finite_np(name: str, arrays: dict[str, np.ndarray], valid: np.ndarray, index: int) -> None:
    for key, value in arrays.items():
        bad = valid & ~np.isfinite(value)
        if bad.any():
            raise ValueError(f"{name}: {key} has {int(bad.sum())} non-finite values inside the mask "
                             f"in sample {index}")


def _check_finite_torch(name: str, arrays: dict[str, torch.Tensor], valid: torch.Tensor) -> None:
    for key, value in arrays.items():
        bad = valid & ~torch.isfinite(value)
        per_sample = bad.flatten(1).any(1)
        if bool(per_sample.any()):
            index = int(per_sample.nonzero()[0, 0])
            raise ValueError(f"{name}: {key} has {int(bad[index].sum())} non-finite values inside the mask "
                             f"in sample {index}")


def _empty_error(name: str, index: int) -> ValueError:
    return ValueError(f"{name}: sample {index} has no valid pixel (empty mask, all weights zero or no "
                      "usable ground truth); pass allow_empty=True to get NaN for such samples")


def _empty_samples(name: str, count: torch.Tensor, allow_empty: bool) -> torch.Tensor:
    """(B,) bool: samples without valid pixels; raises unless ``allow_empty``."""
    empty = count <= 0
    if not allow_empty and bool(empty.any()):
        raise _empty_error(name, int(empty.nonzero()[0, 0]))
    return empty


def _numpy_result(rows: list[dict[str, float]], keys: tuple[str, ...], batched: bool):
    if not batched:
        return rows[0]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}


def _torch_result(values: dict[str, torch.Tensor], empty: torch.Tensor, batched: bool):
    out = {}
    for key, value in values.items():
        value = value.clone()
        value[empty] = float("nan")
        out[key] = value if batched else value[0]
    return out


# ------------------------------------------------------------------------------ affine-invariant metrics
def affine_invariant_metrics(pred, gt, weight=None, *, allow_empty: bool = False) -> dict:
    """Garg et al. (ICCV 2019) affine-invariant errors of a disparity / inverse-depth prediction.

    Args:
        pred: (H, W) or (B, H, W) predicted disparity (px) or inverse depth; any affine map of it scores
            the same.
        gt: same shape, ground-truth disparity (px) or inverse depth. Errors are in its units.
        weight: same shape, >= 0 (a 0/1 mask or a confidence), ``None`` = all ones.

    Returns dict ``ai1``, ``ai2``, ``spearman`` (floats for numpy (H, W); (B,) float64 tensors for torch):
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
        - ``spearman`` = 1 - |rho_s| in [0, 1]: the w-weighted Pearson correlation of the ranks of pred and
          gt. Ranks are weighted mid-ranks: a pixel's rank is the weight of all pixels with a smaller value
          plus half the weight of its tie group, so zero-weight pixels do not influence the ranks (with a
          0/1 mask this is the average rank among masked pixels). **Deviation from the reference**, which
          ranks all pixels, masked ones included, and breaks ties in pixel order: that made a constant
          prediction correlate with whatever order the pixels were stored in. If either map is constant
          over the mask, rho_s := 0 (spearman = 1).
    Weights enter every sum as multipliers (the reference's sqrt(w) row scaling of the least squares).
    """
    name = "affine_invariant_metrics"
    arrays = {"pred": pred, "gt": gt} | ({"weight": weight} if weight is not None else {})
    if _is_torch(pred, gt, weight):
        tensors, batched = _torch_inputs(name, arrays, 2)
        x, y = tensors["pred"].flatten(1), tensors["gt"].flatten(1)
        w = tensors["weight"].flatten(1) if weight is not None else torch.ones_like(x)
        if bool((~torch.isfinite(w) | (w < 0)).any()):
            _check_weight(name, w.detach().cpu().numpy())
        valid = w > 0
        _check_finite_torch(name, {"pred": x, "gt": y}, valid)
        empty = _empty_samples(name, w.sum(1), allow_empty)
        x, y = torch.where(valid, x, 0.0), torch.where(valid, y, 0.0)
        values = _affine_torch(x, y, w)
        return _torch_result(values, empty, batched)
    samples, batched = _numpy_samples(name, arrays, 2)
    rows = []
    for index, sample in enumerate(samples):
        x, y = sample["pred"].ravel(), sample["gt"].ravel()
        w = sample["weight"].ravel() if weight is not None else np.ones_like(x)
        _check_weight(name, w, index)
        valid = w > 0
        _check_finite_np(name, {"pred": x, "gt": y}, valid, index)
        if not valid.any():
            if not allow_empty:
                raise _empty_error(name, index)
            rows.append(dict.fromkeys(AFFINE_KEYS, float("nan")))
            continue
        rows.append(_affine_numpy(x[valid], y[valid], w[valid]))
    return _numpy_result(rows, AFFINE_KEYS, batched)


def fit_affine(pred, gt, weight=None, *, robust: bool = False) -> tuple[float, float]:
    """The (s, t) of ``s * pred + t ~ gt`` used by :func:`affine_invariant_metrics` for one sample
    (numpy or torch (H, W)): weighted least squares (AIWE(2)), or with ``robust=True`` the 5-round IRLS
    fit of AIWE(1). ``s * pred + t`` is the affine-aligned prediction, in ground-truth units."""
    x, y = (np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64).ravel()
            for a in (pred, gt))
    w = np.ones_like(x) if weight is None else np.asarray(
        weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight, dtype=np.float64).ravel()
    _check_weight("fit_affine", w)
    valid = w > 0
    if not valid.any():
        raise _empty_error("fit_affine", 0)
    _check_finite_np("fit_affine", {"pred": x, "gt": y}, valid, 0)
    x, y, w = x[valid], y[valid], w[valid]
    if not robust:
        return _wls_fit_numpy(x, y, w)
    irls = np.ones_like(x)
    for _ in range(IRLS_ITERS):
        s, t = _wls_fit_numpy(x, y, w * irls)
        irls = 1.0 / np.maximum(IRLS_EPS, np.abs(s * x + t - y))
    return s, t


def _wls_fit_numpy(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """(s, t) minimising sum w (s x + t - y)^2 (closed-form, centred normal equations)."""
    sw = w.sum()
    mx, my = (w * x).sum() / sw, (w * y).sum() / sw
    dx = x - mx
    vxx = (w * dx * dx).sum()
    s = 0.0 if vxx <= REL_DEGENERATE * sw * mx * mx + _TINY else (w * dx * (y - my)).sum() / vxx
    return float(s), float(my - s * mx)


def _affine_numpy(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, float]:
    sw = w.sum()
    s, t = _wls_fit_numpy(x, y, w)
    ai2 = np.sqrt((w * (s * x + t - y) ** 2).sum() / sw)
    irls = np.ones_like(x)
    for _ in range(IRLS_ITERS):
        s1, t1 = _wls_fit_numpy(x, y, w * irls)
        residual = np.abs(s1 * x + t1 - y)
        irls = 1.0 / np.maximum(IRLS_EPS, residual)
    ai1 = (w * residual).sum() / sw
    rank_x, rank_y = _weighted_midranks_numpy(x, w), _weighted_midranks_numpy(y, w)
    rho = _weighted_pearson_numpy(rank_x, rank_y, w)
    return {"ai1": float(ai1), "ai2": float(ai2), "spearman": float(1.0 - min(1.0, abs(rho)))}


def _weighted_midranks_numpy(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Rank in [0, 1]: (weight below + half the weight of the tie group) / total weight."""
    order = np.argsort(v, kind="stable")
    v_sorted, w_sorted = v[order], w[order]
    new_group = np.ones(v.size, dtype=bool)
    new_group[1:] = v_sorted[1:] != v_sorted[:-1]
    group = np.cumsum(new_group) - 1
    group_weight = np.bincount(group, weights=w_sorted)
    group_start = np.cumsum(group_weight) - group_weight
    ranks = np.empty_like(v)
    ranks[order] = group_start[group] + 0.5 * group_weight[group]
    return ranks / w.sum()


def _weighted_pearson_numpy(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> float:
    sw = w.sum()
    da, db = a - (w * a).sum() / sw, b - (w * b).sum() / sw
    vaa, vbb = (w * da * da).sum() / sw, (w * db * db).sum() / sw
    if vaa <= 1e-14 or vbb <= 1e-14:  # ranks live in [0, 1]: a constant map
        return 0.0
    return float((w * da * db).sum() / sw / np.sqrt(vaa * vbb))


def _wls_fit_torch(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched (B, N) version of :func:`_wls_fit_numpy`; returns (B, 1) slope and offset."""
    sw = w.sum(1, keepdim=True).clamp_min(_TINY)
    mx, my = (w * x).sum(1, keepdim=True) / sw, (w * y).sum(1, keepdim=True) / sw
    dx = x - mx
    vxx = (w * dx * dx).sum(1, keepdim=True)
    vxy = (w * dx * (y - my)).sum(1, keepdim=True)
    constant = vxx <= REL_DEGENERATE * sw * mx * mx + _TINY
    s = torch.where(constant, 0.0, vxy / torch.where(constant, 1.0, vxx))
    return s, my - s * mx


def _affine_torch(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> dict[str, torch.Tensor]:
    sw = w.sum(1).clamp_min(_TINY)
    s, t = _wls_fit_torch(x, y, w)
    ai2 = ((w * (s * x + t - y) ** 2).sum(1) / sw).sqrt()
    irls = torch.ones_like(x)
    for _ in range(IRLS_ITERS):
        s1, t1 = _wls_fit_torch(x, y, w * irls)
        residual = (s1 * x + t1 - y).abs()
        irls = 1.0 / residual.clamp_min(IRLS_EPS)
    ai1 = (w * residual).sum(1) / sw
    rank_x, rank_y = _weighted_midranks_torch(x, w), _weighted_midranks_torch(y, w)
    rho = _weighted_pearson_torch(rank_x, rank_y, w)
    return {"ai1": ai1, "ai2": ai2, "spearman": 1.0 - rho.abs().clamp_max(1.0)}


def _weighted_midranks_torch(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Batched weighted mid-ranks (B, N) via one sort, a segment sum over tie groups and a scatter."""
    v_sorted, order = torch.sort(v, dim=1, stable=True)
    w_sorted = torch.gather(w, 1, order)
    new_group = torch.ones_like(v_sorted, dtype=torch.bool)
    new_group[:, 1:] = v_sorted[:, 1:] != v_sorted[:, :-1]
    group = torch.cumsum(new_group, dim=1) - 1
    group_weight = torch.zeros_like(w_sorted).scatter_add_(1, group, w_sorted)
    group_start = torch.cumsum(group_weight, dim=1) - group_weight
    ranks_sorted = torch.gather(group_start, 1, group) + 0.5 * torch.gather(group_weight, 1, group)
    ranks = torch.empty_like(ranks_sorted).scatter_(1, order, ranks_sorted)
    return ranks / w.sum(1, keepdim=True).clamp_min(_TINY)


def _weighted_pearson_torch(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    sw = w.sum(1, keepdim=True).clamp_min(_TINY)
    da, db = a - (w * a).sum(1, keepdim=True) / sw, b - (w * b).sum(1, keepdim=True) / sw
    vaa, vbb = (w * da * da).sum(1) / sw[:, 0], (w * db * db).sum(1) / sw[:, 0]
    constant = (vaa <= 1e-14) | (vbb <= 1e-14)
    cov = (w * da * db).sum(1) / sw[:, 0]
    return torch.where(constant, 0.0, cov / torch.where(constant, 1.0, vaa * vbb).sqrt())


# ------------------------------------------------------------------------------------- depth metrics
def depth_metrics(pred_mm, gt_mm, mask=None, *, depth_range_mm: tuple[float, float] = (1.0, 1e5),
                  allow_empty: bool = False) -> dict:
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
        raise ValueError(f"{name}: depth_range_mm must satisfy 0 < low < high, got {depth_range_mm}")
    arrays = {"pred": pred_mm, "gt": gt_mm} | ({"mask": mask} if mask is not None else {})
    if _is_torch(pred_mm, gt_mm, mask):
        tensors, batched = _torch_inputs(name, arrays, 2)
        p, g = tensors["pred"].flatten(1), tensors["gt"].flatten(1)
        valid = torch.isfinite(g) & (g >= low)
        if mask is not None:
            valid &= tensors["mask"].flatten(1) != 0
        count = valid.sum(1)
        empty = _empty_samples(name, count, allow_empty)
        p = torch.nan_to_num(p, nan=high, posinf=high, neginf=low).clamp(low, high)
        g = torch.where(valid, g, 1.0)
        m, n = valid.to(torch.float64), count.clamp_min(1).to(torch.float64)
        diff = g - p
        ratio = torch.maximum(g / p, p / g)
        values = {
            "absrel": (m * diff.abs() / g).sum(1) / n,
            "absdiff": (m * diff.abs()).sum(1) / n,
            "sqrel": (m * diff**2 / g).sum(1) / n,
            "rmse": ((m * diff**2).sum(1) / n).sqrt(),
            "rmse_log": ((m * (g.log() - p.log()) ** 2).sum(1) / n).sqrt(),
        }
        for k, threshold in enumerate(DELTA_THRESHOLDS, start=1):
            values[f"delta{k}"] = (m * (ratio < threshold)).sum(1) / n
        return _torch_result(values, empty, batched)
    samples, batched = _numpy_samples(name, arrays, 2)
    rows = []
    for index, sample in enumerate(samples):
        g = sample["gt"]
        valid = np.isfinite(g) & (g >= low)
        if mask is not None:
            valid &= sample["mask"] != 0
        if not valid.any():
            if not allow_empty:
                raise _empty_error(name, index)
            rows.append(dict.fromkeys(DEPTH_KEYS, float("nan")))
            continue
        g = g[valid]
        p = np.clip(np.nan_to_num(sample["pred"][valid], nan=high, posinf=high, neginf=low), low, high)
        ratio = np.maximum(g / p, p / g)
        row = {
            "absrel": np.mean(np.abs(g - p) / g),
            "absdiff": np.mean(np.abs(g - p)),
            "sqrel": np.mean((g - p) ** 2 / g),
            "rmse": np.sqrt(np.mean((g - p) ** 2)),
            "rmse_log": np.sqrt(np.mean((np.log(g) - np.log(p)) ** 2)),
        }
        for k, threshold in enumerate(DELTA_THRESHOLDS, start=1):
            row[f"delta{k}"] = np.mean(ratio < threshold)
        rows.append({k: float(v) for k, v in row.items()})
    return _numpy_result(rows, DEPTH_KEYS, batched)


# ------------------------------------------------------------------------------------ normal metrics
def normal_metrics(pred, gt, mask=None, *, allow_empty: bool = False) -> dict:
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
    if _is_torch(pred, gt, mask):
        pred_t, gt_t = torch.as_tensor(pred), torch.as_tensor(gt)
        device = pred_t.device if isinstance(pred, torch.Tensor) else gt_t.device
        pred_t, gt_t = pred_t.to(device, torch.float64), gt_t.to(device, torch.float64)
        batched = pred_t.ndim == 4
        if pred_t.shape != gt_t.shape or pred_t.ndim not in (3, 4) or pred_t.shape[-3] != 3:
            raise ValueError(f"{name}: pred {tuple(pred_t.shape)} and gt {tuple(gt_t.shape)} must both be "
                             "(3, H, W) or (B, 3, H, W)")
        if not batched:
            pred_t, gt_t = pred_t.unsqueeze(0), gt_t.unsqueeze(0)
        if mask is None:
            valid = (gt_t != 0).any(1)
        else:
            valid = torch.as_tensor(mask, device=device)
            valid = (valid.unsqueeze(0) if valid.ndim == 2 else valid) != 0
            if valid.shape != gt_t[:, 0].shape:
                raise ValueError(f"{name}: mask {tuple(valid.shape)} does not match normals "
                                 f"{tuple(gt_t.shape)}")
        valid = valid.flatten(1)
        n, m = pred_t.flatten(2), gt_t.flatten(2)
        _check_finite_torch(name, {"pred": n.abs().sum(1), "gt": m.abs().sum(1)}, valid)
        count = valid.sum(1)
        empty = _empty_samples(name, count, allow_empty)
        n, m = torch.where(valid[:, None], n, 1.0), torch.where(valid[:, None], m, 1.0)
        theta = _angle_deg_torch(n, m)
        mf, c = valid.to(torch.float64), count.clamp_min(1)
        values = {"mean_deg": (mf * theta).sum(1) / c, "rmse_deg": ((mf * theta**2).sum(1) / c).sqrt()}
        ordered = torch.where(valid, theta, float("inf")).sort(1).values
        lo, hi = ((c - 1) // 2).unsqueeze(1), (c // 2).unsqueeze(1)
        values["median_deg"] = 0.5 * (ordered.gather(1, lo) + ordered.gather(1, hi))[:, 0]
        for key, limit in zip(NORMAL_KEYS[3:], NORMAL_THRESHOLDS_DEG, strict=True):
            values[key] = (mf * (theta <= limit)).sum(1) / c
        return _torch_result({k: values[k] for k in NORMAL_KEYS}, empty, batched)
    pred_np, gt_np = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred_np.shape != gt_np.shape or pred_np.ndim not in (3, 4) or pred_np.shape[-3] != 3:
        raise ValueError(f"{name}: pred {pred_np.shape} and gt {gt_np.shape} must both be (3, H, W) or "
                         "(B, 3, H, W)")
    batched = pred_np.ndim == 4
    preds, gts = (pred_np, gt_np) if batched else (pred_np[None], gt_np[None])
    masks = None if mask is None else np.asarray(mask)
    if masks is not None:
        masks = masks if batched else masks[None]
        if masks.shape != gts[:, 0].shape:
            raise ValueError(f"{name}: mask {np.asarray(mask).shape} does not match normals {gt_np.shape}")
    rows = []
    for index in range(preds.shape[0]):
        valid = (gts[index] != 0).any(0) if masks is None else masks[index] != 0
        n, m = preds[index][:, valid], gts[index][:, valid]
        _check_finite_np(name, {"pred": np.abs(n).sum(0), "gt": np.abs(m).sum(0)}, np.ones(n.shape[1], bool),
                         index)
        if not valid.any():
            if not allow_empty:
                raise _empty_error(name, index)
            rows.append(dict.fromkeys(NORMAL_KEYS, float("nan")))
            continue
        n_len, m_len = np.linalg.norm(n, axis=0), np.linalg.norm(m, axis=0)
        n, m = n / np.maximum(n_len, _TINY), m / np.maximum(m_len, _TINY)
        theta = np.degrees(np.arctan2(np.linalg.norm(np.cross(n.T, m.T), axis=1), (n * m).sum(0)))
        theta[(n_len == 0) | (m_len == 0)] = 90.0
        row = {"mean_deg": theta.mean(), "median_deg": np.median(theta),
               "rmse_deg": np.sqrt(np.mean(theta**2))}
        for key, limit in zip(NORMAL_KEYS[3:], NORMAL_THRESHOLDS_DEG, strict=True):
            row[key] = np.mean(theta <= limit)
        rows.append({k: float(v) for k, v in row.items()})
    return _numpy_result(rows, NORMAL_KEYS, batched)


def _angle_deg_torch(n: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Angle (deg) between (B, 3, N) vector fields after normalisation; zero vectors give 90 deg."""
    n_len, m_len = n.norm(dim=1, keepdim=True), m.norm(dim=1, keepdim=True)
    n, m = n / n_len.clamp_min(_TINY), m / m_len.clamp_min(_TINY)
    cross = torch.linalg.cross(n, m, dim=1).norm(dim=1)
    theta = torch.rad2deg(torch.atan2(cross, (n * m).sum(1)))
    return torch.where(((n_len == 0) | (m_len == 0))[:, 0], 90.0, theta)


# ------------------------------------------------------------------------------------------- tables
def metrics_frame(metrics: dict[str, Any], meta: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per sample from a dict of per-sample metric values ((B,) tensors, arrays or lists, or
    floats for one sample) plus optional identifier columns (``meta``: column -> list of B values)."""
    columns: dict[str, Any] = {}
    for key, value in {**(meta or {}), **metrics}.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        columns[key] = np.atleast_1d(np.asarray(value)) if not isinstance(value, list) else value
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"metrics_frame: columns have different lengths {lengths}")
    return pd.DataFrame(columns)
