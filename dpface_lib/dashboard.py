"""Per-sample error analysis over evaluated runs: the browser of notebook 07 and of ``dpface dashboard``.

A *source* is one model's evaluated run: its per-sample table (``per_sample.csv``), the folder of its saved
predictions (``predictions/<sample_id>.npz``, or none) and the dataset it was evaluated on (``data_root`` in
the ``run_info.json`` beside the table, else the caller's). :class:`SampleBrowser` sorts a source's samples by
any metric, steps through them from the worst, and shows one sample as plotly heat maps with hover readouts
(input, ground truth, the affine-aligned prediction and its error, for one model or two side by side) and a
point cloud of prediction against ground truth. The maps are in disparity px, the clouds in mm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dpface_lib.evaluate import HIGHER_IS_BETTER, RUN_INFO, load_prediction, load_runs
from dpface_lib.metrics import METRIC_KEYS, fit_affine

__all__ = ["Source", "SampleBrowser", "find_sources", "sample_figure", "ranked", "DatasetSamples"]

#: Environment variable through which ``dpface dashboard`` hands its run folders to the served notebook.
CONFIG_ENV = "DPFACE_DASHBOARD_CONFIG"


@dataclass(frozen=True)
class Source:
    """One model's evaluated run. ``table``: its per-sample rows (``sample_id`` and metric columns);
    ``predictions``: folder of ``<sample_id>.npz`` or ``None``; ``data_root``/``split``: where its samples
    are; ``rerun``: what to run to get predictions when there are none."""

    label: str
    table: pd.DataFrame
    predictions: Path | None
    data_root: Path | None
    split: str = "test"
    rerun: str = ""


def _rerun_hint(run_dir: Path, run: str) -> str:
    folder = run_dir / run
    if (folder / "checkpoints" / "last.ckpt").is_file():
        return (f"dpface eval --checkpoint {folder / 'checkpoints' / 'last.ckpt'} --out {folder / 'eval'} "
                f"--save-predictions {folder / 'predictions'}")
    if run.startswith("reference/"):
        return "the pipeline's 'classical' step (notebook 04 saves the reference rows' predictions)"
    return "the evaluation that wrote this table, with --save-predictions"


def find_sources(run_dirs: Iterable[str | os.PathLike], data_root: str | os.PathLike | None = None,
                 split: str = "test") -> list[Source]:
    """Every per-sample table below each folder of ``run_dirs`` (a pipeline run, or one evaluation).

    A table's dataset is the ``data_root`` of its ``run_info.json`` when recorded, else ``data_root`` (the
    committed ``data_samples/`` when ``None``). Labels are the model names, with the run folder's name added
    when two folders hold the same model. Raises ``FileNotFoundError`` for a folder that does not exist and
    ``ValueError`` when no table is found at all.
    """
    from dpface_lib.data import resolve_data_root

    found: list[tuple[str, Path, str, pd.DataFrame]] = []
    for run_dir in dict.fromkeys(Path(d).resolve() for d in run_dirs):  # each folder once, in order
        if not run_dir.is_dir():
            raise FileNotFoundError(f"{run_dir}: run folder does not exist")
        frame = load_runs(run_dir)
        for (model, run), table in frame.groupby(["model", "run"], sort=True):
            found.append((str(model), run_dir, str(run), table.reset_index(drop=True)))
    if not found:
        raise ValueError(f"no per_sample.csv below {', '.join(map(str, run_dirs))}: run `dpface pipeline` or "
                         "`dpface eval --out RUN_DIR` first")
    models = [model for model, *_ in found]
    sources = []
    for model, run_dir, run, table in found:
        info_path = run_dir / run / RUN_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        root = info.get("data_root") or data_root
        predictions = run_dir / run / "predictions"
        label = model if models.count(model) == 1 else f"{model} ({run_dir.name}/{run})"
        sources.append(Source(label=label, table=table,
                              predictions=predictions if predictions.is_dir() else None,
                              data_root=resolve_data_root(root), split=str(info.get("split", split)),
                              rerun=_rerun_hint(run_dir, run)))
    return sources


def ranked(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows of ``table`` from the worst ``metric`` to the best (missing values last)."""
    return table.sort_values(metric, ascending=metric in HIGHER_IS_BETTER, na_position="last",
                             kind="stable").reset_index(drop=True)


class DatasetSamples:
    """``(source, sample_id) -> sample`` as numpy arrays, opening each source's dataset once."""

    def __init__(self) -> None:
        self._sets: dict[tuple[str, str], tuple[Any, dict[str, int]]] = {}

    def __call__(self, source: Source, sample_id: str) -> dict[str, Any]:
        from dpface_lib.data import FaceDPDataset

        key = (str(source.data_root), source.split)
        if key not in self._sets:
            dataset = FaceDPDataset(source.data_root, source.split)
            self._sets[key] = (dataset, {sid: i for i, sid in enumerate(dataset.frame["sample_id"])})
        dataset, positions = self._sets[key]
        if sample_id not in positions:
            raise KeyError(f"{source.data_root}/{source.split}.txt: no sample {sample_id!r} (was the run "
                           "evaluated on another dataset? pass --data-root)")
        return _numpy(dataset[positions[sample_id]])


