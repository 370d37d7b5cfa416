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
#: 2: the default face model is ict (was james); 3: camera models, tau follows the f-number
SIMULATOR_VERSION = 3

_OPTION_NAMES = ("camera", "persons", "test_persons", "val_persons", "size", "seed", "views_per_person",
                 "lights_per_view", "f_number", "tau", "jpeg_quality", "cameras", "lights", "expressions",
                 "positions", "directions", "no_noise", "psf", "layout", "face_model")


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


def _relief(root: Path, split: str, k: float, max_samples: int = 64) -> dict[str, Any]:
    """Disparity facts of the faces of ``split`` (medians over up to ``max_samples`` views):

    - ``span_px``: the face's 5th-95th percentile disparity span, and ``benchmark_span_px`` for the same
      depth maps through the benchmark camera's calibrated ``a`` (its stored resolution);
    - ``relief_beyond_bowl_px``: the mean absolute relief left after each map's best-fit quadratic surface
      over the mask (:mod:`dpface_lib.relief`): nose, brows, eye sockets and lips, in px;
    - ``coc_px``: the 5th-95th percentile of the face's blur-circle diameter ``|d| / k`` over all views;
    - ``level_std_px`` and ``disparity_range_px``: spread and range of the per-view median disparity."""
    from dpface_lib.data import FaceDPDataset, evenly_spaced
    from dpface_lib.geometry import BENCHMARK_CAMERA_AB
    from dpface_lib.relief import mean_abs_relief

    dataset = FaceDPDataset(root, split)
    picks = evenly_spaced(len(dataset), max_samples)
    span, bench, level, relief, coc = [], [], [], [], []
    for i in picks:
        s = dataset[int(i)]
        mask = s["mask"].numpy().astype(bool)
        d, z = s["disparity"].numpy()[mask], s["depth"].numpy()[mask]
        lo, hi = np.percentile(d, [5, 95])
        span.append(hi - lo)
        level.append(float(np.median(d)))
        relief.append(mean_abs_relief(s["disparity"].numpy(), mask))
        coc.append(np.abs(d) / k)
        a_bench = abs(BENCHMARK_CAMERA_AB[int(s["meta"]["camidx"])][0])
        ilo, ihi = np.percentile(1.0 / z, [5, 95])
        bench.append(a_bench * (ihi - ilo))
    coc_lo, coc_hi = np.percentile(np.concatenate(coc), [5, 95])
    return {"span_px": float(np.median(span)), "benchmark_span_px": float(np.median(bench)),
            "relief_beyond_bowl_px": float(np.median(relief)), "coc_px": [float(coc_lo), float(coc_hi)],
            "level_std_px": float(np.std(level)),
            "disparity_range_px": [float(np.min(level)), float(np.max(level))]}


def data_card(root: str | os.PathLike, argv: list[str], counts: Mapping[str, int]) -> dict[str, Any]:
    """``{"facts": {...}, "markdown": str}`` describing a generated set (see the module docstring)."""
    from dpface_lib.simulate import parse_args
    from dpface_lib.simulate.optics import disparity_per_coc
    from dpface_lib.simulate.rig import RIGS

    root = Path(root)
    cfg = parse_args([*argv, "--out", str(root)])
    k = disparity_per_coc(cfg.dp_tau, cfg.psf)
    splits = [s for s in ("train", "val", "test") if (root / f"{s}.txt").is_file()]
    split_groups = {s: (root / f"{s}.txt").read_text().split() for s in splits}
    n_json = {s: sum(len(list((root / g / "JSON").glob("INFO_*.json"))) for g in groups)
              for s, groups in split_groups.items()}
    meta = np.load(root / split_groups["train"][0] / "CALIBRATION" / "Metadata.npy", allow_pickle=False)
    relief = _relief(root, "test", k)
    camera = RIGS[cfg.camera]
    facts = {
        "command": "dpface simulate " + " ".join(argv),
        "simulator_version": SIMULATOR_VERSION,
        "camera": cfg.camera,
        "persons": {s: len(g) for s, g in split_groups.items()},
        "samples": n_json,
        "views": int(counts.get("views", 0)),
        "optics": {"focal_mm": float(meta[0]), "focus_mm": float(meta[1]), "f_number": float(meta[2]),
                   "pixel_um": float(meta[3]), "frame_height_mm": camera.frame_height_mm},
        "dp_response": {"blur_model": cfg.psf.split("=")[0], "tau": cfg.dp_tau, "k": k},
        **relief,
    }
    roles = {"train": "training", "val": "validation: curves, recipe choices, the matcher's sigma",
             "test": "held-out test: scored once for the leaderboard"}
    rows = "\n".join(f"| {s} | {roles[s]} | {facts['persons'][s]} | {n_json[s]} |" for s in splits)
    pitch = facts["optics"]["pixel_um"]
    sensor = (f"; stored pixels of {pitch:.0f} µm are the sensor's {camera.sensor_pixel_um:g} µm "
              f"downsampled about {pitch / camera.sensor_pixel_um:.0f}x" if camera.sensor_pixel_um else "")
    md = f"""# Data card: simulated DP face teaching set

Generated by `{facts['command']}` (simulator version {SIMULATOR_VERSION}); regenerated only when these
options change.

| split | role | persons (one group each, split by person) | samples (view x light) |
|---|---|---|---|
{rows}

- Camera (`--camera {cfg.camera}`): {camera.description}{sensor}.
- Lens: {facts['optics']['focal_mm']:.0f} mm focused near {facts['optics']['focus_mm']:.0f} mm at
  **f/{facts['optics']['f_number']:g}**. DP response: blur model `{facts['dp_response']['blur_model']}`,
  tau {cfg.dp_tau:.3f} aperture radii, so **k = {k:.3f} px of disparity per px of blur** (the benchmark
  sensor's angular response, calibrated to k = 0.134 at f/5.657, seen through this aperture).
- Face disparity span (median over test views of the 5th-95th percentile): **{relief['span_px']:.2f} px**;
  the same faces through the real benchmark camera at its stored resolution span
  {relief['benchmark_span_px']:.2f} px.
- Relief beyond the bowl (median over test views of the mean absolute residual after each map's
  best-fit quadratic surface over the mask: nose, brows, eye sockets, lips):
  **{relief['relief_beyond_bowl_px']:.3f} px**.
- Blur on the face (5th-95th percentile of the CoC diameter |d| / k): {relief['coc_px'][0]:.1f} to
  {relief['coc_px'][1]:.1f} px.
- Per-view disparity level: std {relief['level_std_px']:.2f} px across test views, from
  {relief['disparity_range_px'][0]:.2f} to {relief['disparity_range_px'][1]:.2f} px (the level depends on the
  distance to the focus plane, which the affine-invariant metrics ignore).
"""
    return {"facts": facts, "markdown": md}
