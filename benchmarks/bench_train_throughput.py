"""Training throughput of each model's teaching (``tiny``) profile on the CPU: samples per second and the
share of each step spent waiting for data, measured side by side in one run, in float32 and in bfloat16
mixed precision (``train.precision: bf16-mixed``, run here as ``torch.autocast``) with their ratio; or, with
``--baseline REV``, today's model code against the model code of git revision ``REV`` (same weights, same
batches, the two steps taking turns), with the ratio of their step times.

Uses the kit's own training pieces (``DPFaceModule`` with the profile's loss, optimiser and crops,
``DPFaceDataModule`` with its seeded sampler) in a plain loop, so that the time to get a batch and the
time of forward + backward + optimiser step are measured separately. Reads the teaching set from
``runs/cache`` when the pipeline has generated it, else ``data_samples/``. Besides the wall-clock step
time it reports the process CPU time per step, which on a shared, loaded machine moves less than the wall
clock (with one thread it is the step's own work; with two, waiting threads may spin and count too).

    python benchmarks/bench_train_throughput.py [--root DIR] [--models dpnet,stereonet] [--steps 12]
        [--workers 0] [--precisions 32-true,bf16-mixed] [--threads N] [--baseline cbfbfd9]

The ISA level is chosen by the environment, e.g. ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpface_lib import DATA_SAMPLES, REPO_ROOT, RUNS_DIR
from dpface_lib.config import training_config
from dpface_lib.datamodule import DPFaceDataModule
from dpface_lib.models import list_models
from dpface_lib.train import DPFaceModule


def default_root() -> Path:
    cached = sorted((RUNS_DIR / "cache").glob("teach-*/train.txt"))
    return cached[-1].parent if cached else DATA_SAMPLES


def load_models_package(rev: str, workdir: Path):
    """Import ``dpface_lib/models`` as it was at git revision ``rev``, as a separate package.

    The files come from ``git show rev:path`` into ``workdir``; their imports of ``dpface_lib.models`` are
    pointed at the copy (everything else, e.g. ``dpface_lib.geometry``, is today's). Returns the package."""
    name = "_models_" + "".join(c for c in rev if c.isalnum())
    listing = subprocess.run(["git", "ls-tree", "--name-only", rev, "dpface_lib/models/"], cwd=REPO_ROOT,
                             check=True, capture_output=True, text=True).stdout.split()
    package = workdir / name
    package.mkdir()
    for path in listing:
        if path.endswith(".py"):
            source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO_ROOT, check=True,
                                    capture_output=True, text=True).stdout
            source = source.replace("dpface_lib.models", name)
            (package / Path(path).name).write_text(source, encoding="utf-8")
    sys.path.insert(0, str(workdir))
    return importlib.import_module(name)


class Runner:
    """One variant's training step (its own module, optimiser and seeded loader)."""

    def __init__(self, name: str, root: Path, workers: int, precision: str = "32-true",
                 models_package=None, weights_from: DPFaceModule | None = None) -> None:
        config = training_config(name, "tiny", {"data": {"num_workers": workers}})
        self.module = DPFaceModule(name, "tiny", config=config)
        if models_package is not None:  # the same module with the other revision's network and these weights
            safeconv = importlib.import_module(f"{models_package.__name__}.safeconv")
            cls = models_package._model_class(name)  # that revision's build_model, with today's arguments
            self.module.model = safeconv.guard_convs(cls(**self.module.model_kwargs))
        if weights_from is not None:
            self.module.model.load_state_dict(weights_from.model.state_dict())
        data = DPFaceDataModule(root, config["data"], seed=0)
        data.setup("fit")
        self.batch_size = config["data"]["batch_size"]
        self.precision = precision
        lr = float(config["train"]["optimizer"]["lr"])
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=lr)
        self.loader = iter(data.train_dataloader())
        self.module.train()
        self.waits: list[float] = []
        self.computes: list[float] = []
        self.cpus: list[float] = []

    def step(self, record: bool) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        batch = next(self.loader)
        fetched = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16-mixed"):
            outputs = self.module(batch)  # float32 outputs (DPFaceModule.forward), as in a Lightning step
        loss = self.module._loss(outputs, batch)["loss"]  # the training step without Lightning logging
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        done, cpu_done = time.perf_counter(), time.process_time()
        if record:
            self.waits.append(fetched - start)
            self.computes.append(done - fetched)
            self.cpus.append(cpu_done - cpu_start)

    def summary(self) -> dict[str, float]:
        step_s = statistics.median(w + c for w, c in zip(self.waits, self.computes, strict=True))
        return {"batch": self.batch_size, "step_s": step_s, "samples_s": self.batch_size / step_s,
                "data_share": statistics.median(self.waits) / step_s, "cpu_s": statistics.median(self.cpus),
                "steps": len(self.waits)}


def run_side_by_side(runners: list[Runner], steps: int, warmup: int = 2) -> list[dict[str, float]]:
    """Steps of all runners taking turns (so that a change in the machine's load hits each alike)."""
    for step in range(steps + warmup):
        order = runners if step % 2 == 0 else runners[::-1]
        for runner in order:
            runner.step(record=step >= warmup)
    return [r.summary() for r in runners]


def print_row(name: str, label: str, r: dict[str, float]) -> None:
    print(f"{name:12s} {label:>14s} {r['batch']:5d} {r['step_s']:7.3f} {r['samples_s']:10.2f} "
          f"{100 * r['data_share']:9.1f}% {r['cpu_s']:7.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--precisions", default="32-true,bf16-mixed",
                        help="comma-separated: 32-true and/or bf16-mixed; with both, the ratio is printed")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also time the model code of git revision REV (e.g. cbfbfd9) side by side, "
                             "in the first of --precisions, and print today's / REV's step time")
    args = parser.parse_args(argv)
    root = args.root or default_root()
    precisions = args.precisions.split(",")
    if not set(precisions) <= {"32-true", "bf16-mixed"}:
        parser.error(f"--precisions: 32-true and/or bf16-mixed, got {args.precisions!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"{root}, tiny profiles, {torch.get_num_threads()} threads, ISA {isa}, "
          f"{args.workers} loader workers, median of {args.steps} steps (steps of the variants take turns)")
    print(f"{'model':12s} {'variant':>14s} {'batch':>5s} {'step s':>7s} {'samples/s':>10s} "
          f"{'data wait':>10s} {'cpu s':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_models_package(args.baseline, Path(tmp)) if args.baseline else None
        for name in args.models.split(","):
            if baseline is not None:
                torch.manual_seed(0)
                today = Runner(name, root, args.workers, precisions[0])
                before = Runner(name, root, args.workers, precisions[0], baseline, weights_from=today.module)
                new, old = run_side_by_side([today, before], args.steps)
                print_row(name, f"{precisions[0]} today", new)
                print_row(name, f"{precisions[0]} {args.baseline}", old)
                print(f"{name:12s} {args.baseline} / today: step time {old['step_s'] / new['step_s']:.2f}x, "
                      f"cpu time {old['cpu_s'] / new['cpu_s']:.2f}x; samples/s {new['samples_s']:.2f} vs "
                      f"{old['samples_s']:.2f}")
                continue
            runners = [Runner(name, root, args.workers, p) for p in precisions]
            results = dict(zip(precisions, run_side_by_side(runners, args.steps), strict=True))
            for precision, r in results.items():
                print_row(name, precision, r)
            if len(results) == 2:
                ratio = results["bf16-mixed"]["step_s"] / results["32-true"]["step_s"]
                print(f"{name:12s} bf16-mixed / 32-true step time: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