def _numpy(sample: dict[str, Any]) -> dict[str, Any]:
    return {k: v.numpy() if hasattr(v, "numpy") else v for k, v in sample.items()}


def aligned_disparity(sample: dict[str, Any], prediction: dict[str, np.ndarray]) -> np.ndarray:
    """The prediction's disparity (px, ``(H, W)``) mapped onto the ground truth by the robust per-sample
    affine fit that ``ai1`` applies; a depth-only prediction is taken as inverse depth first."""
    if "disparity" in prediction:
        disparity = prediction["disparity"]
    else:
        disparity = 1.0 / np.clip(prediction["depth"], 1, None)
    scale, shift = fit_affine(disparity, sample["disparity"], sample["mask"], robust=True)
    return (scale * disparity + shift).astype(np.float32)


def sample_figure(sample: dict[str, Any], aligned: dict[str, np.ndarray], *, title: str = "",
                  height: int = 330) -> Any:
    """Plotly heat maps with hover readouts: LR-sum input, ground-truth disparity, then for each model in
    ``aligned`` (``{label: (H, W) aligned disparity, px}``) the prediction and its signed error (px).

    Disparities share one colour scale; errors share a symmetric one. Pixels outside the face are blank.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    mask = np.asarray(sample["mask"], dtype=bool)
    gt = np.where(mask, sample["disparity"], np.nan)
    image = np.asarray(sample["lrsum"] if "lrsum" in sample else sample["left"], dtype=np.float32)
    grey = image.mean(axis=0) if image.ndim == 3 else image
    panels: list[tuple[str, np.ndarray, str]] = [("LR-sum input", grey, "input"),
                                                 ("ground truth (px)", gt, "disp")]
    for label, disparity in aligned.items():
        error = np.where(mask, disparity - sample["disparity"], np.nan)
        panels.append((f"{label}: aligned (px)", np.where(mask, disparity, np.nan), "disp"))
        panels.append((f"{label}: error (px)", error, "error"))
    lo, hi = np.nanpercentile(gt, [1, 99]) if mask.any() else (0.0, 1.0)
    errors = [p[1] for p in panels if p[2] == "error"]
    limit = max([float(np.nanpercentile(np.abs(e), 99)) for e in errors if np.isfinite(e).any()] + [1e-6])
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.02)
    styles = {"input": dict(colorscale="gray", zmin=0, zmax=1, showscale=False),
              "disp": dict(colorscale="Viridis", zmin=lo, zmax=hi, showscale=False),
              "error": dict(colorscale="RdBu_r", zmin=-limit, zmax=limit, showscale=True)}
    names = {"input": "intensity", "disp": "disparity", "error": "error"}
    for col, (name, values, kind) in enumerate(panels, start=1):
        hover = f"x %{{x}}, y %{{y}}<br>{names[kind]} %{{z:.4f}}<extra>{name}</extra>"
        fig.add_trace(go.Heatmap(z=values, name=name, hovertemplate=hover, **styles[kind]), row=1, col=col)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{'' if col == 1 else col}",
                         showticklabels=False, row=1, col=col)
        fig.update_xaxes(showticklabels=False, row=1, col=col)
    fig.update_annotations(font_size=11)
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=60, b=10))
    return fig


class SampleBrowser:
    """Widgets to pick a model, a sort metric and a rank (0 = worst), with buttons to step through the
    samples, an optional second model on the same sample, and the figures of :func:`sample_figure` and
    :func:`dpface_lib.viz.point_cloud_figure`.

    ``samples(source, sample_id)`` returns one ground-truth sample (default: :class:`DatasetSamples`).
    ``show`` changes the view programmatically; ``current`` says what is shown. Display ``widget``.
    """

    def __init__(self, sources: list[Source], samples: Callable[[Source, str], dict] | None = None, *,
                 metric: str = "ai1", model: str | None = None, cloud: bool = True) -> None:
        import ipywidgets as widgets

        if not sources:
            raise ValueError("SampleBrowser needs at least one source")
        self.sources = {s.label: s for s in sources}
        self.samples = samples or DatasetSamples()
        self.cloud = cloud
        metrics = [k for k in METRIC_KEYS if any(k in s.table and s.table[k].notna().any() for s in sources)]
        with_predictions = [s.label for s in sources if s.predictions is not None]
        first = model or (with_predictions or list(self.sources))[0]
        self.model = widgets.Dropdown(options=list(self.sources), value=first, description="model")
        self.compare = widgets.Dropdown(options=["(none)", *with_predictions], value="(none)",
                                        description="compare")
        self.metric = widgets.Dropdown(options=metrics, value=metric if metric in metrics else metrics[0],
                                       description="sort by")
        self.rank = widgets.IntSlider(0, 0, 0, description="rank (worst=0)", continuous_update=False,
                                      style={"description_width": "initial"})
        self.buttons = {name: widgets.Button(description=name, layout=widgets.Layout(width="80px"))
                        for name in ("worst", "◀ prev", "next ▶")}
        self.header = widgets.HTML()
        self.header.add_class("dpface-sample")
        self.maps = widgets.Output()
        self.maps.add_class("dpface-maps")
        self.points = widgets.Output()
        self.points.add_class("dpface-cloud")
        self.current: dict[str, Any] = {}
        self.figure: Any = None  # the plotly maps shown (None when the run saved no predictions)
        self.message = ""  # what is shown instead of the maps, if anything
        steps = {"worst": lambda r: 0, "◀ prev": lambda r: r - 1, "next ▶": lambda r: r + 1}
        for name, button in self.buttons.items():
            button.on_click(lambda _, step=steps[name]: self.show(rank=step(self.rank.value)))
        for box in (self.model, self.compare, self.metric, self.rank):
            box.observe(self._changed, names="value")
        self._busy = False
        self.widget = widgets.VBox([
            widgets.HBox([self.model, self.metric, self.compare]),
            widgets.HBox([self.rank, *self.buttons.values()]),
            self.header, self.maps, self.points,
        ])
        self.show()

    def _changed(self, _change: Any) -> None:
        if not self._busy:
            self.show()

    def show(self, *, model: str | None = None, metric: str | None = None, rank: int | None = None,
             compare: str | None = None) -> dict[str, Any]:
        """Show ``rank`` (0 = worst) of ``model`` sorted by ``metric``; returns :attr:`current`."""
        self._busy = True
        try:
            if model is not None:
                self.model.value = model
            if metric is not None:
                self.metric.value = metric
            if compare is not None:
                self.compare.value = compare
            rows = ranked(self.sources[self.model.value].table, self.metric.value)
            self.rank.max = max(0, len(rows) - 1)
            self.rank.value = int(np.clip(self.rank.value if rank is None else rank, 0, self.rank.max))
        finally:
            self._busy = False
        row = rows.iloc[self.rank.value]
        self.current = {"model": self.model.value, "metric": self.metric.value, "rank": self.rank.value,
                        "sample_id": row["sample_id"], "value": float(row[self.metric.value]),
                        "compare": None if self.compare.value == "(none)" else self.compare.value}
        self._render(row)
        return self.current

    def _render(self, row: pd.Series) -> None:
        from IPython.display import display

        from dpface_lib.geometry import disparity_to_depth
        from dpface_lib.viz import point_cloud_figure

        source = self.sources[self.current["model"]]
        factors = ("camidx", "lightidx", "expression", "position", "direction")
        facts = ", ".join(f"{k} {row[k]}" for k in factors if k in row)
        shown = ("ai1", "ai2", "spearman", "relief_ai1", "relief_corr", "inverted", "mean_deg")
        values = " · ".join(f"{k} {row[k]:.4f}" for k in shown if k in row and pd.notna(row[k]))
        self.header.value = (f"<b class='dpface-sample-id'>{row['sample_id']}</b> — {source.label}, rank "
                             f"{self.current['rank']} of {len(source.table)} by {self.current['metric']} "
                             f"({self.current['value']:.4f})<br>{facts}<br>{values}")
        self.maps.clear_output(wait=True)
        self.points.clear_output(wait=True)
        chosen = [source] + ([self.sources[self.current["compare"]]] if self.current["compare"] else [])
        missing = [s for s in chosen if s.predictions is None]
        self.figure, self.message = None, "\n".join(
            f"{s.label}: this run saved no predictions, so only its table can be sorted; to see its maps, "
            f"rerun {s.rerun}" for s in missing)
        if missing:
            with self.maps:
                print(self.message)
            return
        sample = self.samples(source, row["sample_id"])
        aligned = {s.label: aligned_disparity(sample, load_prediction(s.predictions, sample)) for s in chosen}
        title = f"{row['sample_id']}: {self.current['metric']} = {self.current['value']:.4f}"
        self.figure = sample_figure(sample, aligned, title=title)
        with self.maps:
            display(self.figure)
        if self.cloud:
            a, b = float(sample["a"]), float(sample["b"])
            depths = {"ground truth": sample["depth"],
                      **{f"{k} (aligned)": disparity_to_depth(v, a, b) for k, v in aligned.items()}}
            with self.points:
                display(point_cloud_figure(depths, sample["K"], sample["mask"], max_points=3000, height=380,
                                           title="point cloud (mm): prediction against ground truth"))


def app_from_environment() -> Any:
    """The dashboard of ``dpface dashboard``: run folders and options from :data:`CONFIG_ENV` (JSON)."""
    config = json.loads(os.environ.get(CONFIG_ENV, "{}"))
    sources = find_sources(config.get("runs") or [], config.get("data_root"), config.get("split", "test"))
    metric = config.get("metric", "ai1")
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    sources.sort(key=lambda s: (s.predictions is None,
                                sign * s.table[metric].mean() if metric in s.table else 0.0))
    return SampleBrowser(sources, metric=metric).widget
