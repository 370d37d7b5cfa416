"""Evaluation: run a model (or read saved predictions) over a split -> per-sample metric tables.

``dpface eval --data-root ROOT --split test --checkpoint CKPT --out DIR`` (or ``--predictions PRED_DIR``)
writes, atomically,

- ``DIR/per_sample.csv`` and ``DIR/per_sample.parquet``: one row per view (identifiers, capture factors,
  ground-truth descriptors, every metric), with a ``model`` column;
- ``DIR/aggregate.csv`` / ``.parquet``: the mean of every metric over the samples (one row).

Metric columns (see :mod:`dpface_lib.metrics`):

- ``ai1``, ``ai2``, ``spearman`` on disparity (px) against the ground-truth ``a / Z + b``; for a
  prediction that has only depth, on inverse depth 1 / Z against the benchmark's normalised ground-truth
  inverse depth max(Z) / Z (column ``affine_space`` says which);
- ``absrel`` ... ``delta3`` on depth (mm), the prediction's ``depth`` or ``a / (d - b)`` from its disparity;
  ``invalid_depth`` is the share of masked pixels where that depth was not finite and positive (clipped);
- ``mean_deg`` ... ``within_30`` where normals are predicted (NaN otherwise).

``--kind {auto,google-dp,dpdd,dp5k}`` evaluates a checkpoint on another DP layout
(:func:`evaluate_dp_dataset`): only the metrics its ground truth allows, the others NaN with the reason in
``missing_gt``.

Saved predictions: ``<dir>/<sample_id>.npz`` (the '/' of a sample id is a sub-folder) with float32
``disparity`` and/or ``depth`` (H, W) and optionally ``normal`` (3, H, W); ``--save-predictions`` writes
that format. :func:`load_runs` + :func:`leaderboard` stack the tables of several runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dpface_lib.checkpoint import CheckpointError, load_model
from dpface_lib.fileio import atomic_folder, atomic_write, load_npz
from dpface_lib.metrics import METRIC_KEYS, EvaluationError, batch_metrics

ID_KEYS = ("sample_id", "group", "person", "camidx", "lightidx", "viewidx", "expression", "position",
           "direction")
#: lower-is-better metrics; the others (delta*, within_*) are higher-is-better.
HIGHER_IS_BETTER = ("relief_corr", "delta1", "delta2", "delta3", "within_11_25", "within_22_5", "within_30")


def _rows(values: dict[str, Any], batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows of one batch: identifiers from ``batch['meta']`` / ``sample_id`` + metric values."""
    n = len(values["affine_space"])
    meta = batch.get("meta", {})
    ids = batch.get("sample_id")
    ids = [ids] if isinstance(ids, str) else list(ids) if ids is not None else [None] * n
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"sample_id": ids[i]}
        for key in ID_KEYS[1:]:
            if key in meta:
                value = meta[key]
                value = value[i] if isinstance(value, list | tuple | torch.Tensor) else value
                row[key] = value.item() if isinstance(value, torch.Tensor) else value
        for key, value in values.items():
            row[key] = value[i] if isinstance(value, list) else float(value[i])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------- over a split
def evaluate_model(model: torch.nn.Module, dataset: Iterable, *, name: str = "model", batch_size: int = 1,
                   device: str | torch.device = "cpu", save_dir: str | Path | None = None,
                   progress: bool = False) -> pd.DataFrame:
    """Run ``model`` over ``dataset`` (a :class:`dpface_lib.data.FaceDPDataset` or any sequence of batch
    dicts) without gradients and return the per-sample table (``model`` column = ``name``). With
    ``save_dir`` the predictions are also saved in the prediction-folder format."""
    from torch.utils.data import DataLoader

    model = model.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for batch in _maybe_tqdm(loader, progress, "eval"):
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            output = model(batch)
            if not isinstance(output, dict):
                raise EvaluationError(f"{type(model).__name__}.forward must return a dict, got "
                                      f"{type(output).__name__}")
            rows += _checked_rows(output, batch)
            if save_dir is not None:
                _save_outputs(save_dir, output, batch["sample_id"])
    return _frame(rows, name)


