"""Notebook pipeline: run numbered notebooks in order with papermill, with parameter sweeps.

A pipeline file (YAML) lists steps; each step is a notebook plus papermill parameters, and may
declare a ``grid`` (a sweep) that expands into one run per combination::

    name: samples
    parameters:            # given to every step whose notebook declares them
      data_root: null
    steps:
      - name: geometry
        notebook: notebooks/02_dp_geometry.ipynb
        parameters: {focus_mm: 970}
      - name: train
        notebook: notebooks/05_train_baseline.ipynb
        parameters: {profile: tiny}
        grid: {model: [psmnet, dpnet]}

``run_pipeline`` writes ``OUT/<step>[__<k>-<v>_...].ipynb`` for each run, ``OUT/summary.csv``
(step, notebook, parameters, status, seconds, output) and, once any notebook has written a
``per_sample.csv`` below ``OUT``, ``OUT/leaderboard.csv`` (one row per model, updated after every
step). Notebooks that declare an ``out_dir``
parameter get ``OUT/<run name>/`` for the files they write, and ``{run_dir}`` inside a string
parameter is replaced by ``OUT`` (so a later step can read what earlier steps wrote). A failing
cell stops the pipeline with the notebook and cell named; the partially executed notebook is kept
for inspection. An existing non-empty ``OUT`` is never overwritten: use ``resume=True`` to re-run
only the runs that did not finish, or pick a new folder.

An optional top-level ``dataset:`` mapping generates data first with ``dpface simulate`` (its long
options, ``_`` for ``-``); ``{dataset}`` in a step's parameters becomes the set's root. The set is cached
under ``runs/cache/`` by a hash of the options (:func:`dpface_lib.simulate.cache.cached_dataset`), so a
second run reuses it; ``--set data_root=...`` skips generation and uses the given set everywhere::

    dataset: {persons: 104, test_persons: 4, size: 160x128, f_number: 1.2}
    steps:
      - {name: train, notebook: notebooks/05_train_baseline.ipynb, parameters: {data_root: "{dataset}"}}
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dpface_lib import REPO_ROOT
from dpface_lib.config import ConfigError, parse_key_value
from dpface_lib.evaluate import write_leaderboard
from dpface_lib.fileio import atomic_write

SUMMARY_FIELDS = ["step", "notebook", "parameters", "status", "seconds", "output"]
DEFAULT_KERNEL = "dpface"
MAX_PIPELINE_BYTES = 256 * 1024  # a pipeline file is a hand-written list of steps, never this large
#: seconds one notebook cell may run: over 3x the longest teaching-run cell on 2 cores; a kernel that stops
#: answering (a lost reply) would otherwise hold the pipeline forever
CELL_TIMEOUT_S = 1200.0


class PipelineError(RuntimeError):
    """A pipeline file is invalid or a step failed; the message says which file/step/cell."""


@dataclass(frozen=True)
class Run:
    """One notebook execution: a step with concrete parameters."""

    step: str
    notebook: Path
    parameters: dict[str, Any]
    swept: tuple[str, ...] = field(default=())
    shared: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """``step`` or ``step__k-v_k-v`` for the swept keys (file-system safe)."""
        if not self.swept:
            return self.step
        parts = [f"{key}-{_slug(self.parameters[key])}" for key in self.swept]
        return f"{self.step}__{'_'.join(parts)}"


def _slug(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def read_pipeline_file(path: str | os.PathLike) -> dict[str, Any]:
    """The top-level mapping of a pipeline file, read safely.

    The file must be at most :data:`MAX_PIPELINE_BYTES`, UTF-8, and plain YAML: ``safe_load`` only (no
    ``!!python`` tags), and no anchors or aliases (``&a`` / ``*a``), which would let a few lines expand
    into billions of values. Raises :class:`PipelineError` naming the file (and the line of an alias).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PIPELINE_BYTES:
            raise PipelineError(f"{path}: pipeline file is {size} bytes; the limit is {MAX_PIPELINE_BYTES}")
        text = path.read_text(encoding="utf-8")
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise PipelineError(
                    f"{path}: line {event.start_mark.line + 1}: YAML anchors and aliases (&name, *name) are "
                    "not allowed in pipeline files; write the values out"
                )
        spec = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise PipelineError(f"{path}: cannot read pipeline file: {err}") from err
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise PipelineError(f"{path}: expected a mapping at the top level, found {type(spec).__name__}")
    return spec


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A YAML mapping (``None``/absent is empty) with string keys; anything else is refused."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise PipelineError(f"{where} must be a mapping of names to values, got {value!r}"[:300])
    return dict(value)


