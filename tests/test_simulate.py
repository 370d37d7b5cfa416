"""Validation of the DP face simulator (dpface_lib.simulate).

Physics is checked against independent oracles: the DP disparity measured from a rendered left/right
pair by a block matcher written here (NCC along rows + parabola fit) must follow ``a / Z + b``; normals
differentiated from the depth map must match the rendered ones; PSF centroids must give ``k``.
The writer is checked for the layout (read back with ``dpface_lib.data.read_sample``), determinism,
atomicity under an injected failure, and that the committed ``data_samples/`` regenerates.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_erosion, uniform_filter

from dpface_lib import DATA_SAMPLES
from dpface_lib.geometry import depth_to_disparity, normals_from_depth
from dpface_lib.simulate import cli, parse_args
from dpface_lib.simulate import optics as dp
from dpface_lib.simulate.face import load_face_model, load_obj, sample_person
from dpface_lib.simulate.rig import LIGHT_DIRECTIONS, build_rig
from dpface_lib.simulate.scene import form_images, render_view
from dpface_lib.simulate.writer import (
    SimConfig,
    _single_threaded_children,
    generate,
    group_rig,
    person_plan,
    write_view,
)

#: the exact options that produced data_samples/ (data_samples/README.md shows the same command)
DATA_SAMPLES_ARGS = (
    "--persons 8 --test-persons 2 --size 160x128 --seed 1 --views-per-person 1 "
    "--lights-per-view 2 --f-number 1.2 --tau 1.8 --quiet --overwrite"
)


def tiny_config(out: Path, **kw) -> SimConfig:
    base = dict(
        out=out,
        persons=2,
        height=64,
        width=64,
        seed=7,
        cameras=(2, 7),
        lights=(1, 4),
        test_persons=1,
        views_per_person=1,
        progress=False,
        f_number=2.0,
    )
    base.update(kw)
    return SimConfig(**base)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sim")
    generate(tiny_config(root))
    return root


def decode(image) -> np.ndarray:
    """Round trip through the writer's JPEG encoder; (H, W, 3) float64 in [0, 1]."""
    return np.asarray(Image.open(io.BytesIO(dp.encode_jpeg(np.asarray(image)))), dtype=np.float64) / 255.0


def match_rows(left: np.ndarray, right: np.ndarray, max_shift: int = 4, win=(15, 15)):
    """Independent DP matcher: for each pixel the integer row shift ``s`` maximising the normalised
    cross-correlation of ``left(y)`` with ``right(y + s)`` over a window, refined by a parabola through
    the scores at ``s - 1, s, s + 1``. Returns (disparity (H, W), local std of left (H, W))."""
    lg, rg = left.mean(-1), right.mean(-1)

    def mean_std(a):
        m = uniform_filter(a, win, mode="nearest")
        return m, np.sqrt(np.maximum(uniform_filter(a * a, win, mode="nearest") - m * m, 1e-12))

    m_l, s_l = mean_std(lg)
    shifts = np.arange(-max_shift, max_shift + 1)
    scores = []
    for s in shifts:
        r_s = np.roll(rg, -s, axis=0)  # r_s(y) = right(y + s)
        m_r, s_r = mean_std(r_s)
        scores.append((uniform_filter(lg * r_s, win, mode="nearest") - m_l * m_r) / (s_l * s_r))
    score = np.stack(scores)
    best = np.clip(score.argmax(0), 1, len(shifts) - 2)
    yy, xx = np.indices(lg.shape)
    c0, cm, cp = score[best, yy, xx], score[best - 1, yy, xx], score[best + 1, yy, xx]
    den = cm - 2 * c0 + cp
    sub = np.where(np.abs(den) > 1e-9, 0.5 * (cm - cp) / np.where(den == 0, 1, den), 0.0)
    return shifts[best] + np.clip(sub, -1, 1), s_l


# ---------------------------------------------------------------- PSF and layers


def test_k_hard_split_limit_and_default():
    # a hard half-aperture split puts the half-disc centroids 4/(3 pi) of a diameter apart
    assert dp.disparity_per_coc(tau=0.0) == pytest.approx(4 / (3 * math.pi), abs=2e-3)
    k = dp.disparity_per_coc()
    assert 0.10 < k < 0.16  # soft response: close to the benchmark sensor's 0.134
    # small-slope limit of tanh: k ~ E[u_y^2] / tau = 1 / (4 tau) on the unit disc
    assert dp.disparity_per_coc(tau=20.0) == pytest.approx(1 / 80, rel=0.02)


