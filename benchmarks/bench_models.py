"""Forward and forward+backward time and peak memory of every registered model, side by side.

Usage::

    python benchmarks/bench_models.py                       # CPU, all models, 192x256 and 576x384
    python benchmarks/bench_models.py --models psmnet,bts --sizes 192x256 --repeats 5
    python benchmarks/bench_models.py --device cuda --batch 2
    python benchmarks/bench_models.py --models stereodpnet,stereodpnet-noanm --sizes 192x256

Besides the registered models, ``VARIANTS`` names ablations measured in the same table
(``stereodpnet-noanm``: StereoDPNet without the adaptive normal module).

Sizes are H x W. 576x384 is the benchmark's training crop (0.75 of a 768x576 image, multiples of 96).
"forward" runs in eval mode under ``torch.no_grad()``; "fwd+bwd" runs in train mode and back-propagates
the model's training loss on a synthetic batch. Times are the median over ``--repeats`` runs after one
warm-up. Peak memory is the allocator peak on CUDA; on CPU it is the rise of the process's peak resident
set size (VmHWM, reset through /proc/self/clear_refs) over the resident size before the run.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import statistics
import time
from pathlib import Path

import torch

from dpface_lib.losses import model_loss
from dpface_lib.models import build_model, list_models
from dpface_lib.models.blocks import count_parameters

#: Extra rows: name -> (registered model, constructor overrides).
VARIANTS = {"stereodpnet-noanm": ("stereodpnet", {"use_anm": False})}


def synthetic_batch(batch: int, h: int, w: int, device: torch.device) -> dict:
    """Random views with the keys every model reads (plausible a, b, K, targets)."""
    left = torch.rand(batch, 3, h, w, device=device)
    right = torch.roll(left, 1, dims=2)
    k = torch.tensor([[6000.0, 0.0, w / 2], [0.0, 6000.0, h / 2], [0.0, 0.0, 1.0]], device=device)
    normal = torch.zeros(batch, 3, h, w, device=device)
    normal[:, 2] = -1.0
    return {
        "left": left, "right": right, "lrsum": (left + right) / 2,
        "disparity": torch.ones(batch, h, w, device=device),
        "depth": torch.full((batch, h, w), 850.0, device=device),
        "normal": normal, "mask": torch.ones(batch, h, w, dtype=torch.bool, device=device),
        "K": k.expand(batch, 3, 3), "a": torch.full((batch,), -25000.0, device=device),
        "b": torch.full((batch,), 30.0, device=device),
    }  # fmt: skip


try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc
    _LIBC = None


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory (MiB) of the code run inside the context."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib = device, float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            gc.collect()
            if _LIBC is not None:
                _LIBC.malloc_trim(0)  # hand freed heap back to the OS so the RSS rise is this run's
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mib = (_rss_kib("VmHWM") * 1024 - self.base) / 2**20
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model, batch, device, repeats: int, backward: bool, warmup: int = 1) -> tuple[float, float]:
    """(median seconds, peak MiB) of a forward (eval, no_grad) or a forward+backward (train) pass."""

    def step():
        if backward:
            model.train()
            out = model(batch)
            loss = model_loss(out, batch, model.loss_terms, model.loss_weights)["loss"]
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad():
                model(batch)

    for _ in range(warmup):
        step()
    times = []
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join([*list_models(), *VARIANTS]),
                        help=f"comma-separated model names (registered or {', '.join(VARIANTS)})")
    parser.add_argument("--sizes", default="192x256,576x384", help="comma-separated HxW input sizes")
    parser.add_argument("--profile", default="full", help="config profile (full = paper widths)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
    print(
        f"device={device} threads={torch.get_num_threads()} batch={args.batch} profile={args.profile} "
        f"repeats={args.repeats} torch={torch.__version__}"
    )
    columns = ["fwd s", "fwd MiB", "f+b s", "f+b MiB", "f+b/fwd"]
    print(f"{'model':<18}{'params':>9}{'H x W':>10}" + "".join(f"{c:>9}" for c in columns))
    torch.manual_seed(0)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        base, overrides = VARIANTS.get(name, (name, {}))
        model = build_model(base, profile=args.profile, **overrides).to(device)
        params = count_parameters(model) / 1e6
        for h, w in sizes:
            batch = synthetic_batch(args.batch, h, w, device)
            try:
                fwd, fwd_mem = measure(model, batch, device, args.repeats, False, args.warmup)
                fb, fb_mem = measure(model, batch, device, args.repeats, True, args.warmup)
            except (RuntimeError, ValueError) as exc:  # e.g. size not supported, out of memory
                print(f"{name:<18}{params:>8.2f}M{f'{h}x{w}':>10}  failed: {str(exc).splitlines()[0][:80]}")
                continue
            print(
                f"{name:<18}{params:>8.2f}M{f'{h}x{w}':>10}{fwd:>9.3f}{fwd_mem:>9.0f}{fb:>9.3f}{fb_mem:>9.0f}"
                f"{fb / fwd:>9.2f}"
            )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
