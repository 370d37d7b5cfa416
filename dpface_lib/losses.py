"""Training losses: masked smooth-L1 and affine-invariant L1 on disparity, SILog on depth, cosine on normals
(predicted, or differentiated from a disparity map).

All losses average over the pixels where ``mask`` is true, pooled over the whole batch (as the
benchmark code does). An empty mask gives a loss of exactly 0 that is still connected to the
prediction (``0 · pred.sum()``), so ``loss.backward()`` works and yields zero gradients instead of
NaN or an error; a batch of background-only crops therefore does not break training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from dpface_lib.geometry import disparity_to_depth, normals_from_depth, scale_intrinsics, unit_vectors

__all__ = [
    "affine_invariant_l1", "affine_align", "cosine_normal_loss", "disparity_normal_loss", "model_loss",
    "silog_loss", "smooth_l1_disparity",
]


def _zero_like(pred: torch.Tensor) -> torch.Tensor:
    return pred.sum() * 0.0


def _check_mask(mask: torch.Tensor, shape: torch.Size, name: str) -> torch.Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: mask shape {tuple(mask.shape)} does not match {tuple(shape)}")
    return mask.bool()


def smooth_l1_disparity(
    disparities: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, weights: Sequence[float]
) -> torch.Tensor:
    """Weighted sum over outputs of the masked smooth-L1 (Huber, beta = 1) disparity error.

    ``loss = Σ_i w_i · mean_{mask} smoothL1(disparities[:, i] - gt)`` with
    ``smoothL1(x) = 0.5 x²`` for ``|x| < 1`` and ``|x| - 0.5`` otherwise.

    Args:
        disparities: (B, N, H, W) predicted disparities in px (N outputs, loss-weight order).
        gt: (B, H, W) ground-truth disparity in px.
        mask: (B, H, W) bool, pixels with valid ground truth.
        weights: N weights, one per output.

    Returns:
        0-d tensor.
    """
    if disparities.ndim != 4:
        raise ValueError(
            f"smooth_l1_disparity: disparities must be (B, N, H, W), got {tuple(disparities.shape)}"
        )
    n = disparities.shape[1]
    if len(weights) != n:
        raise ValueError(f"smooth_l1_disparity: {n} outputs but {len(weights)} weights")
    if tuple(gt.shape) != (disparities.shape[0], *disparities.shape[2:]):
        raise ValueError(
            f"smooth_l1_disparity: gt shape {tuple(gt.shape)} does not match {tuple(disparities.shape)}"
        )
    mask = _check_mask(mask, gt.shape, "smooth_l1_disparity")
    if not mask.any():
        return _zero_like(disparities)
    target = gt[mask]
    total = disparities.new_zeros(())
    for i, w in enumerate(weights):
        total = total + float(w) * F.smooth_l1_loss(disparities[:, i][mask], target, beta=1.0)
    return total


def affine_align(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``s·pred + t`` with the per-sample least-squares ``(s, t)`` that best maps ``pred`` onto ``gt``.

    Closed form over the masked pixels of each sample: ``s = cov(p, g) / (var(p) + eps)``,
    ``t = mean(g) - s·mean(p)``; differentiable in ``pred``. A constant prediction gets ``s ≈ 0`` and is
    aligned to ``mean(g)``, so the fit can never hide a flat output. Samples with fewer than two valid
    pixels are returned unchanged.

    Args:
        pred: (B, H, W) predicted disparity (any affine map of it).
        gt: (B, H, W) ground-truth disparity in px.
        mask: (B, H, W) bool.

    Returns:
        (B, H, W) aligned prediction in the units of ``gt`` (px).
    """
    w = mask.to(pred.dtype)
    n = w.sum(dim=(1, 2))
    safe_n = n.clamp_min(1.0)
    mp = (w * pred).sum(dim=(1, 2)) / safe_n
    mg = (w * gt).sum(dim=(1, 2)) / safe_n
    dp, dg = (pred - mp[:, None, None]) * w, (gt - mg[:, None, None]) * w
    s = (dp * dg).sum(dim=(1, 2)) / ((dp * dp).sum(dim=(1, 2)) + eps * safe_n)
    t = mg - s * mp
    keep = n >= 2
    s, t = torch.where(keep, s, torch.ones_like(s)), torch.where(keep, t, torch.zeros_like(t))
    return s[:, None, None] * pred + t[:, None, None]


