"""Cost of :mod:`dpface_lib.models.safeconv`'s float32 fallback check in a training step.

For each model, one ``tiny`` network at the teaching crop (128×128, batch 8, the synthetic inputs of
``bench_models.synthetic_batch``) takes forward + backward steps under CPU bfloat16 autocast twice over,
alternately: with the guarded convolutions that :func:`dpface_lib.models.build_model` returns, and with the
same modules turned back into plain ``nn.Conv2d`` / ``nn.Conv3d`` (same weights). Prints the median step of
each and their ratio. Usage::

    python benchmarks/bench_safeconv.py [--models dpnet nnet] [--steps 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_models import synthetic_batch  # benchmarks/ is the script's folder, first on sys.path
from torch import nn

from dpface_lib.models import build_model
from dpface_lib.models.safeconv import Conv2d, Conv3d, guard_convs


def unguard(model: nn.Module) -> None:
    """The inverse of :func:`guard_convs`: guarded convolutions back to plain ones, in place."""
    plain = {Conv2d: nn.Conv2d, Conv3d: nn.Conv3d}
    for module in model.modules():
        if type(module) in plain:
            module.__class__ = plain[type(module)]


def step_seconds(model: nn.Module, batch: dict[str, torch.Tensor], steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
        loss = sum(v.float().mean() for k, v in out.items() if k in ("disparities", "disparity", "normal"))
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dpnet", "nnet", "stereonet"])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch_size, args.size, args.size, torch.device("cpu"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.size}x{args.size}, bf16 autocast, median step of {args.steps} x {args.rounds} rounds")
    print(f"{'model':<12} {'convs':>5} {'guarded s':>10} {'plain s':>9} {'ratio':>6}")
    for name in args.models:
        model = build_model(name, profile="tiny").train()
        convs = sum(isinstance(m, nn.Conv2d | nn.Conv3d) for m in model.modules())
        guarded, plain = [], []
        for _ in range(args.rounds):
            guard_convs(model)
            guarded.append(step_seconds(model, batch, args.steps))
            unguard(model)
            plain.append(step_seconds(model, batch, args.steps))
        g, p = statistics.median(guarded), statistics.median(plain)
        print(f"{name:<12} {convs:>5} {g:>10.4f} {p:>9.4f} {g / p:>6.3f}")


if __name__ == "__main__":
    main()