def load_pipeline(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> list[Run]:
    """Read a pipeline YAML and expand it into runs, in order.

    Notebook paths are relative to ``base_dir`` (default: the folder of the YAML file).
    Raises :class:`PipelineError` naming the file and the offending step/key, including two grid
    combinations whose run names (and so output folders) would collide.
    """
    path = Path(path)
    base = Path(base_dir) if base_dir is not None else path.resolve().parent
    spec = read_pipeline_file(path)
    if not isinstance(spec.get("steps"), list) or not spec["steps"]:
        raise PipelineError(f"{path}: expected a mapping with a non-empty list under 'steps'")
    unknown = set(spec) - {"name", "description", "parameters", "steps", "dataset"}
    if unknown:
        raise PipelineError(f"{path}: unknown top-level keys {sorted(unknown)}")
    shared = _mapping(spec.get("parameters"), f"{path}: 'parameters'")

    runs: list[Run] = []
    seen: set[str] = set()
    names: dict[str, dict[str, Any]] = {}
    for i, step in enumerate(spec["steps"]):
        where = f"{path}: step {i + 1}"
        if not isinstance(step, dict) or "name" not in step or "notebook" not in step:
            raise PipelineError(f"{where}: each step needs 'name' and 'notebook'")
        name = str(step["name"])
        where = f"{path}: step {name!r}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or set(name) == {"."}:  # '.', '..': not a folder name
            raise PipelineError(f"{where}: name may only use letters, digits, '_', '.', '-' (not only dots)")
        if name in seen:
            raise PipelineError(f"{where}: duplicate step name")
        seen.add(name)
        extra = set(step) - {"name", "notebook", "parameters", "grid", "description"}
        if extra:
            raise PipelineError(f"{where}: unknown keys {sorted(extra)}")
        if not isinstance(step["notebook"], str):
            raise PipelineError(f"{where}: 'notebook' must be a path, got {step['notebook']!r}")
        params = _mapping(step.get("parameters"), f"{where}: 'parameters'")
        notebook = (base / step["notebook"]).resolve()
        if not notebook.is_file():
            raise PipelineError(f"{where}: notebook {step['notebook']} not found (looked at {notebook})")
        grid = _mapping(step.get("grid"), f"{where}: 'grid'")
        if any(not isinstance(v, list) or not v for v in grid.values()):
            raise PipelineError(f"{where}: 'grid' must map each parameter to a non-empty list")
        overlap = set(grid) & set(params)
        if overlap:
            raise PipelineError(f"{where}: {sorted(overlap)} given both in 'parameters' and 'grid'")
        keys = tuple(grid)
        for combo in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
            merged = {**params, **dict(zip(keys, combo, strict=True))}
            run = Run(step=name, notebook=notebook, parameters=merged, swept=keys, shared=shared)
            chosen = dict(zip(keys, combo, strict=True))
            if run.name in names:
                raise PipelineError(
                    f"{where}: grid values {names[run.name]} and {chosen} both give the run name "
                    f"{run.name!r} (one output folder); make the values differ in letters or digits"
                )
            names[run.name] = chosen
            runs.append(run)
    return runs


def dataset_options(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``dataset:`` section of a pipeline file (``None`` when absent), its keys checked."""
    from dpface_lib.simulate.cache import simulate_argv

    section = read_pipeline_file(path).get("dataset")
    if section is None:
        return None
    if not isinstance(section, dict):
        raise PipelineError(f"{path}: 'dataset' must be a mapping of dpface simulate options")
    try:
        simulate_argv(section)
    except ValueError as err:
        raise PipelineError(f"{path}: {err}") from None
    return dict(section)


def _declared_parameters(notebook: Path) -> dict[str, Any]:
    import papermill

    return papermill.inspect_notebook(str(notebook))


def _resolve_parameters(run: Run, out_dir: Path, overrides: dict[str, Any] | None = None, *,
                        dataset: str | None = None) -> dict[str, Any]:
    """Shared parameters the notebook declares + the step's own (validated) + ``out_dir``, then the
    ``overrides`` the notebook declares (taken as given). ``{run_dir}`` in a string becomes ``out_dir``;
    ``{dataset}`` becomes the generated dataset's root (a value that is exactly ``"{dataset}"`` becomes
    ``None``, i.e. the notebook's default data, when the pipeline generates none)."""
    declared = _declared_parameters(run.notebook)
    own = run.parameters
    unknown = sorted(set(own) - set(declared))
    if unknown:
        raise PipelineError(
            f"step {run.step!r}: {run.notebook.name} has no parameter(s) {unknown}; "
            f"its parameters cell declares {sorted(declared)}"
        )
    shared = {k: v for k, v in run.shared.items() if k in declared}
    params = {key: _substitute(value, out_dir, dataset) for key, value in {**shared, **own}.items()}
    if "out_dir" in declared and "out_dir" not in own:
        params["out_dir"] = str(out_dir / run.name)
    params.update({k: v for k, v in (overrides or {}).items() if k in declared})
    return params


def _substitute(value: Any, out_dir: Path, dataset: str | None = None) -> Any:
    if isinstance(value, str):
        if value == "{dataset}" and dataset is None:
            return None
        return value.replace("{run_dir}", str(out_dir)).replace("{dataset}", dataset or "")
    if isinstance(value, list):
        return [_substitute(v, out_dir, dataset) for v in value]
    return value


def _kernel_name(requested: str | None) -> str:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    name = requested or DEFAULT_KERNEL
    try:
        KernelSpecManager().get_kernel_spec(name)
        return name
    except NoSuchKernel:
        if requested:
            raise PipelineError(
                f"Jupyter kernel {requested!r} not found (see `jupyter kernelspec list`)"
            ) from None
        print(f"note: kernel {name!r} not installed (run `make setup`); using 'python3'", file=sys.stderr)
        return "python3"


def _read_summary(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write_summary(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def _record_failure(row: dict[str, Any], rows: list[dict[str, Any]], summary_path: Path, start: float,
                    message: str) -> PipelineError:
    """Mark ``row`` failed in the summary file and return the error to raise."""
    row.update(status="failed", seconds=f"{time.perf_counter() - start:.1f}")
    rows.append(row)
    _write_summary(summary_path, rows)
    return PipelineError(message)


def run_pipeline(
    pipeline_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    only: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    kernel: str | None = None,
    cell_progress: bool = True,
    cell_timeout: float | None = CELL_TIMEOUT_S,
    retries: int = 1,
    estimate: bool = True,
) -> list[dict[str, Any]]:
    """Execute the pipeline; returns the summary rows (also written to ``out_dir/summary.csv``).

    ``only``: step names to run (others skipped). ``overrides``: parameters applied to every run whose
    notebook declares them (e.g. ``{"data_root": "/data/facedp"}``). ``resume``: allow an existing
    ``out_dir`` and skip runs already recorded as ``ok`` there. ``cell_timeout``: seconds one cell may run
    (``None``: no limit). A run whose kernel dies or stops answering (a cell past ``cell_timeout``) is
    started again from its first cell up to ``retries`` times; a cell that raises is not retried.
    ``estimate``: time training steps first (:func:`dpface_lib.runplan.plan_runs`; ``host.json`` is written).
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    from dpface_lib.runplan import Progress, plan_runs, stamp_run_info

    runs = load_pipeline(pipeline_file)
    if only:
        missing = sorted(set(only) - {r.step for r in runs})
        if missing:
            raise PipelineError(f"unknown step(s) {missing}; steps: {sorted({r.step for r in runs})}")
        runs = [r for r in runs if r.step in only]
    out = Path(out_dir).resolve()  # notebooks run with the repository as working directory
    summary_path = out / "summary.csv"
    previous = _read_summary(summary_path)
    if out.exists() and any(out.iterdir()) and not resume:
        raise PipelineError(
            f"{out} already exists and is not empty: choose another --out, or pass --resume to re-run "
            "only the runs that did not finish"
        )
    out.mkdir(parents=True, exist_ok=True)
    done = {(row["step"], row["output"]) for row in previous if row["status"] == "ok"}
    kernel_name = _kernel_name(kernel)
    overrides = dict(overrides or {})
    options = dataset_options(pipeline_file)
    dataset = None
    if overrides.get("data_root") not in (None, ""):
        dataset = str(overrides["data_root"])  # the caller's set replaces the generated one
    elif options is not None:
        from dpface_lib import RUNS_DIR
        from dpface_lib.simulate.cache import cached_dataset

        start = time.perf_counter()
        dataset = str(cached_dataset(options, RUNS_DIR / "cache"))
        print(f"dataset: {dataset} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)

    rows: list[dict[str, Any]] = [row for row in previous if row["status"] == "ok"]
    todo = [run for run in runs if (run.step, str(out / f"{run.name}.ipynb")) not in done]
    resolved = {run.name: _resolve_parameters(run, out, overrides, dataset=dataset) for run in todo}
    plan = plan_runs(todo, resolved, _declared_parameters, out, measure=estimate)
    for run in Progress(todo, plan.seconds, measured=plan.measured or None):
        output = out / f"{run.name}.ipynb"
        params = resolved[run.name]
        row = {"step": run.step, "notebook": str(run.notebook.relative_to(REPO_ROOT))
               if run.notebook.is_relative_to(REPO_ROOT) else str(run.notebook),
               "parameters": json.dumps(params, sort_keys=True), "status": "running", "seconds": "",
               "output": str(output)}
        start = time.perf_counter()
        try:
            for attempt in range(retries + 1):
                try:  # the kernel inherits this: no progress bars (dpface_lib.notebook.BATCH_ENV)
                    os.environ.update(DPFACE_NOTEBOOK_BATCH="1", TQDM_DISABLE="1")
                    papermill.execute_notebook(
                        str(run.notebook), str(output), parameters=params, kernel_name=kernel_name,
                        cwd=str(REPO_ROOT), progress_bar=cell_progress, log_output=False,
                        execution_timeout=cell_timeout,
                    )
                    break
                except (CellTimeoutError, DeadKernelError) as err:
                    timed_out = isinstance(err, CellTimeoutError)
                    what = "a cell ran past --cell-timeout" if timed_out else "its kernel died"
                    if attempt == retries:
                        raise _record_failure(
                            row, rows, summary_path, start,
                            f"step {run.name!r} ({run.notebook.name}): {what} in each of {retries + 1} "
                            f"attempt(s); partial output kept at {output}; rerun with --resume",
                        ) from None
                    print(f"step {run.name!r}: {what}; starting it again ({attempt + 2} of {retries + 1})",
                          file=sys.stderr)
        except PapermillExecutionError as err:
            raise _record_failure(
                row, rows, summary_path, start,
                f"step {run.name!r} failed in {run.notebook.name}, cell {err.cell_index} "
                f"(execution count {err.exec_count}): {err.ename}: {err.evalue}\n"
                f"partial output kept at {output}",
            ) from None
        row.update(status="ok", seconds=f"{time.perf_counter() - start:.1f}")
        rows.append(row)
        _write_summary(summary_path, rows)
        stamp_run_info(out / run.name, plan.host)  # the CPU, ISA, precision and threads behind its numbers
        write_leaderboard(out)  # after every step, so later notebooks (07) can read it
    _write_summary(summary_path, rows)
    return rows


def _parse_override(text: str) -> tuple[str, Any]:
    try:
        return parse_key_value(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cli(argv: list[str]) -> int:
    """``dpface pipeline PIPELINE.yaml --out runs/NAME [--only STEP ...] [--set k=v ...] [--resume]``."""
    parser = argparse.ArgumentParser(prog="dpface pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="pipeline YAML file (e.g. pipeline.yaml)")
    parser.add_argument("--out", required=True,
                        help="output folder, e.g. runs/NAME (must be new unless --resume)")
    parser.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps")
    parser.add_argument("--set", dest="overrides", action="append", type=_parse_override, default=[],
                        metavar="KEY=VALUE",
                        help="parameter for every notebook that declares it (YAML value)")
    parser.add_argument("--resume", action="store_true", help="continue an existing run folder")
    parser.add_argument("--kernel", default=None, help=f"Jupyter kernel name (default {DEFAULT_KERNEL!r})")
    parser.add_argument("--list", action="store_true", help="print the expanded runs and exit")
    parser.add_argument("--no-cell-progress", action="store_true", help="hide the per-cell progress bar")
    parser.add_argument("--no-estimate", action="store_true", help="skip timing training steps first")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S, metavar="SECONDS",
                        help=f"limit for one cell (default {CELL_TIMEOUT_S:.0f}; 0: none); a run that "
                             "passes it, or whose kernel dies, is started again once")
    args = parser.parse_args(argv)
    try:
        if args.list:
            for run in load_pipeline(args.pipeline):
                print(f"{run.name:40s} {run.notebook.name:32s} {json.dumps(run.parameters)}")
            return 0
        rows = run_pipeline(args.pipeline, args.out, only=args.only, overrides=dict(args.overrides),
                            resume=args.resume, kernel=args.kernel, cell_progress=not args.no_cell_progress,
                            cell_timeout=args.cell_timeout or None, estimate=not args.no_estimate)
    except PipelineError as err:
        print(f"dpface pipeline: {err}", file=sys.stderr)
        return 2
    total = sum(float(r["seconds"] or 0) for r in rows)
    print(f"{len(rows)} notebook(s) ok in {total:.0f} s -> {Path(args.out) / 'summary.csv'}")
    return 0