@pytest.mark.parametrize("coc", [-9.0, -3.0, -0.6, 0.0, 0.4, 2.5, 7.0])
def test_psf_centroids_give_signed_disparity(coc):
    left, right = dp.dp_psf_pair(coc)
    assert left.sum() == pytest.approx(1.0) and right.sum() == pytest.approx(1.0)
    assert (left >= 0).all() and (right >= 0).all()
    r = left.shape[0] // 2
    rows = np.arange(-r, r + 1)[:, None]
    cy_l, cy_r = (left * rows).sum(), (right * rows).sum()
    k = dp.disparity_per_coc()
    assert cy_r - cy_l == pytest.approx(k * coc, abs=2e-3)  # sign flips across the focus plane
    assert cy_r == pytest.approx(-cy_l, abs=1e-6)
    # the two halves are mirror images along the DP axis and centred across it
    np.testing.assert_allclose(left, right[::-1], atol=1e-9)
    cols = np.arange(-r, r + 1)[None, :]
    assert abs((left * cols).sum()) < 1e-6


def test_psf_width_grows_with_blur():
    spreads = []
    for coc in (1.0, 4.0, 12.0):
        left, right = dp.dp_psf_pair(coc)
        full = 0.5 * (left + right)
        r = full.shape[0] // 2
        x = np.arange(-r, r + 1)
        spreads.append(math.sqrt((full * x[None, :] ** 2).sum()))
    # a uniform disc of diameter c has column std c / 4 (plus the Gaussian blur)
    assert spreads[0] < spreads[1] < spreads[2]
    assert spreads[2] == pytest.approx(math.hypot(12.0 / 4, dp.DEFAULT_SIGMA_PX), rel=0.05)


@pytest.mark.parametrize("max_layers", [12, 5])
def test_layer_weights_partition_and_interpolate(max_layers):
    import torch

    coc = torch.linspace(-6, 20, 500, dtype=torch.float64).reshape(20, 25)
    grid, w = dp.layer_weights(coc, step=0.3, max_layers=max_layers)
    assert len(grid) <= max_layers
    assert torch.allclose(w.sum(0), torch.ones_like(coc), atol=1e-6)
    assert (w >= 0).all() and torch.all(grid[1:] > grid[:-1])
    # interpolating the layers' warped CoCs with the weights gives back each pixel's warped CoC
    psi = (w * (0.3 * grid.double())[:, None, None]).sum(0)
    assert torch.allclose(psi, dp.coc_warp(coc), atol=1e-6)
    assert torch.allclose(dp.coc_unwarp(dp.coc_warp(coc)), coc, atol=1e-9)


def test_defocus_preserves_flat_field_and_in_focus_scene():
    rad = np.full((40, 36, 3), 0.5, dtype=np.float32)
    coc = np.linspace(-8, 8, 40)[:, None].repeat(36, 1)
    left, right = dp.defocus_dp(rad, coc)
    np.testing.assert_allclose(
        left.numpy(), 0.5, atol=2e-3
    )  # coverage normalisation: no seams, no dark border
    np.testing.assert_allclose(right.numpy(), 0.5, atol=2e-3)
    rng = np.random.default_rng(0)
    sharp = rng.uniform(0, 1, (32, 32, 3)).astype(np.float32)
    left, right = dp.defocus_dp(sharp, np.zeros((32, 32)), layer_step=0.3)
    np.testing.assert_allclose(left.numpy(), right.numpy(), atol=1e-5)  # in focus: no disparity


# ---------------------------------------------------------------- geometry and DP disparity


@pytest.fixture(scope="module", params=["james", "ict"])
def rendered_views(request):
    """Two views (near and far position) at f/1.4 so that disparities of both signs reach ~1 px, for each
    face model (the scan with procedural variation, and a person of the ICT morphable model)."""
    from dpface_lib.simulate.ict_face import load_ict_model

    model = load_face_model() if request.param == "james" else load_ict_model().model
    rng = np.random.default_rng(3)
    cams = build_rig(192, 160, rng, f_number=1.4)
    person = sample_person(rng)
    if request.param == "ict":
        person["identity"] = load_ict_model().sample_identity(rng)
    return [
        (cams[1], render_view(model, person, "neutral", pos, "front", cams[1], np.array([0.3, 1, 2, 0.5])))
        for pos in ("forward", "backward")
    ]


