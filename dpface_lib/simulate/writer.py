"""Write a simulated set in the benchmark layout (``docs/dataset_layout.md``).

One group folder per person (``sim_group001`` ...), the per-group ``CALIBRATION/*.npy`` tables, then per
(camera, view) the ground-truth maps and per light the three JPEGs and the JSON. Every file is written
to a temporary name in its folder and moved into place with ``os.replace``; the JSON of a sample is
written last, so an interrupted run never leaves a sample the reader would accept (a sample exists only
through its JSON). ``train.txt`` / ``test.txt`` are written after all groups.

Determinism: every random draw comes from ``numpy.random.default_rng`` seeded by ``(seed, ...)`` tuples
(person, camera, view, light), so one sample can be regenerated alone with identical arrays.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpface_lib.fileio import atomic_save_npy, atomic_write_bytes
from dpface_lib.geometry import intrinsics_to_vector
from dpface_lib.simulate import optics as dp
from dpface_lib.simulate.face import DIRECTIONS, EXPRESSIONS, sample_person
from dpface_lib.simulate.ict_face import face_model, load_ict_model
from dpface_lib.simulate.rig import LIGHT_DIRECTIONS, POSITIONS, RIGS, Camera, build_rig
from dpface_lib.simulate.scene import form_images, render_view

#: every (expression, position, direction) in the order that defines ``viewidx`` (1-based)
ALL_VIEWS: tuple[tuple[str, str, str], ...] = tuple(
    itertools.product(EXPRESSIONS, tuple(POSITIONS), DIRECTIONS)
)


@dataclass
class SimConfig:
    """What to generate. Subsets pick cameras (1..8), lights (1..6) and view factors by name."""

    out: Path
    persons: int = 4
    height: int = 192
    width: int = 256
    seed: int = 0
    cameras: tuple[int, ...] = tuple(range(1, 9))
    lights: tuple[int, ...] = tuple(range(1, 7))
    expressions: tuple[str, ...] = EXPRESSIONS
    positions: tuple[str, ...] = tuple(POSITIONS)
    directions: tuple[str, ...] = DIRECTIONS
    test_persons: int = 1
    val_persons: int = 0  # persons in val.txt (between train and test); 0 writes no val.txt
    views_per_person: int = 0  # 0 = every selected view
    lights_per_view: int = 0  # 0 = every selected light
    f_number: float | None = None  # None: the camera model's (rig.RIGS)
    tau: float | None = None  # None: the sensor's response at this f-number (optics.sensor_tau)
    psf: str = "soft"
    camera: str = "benchmark-lens"  # the rig's camera model (rig.RIGS)
    face_model: str = "ict"
    jpeg_quality: int = 92
    noise: bool = True
    progress: bool = True
    workers: int = 1

    @property
    def lens_f_number(self) -> float:
        """The f-number used: ``f_number``, else the camera model's."""
        return RIGS[self.camera].f_number if self.f_number is None else float(self.f_number)

    @property
    def dp_tau(self) -> float:
        """The half-pixel softness used: ``tau``, else the sensor's at :attr:`lens_f_number`."""
        return dp.sensor_tau(self.lens_f_number) if self.tau is None else float(self.tau)

    def validate(self) -> None:
        if self.camera not in RIGS:
            raise ValueError(f"--camera must be one of {sorted(RIGS)}, got {self.camera!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.persons < 1:
            raise ValueError(f"--persons must be >= 1, got {self.persons}")
        if not 0 <= self.test_persons < self.persons or (self.persons == 1 and self.test_persons):
            raise ValueError(f"--test-persons must be in [0, persons - 1], got {self.test_persons}")
        if not 0 <= self.val_persons < self.persons - self.test_persons:
            raise ValueError(f"--val-persons must leave at least one training person: got {self.val_persons} "
                             f"with --persons {self.persons} and --test-persons {self.test_persons}")
        for name, values, allowed in (
            ("cameras", self.cameras, range(1, 9)),
            ("lights", self.lights, range(1, 7)),
            ("expressions", self.expressions, EXPRESSIONS),
            ("positions", self.positions, tuple(POSITIONS)),
            ("directions", self.directions, DIRECTIONS),
        ):
            bad = [v for v in values if v not in allowed]
            if not values or bad:
                raise ValueError(
                    f"--{name}: unknown or empty selection {bad or values}; allowed {list(allowed)}"
                )
        if self.height % 32 or self.width % 32:
            raise ValueError(
                f"--size must be multiples of 32 (models downsample by 16/32), got {self.height}x{self.width}"
            )


def group_name(person: int) -> str:
    return f"sim_group{person:03d}"


def person_plan(
    cfg: SimConfig, person: int
) -> tuple[dict, list[tuple[int, tuple[str, str, str]]], np.ndarray]:
    """A person's parameters, their views ``[(viewidx, (expression, position, direction)), ...]`` and the
    wall texture phases; all drawn from ``rng(seed, person)``."""
    rng = np.random.default_rng([cfg.seed, person])
    params = sample_person(rng)
    wall_phase = rng.uniform(0.0, 2 * np.pi, size=4)
    if cfg.face_model == "ict":  # drawn after the scan's draws, so a james set is unchanged
        params["identity"] = load_ict_model().sample_identity(rng)
    views = [
        (i + 1, v)
        for i, v in enumerate(ALL_VIEWS)
        if v[0] in cfg.expressions and v[1] in cfg.positions and v[2] in cfg.directions
    ]
    if cfg.views_per_person and cfg.views_per_person < len(views):
        pick = np.sort(rng.choice(len(views), size=cfg.views_per_person, replace=False))
        views = [views[i] for i in pick]
    return params, views, wall_phase


def view_lights(cfg: SimConfig, person: int, camidx: int, viewidx: int) -> list[int]:
    """The lights rendered for one (person, camera, view)."""
    lights = list(cfg.lights)
    if cfg.lights_per_view and cfg.lights_per_view < len(lights):
        rng = np.random.default_rng([cfg.seed, person, camidx, viewidx, 0])
        lights = sorted(int(x) for x in rng.choice(lights, size=cfg.lights_per_view, replace=False))
    return lights


def group_rig(cfg: SimConfig, person: int) -> list[Camera]:
    """All 8 cameras of a group's rig (calibration drawn from ``rng(seed, person, 999)``)."""
    return build_rig(cfg.height, cfg.width, np.random.default_rng([cfg.seed, person, 999]), cfg.lens_f_number,
                     rig=cfg.camera)


def write_calibration(group_dir: Path, cams: list[Camera], k: float) -> None:
    """``CALIBRATION/{intrinsic, pose, light, Metadata, Disp2Depth}.npy`` (float64, no pickles)."""
    cal = group_dir / "CALIBRATION"
    o = cams[0].optics
    atomic_save_npy(cal / "intrinsic.npy", np.stack([c.K for c in cams]).astype(np.float64))
    atomic_save_npy(cal / "pose.npy", np.stack([c.pose for c in cams]).astype(np.float64))
    atomic_save_npy(cal / "light.npy", LIGHT_DIRECTIONS.astype(np.float64))
    atomic_save_npy(
        cal / "Metadata.npy",
        np.array(
            [o.focal_mm, float(np.mean([c.optics.focus_mm for c in cams])), o.f_number, o.pixel_um],
            dtype=np.float64,
        ),
    )
    atomic_save_npy(cal / "Disp2Depth.npy", np.array([c.ab(k) for c in cams], dtype=np.float64))


def sample_json(
    group: str,
    person: int,
    gender: str,
    cam: Camera,
    viewidx: int,
    view: tuple[str, str, str],
    light: int,
    k: float,
) -> dict:
    """The ``INFO_{cam}_{view}_{light}.json`` content (PARAMS values as literal strings)."""
    K, pose = cam.K, cam.pose
    intr = intrinsics_to_vector(K)
    stem = f"{cam.index}_{viewidx}"
    paths = {
        "left": f"{group}/IMG/LEFT/IMG_{stem}_{light}.JPG",
        "right": f"{group}/IMG/RIGHT/IMG_{stem}_{light}.JPG",
        "lrsum": f"{group}/IMG/LRSUM/IMG_{stem}_{light}.JPG",
        "depth": f"{group}/DEPTH/DEPTH_{stem}.npy",
        "normal": f"{group}/NORMAL/NORMAL_{stem}.npy",
        "mask": f"{group}/MASK/MASK_{stem}.npy",
        "albedo": f"{group}/ALBEDO/ALBEDO_{stem}.npy",
    }

    def lit(values: Iterable[float]) -> str:
        return ", ".join(repr(float(x)) for x in values)

    return {
        "INFO": {
            "valid": True,
            "group": group,
            "person": person,
            "gender": gender,
            "camidx": cam.index,
            "lightidx": light,
            "viewidx": viewidx,
            "expression": view[0],
            "position": view[1],
            "direction": view[2],
        },
        "PATH": paths,
        "PARAMS": {
            "intrinsic": f"array([{lit(intr)}])",
            "pose": f"array([{lit(pose[:3, :4].reshape(-1))}])",
            "Lvalue": f"[{lit(LIGHT_DIRECTIONS[light - 1])}]",
            "abvalue": f"[{lit(cam.ab(k))}]",
        },
    }


def write_view(
    cfg: SimConfig,
    root: Path,
    person: int,
    params: dict,
    wall_phase: np.ndarray,
    cam: Camera,
    viewidx: int,
    view: tuple[str, str, str],
    k: float,
    fail_after: int | None = None,
) -> int:
    """Render and write one (camera, view): its maps, then per light the JPEGs and finally the JSON.

    ``fail_after`` (testing hook) raises ``RuntimeError`` after that many files of this view are written.
    Returns the number of samples (JSON files) written.
    """
    group = group_name(person)
    gdir = root / group
    stem = f"{cam.index}_{viewidx}"
    written = 0

    def check() -> None:
        nonlocal written
        written += 1
        if fail_after is not None and written > fail_after:
            raise RuntimeError(f"simulated failure after {fail_after} files")

    geo = render_view(face_model(cfg.face_model), params, *view, cam, wall_phase)
    for sub, arr in (
        ("DEPTH", geo.depth.astype(np.float32)),
        ("NORMAL", geo.normal.astype(np.float16)),
        ("MASK", geo.mask.astype(bool)),
        ("ALBEDO", geo.albedo.astype(np.float16)),
    ):
        atomic_save_npy(gdir / sub / f"{sub}_{stem}.npy", arr)
        check()
    n = 0
    for light in view_lights(cfg, person, cam.index, viewidx):
        rng = np.random.default_rng([cfg.seed, person, cam.index, viewidx, light])
        imgs = form_images(geo, cam, LIGHT_DIRECTIONS[light - 1], rng, tau=cfg.dp_tau, noise=cfg.noise,
                           psf=cfg.psf)
        for side, folder in (("left", "LEFT"), ("right", "RIGHT"), ("lrsum", "LRSUM")):
            atomic_write_bytes(
                gdir / "IMG" / folder / f"IMG_{stem}_{light}.JPG",
                dp.encode_jpeg(imgs[side].numpy(), cfg.jpeg_quality),
            )
            check()
        info = sample_json(group, person, params["gender"], cam, viewidx, view, light, k)
        atomic_write_bytes(gdir / "JSON" / f"INFO_{stem}_{light}.json", json.dumps(info, indent=1).encode())
        check()
        n += 1
    return n


def write_split(root: Path, name: str, groups: list[str]) -> None:
    atomic_write_bytes(root / f"{name}.txt", ("\n".join(groups) + "\n").encode())


def _view_job(args: tuple) -> int:
    """Worker entry point: render and write one (person, camera, view); returns its sample count."""
    import torch

    cfg, person, camidx, viewidx, view, k = args
    torch.set_num_threads(1)
    params, _, wall_phase = person_plan(cfg, person)
    cam = group_rig(cfg, person)[camidx - 1]
    return write_view(cfg, Path(cfg.out), person, params, wall_phase, cam, viewidx, view, k)


# Read once by numpy's BLAS and OpenMP runtimes when a process starts; spawned workers inherit them.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Start processes with one BLAS/OpenMP thread each, and restore this process's environment after."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update({name: "1" for name in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def generate(cfg: SimConfig) -> dict[str, int]:
    """Generate the whole set described by ``cfg``; returns counts (groups, views, samples).

    Views are independent (each draws from its own seeded generator), so ``cfg.workers > 1`` renders
    them in that many processes with identical results. Each process uses one torch thread and one BLAS
    thread: the per-layer FFTs and the rasteriser's small matrix products gain nothing from intra-op
    threads, and with two workers on two cores numpy's default OpenBLAS threads made the set 1.5x slower
    (benchmarks/bench_simulate.py).
    """
    import multiprocessing

    import torch
    from tqdm.auto import tqdm

    cfg.validate()
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):  # a set is whole once its split files exist: they come last
        (root / f"{split}.txt").unlink(missing_ok=True)
    k = dp.disparity_per_coc(cfg.dp_tau, cfg.psf)
    plans = {p: person_plan(cfg, p) for p in range(1, cfg.persons + 1)}
    for person in plans:
        write_calibration(root / group_name(person), group_rig(cfg, person), k)
    jobs = [
        (cfg, p, c, vi, v, k) for p, (_, views, _) in plans.items() for c in cfg.cameras for vi, v in views
    ]
    samples = 0
    threads = torch.get_num_threads()
    try:
        with tqdm(total=len(jobs), desc="simulate", unit="view", disable=not cfg.progress) as bar:
            if cfg.workers > 1:
                spawn = multiprocessing.get_context("spawn")
                with _single_threaded_children(), spawn.Pool(cfg.workers) as pool:
                    for n in pool.imap_unordered(_view_job, jobs):
                        samples += n
                        bar.update(1)
            else:
                for job in jobs:
                    samples += _view_job(job)
                    bar.update(1)
    finally:
        torch.set_num_threads(threads)
    groups = [group_name(p) for p in plans]
    n_train = cfg.persons - cfg.test_persons - cfg.val_persons
    write_split(root, "train", groups[:n_train])
    if cfg.val_persons:
        write_split(root, "val", groups[n_train:n_train + cfg.val_persons])
    write_split(root, "test", groups[n_train + cfg.val_persons:])
    return {"groups": len(groups), "views": len(jobs), "samples": samples}
