"""Reader of the benchmark layout: round trips, index filters, (a, b) sources, and one test per bad input.

Every bad-input test corrupts a file of a freshly written tiny dataset (``tests/conftest.py``) itself and
checks that :class:`DatasetError` names the file and the problem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPHERE_CENTER_MM, SPHERE_RADIUS_MM, tiny_ab, tiny_intrinsics, write_tiny_dataset
from PIL import Image

from dpface_lib import data
from dpface_lib.data import BENCHMARK_CAMERA_AB, DatasetError, FaceDPDataset, index, read_sample

GROUP = "sim_group001"


def json_of(root: Path, name: str = "1_1_1", group: str = GROUP) -> Path:
    return root / group / "JSON" / f"INFO_{name}.json"


def edit_json(path: Path, edit) -> None:
    record = json.loads(path.read_text())
    edit(record)
    path.write_text(json.dumps(record))


# ----------------------------------------------------------------------------------------------- round trip
def test_read_sample_round_trip_every_field(tiny_dataset: Path) -> None:
    path = json_of(tiny_dataset, "2_2_1")
    sample = read_sample(path)
    record = json.loads(path.read_text())
    for key, folder in (("left", "LEFT"), ("right", "RIGHT"), ("lrsum", "LRSUM")):
        expected = (
            np.asarray(Image.open(tiny_dataset / GROUP / f"IMG/{folder}/IMG_2_2_1.JPG"), np.float32) / 255
        )
        assert sample[key].dtype == np.float32 and sample[key].shape == (24, 32, 3)
        np.testing.assert_array_equal(sample[key], expected)
    depth = np.load(tiny_dataset / GROUP / "DEPTH/DEPTH_2_2.npy")
    mask = np.load(tiny_dataset / GROUP / "MASK/MASK_2_2.npy").astype(bool)
    normal = np.load(tiny_dataset / GROUP / "NORMAL/NORMAL_2_2.npy").astype(np.float32)
    albedo = np.load(tiny_dataset / GROUP / "ALBEDO/ALBEDO_2_2.npy").astype(np.float32)
    np.testing.assert_array_equal(sample["mask"], mask & (depth > 0))
    np.testing.assert_array_equal(sample["depth"], np.where(mask, depth, 0))
    np.testing.assert_allclose(
        sample["normal"][mask], normal[mask] / np.linalg.norm(normal[mask], axis=-1, keepdims=True), atol=1e-6
    )
    assert np.all(sample["normal"][~mask] == 0)
    np.testing.assert_allclose(np.linalg.norm(sample["normal"][mask], axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(sample["albedo"], albedo)
    np.testing.assert_allclose(sample["K"], tiny_intrinsics(2, 24, 32), rtol=1e-12)
    expected_pose = np.eye(4)
    expected_pose[0, 3] = 10.0
    np.testing.assert_array_equal(sample["pose"], expected_pose)
    np.testing.assert_allclose(sample["light"], json.loads(record["PARAMS"]["Lvalue"]))
    assert (sample["a"], sample["b"]) == pytest.approx(tiny_ab(2))
    meta = sample["meta"]
    assert (meta["group"], meta["person"], meta["camidx"], meta["viewidx"], meta["lightidx"]) == (
        GROUP,
        1,
        2,
        2,
        1,
    )
    assert (meta["expression"], meta["position"], meta["direction"]) == ("frowning", "backward", "left")
    assert sample["sample_id"] == f"{GROUP}/INFO_2_2_1"


def test_depth_normals_mask_agree_with_the_analytic_sphere(tiny_dataset: Path) -> None:
    """Independent oracle: back-projected masked pixels lie on the sphere and normals point from its
    centre."""
    sample = read_sample(json_of(tiny_dataset, "1_1_1"))
    K, depth, mask = sample["K"], sample["depth"], sample["mask"]
    ys, xs = np.nonzero(mask)
    z = depth[ys, xs].astype(np.float64)
    points = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    np.testing.assert_allclose(
        np.linalg.norm(points - SPHERE_CENTER_MM, axis=-1), SPHERE_RADIUS_MM, rtol=1e-4
    )
    np.testing.assert_allclose(
        sample["normal"][ys, xs], (points - SPHERE_CENTER_MM) / SPHERE_RADIUS_MM, atol=2e-3
    )


def test_dataset_item_matches_contract_and_disparity_is_a_over_z_plus_b(tiny_dataset: Path) -> None:
    dataset = FaceDPDataset(tiny_dataset, "train")
    item = dataset[0]
    assert (
        item["left"].shape
        == item["right"].shape
        == item["lrsum"].shape
        == item["albedo"].shape
        == (3, 24, 32)
    )
    assert item["normal"].shape == (3, 24, 32) and item["depth"].shape == item["disparity"].shape == (24, 32)
    assert item["mask"].dtype == torch.bool and item["K"].shape == (3, 3) and item["pose"].shape == (4, 4)
    assert item["a"].ndim == 0 and item["b"].ndim == 0 and item["light"].shape == (3,)
    for key in (
        "left",
        "right",
        "lrsum",
        "albedo",
        "normal",
        "depth",
        "disparity",
        "K",
        "pose",
        "a",
        "b",
        "light",
    ):
        assert item[key].dtype == torch.float32, key
    assert 0 <= item["left"].min() and item["left"].max() <= 1
    mask, depth = item["mask"], item["depth"].double()
    a, b = tiny_ab(item["meta"]["camidx"])
    torch.testing.assert_close(item["disparity"][mask].double(), a / depth[mask] + b, rtol=1e-6, atol=1e-5)
    assert torch.all(item["disparity"][~mask] == 0) and torch.all(item["depth"][~mask] == 0)
    assert item["sample_id"] == f"{GROUP}/INFO_1_1_1" and item["meta"]["json"].endswith("INFO_1_1_1.json")


def test_dataloader_collates_batches_of_two(tiny_dataset: Path) -> None:
    loader = torch.utils.data.DataLoader(FaceDPDataset(tiny_dataset, "test", lights=[1]), batch_size=2)
    batches = list(loader)
    assert len(batches) == 2
    batch = batches[0]
    assert batch["left"].shape == (2, 3, 24, 32) and batch["disparity"].shape == (2, 24, 32)
    assert batch["a"].shape == (2,) and batch["K"].shape == (2, 3, 3) and batch["mask"].dtype == torch.bool
    assert batch["meta"]["camidx"].tolist() == [1, 1] and len(batch["sample_id"]) == 2


def test_transform_is_applied(tiny_dataset: Path) -> None:
    def halve(sample):
        return {**sample, "left": sample["left"] * 0.5}

    plain, halved = FaceDPDataset(tiny_dataset, "train")[0], FaceDPDataset(tiny_dataset, "train", halve)[0]
    torch.testing.assert_close(halved["left"], plain["left"] * 0.5)


def test_mask_absent_means_depth_positive(tmp_path: Path) -> None:
    root = write_tiny_dataset(
        tmp_path / "nomask", n_groups=1, cameras=(1,), n_views=1, lights=(1,), with_mask=False
    )
    (root / "test.txt").write_text(GROUP)
    sample = read_sample(json_of(root))
    assert sample["mask"].any()
    np.testing.assert_array_equal(sample["mask"], np.load(root / GROUP / "DEPTH/DEPTH_1_1.npy") > 0)


def test_paths_relative_to_group_are_accepted(tiny_dataset: Path) -> None:
    path = json_of(tiny_dataset)
    edit_json(path, lambda r: r["PATH"].update(left="IMG/LEFT/IMG_1_1_1.JPG"))
    assert read_sample(path)["meta"]["left"] == str(
        (tiny_dataset / GROUP / "IMG/LEFT/IMG_1_1_1.JPG").resolve()
    )


# ----------------------------------------------------------------------------------------------- index
def test_index_counts_and_filters(tiny_dataset: Path) -> None:
    everything = index(tiny_dataset)
    assert len(everything) == 2 * 2 * 2 * 2
    assert list(everything.groupby("group").size()) == [8, 8]
    assert len(index(tiny_dataset, "train")) == 8 and set(index(tiny_dataset, "test")["group"]) == {
        "sim_group002"
    }
    assert len(index(tiny_dataset, lights=[1])) == 8 and set(index(tiny_dataset, lights=1)["lightidx"]) == {1}
    assert len(index(tiny_dataset, "train", cameras=[2], lights=[2])) == 2
    frowning = index(tiny_dataset, expressions="frowning")
    assert (
        len(frowning) == 8 and set(frowning["viewidx"]) == {2} and set(frowning["position"]) == {"backward"}
    )
    assert len(index(tiny_dataset, directions=["front", "left"], groups=["sim_group002"])) == 8
    assert (
        len(index(tiny_dataset, persons=[2], genders="w")) == 0 and len(index(tiny_dataset, genders="m")) == 8
    )
    counts = everything.groupby(["camidx", "lightidx"]).size()
    assert counts.to_dict() == {(c, li): 4 for c in (1, 2) for li in (1, 2)}
    for column in ("left", "right", "lrsum", "depth", "normal", "mask", "albedo", "json"):
        assert all(Path(p).is_file() for p in everything[column]), column


def test_index_drops_invalid_views_unless_asked(tiny_dataset: Path) -> None:
    edit_json(json_of(tiny_dataset), lambda r: r["INFO"].update(valid=False))
    assert len(index(tiny_dataset, "train")) == 7
    assert len(index(tiny_dataset, "train", valid_only=False)) == 8


def test_read_calibration(tiny_dataset: Path) -> None:
    calib = data.read_calibration(tiny_dataset / GROUP)
    assert calib["intrinsic"].shape == (2, 3, 3) and calib["pose"].shape == (2, 4, 4)
    assert calib["light"].shape == (2, 3) and calib["metadata"].tolist() == [135.0, 970.0, 5.657, 5.36]
    np.testing.assert_allclose(calib["disp2depth"], [tiny_ab(1), tiny_ab(2)])
    np.testing.assert_allclose(calib["intrinsic"][1], read_sample(json_of(tiny_dataset, "2_1_1"))["K"])
    np.save(tiny_dataset / GROUP / "CALIBRATION/pose.npy", np.zeros((2, 5, 5)))
    with pytest.raises(DatasetError, match=r"pose\.npy.*shape"):
        data.read_calibration(tiny_dataset / GROUP)


# ----------------------------------------------------------------------------------------------- (a, b)
def test_ab_sources(tiny_dataset: Path) -> None:
    path = json_of(tiny_dataset, "2_1_1")
    assert (read_sample(path)["a"], read_sample(path)["b"]) == pytest.approx(tiny_ab(2))
    assert read_sample(path, ab_source="json")["a"] == pytest.approx(tiny_ab(2)[0])
    table = read_sample(path, ab_source="table")
    assert (table["a"], table["b"]) == pytest.approx(BENCHMARK_CAMERA_AB[2])
    assert BENCHMARK_CAMERA_AB[2] == pytest.approx((-25727.48737484, 31.80317696))
    # a real benchmark group: its own CALIBRATION/Disp2Depth.npy, then the table; never the JSON in auto
    edit_json(path, lambda r: r["INFO"].update(group="2020-1-16_group3")
              or r["PARAMS"].update(abvalue="[1, 2]"))
    assert (read_sample(path)["a"], read_sample(path)["b"]) == pytest.approx(tiny_ab(2))
    # a simulated group without a usable PARAMS.abvalue: its own calibration file, not the real camera's
    edit_json(path, lambda r: r["INFO"].update(group=GROUP) or r["PARAMS"].update(abvalue="[nan, nan]"))
    assert (read_sample(path)["a"], read_sample(path)["b"]) == pytest.approx(tiny_ab(2))
    with pytest.raises(DatasetError, match="abvalue"):
        read_sample(path, ab_source="json")
    (tiny_dataset / GROUP / "CALIBRATION/Disp2Depth.npy").unlink()  # no file of its own: the table
    assert read_sample(path)["a"] == pytest.approx(BENCHMARK_CAMERA_AB[2][0])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("array([1.0, 2.5])", [1.0, 2.5]),
        ("[1, 2]", [1, 2]),
        ("array([1., -2.], dtype=float32)", [1, -2]),
        ("np.array([[1, 2], [3, 4]])", [1, 2, 3, 4]),
        ([3, 4], [3, 4]),
        ("[nan, -inf]", [np.nan, -np.inf]),
    ],
)
def test_parse_literal_array(text, expected) -> None:
    np.testing.assert_array_equal(data.parse_literal_array(text, name="x", file="f.json"), expected)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch PWNED')",
        "array([1, 2]) + 1",
        "[1, 'a']",
        "[[1, 2], [3]]",
        "{1: 2}",
        "array(open('x'))",
    ],
)
def test_parse_literal_array_rejects_code_and_junk(text, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"f\.json: PARAMS\.x"):
        data.parse_literal_array(text, name="x", file="f.json")
    assert not (tmp_path / "PWNED").exists()


def test_params_of_wrong_length(tiny_dataset: Path) -> None:
    path = json_of(tiny_dataset)
    edit_json(path, lambda r: r["PARAMS"].update(pose="array([1.0, 2.0, 3.0])"))
    with pytest.raises(DatasetError, match=r"INFO_1_1_1\.json: PARAMS\.pose has 3 values"):
        read_sample(path)


# ----------------------------------------------------------------------------------------------- bad inputs
def test_missing_jpg(tiny_dataset: Path) -> None:
    (tiny_dataset / GROUP / "IMG/RIGHT/IMG_1_1_1.JPG").unlink()
    with pytest.raises(DatasetError, match=r"IMG_1_1_1\.JPG: image file is missing"):
        read_sample(json_of(tiny_dataset))


def test_corrupt_jpg(tiny_dataset: Path) -> None:
    (tiny_dataset / GROUP / "IMG/LEFT/IMG_1_1_1.JPG").write_bytes(b"not a jpeg at all" * 10)
    with pytest.raises(DatasetError, match=r"LEFT/IMG_1_1_1\.JPG: not a readable image"):
        read_sample(json_of(tiny_dataset))


def test_truncated_jpg(tiny_dataset: Path) -> None:
    jpg = tiny_dataset / GROUP / "IMG/LRSUM/IMG_1_1_1.JPG"
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    with pytest.raises(DatasetError, match=r"LRSUM/IMG_1_1_1\.JPG: not a readable image"):
        read_sample(json_of(tiny_dataset))


def test_truncated_npy(tiny_dataset: Path) -> None:
    npy = tiny_dataset / GROUP / "DEPTH/DEPTH_1_1.npy"
    npy.write_bytes(npy.read_bytes()[:-100])
    with pytest.raises(DatasetError, match=r"DEPTH_1_1\.npy: unreadable or truncated \.npy"):
        read_sample(json_of(tiny_dataset))


def test_object_dtype_npy(tiny_dataset: Path) -> None:
    npy = tiny_dataset / GROUP / "NORMAL/NORMAL_1_1.npy"
    np.save(
        npy, np.array([{"a": 1}, None], dtype=object), allow_pickle=True
    )  # a pickle the reader must refuse
    with pytest.raises(DatasetError, match=r"NORMAL_1_1\.npy: holds Python objects"):
        read_sample(json_of(tiny_dataset))


def test_non_numeric_npy(tiny_dataset: Path) -> None:
    np.save(tiny_dataset / GROUP / "ALBEDO/ALBEDO_1_1.npy", np.full((24, 32, 3), "x"))
    with pytest.raises(DatasetError, match=r"ALBEDO_1_1\.npy: expected a numeric array"):
        read_sample(json_of(tiny_dataset))


@pytest.mark.parametrize(
    "key", ["INFO", "INFO.camidx", "INFO.valid", "PATH.depth", "PATH.left", "PARAMS.intrinsic"]
)
def test_missing_json_key(tiny_dataset: Path, key: str) -> None:
    path = json_of(tiny_dataset)
    section, _, field = key.partition(".")
    edit_json(path, lambda r: r.pop(section) if not field else r[section].pop(field))
    with pytest.raises(DatasetError, match=rf"INFO_1_1_1\.json: missing JSON key {key}"):
        read_sample(path)
    with pytest.raises(DatasetError, match="missing JSON key"):
        index(tiny_dataset, "train")


def test_invalid_json(tiny_dataset: Path) -> None:
    json_of(tiny_dataset).write_text("{'INFO': ")
    with pytest.raises(DatasetError, match=r"INFO_1_1_1\.json: not valid JSON"):
        read_sample(json_of(tiny_dataset))


@pytest.mark.parametrize(("where", "value"), [("inside", np.nan), ("outside", np.inf), ("outside", np.nan)])
def test_non_finite_depth(tiny_dataset: Path, where: str, value: float) -> None:
    """Non-finite depth is an error anywhere (0 is the marker for missing depth)."""
    npy = tiny_dataset / GROUP / "DEPTH/DEPTH_1_1.npy"
    depth, mask = np.load(npy), np.load(tiny_dataset / GROUP / "MASK/MASK_1_1.npy").astype(bool)
    ys, xs = np.nonzero(mask if where == "inside" else ~mask)
    depth[ys[0], xs[0]] = value
    np.save(npy, depth)
    with pytest.raises(DatasetError, match=r"DEPTH_1_1\.npy: depth holds 1 NaN/inf"):
        read_sample(json_of(tiny_dataset))


@pytest.mark.parametrize(
    ("rel", "shape"),
    [
        ("DEPTH/DEPTH_1_1.npy", (24, 31)),
        ("NORMAL/NORMAL_1_1.npy", (24, 32, 2)),
        ("MASK/MASK_1_1.npy", (23, 32)),
        ("ALBEDO/ALBEDO_1_1.npy", (32, 24, 3)),
    ],
)
def test_shape_mismatch_of_arrays(tiny_dataset: Path, rel: str, shape: tuple[int, ...]) -> None:
    np.save(tiny_dataset / GROUP / rel, np.ones(shape, np.float32))
    with pytest.raises(DatasetError, match=re.escape(Path(rel).name) + ": shape .* disagrees"):
        read_sample(json_of(tiny_dataset))


def test_shape_mismatch_of_images(tiny_dataset: Path) -> None:
    Image.fromarray(np.zeros((24, 30, 3), np.uint8)).save(tiny_dataset / GROUP / "IMG/RIGHT/IMG_1_1_1.JPG")
    with pytest.raises(DatasetError, match=r"RIGHT/IMG_1_1_1\.JPG: image shape \(24, 30\) disagrees"):
        read_sample(json_of(tiny_dataset))


def test_empty_split(tiny_dataset: Path) -> None:
    (tiny_dataset / "train.txt").write_text("# nothing here\n\n")
    with pytest.raises(DatasetError, match=r"train\.txt: split 'train' is empty"):
        index(tiny_dataset, "train")


def test_unknown_split(tiny_dataset: Path) -> None:
    with pytest.raises(DatasetError, match=r"val\.txt: unknown split 'val'.*\['test', 'train'\]"):
        FaceDPDataset(tiny_dataset, "val")


def test_split_names_missing_group(tiny_dataset: Path) -> None:
    (tiny_dataset / "train.txt").write_text("sim_group009\n")
    with pytest.raises(DatasetError, match=r"train\.txt:1: group folder 'sim_group009' does not exist"):
        index(tiny_dataset, "train")


# ----------------------------------------------------------------------------------------------- path escapes
def test_split_entry_escaping_root(tiny_dataset: Path) -> None:
    (tiny_dataset.parent / "elsewhere").mkdir()
    (tiny_dataset / "train.txt").write_text("../elsewhere\n")
    with pytest.raises(DatasetError, match=r"train\.txt:1: group '\.\./elsewhere' resolves to .* outside"):
        index(tiny_dataset, "train")


@pytest.mark.parametrize("rel", ["../outside.JPG", "sim_group001/../../outside.JPG", "/etc/hostname"])
def test_json_path_escaping_root(tiny_dataset: Path, rel: str) -> None:
    _save = np.zeros((24, 32, 3), np.uint8)
    Image.fromarray(_save).save(tiny_dataset.parent / "outside.JPG")
    edit_json(json_of(tiny_dataset), lambda r: r["PATH"].update(left=rel))
    with pytest.raises(
        DatasetError, match=r"INFO_1_1_1\.json: PATH\.left .*(outside the dataset root|absolute)"
    ):
        read_sample(json_of(tiny_dataset))
    with pytest.raises(DatasetError, match="PATH.left"):
        index(tiny_dataset, "train")


def test_symlink_escaping_root(tiny_dataset: Path) -> None:
    outside = tiny_dataset.parent / "secret.npy"
    np.save(outside, np.ones((24, 32), np.float32))
    link = tiny_dataset / GROUP / "DEPTH/DEPTH_1_1.npy"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(DatasetError, match=r"PATH\.depth .*outside the dataset root"):
        read_sample(json_of(tiny_dataset))


# ----------------------------------------------------------------------------------------------- skip_bad
def test_skip_bad_reports_instead_of_failing(tiny_dataset: Path) -> None:
    depth_npy = tiny_dataset / GROUP / "DEPTH/DEPTH_2_1.npy"  # shared by INFO_2_1_1 and INFO_2_1_2
    depth = np.load(depth_npy)
    depth[0, 0] = np.nan
    np.save(depth_npy, depth)
    edit_json(json_of(tiny_dataset, "1_2_2"), lambda r: r["PATH"].pop("right"))
    with pytest.raises(DatasetError):
        list(FaceDPDataset(tiny_dataset, "train"))
    with pytest.warns(UserWarning, match=r"skipped 3 bad sample\(s\); kept 5"):
        dataset = FaceDPDataset(tiny_dataset, "train", skip_bad=True)
    assert len(dataset) == 5
    reasons = dict(dataset.skipped)
    assert set(map(lambda p: Path(p).name, reasons)) == {
        "INFO_2_1_1.json",
        "INFO_2_1_2.json",
        "INFO_1_2_2.json",
    }
    assert any("missing JSON key PATH.right" in reason for reason in reasons.values())
    assert sum("NaN/inf" in reason for reason in reasons.values()) == 2
    assert all(item["sample_id"] not in {f"{GROUP}/INFO_2_1_1", f"{GROUP}/INFO_1_2_2"} for item in dataset)
    with pytest.warns(UserWarning, match="skipped 1 bad JSON"):
        frame = index(tiny_dataset, "train", skip_bad=True)
    assert len(frame) == 7 and Path(frame.attrs["skipped"][0][0]).name == "INFO_1_2_2.json"
