"""Rank statistics behind the Spearman metric (:func:`dpface_lib.metrics.affine_invariant_metrics`).

Two rank conventions on (N,) torch vectors: the pixel-order ranks of Garg et al.'s released evaluation
(ICCV 2019; ties broken by pixel order, every pixel ranked) and weighted mid-ranks over the weighted pixels
only; plus the weighted Pearson correlation that turns either into rho_s. Sorting goes through integer keys
(:func:`sort_key`), which torch sorts by radix on the CPU.
"""

from __future__ import annotations

import torch

__all__ = ["pixel_order_ranks", "sort_key", "weighted_midranks", "weighted_pearson"]

_TINY = 1e-300


def pixel_order_ranks(v: torch.Tensor, both_directions: bool = False) -> list[torch.Tensor]:
    """Reference-convention ranks from one stable sort of the float32 values: ``rank(v)`` and, if asked,
    ``rank(-v)`` (a tie group at sorted positions [start, end) moves to [n - end, n - start), still in pixel
    order), each rescaled to (rank - n//2) / (n//2)."""
    n = v.numel()
    ordered, order = torch.sort(sort_key(v.to(torch.float32)), stable=True)
    position = torch.arange(n, device=v.device)
    ranks = [torch.empty_like(position).scatter_(0, order, position)]
    if both_directions:
        first = torch.ones(n, dtype=torch.bool, device=v.device)
        first[1:] = ordered[1:] != ordered[:-1]
        last = torch.ones_like(first)
        last[:-1] = first[1:]
        start = torch.where(first, position, 0).cummax(0).values
        end = torch.where(last, position + 1, n).flip(0).cummin(0).values.flip(0)
        ranks.append(torch.empty_like(position).scatter_(0, order, n - end + position - start))
    half = max(n // 2, 1)
    return [(r - n // 2).to(torch.float64) / half for r in ranks]


def sort_key(v: torch.Tensor) -> torch.Tensor:
    """Integers in the order of the float values (float32 -> int32, float64 -> int64), which torch sorts by
    radix on the CPU, about 20x faster than the floats: IEEE bits as signed integers order the positive
    values; flipping the magnitude bits of the negative ones reverses theirs. As in numpy's sort, every NaN
    (one canonical positive NaN) comes after +inf, and -0.0 ties with 0.0."""
    int_type, magnitude = (torch.int32, 0x7FFFFFFF) if v.dtype == torch.float32 else (torch.int64, 2**63 - 1)
    canonical_nan = torch.full((), float("nan"), dtype=v.dtype, device=v.device).abs()
    bits = torch.where(torch.isnan(v), canonical_nan, v + 0.0).view(int_type)
    return torch.where(bits < 0, bits ^ magnitude, bits)


def weighted_midranks(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rank in [0, 1] of each of the (N,) values: (weight below + half the weight of its tie group) / sum w,
    from one sort, a segment sum over tie groups and a scatter."""
    ordered, order = torch.sort(sort_key(v), stable=True)
    w_sorted = w[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    group = torch.cumsum(first, 0) - 1
    group_weight = torch.zeros_like(w_sorted).scatter_add_(0, group, w_sorted)
    group_start = torch.cumsum(group_weight, 0) - group_weight
    ranks = torch.empty_like(w_sorted).scatter_(0, order, group_start[group] + 0.5 * group_weight[group])
    return ranks / w.sum().clamp_min(_TINY)


def weighted_pearson(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """w-weighted Pearson correlation of (N,) vectors; 0 when either variance is (near) zero. The ranks it
    is given are bounded by 1, so the variance threshold is absolute."""
    sw = w.sum().clamp_min(_TINY)
    da, db = a - (w * a).sum() / sw, b - (w * b).sum() / sw
    vaa, vbb = (w * da * da).sum() / sw, (w * db * db).sum() / sw
    constant = (vaa <= 1e-14) | (vbb <= 1e-14)
    cov = (w * da * db).sum() / sw
    return torch.where(constant, 0.0, cov / torch.where(constant, 1.0, vaa * vbb).sqrt())
