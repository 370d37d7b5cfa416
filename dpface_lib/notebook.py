"""Helpers shared by the notebooks: one setup call, quiet training output, sentences rendered from a run's
variables, and paths shown without the machine's folders.

- :func:`setup_notebook` seeds everything, sets display defaults and silences Lightning's banners
  (:func:`quiet_lightning`).
- :func:`batch_run` tells a pipeline run (``dpface pipeline`` sets :data:`BATCH_ENV`) from a live one;
  :func:`progress` and :func:`show_progress` give widget progress bars in the lab and none in a pipeline run.
- :func:`say` renders a markdown sentence built from the run's variables, so that the prose of an executed
  notebook quotes that run's numbers (``tests/notebooks/test_prose_numbers.py`` checks the prose).
- :func:`short_path` shows a path relative to the kit, the runs folder or the home folder.
- :func:`camera_setup` gives the optics of the benchmark camera or of the pipeline's teaching camera.
"""

from __future__ import annotations

import logging
import os
import random
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dpface_lib import DATA_SAMPLES, REPO_ROOT, RUNS_DIR
from dpface_lib.data import resolve_data_root  # noqa: F401  (notebooks import it from here)

__all__ = ["BATCH_ENV", "batch_run", "camera_setup", "progress", "quiet_lightning", "resolve_data_root",
           "say", "setup_notebook", "short_path", "show_progress"]

#: Environment variable set (to ``1``) by ``dpface pipeline`` for the kernels of the notebooks it runs.
BATCH_ENV = "DPFACE_NOTEBOOK_BATCH"

T = TypeVar("T")


def setup_notebook(seed: int = 0, *, torch_threads: int | None = None) -> dict[str, Path]:
    """Seed python/numpy/torch, set compact print options and plot defaults, silence Lightning's banners.

    Returns the kit's standard paths (``repo``, ``data_samples``, ``runs``) so a notebook can
    refer to them without guessing its working directory.
    """
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - notebooks that use the legacy global RNG stay reproducible
    np.set_printoptions(precision=4, suppress=True, linewidth=110)
    try:
        import torch

        torch.manual_seed(seed)
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    try:
        import matplotlib

        matplotlib.rcParams.update({"figure.dpi": 90, "figure.figsize": (8, 4), "image.cmap": "viridis"})
    except ImportError:  # pragma: no cover
        pass
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    quiet_lightning()
    return {"repo": REPO_ROOT, "data_samples": DATA_SAMPLES, "runs": RUNS_DIR}


def quiet_lightning() -> None:
    """Silence Lightning's informational output: the accelerator banner ("GPU available: ..."), the
    "Tip:" lines and its advisory warnings (e.g. about ``limit_val_batches`` or few data-loader workers).

    Lightning's errors and real warnings from the kit's own code still show. Idempotent.
    """
    # Lightning's info lines go through these two loggers; a level set on them survives the import of
    # lightning (which resets only its top-level loggers), so this works before or after that import.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning(\.|_|$)")
    warnings.filterwarnings("ignore", module=r"pytorch_lightning")


def batch_run() -> bool:
    """True in a notebook run by ``dpface pipeline`` (no one watches it: no progress bars)."""
    return os.environ.get(BATCH_ENV, "") not in ("", "0")


def show_progress() -> bool:
    """Whether to draw progress bars: yes in a live notebook (as widgets), no in a pipeline run.

    Pass it on, e.g. ``train(..., progress_bar=show_progress())``.
    """
    return not batch_run()


def progress(iterable: Iterable[T], **tqdm_kwargs: Any) -> Iterator[T]:
    """``iterable`` with a progress bar in a live notebook (``tqdm.auto``: a widget in the lab) and without
    one in a pipeline run, where a bar would only leave text behind."""
    if batch_run():
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, **tqdm_kwargs)


def say(text: str) -> None:
    """Show ``text`` (markdown, usually an f-string of this run's numbers) as a rendered paragraph.

    A sentence that quotes a result is written this way rather than typed into a markdown cell, so that the
    executed notebook always states the numbers of its own run. Outside IPython the text is printed.
    """
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython comes with the notebook extra
        print(text)
        return
    if get_ipython() is None:
        print(text)
        return
    display(Markdown(text))