def test_measured_disparity_follows_thin_lens(rendered_views):
    k = dp.disparity_per_coc()
    signs = []
    for cam, view in rendered_views:
        imgs = form_images(view, cam, LIGHT_DIRECTIONS[0], np.random.default_rng(0))
        left, right = decode(imgs["left"]), decode(imgs["right"])
        a, b = cam.ab(k)
        gt = depth_to_disparity(view.depth.astype(np.float64), a, b)
        measured, texture = match_rows(left, right)
        ok = binary_erosion(view.mask, iterations=8) & (texture > 0.01)
        assert ok.sum() > 3000
        err = np.abs(measured - gt)[ok]
        trivial = np.median(np.abs(gt[ok]))
        assert np.median(err) <= 0.25, (np.median(err), trivial)
        assert np.median(err) < 0.5 * trivial  # far better than predicting zero disparity
        signs.append(np.sign(np.median(measured[ok])))
    assert signs == [-1.0, 1.0]  # near head: negative disparity; far head: positive


def test_rendered_normals_match_depth(rendered_views):
    for cam, view in rendered_views:
        n_depth = normals_from_depth(view.depth, cam.K, view.mask)  # (3, H, W)
        both = view.mask & (np.abs(n_depth).sum(0) > 0)
        cos = np.clip((n_depth.transpose(1, 2, 0) * view.normal).sum(-1), -1, 1)[both]
        assert np.degrees(np.median(np.arccos(cos))) <= 5.0
        np.testing.assert_allclose(np.linalg.norm(view.normal[view.mask], axis=-1), 1.0, atol=1e-5)
        assert (view.normal[view.mask][:, 2] < 0).all()  # camera frame, facing the camera


def test_depth_backprojects_onto_the_mesh(rendered_views):
    from dpface_lib.geometry import backproject

    cam, view = rendered_views[0]
    pts = backproject(view.depth, cam.K)[view.mask]  # camera frame
    world = (pts - cam.pose[:3, 3]) @ cam.pose[:3, :3]  # R^T (X - t)
    assert np.all(np.abs(world[:, 2]) < 200) and np.all(np.abs(world[:, 0]) < 150)
    # the face is 0.7-1.0 m from the camera, spanning both sides of the focus plane over the two positions
    depths = [v.depth[v.mask] for _, v in rendered_views]
    assert depths[0].min() < cam.optics.focus_mm < depths[1].max()


# ---------------------------------------------------------------- writer