def reference_tables(root: str | Path, split: str = "test", names: Iterable[str] | None = None, *,
                     fit_split: str = "train", val_split: str | None = "val", max_samples: int | None = None,
                     batch_size: int = 8, progress: bool = False) -> dict[str, pd.DataFrame]:
    """Per-sample tables of the reference rows (:mod:`dpface_lib.references`) on ``split`` of the set at
    ``root``: ``{name: table}`` in the order of ``names`` (default all), ``model`` column = the name."""
    from torch.utils.data import Subset

    from dpface_lib.data import FaceDPDataset, evenly_spaced
    from dpface_lib.references import REFERENCES, build_reference

    dataset = FaceDPDataset(root, split)
    if max_samples is not None:
        dataset = Subset(dataset, evenly_spaced(len(dataset), max_samples))
    tables = {}
    for name in names or REFERENCES:
        key = name.replace("-", "_")
        model = build_reference(key, root, fit_split=fit_split, val_split=val_split)
        tables[key] = evaluate_model(model, dataset, name=key, batch_size=batch_size, progress=progress)
    return tables


def evaluate_predictions(pred_dir: str | Path, dataset: Iterable, *, name: str | None = None,
                         progress: bool = False) -> pd.DataFrame:
    """Per-sample table for saved predictions ``<pred_dir>/<sample_id>.npz`` over ``dataset``."""
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: predictions folder does not exist")
    rows: list[dict[str, Any]] = []
    for sample in _maybe_tqdm(dataset, progress, "eval"):
        batch = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in sample.items()}
        batch["meta"] = {k: [v] for k, v in sample["meta"].items()}
        batch["sample_id"] = [sample["sample_id"]]
        output = {k: torch.from_numpy(v).unsqueeze(0) for k, v in load_prediction(pred_dir, sample).items()}
        rows += _checked_rows(output, batch)
    return _frame(rows, name or pred_dir.name)


def load_prediction(pred_dir: str | Path, sample: dict[str, Any]) -> dict[str, np.ndarray]:
    """The saved prediction of one dataset sample, checked against its ground-truth shape."""
    pred_dir = Path(pred_dir).resolve()
    path = (pred_dir / f"{sample['sample_id']}.npz").resolve()
    if not path.is_relative_to(pred_dir):
        raise EvaluationError(f"sample id {sample['sample_id']!r} points outside {pred_dir}")
    if not path.is_file():
        raise EvaluationError(f"{path}: no saved prediction for sample {sample['sample_id']!r}")
    size = tuple(sample["mask"].shape)
    expected = {"disparity": size, "depth": size, "normal": (3, *size)}
    try:  # load_npz names the file for a zip-corrupt archive or a lone .npy under an .npz name
        arrays = load_npz(path)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc
    out = {key: np.asarray(value, dtype=np.float32) for key, value in arrays.items() if key in expected}
    if "disparity" not in out and "depth" not in out:
        raise EvaluationError(f"{path}: holds neither 'disparity' nor 'depth'")
    for key, value in out.items():
        if value.shape != expected[key]:
            raise EvaluationError(f"{path}: '{key}' has shape {value.shape}, expected {expected[key]}")
    return out


def evaluate_checkpoint(checkpoint: str | Path, root: str | Path, split: str, *, name: str | None = None,
                        batch_size: int = 1, device: str = "cpu", save_dir: str | Path | None = None,
                        progress: bool = False) -> pd.DataFrame:
    """Load ``checkpoint`` (:func:`dpface_lib.checkpoint.load_model`); evaluate it on ``root``/``split``."""
    from dpface_lib.data import FaceDPDataset

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise EvaluationError(f"{checkpoint}: checkpoint file does not exist")
    model = load_model(checkpoint, map_location="cpu")
    return evaluate_model(model, FaceDPDataset(root, split), name=name or checkpoint.stem,
                          batch_size=batch_size, device=device, save_dir=save_dir, progress=progress)


