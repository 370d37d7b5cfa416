r"""The simulator held against real DP captures: blur models and sensor noise (``dpface realism``).

Blur models. Each Pixel 4 scene of Xin et al. (ICCV 2021, :mod:`dpface_lib.datasets_real`) comes with its
all-in-focus image and a defocus map (an affine map of the signed blur size). For every blur model of the
simulator (:data:`dpface_lib.simulate.optics.PSF_MODELS`, plus ``calibrated`` with the set's own kernels,
averaged over the tiles) the scene is rendered by the simulator's own layered, occlusion-aware defocus
(:func:`dpface_lib.simulate.optics.defocus_dp`: premultiplied layers composited back to front, the
multiplane model of Xin et al.). The map from the ground-truth defocus to the model's signed CoC is fitted
per scene against the captured pair: the captured pair's disparity (block matcher) gives the affine map
ground truth -> disparity ``d = s g + t``, the model's own ``k`` turns it into a CoC ``c = d / k``
(:func:`~dpface_lib.simulate.optics.disparity_per_coc`), and a short search over a common factor of ``c``
keeps the best one for each model, so every model gets its best blur size. Each rendered view then gets a
smooth gain (box-filtered ratio captured / rendered, the vignetting), and rendered and captured views are
compared by PSNR (peak 1) over the labelled pixels: of each view and of the difference image ``L - R``, the
DP signal itself. Higher is better.

Noise. In flat blocks of a raw view (before any gain correction), the variance of the high-pass residual
``x - box3(x)`` (``8/9`` of the pixel variance for white noise) is binned against the block mean and fitted
by ``var = gain * mean + floor`` (Foi et al., "Practical Poissonian-Gaussian noise modeling", IEEE TIP 2008).
The simulator's default (:func:`dpface_lib.simulate.optics.sensor_noise`) is ``mean / full_well +
read_sigma^2``; :func:`noise_comparison` puts the two side by side at the captures' own exposure levels.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dpface_lib.classical import BlockMatcher, box_filter
from dpface_lib.metrics import fit_affine

__all__ = ["BLUR_MODELS", "fit_noise", "flat_block_noise", "noise_comparison", "psnr", "render_scene",
           "scene_realism"]

BLUR_MODELS = ("soft", "half-disc", "butterworth", "translating-disc", "calibrated")
#: factors of the fitted CoC tried for every model (its best one is kept)
COC_FACTORS = (0.7, 1.0, 1.4)


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None, peak: float = 1.0) -> float:
    """PSNR (dB) of ``a`` against ``b`` over ``mask`` (all pixels if ``None``); ``peak``: signal range."""
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = float(diff[mask].mean() if mask is not None else diff.mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def render_scene(sharp: np.ndarray, coc: np.ndarray, model: str, kernels: np.ndarray | None = None,
                 workdir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left and right views ``(H, W)`` of a grey all-in-focus image ``sharp`` ``(H, W)`` with signed CoC
    ``coc`` ``(H, W)`` (px, kit axis = rows) under blur ``model`` (:data:`BLUR_MODELS`). ``calibrated`` needs
    ``kernels`` ``(2, ..., k, k)`` (left, right; averaged over the tiles) and a ``workdir`` for them."""
    from dpface_lib.simulate.optics import defocus_dp

    psf = model
    if model == "calibrated":
        if kernels is None or workdir is None:
            raise ValueError("the calibrated blur model needs the set's kernels and a work folder")
        names = []
        for side, kernel in zip(("left", "right"), kernels, strict=True):
            path = workdir / f"kernels_{side}.npy"
            np.save(path, kernel.reshape(-1, *kernel.shape[-2:]).astype(np.float32))
            names.append(str(path))
        psf = "calibrated=" + ",".join(names)
    radiance = np.repeat(np.asarray(sharp, np.float32)[..., None], 3, axis=2)
    left, right = defocus_dp(radiance, np.asarray(coc, np.float32), psf=psf)
    return left[..., 1].numpy(), right[..., 1].numpy()


def _gain_matched(rendered: np.ndarray, captured: np.ndarray, window: int) -> np.ndarray:
    """``rendered`` times the box-filtered ratio captured / rendered (the views' smooth gain)."""
    r, c = (torch.from_numpy(np.asarray(x, np.float32))[None, None] for x in (rendered, captured))
    gain = box_filter(c, window) / box_filter(r, window).clamp_min(1e-4)
    return (r * gain)[0, 0].numpy()