def test_layout_and_read_back_every_field(tiny_set):
    from dpface_lib.data import index, read_sample

    assert (tiny_set / "train.txt").read_text().split() == ["sim_group001"]
    assert (tiny_set / "test.txt").read_text().split() == ["sim_group002"]
    cal = tiny_set / "sim_group001" / "CALIBRATION"
    shapes = {
        "intrinsic": (8, 3, 3),
        "pose": (8, 4, 4),
        "light": (6, 3),
        "Metadata": (4,),
        "Disp2Depth": (8, 2),
    }
    for name, shape in shapes.items():
        arr = np.load(cal / f"{name}.npy", allow_pickle=False)
        assert arr.shape == shape and arr.dtype == np.float64
    jsons = sorted(tiny_set.glob("sim_group*/JSON/INFO_*.json"))
    assert len(jsons) == 2 * 2 * 1 * 2  # persons x cameras x views x lights
    table = index(tiny_set)
    assert len(table) == len(jsons)
    for path in jsons:
        record = json.loads(path.read_text())
        s = read_sample(path)
        info = record["INFO"]
        cam = info["camidx"]
        for key in ("left", "right", "lrsum"):
            assert s[key].shape == (64, 64, 3) and 0 <= s[key].min() and s[key].max() <= 1
        # lrsum is the ordinary photo: the mean of the two half-images (up to JPEG rounding)
        assert np.median(np.abs(s["lrsum"] - 0.5 * (s["left"] + s["right"]))) < 0.02
        m = s["mask"]
        assert m.sum() > 200 and np.all(s["depth"][~m] == 0) and np.all(s["depth"][m] > 600)
        np.testing.assert_allclose(np.linalg.norm(s["normal"][m], axis=-1), 1.0, atol=2e-3)
        assert s["albedo"].shape == (64, 64, 3) and s["albedo"].max() <= 1
        intr = np.load(path.parents[1] / "CALIBRATION" / "intrinsic.npy", allow_pickle=False)[cam - 1]
        pose = np.load(path.parents[1] / "CALIBRATION" / "pose.npy", allow_pickle=False)[cam - 1]
        ab = np.load(path.parents[1] / "CALIBRATION" / "Disp2Depth.npy", allow_pickle=False)[cam - 1]
        np.testing.assert_allclose(s["K"], intr, rtol=1e-9)
        np.testing.assert_allclose(s["pose"], pose, rtol=1e-9, atol=1e-9)
        assert (s["a"], s["b"]) == pytest.approx(tuple(ab))
        assert s["a"] < 0 < s["b"] and 805 <= -s["a"] / s["b"] <= 818  # zero disparity at the focus
        np.testing.assert_allclose(s["light"], LIGHT_DIRECTIONS[info["lightidx"] - 1])
        assert info["expression"] in ("neutral", "frowning", "yawning")
        assert s["meta"]["group"] == info["group"] and s["sample_id"].startswith(info["group"] + "/")


