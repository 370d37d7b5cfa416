"""DP-Face kit: facial depth and surface normals from a single dual-pixel camera.

One module per concept, importing only downwards (``tests/test_architecture.py`` checks it):

- foundations: ``fileio`` (atomic writes), ``camera`` (intrinsics, back-projection, normals),
  ``geometry`` (thin-lens DP model; re-exports ``camera``), ``layout``
  (the benchmark's files one by one), ``data`` (index, samples, torch dataset), ``transforms``;
- the simulator: ``simulate`` (physically based DP face generator and the teaching-set cache);
- learning: ``models`` (registry and networks), ``losses``, ``config`` (training configs, ``--set``),
  ``sampling`` (seeded order, RNG state), ``datamodule`` (training loaders), ``checkpoint``, ``train``,
  ``classical`` (reference matchers);
- scoring: ``metrics`` (one implementation per metric, ``batch_metrics``), ``evaluate`` (tables,
  leaderboards), ``corruptions`` (ground truth with known errors);
- use: ``predict`` and ``demo`` (the shipped model), ``viz`` (figures), ``notebook``, ``pipeline``
  (papermill runner), ``cli`` (the ``dpface`` command and its error edge).

Modules are imported on demand so that ``import dpface_lib`` stays fast.
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

#: Repository root when the kit is installed in editable mode (``make setup``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: The small generated set committed with the kit.
DATA_SAMPLES = REPO_ROOT / "data_samples"
#: Where pipeline runs, executed notebooks and tables go.
RUNS_DIR = REPO_ROOT / "runs"

__all__ = ["DATA_SAMPLES", "REPO_ROOT", "RUNS_DIR", "__version__"]
