"""Milliseconds per sample of each metric family: the kit's one implementation (per-sample numpy in/out, and
torch batches on CPU and CUDA when present) against the former numpy loop (tests/metric_oracles.py), and
optionally against Google's TensorFlow reference, measured side by side in one run.

    .venv/bin/python benchmarks/bench_metrics.py [--samples 16] [--height 384 --width 512] [--batch 8]
    .venv/bin/python benchmarks/bench_metrics.py --reference tf --reference-python /opt/tfenv/bin/python \
        --reference-file get_metrics.py

``--reference tf`` (optional, documented in docs/benchmarks.md): REFERENCE_PYTHON is a Python with
tensorflow-cpu installed in a side environment (the kit does not depend on it) and REFERENCE_FILE a copy of
``dual_pixels/eval/get_metrics.py`` from google-research. The same samples go to
``reference_metrics_runner.py`` in that Python; the script prints both times, the ratio and the largest
difference of each value (wmae = ai1, wrmse = ai2, spearman).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from metric_oracles import affine_midrank, depth_oracle, normal_oracle  # noqa: E402

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
#: The former numpy loop of each family (one sample at a time), now the tests' oracle.
ORACLES = {
    "affine (ai1, ai2, spearman)": lambda p, g, m: affine_midrank(p, g, m),
    "depth (absrel .. delta3)": lambda p, g, m: depth_oracle(p[None], g[None], m[None]),
    "normals (deg)": lambda p, g, m: normal_oracle(p[None], g[None], m[None]),
}


def median_ms(fn, arrays, n: int, repeats: int = 3) -> float:
    """Median over `repeats` passes of the per-sample time (ms) of fn on one sample at a time."""
    fn(*(a[0] for a in arrays))  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            fn(*(a[i] for a in arrays))
        runs.append((time.perf_counter() - start) / n * 1000)
    return statistics.median(runs)


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


def compare_with_reference(data: dict, args) -> None:
    """Google's TensorFlow reference on the same samples, in the side Python; times and differences."""
    pred, gt = data["pred_disp"].astype(np.float32), data["gt_disp"].astype(np.float32)
    weight = data["mask"].astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.npz"
        np.savez(path, pred=pred, gt=gt, weight=weight)
        runner = Path(__file__).with_name("reference_metrics_runner.py")
        result = subprocess.run([args.reference_python, str(runner), args.reference_file, str(path)],
                                check=True, capture_output=True, text=True)
    reference = json.loads(result.stdout.strip().splitlines()[-1])
    ours_ms = median_ms(affine_invariant_metrics, [pred, gt, weight], len(gt))
    kit = affine_invariant_metrics(pred, gt, weight)
    print(f"\nGoogle's reference (TensorFlow, float32) vs the kit on the same {len(gt)} samples of "
          f"{gt.shape[1]}x{gt.shape[2]}:")
    print(f"  reference {reference['seconds'] * 1000:.1f} ms/sample, kit {ours_ms:.1f} ms/sample: "
          f"kit {reference['seconds'] * 1000 / ours_ms:.1f}x faster")
    for ours, theirs in (("ai1", "wmae"), ("ai2", "wrmse"), ("spearman", "spearman")):
        diff = np.abs(np.asarray(kit[ours]) - np.asarray(reference["values"][theirs]))
        rel = diff / np.maximum(np.abs(np.asarray(reference["values"][theirs])), 1e-12)
        print(f"  {ours:8s} vs {theirs:8s}: max |difference| {diff.max():.2e} (relative {rel.max():.2e})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--reference", choices=["tf"], default=None)
    parser.add_argument("--reference-python", default=None, help="python of the side env with tensorflow")
    parser.add_argument("--reference-file", default=None, help="a copy of get_metrics.py")
    args = parser.parse_args(argv)
    if args.reference and not (args.reference_python and args.reference_file):
        parser.error("--reference tf needs --reference-python and --reference-file")
    data = make_data(args.samples, args.height, args.width)
    threads = torch.get_num_threads()
    configs = [("cpu", 1)] + ([("cpu", threads)] if threads > 1 else [])
    configs += [("cuda", threads)] if torch.cuda.is_available() else []
    print(f"{args.samples} samples of {args.height}x{args.width}; ms per sample, median of 3 passes "
          f"(ratio = former numpy loop / kit); torch batches of {args.batch}")
    names = ["kit, numpy in"] + [f"torch {d}" + (f" {t}thr" if d == "cpu" else "") for d, t in configs]
    header = f"{'metric family':30s} {'numpy loop':>11s}" + "".join(f" {n:>14s} {'ratio':>6s}" for n in names)
    print(header)
    print("-" * len(header))
    for name, (fn, keys) in FAMILIES.items():
        arrays = [data[k] for k in keys]
        loop_ms = median_ms(ORACLES[name], arrays, args.samples)
        kit_ms = median_ms(fn, arrays, args.samples)
        line = f"{name:30s} {loop_ms:11.2f} {kit_ms:14.2f} {loop_ms / kit_ms:5.1f}x"
        for device, n_threads in configs:
            torch_ms = time_torch(fn, arrays, args.samples, args.batch, device, n_threads)
            line += f" {torch_ms:14.2f} {loop_ms / torch_ms:5.1f}x"
        torch.set_num_threads(threads)
        print(line)
    if args.reference:
        compare_with_reference(data, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