def affine_invariant_l1(
    disparities: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, weights: Sequence[float]
) -> torch.Tensor:
    """Weighted sum over outputs of the affine-invariant L1 disparity error (Garg et al., ICCV 2019).

    Each output of each sample is first aligned to the ground truth by its least-squares affine map
    (:func:`affine_align`); the loss is the mean absolute residual over the mask, averaged per sample and
    then over the samples that have valid pixels: ``Σ_i w_i · mean_b mean_{mask_b} |s_bi·d_bi + t_bi − g_b|``.
    It ignores each sample's disparity level and scale (which the rig's unknown ``a, b`` set), so the network
    spends its capacity on the shape of the face, the thing the affine-invariant metrics score.

    Args:
        disparities: (B, N, H, W) predicted disparities in px (N outputs, loss-weight order).
        gt: (B, H, W) ground-truth disparity in px.
        mask: (B, H, W) bool.
        weights: N weights, one per output.

    Returns:
        0-d tensor (px).
    """
    if disparities.ndim != 4 or len(weights) != disparities.shape[1]:
        raise ValueError(
            f"affine_invariant_l1: expected (B, N, H, W) disparities with N = {len(weights)} weights, got "
            f"{tuple(disparities.shape)}"
        )
    mask = _check_mask(mask, gt.shape, "affine_invariant_l1")
    counts = mask.sum(dim=(1, 2))
    valid = counts >= 2
    if not valid.any():
        return _zero_like(disparities)
    w = mask.to(disparities.dtype)
    total = disparities.new_zeros(())
    for i, weight in enumerate(weights):
        aligned = affine_align(disparities[:, i], gt, mask)
        per_sample = ((aligned - gt).abs() * w).sum(dim=(1, 2)) / counts.clamp_min(1)
        total = total + float(weight) * per_sample[valid].mean()
    return total


def silog_loss(
    pred_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor, variance_focus: float = 0.6
) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014, in the form used by BTS, Lee et al. 2019).

    ``g = log(pred) - log(gt)`` over masked pixels; ``loss = 10 · sqrt(mean(g²) - λ · mean(g)²)``.
    The radicand is clamped at 1e-12 so a perfect prediction gives ~1e-5 with a finite gradient.

    Args:
        pred_depth: (B, H, W) predicted depth, > 0 (mm).
        gt_depth: (B, H, W) ground-truth depth (mm), > 0 inside the mask.
        mask: (B, H, W) bool.
        variance_focus: λ in [0, 1]; 0.6 as in the benchmark.

    Returns:
        0-d tensor.
    """
    if pred_depth.shape != gt_depth.shape:
        raise ValueError(f"silog_loss: pred {tuple(pred_depth.shape)} and gt {tuple(gt_depth.shape)} differ")
    mask = _check_mask(mask, gt_depth.shape, "silog_loss")
    if not mask.any():
        return _zero_like(pred_depth)
    g = torch.log(pred_depth[mask]) - torch.log(gt_depth[mask])
    radicand = (g**2).mean() - variance_focus * g.mean() ** 2
    return 10.0 * torch.sqrt(radicand.clamp_min(1e-12))


def cosine_normal_loss(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Mean ``1 - cos`` angle between predicted and ground-truth normals over masked pixels.

    Both fields are L2-normalised over channels (``eps`` guards zero vectors); the cosine is clamped to
    [-1, 1]. The loss lies in [0, 2].

    Args:
        pred: (B, 3, H, W) predicted normals (any length).
        gt: (B, 3, H, W) ground-truth normals.
        mask: (B, H, W) bool.

    Returns:
        0-d tensor.
    """
    if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"cosine_normal_loss: expected two (B, 3, H, W) tensors, got {tuple(pred.shape)}, "
            f"{tuple(gt.shape)}"
        )
    mask = _check_mask(mask, (pred.shape[0], *pred.shape[2:]), "cosine_normal_loss")
    if not mask.any():
        return _zero_like(pred)
    cos = (unit_vectors(pred, dim=1, eps=eps) * unit_vectors(gt, dim=1, eps=eps)).sum(dim=1).clamp(-1.0, 1.0)
    return (1.0 - cos[mask]).mean()


