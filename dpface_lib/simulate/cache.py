"""Generated datasets cached by a hash of their generation options, with a data card.

The pipeline's teaching set is made by ``dpface simulate`` once and reused: :func:`cached_dataset`
turns an option mapping (the ``dataset:`` section of ``pipeline.yaml``) into the simulator's command
line, hashes it together with :data:`SIMULATOR_VERSION`, and generates the set into
``CACHE/<prefix>-<hash>/`` only when that folder does not exist yet. Generation writes into a temporary
sibling folder that is renamed into place when complete, so an interrupted run never leaves a folder
that a later run would take for a finished set.

Each set carries ``DATACARD.md`` and ``datacard.json``: the command, the split sizes, the optics and
the face relief in px of disparity, next to what the same faces give through the real benchmark's lens
at its stored resolution.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dpface_lib.fileio import atomic_write_bytes

__all__ = ["SIMULATOR_VERSION", "cached_dataset", "data_card", "simulate_argv"]

#: Bumped whenever the simulator's output changes for the same options (invalidates cached sets).
SIMULATOR_VERSION = 2  # 2: the default face model is ict (was james)

_OPTION_NAMES = ("persons", "test_persons", "size", "seed", "views_per_person", "lights_per_view",
                 "f_number", "tau", "jpeg_quality", "cameras", "lights", "expressions", "positions",
                 "directions", "no_noise", "psf", "layout", "face_model")


def simulate_argv(options: Mapping[str, Any]) -> list[str]:
    """``dpface simulate`` arguments (without ``--out``/``--workers``) for an option mapping.

    Keys are the long option names with ``_`` for ``-`` (``persons``, ``size: 160x128``, ``f_number``,
    ...); lists become comma-separated values; ``no_noise: true`` becomes a flag.

    Raises:
        ValueError: an unknown key (the message lists the accepted ones).
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(f"dataset options {unknown} unknown; accepted: {', '.join(_OPTION_NAMES)}")
    argv: list[str] = []
    for key in _OPTION_NAMES:
        if key not in options or options[key] is None:
            continue
        value = options[key]
        flag = "--" + key.replace("_", "-")
        if key == "no_noise":
            argv += [flag] if value else []
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def _fingerprint(argv: list[str]) -> str:
    text = json.dumps({"version": SIMULATOR_VERSION, "argv": argv})
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_dataset(options: Mapping[str, Any], cache_dir: str | os.PathLike, *, prefix: str = "teach",
                   workers: int | None = None, progress: bool = True) -> Path:
    """The root of the set described by ``options``, generated into ``cache_dir`` if not cached yet.

    Args:
        options: simulator options (see :func:`simulate_argv`).
        cache_dir: folder holding cached sets (created if missing).
        prefix: folder name prefix; the set lives in ``cache_dir/<prefix>-<12 hex of the hash>``.
        workers: simulator processes (default: all CPU cores); they do not change the result.
        progress: show the simulator's progress bar.

    Returns:
        The dataset root (with ``train.txt``, ``test.txt`` and ``DATACARD.md``).
    """
    from dpface_lib.simulate import parse_args
    from dpface_lib.simulate.writer import generate

    argv = simulate_argv(options)
    cache = Path(cache_dir)
    final = cache / f"{prefix}-{_fingerprint(argv)}"
    if (final / "datacard.json").is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    n_workers = workers or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1)
    quiet = [] if progress else ["--quiet"]
    cfg = parse_args([*argv, "--out", str(tmp), "--workers", str(n_workers), *quiet])
    try:
        counts = generate(cfg)
        card = data_card(tmp, argv, counts)
        atomic_write_bytes(tmp / "DATACARD.md", card["markdown"].encode())
        atomic_write_bytes(tmp / "datacard.json", json.dumps(card["facts"], indent=1).encode())
        if final.exists():  # another process finished the same set meanwhile
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _relief(root: Path, split: str, max_samples: int = 64) -> dict[str, float]:
    """Median over views of the face's 5th-95th percentile disparity span (px), for this set and for the
    same depth maps through the benchmark camera's calibrated ``a`` (its stored resolution)."""
    from dpface_lib.data import FaceDPDataset, evenly_spaced
    from dpface_lib.geometry import BENCHMARK_CAMERA_AB

    dataset = FaceDPDataset(root, split)
    picks = evenly_spaced(len(dataset), max_samples)
    sim, bench, level = [], [], []
    for i in picks:
        s = dataset[int(i)]
        mask = s["mask"].numpy().astype(bool)
        d, z = s["disparity"].numpy()[mask], s["depth"].numpy()[mask]
        lo, hi = np.percentile(d, [5, 95])
        sim.append(hi - lo)
        level.append(float(np.median(d)))
        a_bench = abs(BENCHMARK_CAMERA_AB[int(s["meta"]["camidx"])][0])
        ilo, ihi = np.percentile(1.0 / z, [5, 95])
        bench.append(a_bench * (ihi - ilo))
    return {"relief_px": float(np.median(sim)), "benchmark_relief_px": float(np.median(bench)),
            "level_std_px": float(np.std(level)),
            "disparity_range_px": [float(np.min(level)), float(np.max(level))]}


def data_card(root: str | os.PathLike, argv: list[str], counts: Mapping[str, int]) -> dict[str, Any]:
    """``{"facts": {...}, "markdown": str}`` describing a generated set (see the module docstring)."""
    root = Path(root)
    split_groups = {s: (root / f"{s}.txt").read_text().split() for s in ("train", "test")}
    n_json = {s: sum(len(list((root / g / "JSON").glob("INFO_*.json"))) for g in groups)
              for s, groups in split_groups.items()}
    meta = np.load(root / split_groups["train"][0] / "CALIBRATION" / "Metadata.npy", allow_pickle=False)
    relief = _relief(root, "test")
    facts = {
        "command": "dpface simulate " + " ".join(argv),
        "simulator_version": SIMULATOR_VERSION,
        "persons": {s: len(g) for s, g in split_groups.items()},
        "samples": n_json,
        "views": int(counts.get("views", 0)),
        "optics": {"focal_mm": float(meta[0]), "focus_mm": float(meta[1]), "f_number": float(meta[2]),
                   "pixel_um": float(meta[3])},
        **relief,
    }
    md = f"""# Data card: simulated DP face teaching set

Generated by `{facts['command']}` (simulator version {SIMULATOR_VERSION}); regenerated only when these
options change.

| | train | test |
|---|---|---|
| persons (one group each, split by person) | {facts['persons']['train']} | {facts['persons']['test']} |
| samples (view x light) | {n_json['train']} | {n_json['test']} |

- Lens: {facts['optics']['focal_mm']:.0f} mm focused near {facts['optics']['focus_mm']:.0f} mm at
  **f/{facts['optics']['f_number']:g}**, with the benchmark sensor's DP response (k = 0.1337 px of disparity
  per px of blur). The aperture is wider than the benchmark's f/5.657 so that the small stored images keep a
  learnable DP signal.
- Face relief (median over test views of the 5th-95th percentile disparity span):
  **{facts['relief_px']:.2f} px** here; the same faces through the real benchmark camera at its stored
  resolution (|a| of its calibration) span **{facts['benchmark_relief_px']:.2f} px**.
- Per-view disparity level: std {facts['level_std_px']:.2f} px across test views (the level depends on the
  distance to the focus plane, which the affine-invariant metrics ignore).
"""
    return {"facts": facts, "markdown": md}
