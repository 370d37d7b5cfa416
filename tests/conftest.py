"""Shared test fixtures.

``write_tiny_dataset(root, ...)`` writes a small but complete dataset in the benchmark layout
(docs/dataset_layout.md): a sphere "face" 800 mm in front of each camera, so that depth, normals, mask and
K agree analytically, random textures saved as JPEG, random albedo, CALIBRATION arrays and train/test split
files. Any test module can import it (``from conftest import write_tiny_dataset``) or use the
``tiny_dataset`` fixture.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: (expression, position, direction) of view 1, 2, ...
TINY_VIEWS = (
    ("neutral", "forward", "front"),
    ("frowning", "backward", "left"),
    ("yawning", "forward", "upper"),
    ("neutral", "backward", "right"),
)
SPHERE_CENTER_MM = np.array([0.0, 0.0, 800.0])
SPHERE_RADIUS_MM = 100.0


def tiny_ab(camidx: int) -> tuple[float, float]:
    """The (a, b) written to ``PARAMS.abvalue`` for camera ``camidx`` (zero disparity at 900 mm)."""
    a = -20000.0 - 100.0 * camidx
    return a, -a / 900.0


def tiny_intrinsics(camidx: int, height: int, width: int) -> np.ndarray:
    """K (3, 3) of camera ``camidx``: the sphere of radius 100 mm at 800 mm spans about 0.7 of the image
    height."""
    f = 2.8 * height + 2.0 * camidx
    return np.array(
        [
            [f, 0.0, (width - 1) / 2 + 0.5 * camidx],
            [0.0, f * 1.01, (height - 1) / 2 - 0.25 * camidx],
            [0.0, 0.0, 1.0],
        ]
    )


def sphere_geometry(K: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ray-traced depth (H, W) mm along the optical axis (0 = background), unit normals (H, W, 3) facing the
    camera, and the hit mask (H, W) of the sphere ``SPHERE_CENTER_MM``/``SPHERE_RADIUS_MM``."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], axis=-1)
    # |t * r - c|^2 = R^2  ->  t^2 r.r - 2 t r.c + c.c - R^2 = 0, nearest root; Z = t (rays have z = 1)
    rr = (rays**2).sum(-1)
    rc = rays @ SPHERE_CENTER_MM
    disc = rc**2 - rr * (SPHERE_CENTER_MM @ SPHERE_CENTER_MM - SPHERE_RADIUS_MM**2)
    mask = disc > 0
    t = np.where(mask, (rc - np.sqrt(np.clip(disc, 0, None))) / rr, 0.0)
    points = rays * t[..., None]
    normal = np.where(mask[..., None], (points - SPHERE_CENTER_MM) / SPHERE_RADIUS_MM, 0.0)
    return t.astype(np.float32), normal.astype(np.float32), mask


def _save_jpg(path: Path, rgb01: np.ndarray) -> None:
    Image.fromarray(np.clip(np.round(rgb01 * 255), 0, 255).astype(np.uint8)).save(path, quality=95)


def write_tiny_dataset(
    root: str | Path,
    *,
    n_groups: int = 2,
    cameras: tuple[int, ...] = (1, 2),
    n_views: int = 2,
    lights: tuple[int, ...] = (1, 2),
    size: tuple[int, int] = (24, 32),
    seed: int = 0,
    with_mask: bool = True,
) -> Path:
    """Write a dataset in the benchmark layout under ``root`` and return ``root``.

    Groups ``sim_group001..``; train.txt lists every group but the last, test.txt the last. Each group holds
    ``len(cameras) * n_views * len(lights)`` JSONs. ``size`` is (H, W).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    height, width = size
    n_cams = max(cameras)
    group_names = [f"sim_group{g + 1:03d}" for g in range(n_groups)]
    light_dirs = np.array(
        [
            [0.0, 0.0, -1.0],
            [0.6, 0.0, -0.8],
            [-0.6, 0.0, -0.8],
            [0.0, 0.6, -0.8],
            [0.0, -0.6, -0.8],
            [0.36, 0.48, -0.8],
        ]
    )
    for person, group in enumerate(group_names, start=1):
        gdir = root / group
        for sub in (
            "IMG/LEFT",
            "IMG/RIGHT",
            "IMG/LRSUM",
            "DEPTH",
            "NORMAL",
            "MASK",
            "ALBEDO",
            "JSON",
            "CALIBRATION",
        ):
            (gdir / sub).mkdir(parents=True, exist_ok=True)
        intrinsics = np.stack([tiny_intrinsics(c, height, width) for c in range(1, n_cams + 1)])
        poses = np.tile(np.eye(4), (n_cams, 1, 1))
        poses[:, 0, 3] = np.arange(n_cams) * 10.0
        np.save(gdir / "CALIBRATION/intrinsic.npy", intrinsics)
        np.save(gdir / "CALIBRATION/pose.npy", poses)
        np.save(gdir / "CALIBRATION/light.npy", light_dirs[: max(lights)])
        np.save(gdir / "CALIBRATION/Metadata.npy", np.array([135.0, 970.0, 5.657, 5.36]))
        np.save(gdir / "CALIBRATION/Disp2Depth.npy", np.array([tiny_ab(c) for c in range(1, n_cams + 1)]))
        for cam in cameras:
            K = intrinsics[cam - 1]
            depth, normal, mask = sphere_geometry(K, height, width)
            for view in range(1, n_views + 1):
                expression, position, direction = TINY_VIEWS[(view - 1) % len(TINY_VIEWS)]
                stem = f"{cam}_{view}"
                np.save(gdir / f"DEPTH/DEPTH_{stem}.npy", depth)
                np.save(gdir / f"NORMAL/NORMAL_{stem}.npy", normal.astype(np.float16))
                if with_mask:
                    np.save(gdir / f"MASK/MASK_{stem}.npy", mask.astype(np.uint8))
                np.save(
                    gdir / f"ALBEDO/ALBEDO_{stem}.npy",
                    rng.uniform(0.2, 0.9, (height, width, 3)).astype(np.float16),
                )
                for light in lights:
                    name = f"{cam}_{view}_{light}"
                    left = rng.uniform(0.1, 0.9, (height, width, 3))
                    right = rng.uniform(0.1, 0.9, (height, width, 3))
                    for folder, image in (("LEFT", left), ("RIGHT", right), ("LRSUM", (left + right) / 2)):
                        _save_jpg(gdir / f"IMG/{folder}/IMG_{name}.JPG", image)
                    paths = {
                        key: f"{group}/IMG/{key.upper()}/IMG_{name}.JPG" for key in ("left", "right", "lrsum")
                    }
                    paths |= {
                        key: f"{group}/{key.upper()}/{key.upper()}_{stem}.npy"
                        for key in ("depth", "normal", "albedo") + (("mask",) if with_mask else ())
                    }
                    intr = [K[0, 0], K[1, 1], K[0, 1], K[0, 2], K[1, 2], 0.0, 0.0, 0.0, 0.0]
                    pose = poses[cam - 1][:3].ravel().tolist()
                    record = {
                        "INFO": {
                            "valid": True,
                            "group": group,
                            "person": person,
                            "gender": "mw"[person % 2],
                            "camidx": cam,
                            "lightidx": light,
                            "viewidx": view,
                            "expression": expression,
                            "position": position,
                            "direction": direction,
                        },
                        "PATH": paths,
                        "PARAMS": {
                            "intrinsic": "array([" + ", ".join(repr(float(v)) for v in intr) + "])",
                            "pose": "array([" + ", ".join(repr(float(v)) for v in pose) + "])",
                            "Lvalue": json.dumps(light_dirs[light - 1].tolist()),
                            "abvalue": json.dumps(list(tiny_ab(cam))),
                        },
                    }
                    (gdir / f"JSON/INFO_{name}.json").write_text(
                        json.dumps(record, indent=1), encoding="utf-8"
                    )
    (root / "train.txt").write_text(
        "# training groups\n" + "\n".join(group_names[:-1]) + "\n\n", encoding="utf-8"
    )
    (root / "test.txt").write_text(group_names[-1] + "\n", encoding="utf-8")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Root of a freshly written tiny dataset (2 groups x 2 cameras x 2 views x 2 lights, 24 x 32 px)."""
    return write_tiny_dataset(tmp_path / "tiny")


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test, restored afterwards. Tiny models and small kernels are hundreds
    of small ops: one thread is several times faster than two, and far faster on a busy machine where OpenMP
    threads wait for each other. A module uses it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _packs_in_a_temporary_folder(tmp_path_factory):
    """Training runs of the tests build their data packs (dpface_lib.pack) outside the repository. (Not
    via ``monkeypatch``: requesting it here would undo a test's ``monkeypatch.chdir`` only after the
    working-directory check below.)"""
    from dpface_lib import pack

    before = pack.DEFAULT_PACK_DIR
    pack.DEFAULT_PACK_DIR = tmp_path_factory.getbasetemp() / "packs"
    yield
    pack.DEFAULT_PACK_DIR = before


@pytest.fixture(autouse=True)
def _working_directory_is_left_alone():
    """A test that changes the working directory must undo it (use ``monkeypatch.chdir``): later tests
    and the notebook runner resolve relative paths from it."""
    before = Path.cwd()
    yield
    after = Path.cwd()
    if after != before:
        os.chdir(before)
        pytest.fail(f"test changed the working directory to {after} and did not restore it")