def disparity_normal_loss(
    disparities: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    mask: torch.Tensor,
    weights: Sequence[float],
    pool: int = 4,
) -> torch.Tensor:
    """Weighted sum over outputs of the cosine error of the normals *differentiated from* each disparity map.

    Each output is aligned to the ground-truth disparity by its per-sample least-squares affine map
    (:func:`affine_align`, so the term scores shape, not level), lifted to depth with the sample's thin-lens
    ``Z = a / (d - b)`` (:func:`dpface_lib.geometry.disparity_to_depth`), averaged over ``pool`` × ``pool``
    blocks that lie wholly inside the mask, back-projected with the pooled ``K`` and differentiated into
    normals (:func:`dpface_lib.geometry.normals_from_depth`); the loss is :func:`cosine_normal_loss` against
    the block-averaged ground-truth normals. Pooling matters: a face's relief is under 1 px of disparity, so
    the pixel-to-pixel slope of a predicted map is mostly noise, and at ``pool = 1`` the term drives a
    network to a flat output. A disparity model with no normal output thus gets slope supervision like the
    one a normal head gives NNet (Kusupati et al., CVPR 2020, tie depth and normals with a consistency
    term in the same spirit).

    Args:
        disparities: (B, N, H, W) predicted disparities in px (N outputs, loss-weight order).
        batch: holds ``disparity`` (B, H, W) px, ``normal`` (B, 3, H, W), ``K`` (B, 3, 3) of the crop and
            the thin-lens ``a`` (B,) px·mm, ``b`` (B,) px.
        mask: (B, H, W) bool.
        weights: N weights, one per output.
        pool: block size in px (H and W need not be multiples: the last partial block is dropped).

    Returns:
        0-d tensor in [0, 2].
    """
    if disparities.ndim != 4 or len(weights) != disparities.shape[1]:
        raise ValueError(
            f"disparity_normal_loss: expected (B, N, H, W) disparities with N = {len(weights)} weights, got "
            f"{tuple(disparities.shape)}"
        )
    gt, gt_normal = batch["disparity"], batch["normal"]
    mask = _check_mask(mask, gt.shape, "disparity_normal_loss")
    defined = mask & (gt_normal.square().sum(dim=1) > 0.5)
    if not defined.any():
        return _zero_like(disparities)
    # pool x pool blocks wholly inside the mask; depth and normals averaged over each block
    block = -F.max_pool2d(-defined[:, None].to(disparities.dtype), pool, pool)[:, 0] > 0.5
    K = scale_intrinsics(batch["K"], 1.0 / pool)
    target = F.avg_pool2d(gt_normal, pool, pool)
    total = _zero_like(disparities)  # stays connected to the prediction when no block is scored
    for i, weight in enumerate(weights):
        depth = disparity_to_depth(affine_align(disparities[:, i], gt, mask), batch["a"], batch["b"])
        depth = F.avg_pool2d(torch.where(defined, depth, torch.zeros_like(depth))[:, None], pool, pool)[:, 0]
        normal = normals_from_depth(depth, K, block)  # pixels outside `block` are neither used nor scored
        ok = block & (normal.square().sum(dim=1) > 0.5)
        if ok.any():
            total = total + float(weight) * cosine_normal_loss(normal, target, ok)
    return total


def model_loss(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    loss_terms: Mapping[str, float],
    loss_weights: Sequence[float],
    variance_focus: float = 0.6,
) -> dict[str, torch.Tensor]:
    """Total training loss of a model from its output dict, as ``Σ_k λ_k loss_k``.

    Args:
        outputs: the model's output dict (``disparities``, ``depth``, ``normal``).
        batch: the batch (``disparity``, ``depth``, ``normal``, ``mask``).
        loss_terms: ``{"smooth_l1" | "affine_l1" | "silog" | "cosine": λ}`` (a model's ``loss_terms``, plus
            ``affine_l1`` where the training config asks for it).
        loss_weights: per-output weights for ``smooth_l1`` and ``affine_l1`` (a model's ``loss_weights``).
        variance_focus: λ of ``silog`` (BTS exposes it as ``model.variance_focus``).

    Returns:
        ``{"loss": total, <term>: value, ...}``.
    """
    mask = batch["mask"].bool()
    parts: dict[str, torch.Tensor] = {}
    for term, lam in loss_terms.items():
        if term == "smooth_l1":
            value = smooth_l1_disparity(outputs["disparities"], batch["disparity"], mask, loss_weights)
        elif term == "affine_l1":
            value = affine_invariant_l1(outputs["disparities"], batch["disparity"], mask, loss_weights)
        elif term == "silog":
            value = silog_loss(outputs["depth"], batch["depth"], mask & (batch["depth"] > 0), variance_focus)
        elif term == "cosine":
            value = cosine_normal_loss(outputs["normal"], batch["normal"], mask)
        elif term == "disparity_normal":
            value = disparity_normal_loss(outputs["disparities"], batch, mask, loss_weights)
        else:
            raise ValueError(
                f"unknown loss term {term!r}; known: smooth_l1, affine_l1, disparity_normal, silog, cosine"
            )
        parts[term] = float(lam) * value
    parts["loss"] = sum(parts.values(), torch.zeros((), device=mask.device))
    return parts
