"""DP-Face kit: facial depth and surface normals from a single dual-pixel camera.

One module per concept: ``geometry`` (thin-lens DP model), ``data`` (benchmark-layout reader),
``simulate`` (physically based DP face generator), ``metrics``, ``losses``, ``models``, ``train``,
``evaluate`` and ``pipeline`` (papermill runner). Modules are imported on demand so that
``import dpface_lib`` stays fast.
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