def evaluate_dp_dataset(model: torch.nn.Module, dataset: Iterable, *, name: str = "model",
                        progress: bool = False) -> pd.DataFrame:
    """Per-item table over any dual-pixel dataset of :func:`dpface_lib.datasets.open_dataset`.

    Each item is predicted whole (:func:`dpface_lib.inference.predict_pair`; one green channel is taken three
    times). Only the metrics its ground truth allows are computed; the others are NaN, and ``missing_gt`` says
    why:

    - ``ai1``/``ai2``/``spearman`` on disparity against ``a / Z + b`` (metric depth and ``a, b``), or
      against ``inverse_depth`` weighted by ``confidence`` (ground truth up to an affine map);
    - the depth metrics need metric depth and ``a, b``; the normal metrics need ground-truth normals.
    """
    from dpface_lib.datasets import rgb_pair
    from dpface_lib.geometry import BENCHMARK_CAMERA_AB, depth_to_disparity
    from dpface_lib.inference import predict_pair
    from dpface_lib.metrics import affine_invariant_metrics, depth_metrics, normal_metrics

    rows = []
    for item in _maybe_tqdm(dataset, progress, "eval"):
        known_ab = "a" in item and "b" in item
        a, b = (float(item["a"]), float(item["b"])) if known_ab else BENCHMARK_CAMERA_AB[1]
        K = item["K"].numpy() if "K" in item else None
        pred = predict_pair(model, *rgb_pair(item), a, b, K)
        row: dict[str, Any] = {"sample_id": item["sample_id"]}
        row.update({key: np.nan for key in METRIC_KEYS})
        missing = []
        mask = item["mask"].numpy() if "mask" in item else None
        if "inverse_depth" in item:
            weight = item["confidence"].numpy() if "confidence" in item else None
            row.update(affine_invariant_metrics(pred["disparity"], item["inverse_depth"].numpy(), weight,
                                                allow_empty=True))
            missing.append("ground truth only up to an affine map: no metric depth")
        elif "depth" in item and known_ab:
            depth = item["depth"].numpy().astype(np.float64)
            disparity = np.where(mask, depth_to_disparity(depth, a, b), 0.0)
            row.update(affine_invariant_metrics(pred["disparity"], disparity, mask, allow_empty=True))
            row.update(depth_metrics(pred["depth"], depth, mask, allow_empty=True))
        else:
            missing.append("no depth ground truth")
        if "normal" in item:
            row.update(normal_metrics(pred["normal"], item["normal"].numpy(), mask, allow_empty=True)
                       if "normal" in pred else {})
        else:
            missing.append("no normals")
        row["missing_gt"] = "; ".join(missing)
        rows.append(row)
    return _frame(rows, name)