def test_worker_processes_start_with_one_blas_thread(monkeypatch):
    """Spawned workers read one BLAS/OpenMP thread from the environment; the parent's is restored after."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with _single_threaded_children(), multiprocessing.get_context("spawn").Pool(1) as pool:
        seen = pool.map(os.getenv, ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"])
    assert seen == ["1", "1", "1"]
    assert os.environ["OMP_NUM_THREADS"] == "3" and "OPENBLAS_NUM_THREADS" not in os.environ


def test_deterministic_for_a_seed(tiny_set, tmp_path):
    generate(tiny_config(tmp_path, workers=2))  # parallel processes give the same bytes as one
    files = sorted(p.relative_to(tiny_set) for p in tiny_set.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in files:
        assert (tiny_set / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    other = tmp_path / "other"
    generate(tiny_config(other, seed=8))
    a = np.load(next(tiny_set.glob("sim_group001/DEPTH/*.npy")), allow_pickle=False)
    b = np.load(next(other.glob("sim_group001/DEPTH/*.npy")), allow_pickle=False)
    assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.mark.parametrize("fail_after", [0, 3, 6, 7, 9])
def test_interrupted_write_leaves_no_acceptable_sample(tmp_path, fail_after):
    from dpface_lib.data import index, read_sample

    cfg = tiny_config(tmp_path, persons=1, test_persons=0, cameras=(3,), lights=(2, 5))
    params, views, phase = person_plan(cfg, 1)
    cam = group_rig(cfg, 1)[2]
    k = dp.disparity_per_coc(cfg.dp_tau)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_view(cfg, tmp_path, 1, params, phase, cam, *views[0], k, fail_after=fail_after)
    # fail_after + 1 files were written: 4 maps, then per light 3 JPEGs and the JSON last
    n_json = len(list(tmp_path.glob("sim_group001/JSON/*.json")))
    assert n_json == max(0, (fail_after + 1 - 4) // 4)
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary leftovers
    for path in tmp_path.glob("sim_group001/JSON/*.json"):
        read_sample(path)  # every sample that exists is complete
    (tmp_path / "train.txt").write_text("sim_group001\n")
    (tmp_path / "sim_group001" / "JSON").mkdir(exist_ok=True)
    assert len(index(tmp_path, "train")) == n_json


def test_cli_rejects_bad_options(tmp_path, capsys):
    assert cli(["--out", str(tmp_path / "x"), "--size", "100x96", "--quiet"]) == 2
    assert "multiples of 32" in capsys.readouterr().err
    assert cli(["--out", str(tmp_path / "x"), "--cameras", "0,9", "--quiet"]) == 2
    assert "cameras" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--size", "tall"])
    assert not (tmp_path / "x").exists()  # nothing written, not even the folder
    with pytest.raises(SystemExit):
        parse_args(["--out", str(tmp_path), "--lights-per-view", "-1"])


def test_obj_parser_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/x 3/1\n")
    with pytest.raises(ValueError, match=r"bad\.obj:5"):
        load_obj(bad)
    bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.obj"):
        load_obj(bad)
    quad = tmp_path / "quad.obj"
    quad.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nf 1/1 2/2 3/3 4/4\n")
    v, t, f, ft = load_obj(quad)
    assert f.tolist() == [[0, 1, 2], [0, 2, 3]] and ft.tolist() == f.tolist()


# ---------------------------------------------------------------- committed samples


def test_data_samples_regenerate(tmp_path):
    readme = (DATA_SAMPLES / "README.md").read_text()
    assert "dpface simulate --out data_samples " + DATA_SAMPLES_ARGS in readme
    json_path = sorted(DATA_SAMPLES.glob("sim_group*/JSON/INFO_*.json"))[0]
    info = json.loads(json_path.read_text())["INFO"]
    cfg = parse_args(["--out", str(tmp_path), *shlex.split(DATA_SAMPLES_ARGS)])
    cfg = SimConfig(**{**cfg.__dict__, "lights": (info["lightidx"],), "lights_per_view": 0})
    params, views, phase = person_plan(cfg, info["person"])
    view = dict(views)[info["viewidx"]]
    cam = group_rig(cfg, info["person"])[info["camidx"] - 1]
    write_view(
        cfg,
        tmp_path,
        info["person"],
        params,
        phase,
        cam,
        info["viewidx"],
        view,
        dp.disparity_per_coc(cfg.dp_tau),
    )
    new_json = tmp_path / json_path.relative_to(DATA_SAMPLES)
    new_info, old_info = json.loads(new_json.read_text()), json.loads(json_path.read_text())
    assert {k: v for k, v in new_info.items() if k != "PARAMS"} == {
        k: v for k, v in old_info.items() if k != "PARAMS"}
    assert set(new_info["PARAMS"]) == set(old_info["PARAMS"])
    number = r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?"
    for key, text in old_info["PARAMS"].items():  # the literal strings, equal up to float round-off
        new_text = new_info["PARAMS"][key]
        assert re.sub(number, "#", new_text) == re.sub(number, "#", text), key
        np.testing.assert_allclose([float(x) for x in re.findall(number, new_text)],
                                   [float(x) for x in re.findall(number, text)], rtol=1e-12, atol=1e-9,
                                   err_msg=key)  # last-ulp differences between BLAS builds are expected
    record = old_info["PATH"]
    for key in ("depth", "normal", "mask", "albedo"):
        old = np.load(DATA_SAMPLES / record[key], allow_pickle=False)
        new = np.load(tmp_path / record[key], allow_pickle=False)
        np.testing.assert_allclose(new.astype(np.float64), old.astype(np.float64), atol=1e-2, err_msg=key)
    for key in ("left", "right", "lrsum"):
        old = np.asarray(Image.open(DATA_SAMPLES / record[key]), dtype=np.float64)
        new = np.asarray(Image.open(tmp_path / record[key]), dtype=np.float64)
        assert np.mean(np.abs(old - new)) < 1.0, key  # JPEG encoders may differ slightly


def test_cli_subsets(tmp_path):
    from dpface_lib.data import index

    out = tmp_path / "subset"
    args = ["--out", str(out), "--persons", "2", "--size", "64x64", "--seed", "3", "--cameras", "1,8"]
    args += [
        "--lights",
        "2,6",
        "--expressions",
        "yawning",
        "--positions",
        "backward",
        "--directions",
        "upper,left",
    ]
    args += ["--test-persons", "1", "--lights-per-view", "1", "--quiet"]
    assert cli(args) == 0
    table = index(out)
    assert set(table["camidx"]) == {1, 8} and set(table["lightidx"]) <= {2, 6}
    assert set(table["expression"]) == {"yawning"} and set(table["position"]) == {"backward"}
    assert set(table["direction"]) == {"upper", "left"}
    assert len(table) == 2 * 2 * 2 * 1  # persons x cameras x views x lights
    assert len(index(out, "train")) == len(index(out, "test")) == 4
