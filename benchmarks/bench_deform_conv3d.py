"""Speed and memory of the compiled 3D deformable convolution against the pure-PyTorch reference (ANM shapes)
and against torchvision's deform_conv2d on the same 2D work (kernel depth 1, volume depth 1).

Rows: "compiled" keeps the forward's sampled columns for the weight gradient (dpface_kernels
SAVE_COLUMNS_MAX_BYTES); "resampled" is the same op with saving off, so the backward samples them again.
The "roofline" line compares the forward's achieved GFLOP/s with a plain torch.matmul of the same products.

Prints, per case, the median wall time of a forward and of a forward+backward pass, the peak memory of one
forward+backward, and the ratios reference / compiled and compiled / torchvision, all measured in one run.

Peak memory:
  cuda: torch.cuda.max_memory_allocated() during one forward+backward, minus the memory allocated before it.
  cpu:  in a fresh spawned process that allocates the inputs, the peak resident set size is reset
        (/proc/self/clear_refs) and one forward+backward runs; reported as peak RSS (VmHWM) minus the RSS
        before the pass. It counts every buffer the pass touches (column buffers, autograd-saved tensors,
        allocator slack), so it bounds the op's working memory from above; it is not an allocator figure.

Builds side by side (--builds NAME=DIR ...): each DIR holds another build of the `dpface_kernels` package
(e.g. one compiled with -fopenmp from an older commit). The compiled op's forward+backward on the two ANM
layers is timed in a fresh process per build, with torch.set_num_threads(1) and (2), the builds taking turns
over --rounds rounds; the table gives the median over rounds and each build's ratio to the first.

Usage: python benchmarks/bench_deform_conv3d.py [--device cpu|cuda] [--batch 1] [--hw 48x64] [--repeats 3]
       [--no-reference] [--no-memory] [--threads N]
       python benchmarks/bench_deform_conv3d.py --builds openmp=/tmp/old pool=kernels [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import dpface_kernels
import torch
import torchvision
from dpface_kernels import reference


def make_inputs(batch, c_in, c_out, depth, kernel_depth, h, w, device, seed=0, requires_grad=True):
    """Random ANM-like problem: offsets ~ N(0, 1) voxels, no modulation mask, bias."""
    gen = torch.Generator().manual_seed(seed)
    k = kernel_depth * 9
    tensors = {
        "input": torch.randn(batch, c_in, depth, h, w, generator=gen),
        "offset": torch.randn(batch, 3 * k, depth, h, w, generator=gen),
        "weight": torch.randn(c_out, c_in, kernel_depth, 3, 3, generator=gen) * 0.05,
        "bias": torch.randn(c_out, generator=gen),
    }
    if kernel_depth == 1:
        tensors["offset"].view(batch, k, 3, depth, h, w)[:, :, 0] = 0  # no t shift: equal to 2D work
    return {name: t.to(device).requires_grad_(requires_grad) for name, t in tensors.items()}


def run_3d(fn: Callable, t: dict, padding) -> torch.Tensor:
    return fn(t["input"], t["offset"], t["weight"], t["bias"], None, 1, padding, 1, 1, 1)


def run_2d_torchvision(t: dict) -> torch.Tensor:
    x = t["input"][:, :, 0]
    n, _, h, w = x.shape
    offset = t["offset"].view(n, 9, 3, h, w)[:, :, 1:].reshape(n, 18, h, w)  # (dh, dw) per tap
    return torchvision.ops.deform_conv2d(x, offset, t["weight"][:, :, 0], t["bias"], padding=1)


def step(forward: Callable, t: dict, backward: bool) -> None:
    y = forward(t)
    if backward:
        y.backward(torch.ones_like(y))


def timed(forward: Callable, t: dict, backward: bool, repeats: int, device: str) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        for v in t.values():
            v.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(forward, t, backward)
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_resampled(t: dict, padding) -> torch.Tensor:
    """The compiled op with column saving off: the backward samples the columns again."""
    budget = dpface_kernels.SAVE_COLUMNS_MAX_BYTES
    dpface_kernels.SAVE_COLUMNS_MAX_BYTES = 0
    try:
        return run_3d(dpface_kernels.deform_conv3d, t, padding)
    finally:
        dpface_kernels.SAVE_COLUMNS_MAX_BYTES = budget


FORWARDS = {
    "compiled": lambda pad: lambda t: run_3d(dpface_kernels.deform_conv3d, t, pad),
    "resampled": lambda pad: lambda t: run_resampled(t, pad),
    "reference": lambda pad: lambda t: run_3d(reference.deform_conv3d, t, pad),
    "torchvision": lambda pad: run_2d_torchvision,
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _rss_probe(impl: str, shape: tuple, threads: int | None) -> float:
    """In a fresh process: peak RSS growth (MiB) of one forward+backward (Linux /proc only)."""
    if threads:
        torch.set_num_threads(threads)
    t = make_inputs(*shape, device="cpu")
    pad = (1 if shape[4] == 3 else 0, 1, 1)
    forward = FORWARDS[impl](pad)
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    except OSError:
        return float("nan")
    start = _status_kib("VmRSS")
    step(forward, t, backward=True)
    return (_status_kib("VmHWM") - start) / 1024


def peak_memory_mib(impl: str, shape: tuple, device: str, threads: int | None) -> float:
    if device == "cuda":
        t = make_inputs(*shape, device="cuda")
        pad = (1 if shape[4] == 3 else 0, 1, 1)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(FORWARDS[impl](pad), t, backward=True)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_rss_probe, (impl, shape, threads))


def measure(impl: str, shape: tuple, args) -> dict:
    pad = (1 if shape[4] == 3 else 0, 1, 1)
    t = make_inputs(*shape, device=args.device)
    forward = FORWARDS[impl](pad)
    result = {
        "fwd": timed(forward, t, False, args.repeats, args.device),
        "fwd+bwd": timed(forward, t, True, args.repeats, args.device),
    }
    del t
    result["mem"] = peak_memory_mib(impl, shape, args.device, args.threads) if args.memory else float("nan")
    return result


def matmul_roofline(shape: tuple, device: str, repeats: int) -> tuple[float, float]:
    """(GFLOP count, median seconds) of the forward's matrix products done by a plain torch.matmul: the
    (O, C*K) weight times N (C*K, L) column blocks. This is the practical ceiling on this device: the
    deformable forward does the same products plus the trilinear sampling."""
    batch, c_in, c_out, depth, kd, h, w = shape
    taps = kd * 9
    length = depth * h * w
    weight = torch.randn(c_out, c_in * taps, device=device)
    columns = torch.randn(batch, c_in * taps, length, device=device)
    times = []
    for i in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(weight, columns)
        if device == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append(time.perf_counter() - start)
    return 2 * batch * c_out * c_in * taps * length / 1e9, statistics.median(times)


def report(title: str, shape: tuple, rows: dict, baseline: str, other: str, ratio_name: str) -> None:
    batch, c_in, c_out, depth, kd, h, w = shape
    print(f"\n{title}: input ({batch}, {c_in}, {depth}, {h}, {w}) -> {c_out} channels, kernel {kd}x3x3")
    print(f"  {'implementation':<12} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9}")
    for name, r in rows.items():
        print(f"  {name:<12} {r['fwd'] * 1e3:9.1f} {r['fwd+bwd'] * 1e3:11.1f} {r['mem']:9.1f}")
    if other in rows and baseline in rows:
        a, b = rows[other], rows[baseline]
        print(
            f"  {ratio_name}: fwd {a['fwd'] / b['fwd']:.2f}x, fwd+bwd {a['fwd+bwd'] / b['fwd+bwd']:.2f}x, "
            f"memory {a['mem'] / b['mem']:.2f}x"
        )


ANM_LAYERS = (("DCN1", 35, 64), ("DCN2", 64, 64))


def probe_build(args) -> dict:
    """In the process that imported the build under test: fwd+bwd seconds of the compiled op per ANM layer."""
    h, w = (int(v) for v in args.hw.lower().split("x"))
    times = {}
    for name, c_in, c_out in ANM_LAYERS:
        shape = (args.batch, c_in, c_out, 4, 3, h, w)
        t = make_inputs(*shape, device="cpu")
        times[name] = timed(FORWARDS["compiled"]((1, 1, 1)), t, True, args.repeats, "cpu")
    return {"library": dpface_kernels._C.__file__, "threads": torch.get_num_threads(), "fwd+bwd": times}


def compare_builds(args) -> None:
    """Each build in its own process (PYTHONPATH=DIR); builds and thread counts take turns in each round."""
    builds = dict(spec.split("=", 1) for spec in args.builds)
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.rounds):
        for threads in (1, 2):
            for name, folder in builds.items():
                env = {**os.environ, "PYTHONPATH": os.path.abspath(folder)}
                cmd = [sys.executable, __file__, "--probe", "--threads", str(threads), "--hw", args.hw,
                       "--batch", str(args.batch), "--repeats", str(args.repeats)]  # fmt: skip
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
                result = json.loads(out.strip().splitlines()[-1])
                if not result["library"].startswith(os.path.abspath(folder)):
                    raise SystemExit(f"--builds {name}={folder}: loaded {result['library']} instead")
                runs.setdefault((name, threads), []).append(result)
    first = next(iter(builds))
    print(f"\nCPU kernel builds, fwd+bwd ms (median of {args.rounds} rounds of {args.repeats}-call medians)")
    for name in builds:
        print(f"  {name}: {runs[(name, 1)][0]['library']}")
    print(f"  {'threads':>7} {'layer':<5} " + " ".join(f"{name:>9}" for name in builds)
          + "".join(f" {name + '/' + first:>14}" for name in list(builds)[1:]))  # fmt: skip
    for threads in (1, 2):
        for layer, _, _ in ANM_LAYERS:
            ms = {n: 1e3 * statistics.median(r["fwd+bwd"][layer] for r in runs[(n, threads)]) for n in builds}
            ratios = "".join(f" {ms[n] / ms[first]:>13.2f}x" for n in list(builds)[1:])
            print(f"  {threads:>7} {layer:<5} " + " ".join(f"{ms[n]:9.1f}" for n in builds) + ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hw", default="48x64", help="quarter-resolution feature size HxW (192x256 input)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--builds", nargs="+", metavar="NAME=DIR", help="compare builds of dpface_kernels")
    parser.add_argument("--rounds", type=int, default=3, help="--builds: turns each build gets")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # one build, JSON out
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.builds:
        for spec in args.builds:
            if "=" not in spec or not os.path.isdir(os.path.join(spec.split("=", 1)[1], "dpface_kernels")):
                parser.error(f"--builds {spec}: expected NAME=DIR with a dpface_kernels package in DIR")
        compare_builds(args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    if not dpface_kernels.has_compiled():
        parser.error("dpface_kernels is not compiled (run `make kernels`); nothing to compare")
    if args.probe:
        print(json.dumps(probe_build(args)))
        return 0
    h, w = (int(v) for v in args.hw.lower().split("x"))
    device_name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"deform_conv3d benchmark on {device_name}; torch {torch.__version__}, torchvision "
        f"{torchvision.__version__}; median of {args.repeats}"
    )

    for name, c_in, c_out in ANM_LAYERS:
        name = f"ANM {name}"
        shape = (args.batch, c_in, c_out, 4, 3, h, w)
        rows = {"compiled": measure("compiled", shape, args), "resampled": measure("resampled", shape, args)}
        if args.reference:
            rows["reference"] = measure("reference", shape, args)
        report(name, shape, rows, "compiled", "reference", "reference / compiled")
        gflop, matmul_s = matmul_roofline(shape, args.device, args.repeats)
        achieved, ceiling = gflop / rows["compiled"]["fwd"], gflop / matmul_s
        print(
            f"  roofline: forward {achieved:.1f} GFLOP/s = {100 * achieved / ceiling:.0f}% of torch.matmul "
            f"on the same products ({ceiling:.1f} GFLOP/s, {matmul_s * 1e3:.1f} ms; the rest is sampling)"
        )

    # Same 2D work: the 4 depth slices folded into the batch, kernel depth 1.
    shape = (args.batch * 4, 64, 64, 1, 1, h, w)
    rows = {"compiled": measure("compiled", shape, args), "torchvision": measure("torchvision", shape, args)}
    report(
        "2D work (kT = T = 1) vs torchvision.ops.deform_conv2d",
        shape,
        rows,
        "torchvision",
        "compiled",
        "compiled / torchvision",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