def _checked_rows(output: dict[str, torch.Tensor], batch: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return _rows(batch_metrics(output, batch), batch)
    except ValueError as exc:
        raise EvaluationError(f"samples {list(batch.get('sample_id', []))}: {exc}") from exc


def _frame(rows: list[dict[str, Any]], name: str) -> pd.DataFrame:
    if not rows:
        raise EvaluationError("nothing to evaluate: the dataset is empty")
    frame = pd.DataFrame(rows)
    frame.insert(0, "model", name)
    return frame


def _save_outputs(save_dir: str | Path, output: dict[str, torch.Tensor], sample_ids: list[str]) -> None:
    for i, sample_id in enumerate(sample_ids):
        arrays = {k: output[k][i].detach().float().cpu().numpy() for k in ("disparity", "depth", "normal")
                  if k in output}
        path = Path(save_dir) / f"{sample_id}.npz"
        atomic_write(path, lambda tmp, arrays=arrays: np.savez_compressed(tmp, **arrays), suffix=".npz")


def _maybe_tqdm(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)


# ------------------------------------------------------------------------------------------- tables
def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns present in ``frame``, in :data:`METRIC_KEYS` order."""
    return [key for key in METRIC_KEYS if key in frame.columns]


def aggregate(frame: pd.DataFrame, by: str | list[str] = "model") -> pd.DataFrame:
    """Mean of every metric per ``by`` group, with the sample count ``n``."""
    grouped = frame.groupby(by, sort=False, dropna=False)
    table = grouped[metric_columns(frame)].mean()
    table.insert(0, "n", grouped.size())
    return table.reset_index()


def write_tables(frame: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write ``per_sample`` and ``aggregate`` tables as CSV and Parquet into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    paths = {}
    for stem, table in (("per_sample", frame), ("aggregate", aggregate(frame))):
        for ext, method in (("csv", "to_csv"), ("parquet", "to_parquet")):
            path = out_dir / f"{stem}.{ext}"
            atomic_write(path, lambda tmp, t=table, m=method: getattr(t, m)(tmp, index=False))
            paths[f"{stem}_{ext}"] = path
    return paths


def load_runs(runs_dir: str | Path) -> pd.DataFrame:
    """Every ``per_sample.csv`` below ``runs_dir`` stacked into one frame, with a ``run`` column (the
    table's folder relative to ``runs_dir``); a table without a ``model`` column gets the run's name.
    Returns an empty frame when none exists."""
    runs_dir = Path(runs_dir)
    tables = []
    for path in sorted(runs_dir.rglob("per_sample.csv")) if runs_dir.is_dir() else []:
        table = pd.read_csv(path)
        run = path.parent.relative_to(runs_dir).as_posix()
        if "model" not in table.columns:
            table.insert(0, "model", run)
        table.insert(1, "run", run)
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["model", "run"])


def leaderboard(tables: pd.DataFrame | Iterable[pd.DataFrame], by: str | list[str] = "model",
                sort_by: str = "ai1") -> pd.DataFrame:
    """Models x mean metrics from per-sample tables (one frame or several), best ``sort_by`` first."""
    frame = tables if isinstance(tables, pd.DataFrame) else pd.concat(list(tables), ignore_index=True)
    if frame.empty:
        return pd.DataFrame(columns=[*([by] if isinstance(by, str) else by), "n"])
    table = aggregate(frame, by)
    if sort_by in table.columns:
        table = table.sort_values(sort_by, ascending=sort_by not in HIGHER_IS_BETTER, na_position="last")
    return table.reset_index(drop=True)


#: Columns of ``leaderboard.csv`` (one row per model): sample count, the headline metrics, training time.
LEADERBOARD_COLUMNS = ("model", "n", "ai1", "ai2", "spearman", "relief_ai1", "relief_corr", "inverted",
                       "absrel", "mean_deg", "train_seconds")
#: Per-run facts written beside ``per_sample.csv`` by training notebooks (``train_seconds``, ``steps``).
RUN_INFO = "run_info.json"


def write_leaderboard(runs_dir: str | Path, out_path: str | Path | None = None) -> pd.DataFrame:
    """Write ``runs_dir/leaderboard.csv``: one row per model over every ``per_sample.csv`` below ``runs_dir``.

    Columns :data:`LEADERBOARD_COLUMNS`, best ``ai1`` first; ``mean_deg`` is NaN for a model without normals
    and ``train_seconds`` is read from the ``run_info.json`` beside each table (NaN when absent, e.g. for the
    classical reference rows). Written atomically; returns the table (empty when no run exists, in which
    case nothing is written).
    """
    import json

    runs_dir = Path(runs_dir)
    frame = load_runs(runs_dir)
    if frame.empty:
        return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
    table = leaderboard(frame)
    seconds: dict[str, float] = {}
    for run in frame["run"].unique():
        info_path = runs_dir / run / RUN_INFO
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            for model in frame.loc[frame["run"] == run, "model"].unique():
                seconds[model] = float(info.get("train_seconds", np.nan))
    table["train_seconds"] = table["model"].map(seconds).astype(float)
    for column in LEADERBOARD_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan
    table = table[list(LEADERBOARD_COLUMNS)]
    path = Path(out_path) if out_path is not None else runs_dir / "leaderboard.csv"
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
    return table


# ---------------------------------------------------------------------------------------------- CLI
def cli(argv: list[str] | None = None) -> int:
    """``dpface eval``: evaluate a checkpoint or a predictions folder over a split -> tables in ``--out``."""
    from dpface_lib.datasets import KINDS

    parser = argparse.ArgumentParser(prog="dpface eval", description=cli.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="model checkpoint (dpface_lib.checkpoint.load_model)")
    source.add_argument("--predictions", type=Path, help="folder of <sample_id>.npz predictions")
    source.add_argument("--model", choices=("constant", "silhouette", "bowl-oracle", "block-matching"),
                        help="a reference row without a checkpoint (dpface_lib.references), fitted on the "
                             "training split and tuned on val.txt where the set has one")
    parser.add_argument("--data-root", type=Path, default=None, help="dataset root (default: data_samples/)")
    parser.add_argument("--split", default="test", help="split file name without .txt (default: test)")
    parser.add_argument("--kind", default=None, choices=("auto", *KINDS),
                        help="layout of --data-root (default facedp; see dpface_lib.datasets)")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for per_sample/aggregate tables (new or empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output folders whole")
    parser.add_argument("--name", default=None,
                        help="value of the 'model' column (default: file/folder name)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save-predictions", type=Path, default=None,
                        help="also save the checkpoint's predictions as <dir>/<sample_id>.npz")
    parser.add_argument("--disp-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                        help="block matching on a --kind set: search range (px; default per set)")
    parser.add_argument("--window", type=int, default=None, help="block matching: window (px; per set)")
    parser.add_argument("--smooth-sigma", type=float, default=None,
                        help="block matching on a --kind set: smoothing sigma (px; default per set)")
    args = parser.parse_args(argv)
    from dpface_lib.data import DatasetError, FaceDPDataset, resolve_data_root

    root = resolve_data_root(args.data_root, relative_to=Path.cwd())
    try:
        with ExitStack() as stack:  # both output folders appear whole at the end, or not at all
            out = stack.enter_context(atomic_folder(args.out, overwrite=args.overwrite))
            save_dir = None
            if args.save_predictions is not None:
                save_dir = stack.enter_context(atomic_folder(args.save_predictions, overwrite=args.overwrite,
                                                              option="--save-predictions"))
            kind = args.kind
            if kind == "auto":
                from dpface_lib.datasets import detect_kind

                kind = detect_kind(root, args.split)
            if kind not in (None, "facedp"):
                from dpface_lib.datasets import open_dataset

                if args.model is not None:  # classical rows on a real set (dpface_lib.references_real)
                    from dpface_lib.references_real import real_reference_frame

                    options = {"disp_range": args.disp_range, "window": args.window,
                               "smooth_sigma": args.smooth_sigma}
                    frame = real_reference_frame(args.model, root, args.split, kind, options, progress=True)
                    frame["model"] = args.name or frame["model"]
                elif args.checkpoint is None or save_dir is not None:
                    raise EvaluationError(f"--kind {kind}: evaluate a --checkpoint, without "
                                          "--save-predictions (saved predictions follow the facedp layout)")
                else:
                    frame = evaluate_dp_dataset(load_model(args.checkpoint, map_location="cpu"),
                                                open_dataset(root, args.split, kind),
                                                name=args.name or args.checkpoint.stem, progress=True)
            elif args.model is not None:
                frame = reference_tables(root, args.split, [args.model], batch_size=max(1, args.batch_size),
                                         progress=True)[args.model.replace("-", "_")]
                if args.name:
                    frame["model"] = args.name
            elif args.checkpoint is not None:
                frame = evaluate_checkpoint(args.checkpoint, root, args.split, name=args.name,
                                            batch_size=args.batch_size, device=args.device,
                                            save_dir=save_dir, progress=True)
            else:
                frame = evaluate_predictions(args.predictions, FaceDPDataset(root, args.split),
                                             name=args.name, progress=True)
            written = write_tables(frame, out)
    except (EvaluationError, DatasetError, CheckpointError, FileExistsError) as exc:
        print(f"dpface eval: {exc}", file=sys.stderr)
        return 2
    paths = {key: args.out / path.name for key, path in written.items()}  # the folder now stands at --out
    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(aggregate(frame).round(4).to_string(index=False))
    for reason in sorted(set(frame.get("missing_gt", pd.Series(dtype=str)).dropna()) - {""}):
        print(f"NaN metrics: {reason}")
    print(f"wrote {paths['per_sample_csv']} ({len(frame)} rows) and {paths['aggregate_csv']}")
    return 0
