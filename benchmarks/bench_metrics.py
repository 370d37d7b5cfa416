"""Seconds per 1,000 samples of each metric family at 192 x 256 (H x W): numpy one sample at a time vs
torch batched (CPU with 1 thread and with the default thread count, and CUDA when present), measured side by
side in one run. On a busy machine the multi-threaded CPU column suffers most (OpenMP threads wait for cores).

    .venv/bin/python benchmarks/bench_metrics.py [--samples 64] [--batch 32] [--height 192 --width 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dpface_lib.metrics import affine_invariant_metrics, depth_metrics, normal_metrics


def make_data(n: int, height: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A face-like ellipsoid depth (mm) with a noisy prediction, disparities, normals and masks."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    r2 = ((ys - height / 2) / (0.45 * height)) ** 2 + ((xs - width / 2) / (0.35 * width)) ** 2
    mask = np.broadcast_to(r2 < 1, (n, height, width)).copy()
    depth = 800.0 - 80.0 * np.sqrt(np.clip(1 - r2, 0, None)) + rng.normal(0, 1, (n, 1, 1))
    depth = np.broadcast_to(depth, (n, height, width)).copy()
    pred_depth = depth * (1 + rng.normal(0, 0.01, depth.shape))
    a, b = -25000.0, 31.0
    normal = rng.normal(size=(n, 3, height, width))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    pred_normal = normal + rng.normal(0, 0.2, normal.shape)
    return {"gt_disp": a / depth + b, "pred_disp": 1.7 * (a / pred_depth + b) - 0.3, "mask": mask,
            "gt_depth": depth, "pred_depth": pred_depth, "gt_normal": normal, "pred_normal": pred_normal}


FAMILIES = {
    "affine (ai1, ai2, spearman)": (affine_invariant_metrics, ("pred_disp", "gt_disp", "mask")),
    "depth (absrel .. delta3)": (depth_metrics, ("pred_depth", "gt_depth", "mask")),
    "normals (deg)": (normal_metrics, ("pred_normal", "gt_normal", "mask")),
}


def time_numpy(fn, arrays, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(*(a[i] for a in arrays))
    return (time.perf_counter() - start) / n * 1000


def time_torch(fn, arrays, n: int, batch: int, device: str, threads: int) -> float:
    torch.set_num_threads(threads)
    tensors = [torch.as_tensor(a, device=device) for a in arrays]
    fn(*(t[:2] for t in tensors))  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, n, batch):
        out = fn(*(t[i:i + batch] for t in tensors))
    if device == "cuda":
        torch.cuda.synchronize()
    del out
    return (time.perf_counter() - start) / n * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args(argv)
    data = make_data(args.samples, args.height, args.width)
    threads = torch.get_num_threads()
    configs = [("cpu", 1)] + ([("cpu", threads)] if threads > 1 else [])
    configs += [("cuda", threads)] if torch.cuda.is_available() else []
    print(f"{args.samples} samples of {args.height}x{args.width}, torch batch {args.batch}; "
          "seconds per 1,000 samples (speed-up = numpy loop / torch batched)")
    names = [f"torch {d}" + (f" {t}thr" if d == "cpu" else "") for d, t in configs]
    header = f"{'metric family':30s} {'numpy loop':>11s}"
    header += "".join(f" {n:>14s} {'speed-up':>9s}" for n in names)
    print(header)
    print("-" * len(header))
    for name, (fn, keys) in FAMILIES.items():
        arrays = [data[k] for k in keys]
        numpy_s = time_numpy(fn, arrays, args.samples)
        line = f"{name:30s} {numpy_s:11.2f}"
        for device, n_threads in configs:
            torch_s = time_torch(fn, arrays, args.samples, args.batch, device, n_threads)
            line += f" {torch_s:14.2f} {numpy_s / torch_s:8.1f}x"
        torch.set_num_threads(threads)
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