def scene_realism(item: dict[str, Any], models: tuple[str, ...] = BLUR_MODELS,
                  matcher: BlockMatcher | None = None, gain_window: int = 51,
                  factors: tuple[float, ...] = COC_FACTORS) -> list[dict[str, Any]]:
    """Rows ``{scene, model, factor, coc_scale, coc_offset, psnr_left, psnr_right, psnr_lr}`` of one
    ``pixel4-defocus`` item (any resolution; ``gain_window`` px odd), the best of ``factors`` per model."""
    from dpface_lib.simulate.optics import disparity_per_coc

    left, right = item["left"][0].numpy(), item["right"][0].numpy()
    target, mask = item["inverse_depth"].numpy(), item["mask"].numpy().astype(bool)
    sharp = item["all_in_focus"][0].numpy()
    sharp = sharp * (left[mask].mean() / max(float(sharp[mask].mean()), 1e-6))
    matcher = matcher or BlockMatcher(-2.0, 6.0, step=0.25, window=15, smooth_sigma=8.0)
    batch = {"left": item["left"][None], "right": item["right"][None], "a": torch.ones(1),
             "b": torch.zeros(1)}
    disparity = matcher(batch)["disparity"][0].numpy()
    s, t = fit_affine(target, disparity, mask.astype(np.float32), robust=True)  # ground truth -> disparity
    filled = np.where(mask, target, np.median(target[mask]))  # unlabelled pixels: the scene's median
    inner = mask.copy()
    border = 16
    inner[:border], inner[-border:], inner[:, :border], inner[:, -border:] = False, False, False, False
    kernels = item["kernels"].numpy() if "kernels" in item else None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            # the calibrated kernels' own k: their centroid separation per kernel diameter
            k = _kernel_k(kernels) if model == "calibrated" else disparity_per_coc(psf=model)
            best = None
            for factor in factors:
                coc = factor * (s * filled + t) / k
                rl, rr = render_scene(sharp, coc, model, kernels, Path(tmp))
                rl, rr = _gain_matched(rl, left, gain_window), _gain_matched(rr, right, gain_window)
                row = {"scene": item["sample_id"], "model": model, "factor": factor,
                       "coc_scale": s * factor / k, "coc_offset": t * factor / k,
                       "psnr_left": psnr(rl, left, inner), "psnr_right": psnr(rr, right, inner),
                       "psnr_lr": psnr(rl - rr, left - right, inner)}
                if best is None or row["psnr_lr"] > best["psnr_lr"]:
                    best = row
            rows.append(best)
    return rows


def _kernel_k(kernels: np.ndarray) -> float:
    """Centroid separation along rows per px of kernel support diameter of the tile-mean kernels
    ``(2, ..., k, k)`` (the ``k`` the calibrated model gets from splatting them over the aperture)."""
    from dpface_lib.simulate.optics import disparity_per_coc

    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for side, kernel in zip(("left", "right"), kernels, strict=True):
            path = Path(tmp) / f"{side}.npy"
            np.save(path, kernel.reshape(-1, *kernel.shape[-2:]).astype(np.float32))
            names.append(str(path))
        return disparity_per_coc(psf="calibrated=" + ",".join(names))


