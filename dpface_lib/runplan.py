"""A pipeline's cost on this host, measured before it starts, and one progress bar over its notebooks.

:func:`plan_runs` finds the training runs of a pipeline (runs whose parameters name a registered ``model`` and
a ``profile``, as ``notebooks/05_train_baseline.ipynb`` declares them), times a few training steps of each
model here (:func:`measure_steps`: one warm-up step, then ``steps`` timed ones, through the same
:class:`dpface_lib.train.DPFaceModule`, data module, optimiser and precision as a real run), and estimates
each notebook's seconds: a training run costs its step count times the measured step plus its scoring (the
measured evaluation forward times the samples 05 scores: its learning-curve points and the whole test
split); any other notebook a nominal :data:`OTHER_NOTEBOOK_S`. The estimate, the CPU features and the
precision are printed and written to ``host.json`` in the run folder, beside ``leaderboard.csv``.

:class:`Progress` is one bar over all notebooks whose unit is the estimated second, so its ETA rests on the
estimate and corrects itself by the rate actually achieved (a host slower than measured lengthens it);
:func:`stamp_run_info` adds the host record to a run's ``run_info.json``.
"""

from __future__ import annotations

import ast
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpface_lib.fileio import atomic_write_bytes
from dpface_lib.hostinfo import describe, host_record

__all__ = ["HOST_FILE", "OTHER_NOTEBOOK_S", "Plan", "Progress", "measure_steps", "plan_runs",
           "stamp_run_info"]

#: The host record of a pipeline run, written in its folder beside ``leaderboard.csv``.
HOST_FILE = "host.json"
#: Estimated seconds of a notebook that trains nothing (5-56 s each on the 2-core reference host).
OTHER_NOTEBOOK_S = 30.0
#: Samples 05 scores outside training besides the whole test split: the untrained network's curve samples.
_CURVE_SAMPLES = 32


@dataclass
class Plan:
    """Estimated seconds per run name (``seconds``), the measured steps per model (``steps``: seconds per
    training step, per evaluated sample, precision) and the host record (``host``)."""

    seconds: dict[str, float] = field(default_factory=dict)
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)
    #: runs whose estimate comes from steps measured on this host (the others have a nominal share)
    measured: set[str] = field(default_factory=set)

    @property
    def total(self) -> float:
        """Estimated seconds of every planned run."""
        return float(sum(self.seconds.values()))


def _literal(value: Any) -> Any:
    """A papermill default (source text such as ``"48"`` or ``"None"``) as a Python literal; the text when it
    is not one (never evaluated as code)."""
    try:
        return ast.literal_eval(value) if isinstance(value, str) else value
    except (ValueError, SyntaxError):
        return value


