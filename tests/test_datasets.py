"""Readers of the public DP datasets, tested on simulator fixtures written in each dataset's layout.

A small set is simulated once (``dpface simulate``) and rewritten by :func:`export_layout` in the layout, file
formats and bit depths of google-dp, dpdd and dp5k. Each reader must return the simulated ground truth, and
``kind="auto"`` must recognise each layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dpface_lib import cli
from dpface_lib.data import FaceDPDataset
from dpface_lib.datasets import detect_kind, open_dataset
from dpface_lib.layout import DatasetError
from dpface_lib.metrics import fit_affine
from dpface_lib.simulate.layouts import export_layout
from dpface_lib.simulate.optics import DEFAULT_TAU, disparity_per_coc


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("layouts")
    facedp = base / "facedp"
    assert cli.main(["simulate", "--out", str(facedp), "--persons", "2", "--test-persons", "1", "--size",
                     "64x64", "--cameras", "1", "--views-per-person", "3", "--lights-per-view", "1",
                     "--quiet"]) == 0
    roots = {"facedp": facedp}
    for layout in ("google-dp", "dpdd", "dp5k"):
        export_layout(facedp, base / layout, layout)
        roots[layout] = base / layout
    return roots


def reference(roots: dict[str, Path]) -> list[dict]:
    dataset = FaceDPDataset(roots["facedp"], "test")
    return [{k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in dataset[i].items()}
            for i in range(len(dataset))]


@pytest.mark.parametrize("kind", ["facedp", "google-dp", "dpdd", "dp5k"])
def test_auto_detection_and_item_contract(simulated, kind: str) -> None:
    assert detect_kind(simulated[kind], "test") == kind
    dataset = open_dataset(simulated[kind], "test")
    assert dataset.kind == kind and len(dataset) == len(reference(simulated))
    item = dataset[0]
    for key in ("left", "right"):
        assert item[key].dtype == torch.float32 and item[key].ndim == 3 and item[key].shape[0] in (1, 3)
        assert 0 <= float(item[key].min()) and float(item[key].max()) <= 1
    assert isinstance(item["sample_id"], str)


def test_google_dp_keeps_16_bit_green_and_an_affine_inverse_depth(simulated) -> None:
    truth = reference(simulated)
    dataset = open_dataset(simulated["google-dp"], "test", kind="google-dp")
    for item, ref in zip(dataset, truth, strict=True):
        assert item["left"].shape[0] == 1  # one green channel, as the Pixel PD data
        assert np.allclose(item["left"][0].numpy(), ref["left"][1], atol=0.5 / 65535 + 1e-7)
        mask = ref["mask"]
        assert np.array_equal(item["confidence"].numpy() > 0, mask)
        inverse = item["inverse_depth"].numpy()
        s, t = fit_affine(inverse, 1.0 / np.where(mask, ref["depth"], 1), mask)
        residual = np.abs(s * inverse + t - 1.0 / np.where(mask, ref["depth"], 1))[mask]
        assert residual.max() < 0.6 * abs(s) / 255  # only the 8-bit rounding of the stored map


def test_dpdd_pairs_folders_by_sorted_order_not_by_name(simulated) -> None:
    truth = reference(simulated)
    dataset = open_dataset(simulated["dpdd"], "test", kind="dpdd")
    for item, ref in zip(dataset, truth, strict=True):
        assert Path(item["meta"]["files"]["target"]).name.startswith("aif_")  # names differ from the sources
        assert np.allclose(item["left"].numpy(), ref["left"], atol=0.5 / 65535 + 1e-7)
        assert np.allclose(item["right"].numpy(), ref["right"], atol=0.5 / 65535 + 1e-7)
        assert np.allclose(item["target"].numpy(), ref["albedo"], atol=0.5 / 65535 + 1e-7)
        assert "depth" not in item
    extra = simulated["dpdd"] / "test_l" / "source" / "zz_extra.png"
    extra.write_bytes((simulated["dpdd"] / "test_l" / "source").glob("*.png").__next__().read_bytes())
    try:
        with pytest.raises(DatasetError, match="different numbers of PNGs"):
            open_dataset(simulated["dpdd"], "test", kind="dpdd")
    finally:
        extra.unlink()


def test_dp5k_metric_depth_and_thin_lens_ab(simulated) -> None:
    truth = reference(simulated)
    k = disparity_per_coc(DEFAULT_TAU)  # the simulator's DP response
    dataset = open_dataset(simulated["dp5k"], "test", kind="dp5k", k=k)
    for item, ref in zip(dataset, truth, strict=True):
        mask = ref["mask"]
        assert np.array_equal(item["mask"].numpy(), mask)
        assert np.abs(item["depth"].numpy()[mask] - ref["depth"][mask]).max() <= 0.5 + 1e-3  # uint16 mm
        assert item["a"] == pytest.approx(float(ref["a"]), rel=1e-5)
        assert item["b"] == pytest.approx(float(ref["b"]), rel=1e-5)
        assert np.allclose(item["left"].numpy(), ref["left"], atol=0.5 / 65535 + 1e-7)
        assert "sharp" in item and "combined" in item


def test_unknown_layout_lists_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "random").mkdir()
    with pytest.raises(DatasetError, match="looked for facedp: .*google-dp: .*dpdd: .*dp5k: "):
        open_dataset(tmp_path / "random")
    with pytest.raises(DatasetError, match="unknown dataset kind 'kitti'"):
        open_dataset(tmp_path / "random", kind="kitti")


def test_simulate_layout_option_writes_a_readable_set_and_no_scratch(tmp_path: Path) -> None:
    out = tmp_path / "dpdd_set"
    assert cli.main(["simulate", "--out", str(out), "--layout", "dpdd", "--persons", "2", "--test-persons",
                     "1", "--size", "64x64", "--cameras", "1", "--views-per-person", "2",
                     "--lights-per-view", "1", "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dpdd_set"]  # the benchmark-layout render is gone
    assert detect_kind(out, "train") == "dpdd" and len(open_dataset(out, "train")) == 2


def test_dp5k_without_lens_keys_falls_back_to_the_datasets_own_lens(simulated, tmp_path: Path) -> None:
    import shutil

    import h5py

    root = shutil.copytree(simulated["dp5k"], tmp_path / "dp5k")
    for meta in root.glob("test/*/meta_data.h5"):
        with h5py.File(meta, "a") as h5:  # as released: focus distances and AF points, no lens facts
            del h5["focal_length"], h5["pixel_size"]
    item = open_dataset(root, "test", kind="dp5k")[0]
    assert item["meta"]["focal_mm"] == 85.0 and item["meta"]["pixel_mm"] == pytest.approx(36 / 1680)
    assert item["b"] == pytest.approx(-item["a"] / item["meta"]["focus_mm"])  # thin lens: b = -a / g
    broken = next(root.glob("test/*/meta_data.h5"))
    with h5py.File(broken, "a") as h5:
        del h5["focus_dis_0"]
    with pytest.raises(DatasetError, match="meta_data.h5: key 'focus_dis_0' not found"):
        open_dataset(root, "test", kind="dp5k")[0]


class Oracle(torch.nn.Module):
    """Returns prepared disparity maps in dataset order (the network stand-in whose answer is known)."""

    def __init__(self, maps: list[np.ndarray]) -> None:
        super().__init__()
        self.maps = list(maps)

    def forward(self, batch):
        disparity = torch.from_numpy(self.maps.pop(0)).float()[None]
        h, w = batch["left"].shape[-2:]
        pad = (0, w - disparity.shape[-1], 0, h - disparity.shape[-2])
        disparity = torch.nn.functional.pad(disparity, pad)
        depth = batch["a"].reshape(-1, 1, 1) / (disparity - batch["b"].reshape(-1, 1, 1))
        return {"disparity": disparity, "depth": depth}


def test_evaluation_on_every_layout_computes_only_what_the_ground_truth_allows(simulated) -> None:
    from dpface_lib.evaluate import evaluate_dp_dataset

    google = open_dataset(simulated["google-dp"], "test")
    maps = [3.0 - 2.0 * item["inverse_depth"].numpy() for item in google]  # any affine map of the truth
    frame = evaluate_dp_dataset(Oracle(maps), google, name="oracle")
    assert (frame["ai1"] < 1e-6).all() and frame["absrel"].isna().all()
    assert frame["missing_gt"].str.contains("only up to an affine map").all()

    dp5k = open_dataset(simulated["dp5k"], "test", k=disparity_per_coc(DEFAULT_TAU))
    maps = []
    for item in dp5k:
        depth, mask = item["depth"].numpy(), item["mask"].numpy()
        maps.append(np.where(mask, item["a"] / np.where(mask, depth, 1.0) + item["b"], 0.0))
    frame = evaluate_dp_dataset(Oracle(maps), dp5k, name="oracle")
    assert (frame["ai1"] < 1e-4).all() and (frame["absrel"] < 1e-5).all() and frame["mean_deg"].isna().all()
    assert (frame["missing_gt"] == "no normals").all()

    dpdd = open_dataset(simulated["dpdd"], "test")
    frame = evaluate_dp_dataset(Oracle([np.zeros((64, 64))] * len(dpdd)), dpdd, name="oracle")
    assert frame[["ai1", "absrel", "mean_deg"]].isna().all().all()
    assert frame["missing_gt"].str.startswith("no depth ground truth").all()


def test_eval_command_takes_a_kind(simulated, tmp_path: Path, capsys) -> None:
    from dpface_lib.demo import DEMO_CHECKPOINT

    out = tmp_path / "tables"
    assert cli.main(["eval", "--checkpoint", str(DEMO_CHECKPOINT), "--data-root", str(simulated["google-dp"]),
                     "--kind", "auto", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "NaN metrics: ground truth only up to an affine map" in printed
    assert (out / "per_sample.csv").is_file()
    assert cli.main(["eval", "--checkpoint", str(DEMO_CHECKPOINT), "--data-root", str(simulated["dpdd"]),
                     "--kind", "dpdd", "--save-predictions", str(tmp_path / "p"), "--out",
                     str(tmp_path / "o")]) == 2
    assert "follow the facedp layout" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_predict_command_reads_an_item_of_any_layout(simulated, tmp_path: Path, capsys) -> None:
    assert cli.main(["predict", "--data-root", str(simulated["dp5k"]), "--sample", "1",
                     "--out", str(tmp_path / "a")]) == 0  # a, b from the dataset
    assert np.load(tmp_path / "a" / "depth.npy").shape == (64, 64)
    argv = ["predict", "--data-root", str(simulated["google-dp"]), "--out", str(tmp_path / "b")]
    assert cli.main(argv) == 2
    assert "missing calibration" in capsys.readouterr().err  # Google's set has no (a, b)
    assert cli.main(["predict", "--data-root", str(simulated["google-dp"]), "--a", "-20000", "--b", "25",
                     "--out", str(tmp_path / "b")]) == 0
    assert cli.main(["predict", "--data-root", str(simulated["dpdd"]), "--sample", "99", "--a", "-20000",
                     "--b", "25", "--out", str(tmp_path / "c")]) == 2
    assert "--sample 99 is out of range" in capsys.readouterr().err and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------- real-capture layouts
@pytest.fixture(scope="module")
def real(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    from real_fixtures import write_dslr, write_google_double, write_pixel4

    base = tmp_path_factory.mktemp("real")
    return {"pixel4-defocus": (base / "p4", write_pixel4(base / "p4")),
            "dslr-dp": (base / "dslr", write_dslr(base / "dslr")),
            "google-dp": (base / "g", write_google_double(base / "g"))}


def test_real_layouts_are_detected_from_their_folder_or_its_parent(real) -> None:
    root, _ = real["pixel4-defocus"]
    assert detect_kind(root) == detect_kind(root / "DP_data_pixel_4") == "pixel4-defocus"
    root, _ = real["dslr-dp"]
    assert detect_kind(root) == detect_kind(root / "GT_data") == "dslr-dp"


def test_pixel4_black_level_vignetting_central_field_and_dp_shift_onto_rows(real) -> None:
    root, truth = real["pixel4-defocus"]
    dataset = open_dataset(root, kind="pixel4-defocus")
    assert [item["sample_id"] for item in dataset] == sorted(truth)
    for item in dataset:
        ref = truth[item["sample_id"]]
        assert item["meta"]["dp_axis"] == "columns" and item["meta"]["transposed"]
        tol = 1.0 / (2**14 - 1)  # one 14-bit count
        assert np.allclose(item["left"][0].numpy(), ref["left"].T, atol=tol)
        assert np.allclose(item["right"][0].numpy(), ref["right"].T, atol=2 * tol)  # gain 0.8 undone
        # the column shift of the files is a row shift of the item: right(y, x) = left(y - d, x)
        d = ref["d"].T
        inner = np.zeros_like(d, bool)
        inner[3:-3] = True  # rows whose source row y - d lies inside the field
        ys, xs = np.nonzero(inner)
        moved = item["left"][0].numpy()[ys - d[ys, xs], xs]
        assert np.allclose(item["right"][0].numpy()[ys, xs], moved, atol=2 * tol)
        labelled = ref["target"].T > 0
        assert np.array_equal(item["mask"].numpy(), labelled)
        assert np.allclose(item["inverse_depth"].numpy()[labelled], ref["target"].T[labelled] / 255.0)
        kernels = item["kernels"].numpy()  # (2, rows, cols, k, k), grid and kernels turned
        assert kernels.shape == (2, 4, 3, 5, 5)
        assert np.array_equal(kernels[1, 3, 1], ref["kernels"][1, 1 * 4 + 3].T)
        assert np.allclose(item["all_in_focus"][0].numpy(), ref["sharp"].T, atol=1 / 65535)
    raw = open_dataset(root, kind="pixel4-defocus", vignetting=False)[0]
    ref = truth[raw["sample_id"]]
    assert np.allclose(raw["right"][0].numpy(), 0.8 * ref["right"].T, atol=2 / (2**14 - 1))


def test_downsampling_keeps_only_wholly_labelled_blocks(real) -> None:
    root, truth = real["pixel4-defocus"]
    item = open_dataset(root, kind="pixel4-defocus", downsample=2)[0]
    full = open_dataset(root, kind="pixel4-defocus")[0]
    assert item["left"].shape == (1, 16, 12) and item["meta"]["downsample"] == 2
    blocks = full["mask"].reshape(16, 2, 12, 2).all(3).all(1)
    assert np.array_equal(item["mask"].numpy(), blocks.numpy())
    means = full["inverse_depth"].reshape(16, 2, 12, 2).mean((1, 3))
    assert torch.allclose(item["inverse_depth"][blocks], means[blocks])
    with pytest.raises(DatasetError, match="downsample must be an integer >= 1"):
        open_dataset(root, kind="pixel4-defocus", downsample=0)[0]


def test_dslr_views_turned_and_gain_levelled_from_the_scene(real) -> None:
    root, ref = real["dslr-dp"]
    item = open_dataset(root, kind="dslr-dp")[0]
    assert item["left"].shape == (3, 48, 32) and item["meta"]["dp_axis"] == "columns"
    assert np.allclose(item["left"][1].numpy(), ref["left"].T, atol=0.6 / 255)
    # the scene-levelled gain: right / (true right) is one number, near 1 / 0.9 * 0.9 = 1 (8-bit rounding)
    ratio = item["right"][1].numpy() / ref["right"].T
    assert abs(np.median(ratio) - 1.0) < 0.03
    assert np.array_equal(item["mask"].numpy(), ref["target"].T > 0) and "combined" in item
    raw = open_dataset(root, kind="dslr-dp", vignetting=False)[0]
    assert np.median(raw["right"][1].numpy() / ref["right"].T) == pytest.approx(0.9, abs=0.01)


def test_pixel4_rejects_8_bit_views_naming_the_file(real, tmp_path: Path) -> None:
    import shutil

    root = shutil.copytree(real["pixel4-defocus"][0], tmp_path / "p4")
    view = root / "DP_data_pixel_4" / "001_left.png"
    from dpface_lib.fileio import encode_png

    view.write_bytes(encode_png(np.zeros((40, 56), np.uint8)))
    with pytest.raises(DatasetError, match="001_left.png: Pixel 4 DP views must be 16-bit"):
        open_dataset(root, kind="pixel4-defocus")[0]


def test_google_keep_resolution_keeps_the_pd_size_and_reports_the_ground_truth_scale(real) -> None:
    root, ref = real["google-dp"]
    halved = open_dataset(root, kind="google-dp")[0]
    assert halved["left"].shape == (1, 16, 12) and halved["meta"]["gt_scale"] == 1.0
    whole = open_dataset(root, kind="google-dp", keep_resolution=True)[0]
    assert whole["left"].shape == (1, 32, 24) and whole["meta"]["gt_scale"] == 2.0
    assert whole["meta"]["dp_axis"] == "rows" and not whole["meta"]["transposed"]
    assert np.allclose(whole["left"][0].numpy(), ref["left"], atol=1e-6)
    up = np.repeat(np.repeat(ref["depth"] / 255.0, 2, 0), 2, 1)
    assert np.allclose(whole["inverse_depth"].numpy(), up, atol=1e-6)
    assert np.allclose(whole["confidence"].numpy(), np.repeat(np.repeat(ref["confidence"], 2, 0), 2, 1))


def test_eval_model_runs_the_classical_rows_on_a_real_layout(tmp_path: Path, capsys) -> None:
    from real_fixtures import write_pixel4

    write_pixel4(tmp_path / "p4", scenes=1, full=(80, 112), field=(48, 64), tile=16)
    tables = {}
    for model in ("constant", "block-matching"):
        out = tmp_path / model
        assert cli.main(["eval", "--model", model, "--kind", "auto", "--data-root", str(tmp_path / "p4"),
                         "--disp-range", "-3", "3", "--window", "7", "--smooth-sigma", "0",
                         "--out", str(out)]) == 0
        tables[model] = __import__("pandas").read_csv(out / "per_sample.csv")
        assert (out / "aggregate.csv").is_file()
    assert "ground truth only up to an affine map" in capsys.readouterr().out
    # the fixture's two regions lie 1.5 px apart (half size): the matcher separates them, the constant cannot
    assert tables["block-matching"]["ai1"][0] < 0.3 * tables["constant"]["ai1"][0]
    # (two tied levels keep the reference 1 - |rho_s| well above 0, ties ranked by pixel order)
    assert tables["block-matching"]["spearman"][0] < tables["constant"]["spearman"][0] - 0.3
    assert cli.main(["eval", "--model", "silhouette", "--kind", "pixel4-defocus", "--data-root",
                     str(tmp_path / "p4"), "--out", str(tmp_path / "x")]) == 2
    assert "only 'constant' and 'block-matching'" in capsys.readouterr().err and not (tmp_path / "x").exists()