# ------------------------------------------------------------------------------------------------ noise
def flat_block_noise(image: np.ndarray, block: int = 8, keep: float = 0.2,
                     bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Binned ``(means, variances)`` of the noise of a raw view ``(H, W)`` in [0, 1].

    Per ``block`` x ``block`` block: its mean, the variance of ``x - box3(x)`` times 9/8 (white noise), and
    its texture (variance of ``box3(x)``). Blocks are binned by mean (``bins`` quantile bins); in each bin
    the ``keep`` share with the least texture count as flat, and their mean residual variance is the
    bin's noise variance."""
    x = torch.from_numpy(np.asarray(image, np.float32))[None, None]
    smooth = box_filter(x, 3)
    residual = (x - smooth)[0, 0].numpy()[1:-1, 1:-1]
    smooth = smooth[0, 0].numpy()[1:-1, 1:-1]
    raw = np.asarray(image, np.float64)[1:-1, 1:-1]
    h, w = (raw.shape[0] // block) * block, (raw.shape[1] // block) * block

    def blocks(a: np.ndarray) -> np.ndarray:
        tiles = a[:h, :w].reshape(h // block, block, w // block, block).swapaxes(1, 2)
        return tiles.reshape(-1, block * block)

    means = blocks(raw).mean(1)
    noise = blocks(residual).var(1) * 9.0 / 8.0
    texture = blocks(smooth).var(1)
    edges = np.quantile(means, np.linspace(0, 1, bins + 1))
    out_m, out_v = [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (means >= lo) & (means <= hi) & (means > 0.002)
        if inside.sum() < 10:
            continue
        flat = inside & (texture <= np.quantile(texture[inside], keep))
        out_m.append(means[flat].mean())
        out_v.append(noise[flat].mean())
    return np.array(out_m), np.array(out_v)


def fit_noise(means: np.ndarray, variances: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(gain, floor)`` of ``var = gain * mean + floor`` (floor clipped at 0)."""
    design = np.stack([means, np.ones_like(means)], 1)
    gain, floor = np.linalg.lstsq(design, variances, rcond=None)[0]
    return float(gain), float(max(floor, 0.0))


def noise_comparison(means: np.ndarray, variances: np.ndarray, full_well: float = 800.0,
                     read_sigma: float = 0.004) -> pd.DataFrame:
    """Per level: the measured variance, the simulator's ``mean / full_well + read_sigma^2`` and their
    ratio (simulator / real)."""
    sim = means / full_well + read_sigma**2
    return pd.DataFrame({"mean": means, "var_real": variances, "var_sim": sim, "ratio": sim / variances})


# -------------------------------------------------------------------------------------------------- CLI
def cli(argv: list[str] | None = None) -> int:
    """``dpface realism``: render the Pixel 4 scenes through each blur model and compare with the captures;
    measure the captures' noise -> ``blur_models.csv``, ``blur_summary.csv``, ``noise.csv`` in ``--out``."""
    from dpface_lib.datasets import open_dataset
    from dpface_lib.fileio import atomic_folder

    parser = argparse.ArgumentParser(prog="dpface realism", description=cli.__doc__)
    parser.add_argument("--data-root", type=Path, required=True, help="the Pixel 4 set (pixel4-defocus)")
    parser.add_argument("--out", type=Path, required=True, help="new or empty folder for the tables")
    parser.add_argument("--downsample", type=int, default=4, help="integer area downsampling (default 4)")
    parser.add_argument("--scenes", type=int, default=None, help="only the first N scenes")
    parser.add_argument("--factors", type=float, nargs="+", default=list(COC_FACTORS),
                        help="factors of the fitted CoC tried per model (default 0.7 1 1.4)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    dataset = open_dataset(args.data_root, kind="pixel4-defocus", downsample=args.downsample)
    raw = open_dataset(args.data_root, kind="pixel4-defocus", vignetting=False)
    count = len(dataset) if args.scenes is None else min(args.scenes, len(dataset))
    rows, levels = [], []
    for i in range(count):
        rows += scene_realism(dataset[i], gain_window=2 * (101 // (2 * args.downsample)) + 1,
                              factors=tuple(args.factors))
        levels.append(flat_block_noise(raw[i]["left"][0].numpy()))
        print(f"\rrealism: {i + 1}/{count} scenes", end="", flush=True)
    print()
    table = pd.DataFrame(rows)
    summary = summarise(table)
    means = np.concatenate([m for m, _ in levels])
    variances = np.concatenate([v for _, v in levels])
    gain, floor = fit_noise(means, variances)
    noise = noise_comparison(np.array([0.05, 0.1, 0.2, 0.4]), gain * np.array([0.05, 0.1, 0.2, 0.4]) + floor)
    with atomic_folder(args.out, overwrite=args.overwrite) as out:
        table.to_csv(out / "blur_models.csv", index=False)
        summary.to_csv(out / "blur_summary.csv")
        noise.assign(gain=gain, floor=floor).to_csv(out / "noise.csv", index=False)
    print(summary.round(2).to_string())
    print(f"noise: var = {gain:.3g} * mean + {floor:.3g} (simulator: {1 / 800:.3g} * mean + {0.004**2:.3g})")
    return 0


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Blur model x scene PSNR of ``L - R`` with the mean over scenes and the rank (1 = best)."""
    wide = table.pivot(index="model", columns="scene", values="psnr_lr")
    wide["mean"] = wide.mean(axis=1)
    wide["rank"] = wide["mean"].rank(ascending=False).astype(int)
    return wide.sort_values("rank")
