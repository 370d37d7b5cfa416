"""Independent numpy oracles of the kit's metrics (dpface_lib/metrics.py keeps one torch implementation).

Written as plain per-sample numpy loops, differently from the library (boolean indexing, numpy's sort and
bincount, np.median, np.cross), so that agreement checks the library. ``reference_spearman`` transcribes
the released convention of Google's ``dual_pixels/eval/get_metrics.py`` from its description: double
argsort of the float32 values of every pixel, ranks rescaled to [-1, 1], weighted Pearson in the
E[xy] - E[x]E[y] form, and the larger of the correlations with rank(pred) and rank(-pred).
"""

from __future__ import annotations

import numpy as np

IRLS_ITERS = 5
IRLS_EPS = 1e-3
REL_DEGENERATE = 1e-24
_TINY = 1e-300
DELTA_THRESHOLDS = (1.01, 1.01**2, 1.01**3)
NORMAL_KEYS = ("mean_deg", "median_deg", "rmse_deg", "within_11_25", "within_22_5", "within_30")
NORMAL_THRESHOLDS_DEG = (11.25, 22.5, 30.0)


def affine_midrank(pred: np.ndarray, gt: np.ndarray, weight: np.ndarray | None = None) -> dict[str, float]:
    """ai1, ai2 and the mid-rank spearman of one sample (any shape), over the pixels with weight > 0."""
    x, y = np.asarray(pred, np.float64).ravel(), np.asarray(gt, np.float64).ravel()
    w = np.ones_like(x) if weight is None else np.asarray(weight, np.float64).ravel()
    valid = w > 0
    return _affine_numpy(x[valid], y[valid], w[valid])


def reference_spearman(pred: np.ndarray, gt: np.ndarray, weight: np.ndarray | None = None) -> float:
    """1 - rho_s by the released convention, over every pixel of the (H, W) maps."""
    x, y = np.asarray(pred, np.float32).ravel(), np.asarray(gt, np.float32).ravel()
    w = np.ones(x.size) if weight is None else np.asarray(weight, np.float64).ravel()
    n = x.size

    def rank(v):
        return np.argsort(np.argsort(v, kind="stable"), kind="stable")

    def rescale(r):
        return (r - n // 2).astype(np.float64) / (n // 2)

    def pearson(a, b):
        mean = lambda z: np.sum(w * z) / np.sum(w)  # noqa: E731
        cov = mean(a * b) - mean(a) * mean(b)
        return cov / np.sqrt((mean(a * a) - mean(a) ** 2) * (mean(b * b) - mean(b) ** 2))

    y_rank = rescale(rank(y))
    return float(1.0 - max(pearson(rescale(rank(x)), y_rank), pearson(rescale(rank(-x)), y_rank)))


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


def depth_oracle(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None,
                 depth_range_mm: tuple[float, float] = (1.0, 1e5)) -> list[dict[str, float] | None]:
    """Depth metrics per sample of (B, H, W) stacks; None for a sample without valid pixels."""
    low, high = depth_range_mm
    rows = []
    for index in range(len(gt)):
        sample = {"pred": pred[index], "gt": gt[index], "mask": None if mask is None else mask[index]}
        g = sample["gt"]
        valid = np.isfinite(g) & (g >= low)
        if mask is not None:
            valid &= sample["mask"] != 0
        if not valid.any():
            rows.append(None)
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
    return rows


def normal_oracle(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None
                  ) -> list[dict[str, float] | None]:
    """Normal metrics per sample of (B, 3, H, W) stacks; None for a sample without valid pixels."""
    preds, gts, masks = pred, gt, mask
    rows = []
    for index in range(preds.shape[0]):
        valid = (gts[index] != 0).any(0) if masks is None else masks[index] != 0
        n, m = preds[index][:, valid], gts[index][:, valid]
        if not valid.any():
            rows.append(None)
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
    return rows
