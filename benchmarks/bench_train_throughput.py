"""Training throughput of each model's teaching (``tiny``) profile on the CPU: samples per second and the
share of each step spent waiting for data, measured side by side in one run, in float32 and in bfloat16
mixed precision (``train.precision: bf16-mixed``, run here as ``torch.autocast``) with their ratio.

Uses the kit's own training pieces (``DPFaceModule`` with the profile's loss, optimiser and crops,
``DPFaceDataModule`` with its seeded sampler) in a plain loop, so that the time to get a batch and the
time of forward + backward + optimiser step are measured separately. Reads the teaching set from
``runs/cache`` when the pipeline has generated it, else ``data_samples/``.

    python benchmarks/bench_train_throughput.py [--root DIR] [--models dpnet,stereonet] [--steps 12]
        [--workers 0] [--precisions 32-true,bf16-mixed]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from dpface_lib import DATA_SAMPLES, RUNS_DIR
from dpface_lib.config import training_config
from dpface_lib.datamodule import DPFaceDataModule
from dpface_lib.models import list_models
from dpface_lib.train import DPFaceModule


def default_root() -> Path:
    cached = sorted((RUNS_DIR / "cache").glob("teach-*/train.txt"))
    return cached[-1].parent if cached else DATA_SAMPLES


def measure(name: str, root: Path, steps: int, workers: int, precision: str = "32-true") -> dict[str, float]:
    config = training_config(name, "tiny", {"data": {"num_workers": workers}})
    module = DPFaceModule(name, "tiny", config=config)
    data = DPFaceDataModule(root, config["data"], seed=0)
    data.setup("fit")
    optimizer = torch.optim.Adam(module.parameters(), lr=float(config["train"]["optimizer"]["lr"]))
    loader = iter(data.train_dataloader())
    module.train()
    waits, computes = [], []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        batch = next(loader)
        fetched = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            outputs = module(batch)  # float32 outputs (DPFaceModule.forward), as in a Lightning step
        loss = module._loss(outputs, batch)["loss"]  # the training step without Lightning logging
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = time.perf_counter()
        if step >= 2:
            waits.append(fetched - start)
            computes.append(done - fetched)
    batch_size = config["data"]["batch_size"]
    step_s = statistics.median(w + c for w, c in zip(waits, computes, strict=True))
    return {"batch": batch_size, "step_s": step_s, "samples_s": batch_size / step_s,
            "data_share": statistics.median(waits) / step_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--precisions", default="32-true,bf16-mixed",
                        help="comma-separated: 32-true and/or bf16-mixed; with both, the ratio is printed")
    args = parser.parse_args(argv)
    root = args.root or default_root()
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"32-true", "bf16-mixed"}:
        parser.error(f"--precisions: 32-true and/or bf16-mixed, got {args.precisions!r}")
    print(f"{root}, tiny profiles, {torch.get_num_threads()} threads, {args.workers} loader workers, "
          f"median of {args.steps} steps")
    print(f"{'model':12s} {'precision':>10s} {'batch':>5s} {'step s':>7s} {'samples/s':>10s} "
          f"{'data wait':>10s}")
    for name in args.models.split(","):
        steps = {}
        for precision in precisions:
            r = measure(name, root, args.steps, args.workers, precision)
            steps[precision] = r["step_s"]
            share = 100 * r["data_share"]
            print(f"{name:12s} {precision:>10s} {r['batch']:5d} {r['step_s']:7.3f} {r['samples_s']:10.1f} "
                  f"{share:9.1f}%")
        if len(steps) == 2:
            print(f"{name:12s} bf16-mixed / 32-true step time: {steps['bf16-mixed'] / steps['32-true']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
