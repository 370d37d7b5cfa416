"""Trilinear cost-volume upsampling: ``F.interpolate`` against ``resample.upsample_volume``, side by side.

Times forward + backward of the regression upsampling of the cost-volume models (StereoDPNet, PSMNet, NNet
in the ``tiny`` profile: (B, 1, 8, 32, 32) -> (B, 1, 32, 128, 128)), interleaving the two so that a busy
machine slows both alike, and prints the medians and their ratio. Usage::

    python benchmarks/bench_resample.py [--batch 8] [--repeats 15] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from dpface_lib.models.resample import upsample_volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    size = (32, 128, 128)
    volume = torch.randn(args.batch, 1, 8, 32, 32, requires_grad=True)
    weight = torch.randn(args.batch, 1, *size)
    methods = {
        "F.interpolate(trilinear)": lambda v: F.interpolate(
            v, size=size, mode="trilinear", align_corners=True
        ),
        "upsample_volume": lambda v: upsample_volume(v, size, True),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for repeat in range(args.repeats + 2):
        for name, fn in methods.items():
            start = time.perf_counter()
            (fn(volume) * weight).sum().backward()
            if repeat >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
            volume.grad = None
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:26s} forward+backward median {1e3 * m:7.1f} ms")
    ratio = medians["F.interpolate(trilinear)"] / medians["upsample_volume"]
    print(f"speed-up {ratio:.2f}x (batch {args.batch}, {args.threads} threads, {args.repeats} repeats)")


if __name__ == "__main__":
    main()