def short_path(path: str | os.PathLike, *bases: str | os.PathLike) -> str:
    """``path`` as a string without the machine's folders, for printing in a notebook.

    Relative to the first of ``bases`` (e.g. the run folder) that contains it, else to the runs folder's
    parent (the kit), else ``~/...`` under the home folder, else ``.../<last two parts>``.
    """
    p = Path(path).expanduser().resolve()
    for base in (*bases, REPO_ROOT):
        base = Path(base).expanduser().resolve()
        if p.is_relative_to(base):
            return p.relative_to(base).as_posix()
    home = Path.home().resolve()
    if p.is_relative_to(home) and p != home:
        return "~/" + p.relative_to(home).as_posix()
    return ".../" + "/".join(p.parts[-2:]) if len(p.parts) > 2 else p.as_posix()


def camera_setup(camera: str = "teaching", pipeline_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """The optics that notebook 02 works out, for the benchmark camera or the pipeline's teaching camera.

    Args:
        camera: ``"benchmark"`` (the face benchmark's metadata: :data:`~dpface_lib.geometry.BENCHMARK_OPTICS`,
            its stored-image ``fy`` and sensor ``k``) or ``"teaching"`` (camera 1 of the first person's rig in
            the set that ``pipeline_file``'s ``dataset:`` section generates, read through the simulator's own
            option parser and rig, so it follows any change of the simulator's camera).
        pipeline_file: default ``pipeline.yaml`` of the kit.

    Returns ``focus_mm``, ``f_number``, ``focal_mm``, ``pixel_um`` (full-resolution pitch whose focal length
    in px, times ``resize``, is the stored ``fy_px``), ``fy_px`` (K[1, 1] of the stored image), ``resize``,
    ``k_dp`` (disparity per CoC px), ``size`` ((H, W) stored px or None), ``label``, ``cameras``
    (``{camera index: (a, b)}`` of the rig: the benchmark's calibration table, or the simulated rig's thin
    lens) and ``search_px`` ((min, max) disparity the cost-volume models search for that camera: PSMNet's
    ``full`` or ``tiny`` profile).

    Raises:
        ValueError: an unknown ``camera`` or a pipeline file without a ``dataset:`` section.
    """
    from dpface_lib import geometry as geo

    if camera == "benchmark":
        optics, fy = geo.BENCHMARK_OPTICS, 6466.56  # K[1, 1] of the benchmark's stored images
        return {"focus_mm": optics.focus_mm, "f_number": optics.f_number, "focal_mm": optics.focal_mm,
                "pixel_um": optics.pixel_um, "fy_px": fy, "resize": fy / optics.fy_full_px,
                "k_dp": geo.BENCHMARK_K_DP, "size": None, "label": "the face benchmark's camera",
                "cameras": dict(geo.BENCHMARK_CAMERA_AB), "search_px": _search_range("full")}
    if camera != "teaching":
        raise ValueError(f"camera must be 'benchmark' or 'teaching', got {camera!r}")
    from dpface_lib.pipeline import dataset_options
    from dpface_lib.simulate import parse_args
    from dpface_lib.simulate.cache import simulate_argv
    from dpface_lib.simulate.optics import disparity_per_coc
    from dpface_lib.simulate.writer import group_rig

    pipeline_file = Path(pipeline_file) if pipeline_file is not None else REPO_ROOT / "pipeline.yaml"
    options = dataset_options(pipeline_file)
    if not options:
        raise ValueError(f"{pipeline_file}: no 'dataset:' section, so there is no teaching camera")
    cfg = parse_args([*simulate_argv(options), "--out", str(RUNS_DIR / "unused")])  # parsed, nothing written
    rig = group_rig(cfg, 0)
    k = disparity_per_coc(getattr(cfg, "dp_tau", cfg.tau), cfg.psf)  # the softness the simulator uses
    fy = float(rig[0].K[1, 1])
    lens = rig[0].optics  # its pixel_um is the stored-image pitch 1000 f / fy
    return {"focus_mm": lens.focus_mm, "f_number": lens.f_number, "focal_mm": lens.focal_mm,
            "pixel_um": lens.pixel_um, "fy_px": fy, "resize": fy / lens.fy_full_px,
            "k_dp": k, "size": (cfg.height, cfg.width),
            "label": f"the teaching set's camera ({getattr(cfg, 'camera', 'rig')}, {pipeline_file.name})",
            "cameras": {c.index: c.ab(k) for c in rig}, "search_px": _search_range("tiny")}


def _search_range(profile: str) -> tuple[float, float]:
    """(min_disp, max_disp) px that the cost-volume models search in ``profile`` (PSMNet's config)."""
    from dpface_lib.models import load_config

    config = load_config("psmnet")
    args = {**config["model"]["args"], **config["profiles"][profile].get("model", {})}
    return float(args["min_disp"]), float(args["max_disp"])
