"""Helpers shared by the notebooks: one setup call for seeds and display options."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from dpface_lib import DATA_SAMPLES, REPO_ROOT, RUNS_DIR
from dpface_lib.data import resolve_data_root  # noqa: F401  (notebooks import it from here)


def setup_notebook(seed: int = 0, *, torch_threads: int | None = None) -> dict[str, Path]:
    """Seed python/numpy/torch, set compact print options and plot defaults.

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
    return {"repo": REPO_ROOT, "data_samples": DATA_SAMPLES, "runs": RUNS_DIR}