def _training_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``crop`` / ``batch_size`` / ``max_steps`` parameters of a training notebook as config overrides."""
    overrides: dict[str, Any] = {"train": {}, "data": {}}
    crop = params.get("crop")
    if isinstance(crop, list | tuple):
        overrides["data"]["crop"] = {"mode": "random", "size": [int(c) for c in crop]}
    if params.get("batch_size") is not None:
        overrides["data"]["batch_size"] = int(params["batch_size"])
    if params.get("max_steps") is not None:
        overrides["train"].update(max_steps=int(params["max_steps"]), max_epochs=-1)
    return overrides


def measure_steps(model: str, profile: str, data_root: str | Path, overrides: Mapping[str, Any] | None = None,
                  *, steps: int = 2, warmup: int = 1, seed: int = 0) -> dict[str, Any]:
    """Time ``warmup`` + ``steps`` training steps of ``model`` (its ``profile`` config with ``overrides``) on
    ``data_root``, and one evaluation forward, in this process.

    The steps run in Lightning's loop as :func:`dpface_lib.train.train_model` runs them (same module, data
    module, optimiser, gradient clipping and resolved precision), without validation, checkpoints or packs;
    the time is from the batch in hand to the end of the optimiser step (loading excluded: under 20 ms a
    batch from a pack). Returns ``{"step_s": median seconds a step, "eval_sample_s": seconds of an evaluation
    forward per sample, "precision": Lightning's precision, "batch_size", "max_steps": the config's}``."""
    import lightning.pytorch as pl
    import torch

    from dpface_lib.config import merge, resolve_precision, training_config
    from dpface_lib.datamodule import DPFaceDataModule
    from dpface_lib.train import _EXPECTED_WARNINGS, DPFaceModule

    config = training_config(model, profile, overrides)
    max_steps = int(config["train"]["max_steps"])
    precision = resolve_precision(config["train"]["precision"], "cpu")
    config = merge(config, {"data": {"pack": False, "num_workers": 0}, "train": {"precision": precision}})
    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args: Any) -> None:
            times.append(time.perf_counter() - self.start)

    pl.seed_everything(seed, verbose=False)
    module = DPFaceModule(model, profile, config=config)
    data = DPFaceDataModule(data_root, config["data"], seed=seed)
    with tempfile.TemporaryDirectory(prefix="dpface-measure-") as tmp, warnings.catch_warnings():
        for pattern in (*_EXPECTED_WARNINGS, ".*self.log.*", ".*val_dataloader.*", ".*limit_val_batches.*"):
            warnings.filterwarnings("ignore", message=pattern)
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=warmup + steps, precision=precision,
                             gradient_clip_val=config["train"]["gradient_clip_val"], limit_val_batches=0,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp,
                             callbacks=[Timer()])
        trainer.fit(module, datamodule=data)
    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    net = module.model.eval()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=str(precision).startswith("bf16"))
    with torch.no_grad(), autocast:
        start = time.perf_counter()
        net(batch)
        eval_s = time.perf_counter() - start
    timed = sorted(times[warmup:]) or times
    return {"step_s": timed[len(timed) // 2], "eval_sample_s": eval_s / batch["left"].shape[0],
            "precision": str(precision), "batch_size": int(config["data"]["batch_size"]),
            "max_steps": max_steps}


def _test_samples(data_root: str | Path) -> int:
    from dpface_lib.data import FaceDPDataset

    return len(FaceDPDataset(data_root, "test"))


def plan_runs(runs: Iterable[Any], parameters: Mapping[str, dict[str, Any]], declared: Callable[[Path], dict],
              out_dir: str | Path, *, measure: bool = True, steps: int = 2, log: Any = None) -> Plan:
    """Measure this host and estimate each of ``runs`` (objects with ``name`` and ``notebook``); write
    ``out_dir/host.json``.

    ``parameters``: each run's resolved notebook parameters by run name; ``declared(notebook)``: papermill's
    declared parameters of a notebook (for the defaults of ``model``, ``profile``, ``max_steps``,
    ``val_points``, ``val_samples``). ``measure=False`` records the host and gives every run the nominal
    :data:`OTHER_NOTEBOOK_S`. Progress lines go to ``log`` (default stderr)."""
    from dpface_lib.data import resolve_data_root
    from dpface_lib.models import list_models

    log = log or sys.stderr
    plan = Plan()
    known = set(list_models())
    measured: dict[str, dict[str, Any]] = {}
    trained: dict[str, str] = {}  # run name -> model
    started = time.perf_counter()
    for run in runs:
        params = parameters[run.name]
        defaults = {k: _literal(v.get("default")) for k, v in declared(run.notebook).items()}
        values = {**defaults, **params}
        model, profile = values.get("model"), values.get("profile")
        if not (measure and model in known and isinstance(profile, str)):
            plan.seconds[run.name] = OTHER_NOTEBOOK_S
            continue
        overrides = _training_overrides(values)
        root = resolve_data_root(values.get("data_root"))
        key = json.dumps([model, profile, overrides, str(root)], sort_keys=True)
        if key not in measured:
            print(f"measuring {model} ({profile}): {steps} training steps after one warm-up ...", file=log,
                  flush=True)
            measured[key] = measure_steps(model, profile, root, overrides, steps=steps)
            measured[key]["test_samples"] = _test_samples(root)
        m = measured[key]
        plan.steps[str(model)] = {k: m[k] for k in ("step_s", "eval_sample_s", "precision", "batch_size")}
        scored = m["test_samples"] + _CURVE_SAMPLES + int(values.get("val_points") or 0) * int(
            values.get("val_samples") or 0)
        trained[run.name] = str(model)
        plan.seconds[run.name] = m["max_steps"] * m["step_s"] + scored * m["eval_sample_s"] + OTHER_NOTEBOOK_S
    plan.measured = set(trained)
    precisions = {model: s["precision"] for model, s in plan.steps.items()}
    plan.host = host_record(precisions or None)
    record = {**plan.host, "measured": plan.steps, "measure_seconds": round(time.perf_counter() - started, 1),
              "estimate_seconds": {k: round(v, 1) for k, v in plan.seconds.items()},
              "estimate_total_seconds": round(plan.total, 1)}
    atomic_write_bytes(Path(out_dir) / HOST_FILE, json.dumps(record, indent=1).encode())
    print(f"host: {describe(plan.host)}", file=log)
    for name, model in trained.items():
        s = plan.steps[model]
        print(f"  {name:32s} {s['precision']:>10s}  {s['step_s']:.2f} s a step (batch {s['batch_size']}), "
              f"about {_minutes(plan.seconds[name])}", file=log)
    print(f"estimate: {len(plan.seconds)} notebook(s) in about {_minutes(plan.total)} on this host "
          f"(measured in {time.perf_counter() - started:.0f} s)", file=log, flush=True)
    return plan


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def stamp_run_info(run_dir: str | Path, host: Mapping[str, Any]) -> bool:
    """Add ``host`` (a :func:`dpface_lib.hostinfo.host_record`) to ``run_dir/run_info.json`` when the notebook
    wrote one; its ``precision`` becomes the run's own, read from Lightning's ``hparams.yaml`` there (the
    resolved ``train.precision``). Returns whether a file was updated (rewritten atomically)."""
    import yaml

    run_dir = Path(run_dir)
    path = run_dir / "run_info.json"
    if not path.is_file():
        return False
    info = json.loads(path.read_text())
    record = dict(host)
    try:
        hparams = yaml.safe_load((run_dir / "hparams.yaml").read_text()) or {}
        record["precision"] = hparams["config"]["train"]["precision"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        precision = record.get("precision")
        if isinstance(precision, Mapping):
            record["precision"] = precision.get(info.get("model"))
    info["host"] = record
    atomic_write_bytes(path, json.dumps(info, indent=1).encode())
    return True


class Progress:
    """One progress bar over a pipeline's runs in estimated seconds, with an ETA: tqdm on a terminal, else a
    plain line per finished run (``pipeline: train__model-dpnet done; 3 notebook(s), 40 % of the estimate in
    5 min; about 8 min left``). ``seconds``: estimate per run name (unknown names count
    :data:`OTHER_NOTEBOOK_S`).

    The time left is the remaining estimate times this host's pace, the actual over the estimated seconds of
    the finished runs in ``measured`` (those whose estimate was measured here; default: every run). A
    notebook with only a nominal share that takes ten times its share therefore does not multiply the
    estimate of the training runs after it. ``clock``: seconds (tests pass a fake one)."""

    def __init__(self, runs: list[Any], seconds: Mapping[str, float], *, stream: Any = None,
                 tty: bool | None = None, measured: Iterable[str] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        from tqdm.auto import tqdm

        self.clock = clock
        self.measured = None if measured is None else set(measured)
        self.paced_actual = self.paced_estimate = 0.0
        self.runs, self.stream = list(runs), stream or sys.stderr
        self.weights = [float(seconds.get(run.name, OTHER_NOTEBOOK_S)) for run in self.runs]
        self.total = sum(self.weights)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self.bar = tqdm(total=round(self.total), desc="pipeline", unit="s", file=self.stream,
                        disable=not self.tty, bar_format="{l_bar}{bar}| {n}/{total} estimated s "
                        "[{elapsed}{postfix}]")  # the time left is paced here, not tqdm's extrapolation
        self.done_weight, self.count = 0.0, 0
        self.start = self.last = self.clock()

    def __iter__(self) -> Iterator[Any]:
        """The runs in order; a run's share is counted when the loop asks for the next one."""
        for run, weight in zip(self.runs, self.weights, strict=True):
            self.bar.set_postfix_str(f"{run.name}; about {_minutes(self.seconds_left())} left")
            yield run
            self._advance(run, weight)
        self.bar.close()

    def seconds_left(self) -> float:
        """The remaining estimate at this host's pace (see the class docstring), in seconds."""
        pace = self.paced_actual / self.paced_estimate if self.paced_estimate > 0 else 1.0
        return (self.total - self.done_weight) * pace

    def _advance(self, run: Any, weight: float) -> None:
        now = self.clock()
        if self.measured is None or run.name in self.measured:
            self.paced_actual += now - self.last
            self.paced_estimate += weight
        self.last = now
        self.done_weight += weight
        self.count += 1
        self.bar.update(round(weight))
        if not self.tty:
            elapsed = now - self.start
            share = self.done_weight / self.total if self.total else 1.0
            left = self.seconds_left()
            print(f"pipeline: {run.name} done; {self.count} of {len(self.runs)} notebook(s), "
                  f"{100 * share:.0f} % of the estimate in {_minutes(elapsed)}; about {_minutes(left)} left",
                  file=self.stream, flush=True)
