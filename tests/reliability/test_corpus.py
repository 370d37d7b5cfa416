"""Corpus of bad inputs across the kit's entry points (docs/reliability.md).

Every case asserts the exact error type, that the message names the file (or option) at fault, and, for
the commands, exit status 2, a one-line message and no partial output. Reader cases start from a fresh
tiny dataset (tests/conftest.py) and break one thing.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpface_lib import cli
from dpface_lib.checkpoint import CheckpointError, load_checkpoint, load_model
from dpface_lib.config import ConfigError, parse_key_value, training_config
from dpface_lib.data import FaceDPDataset, index, read_sample
from dpface_lib.layout import DatasetError, parse_literal_array, read_split
from dpface_lib.metrics import EvaluationError, affine_invariant_metrics, depth_metrics, normal_metrics
from dpface_lib.models import ModelConfigError, build_model

GROUP = "sim_group001"


def record_path(root: Path, name: str = "1_1_1") -> Path:
    return root / GROUP / "JSON" / f"INFO_{name}.json"


def edit(root: Path, change: Callable[[dict], object], name: str = "1_1_1") -> Path:
    path = record_path(root, name)
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path


def first_array(root: Path, kind: str) -> Path:
    return sorted((root / GROUP / kind).glob("*.npy"))[0]


def read_first(root: Path):
    return read_sample(record_path(root))


def index_train(root: Path):
    return index(root, "train")


# (id, break the dataset -> the call that must fail, expected message regex, file name in the message)
READER_CASES: list[tuple[str, Callable[[Path], Callable[[], object]], str, str]] = [
    ("json_not_json", lambda r: (record_path(r).write_text("{not json"), lambda: read_first(r))[1],
     "not valid JSON", "INFO_1_1_1.json"),
    ("json_top_level_list", lambda r: (record_path(r).write_text("[1, 2]"), lambda: read_first(r))[1],
     "top level must be an object", "INFO_1_1_1.json"),
    ("json_not_utf8", lambda r: (record_path(r).write_bytes(b"\xff\xfe{"), lambda: read_first(r))[1],
     "not valid JSON", "INFO_1_1_1.json"),
    ("json_missing_info_key", lambda r: (edit(r, lambda x: x["INFO"].pop("camidx")), lambda: index_train(r))[1],
     "missing JSON key INFO.camidx", "INFO_1_1_1.json"),
    ("json_missing_path_key", lambda r: (edit(r, lambda x: x["PATH"].pop("depth")), lambda: index_train(r))[1],
     "missing JSON key PATH.depth", "INFO_1_1_1.json"),
    ("json_path_not_string", lambda r: (edit(r, lambda x: x["PATH"].update(left=3)), lambda: index_train(r))[1],
     "missing JSON key PATH.left", "INFO_1_1_1.json"),
    ("valid_word", lambda r: (edit(r, lambda x: x["INFO"].update(valid="maybe")), lambda: index_train(r))[1],
     "INFO.valid must be true or false", "INFO_1_1_1.json"),
    ("valid_number", lambda r: (edit(r, lambda x: x["INFO"].update(valid=2)), lambda: index_train(r))[1],
     "INFO.valid must be true or false", "INFO_1_1_1.json"),
    ("camidx_text", lambda r: (edit(r, lambda x: x["INFO"].update(camidx="one")), lambda: index_train(r))[1],
     "INFO.camidx must be an integer", "INFO_1_1_1.json"),
    ("camidx_bool", lambda r: (edit(r, lambda x: x["INFO"].update(camidx=True)), lambda: index_train(r))[1],
     "INFO.camidx must be an integer", "INFO_1_1_1.json"),
    ("camidx_huge", lambda r: (edit(r, lambda x: x["INFO"].update(camidx="1" * 40)), lambda: index_train(r))[1],
     "INFO.camidx must be an integer", "INFO_1_1_1.json"),
    ("lightidx_list", lambda r: (edit(r, lambda x: x["INFO"].update(lightidx=[1])), lambda: index_train(r))[1],
     "INFO.lightidx must be an integer", "INFO_1_1_1.json"),
    ("gender_number", lambda r: (edit(r, lambda x: x["INFO"].update(gender=5)), lambda: index_train(r))[1],
     "INFO.gender must be a string", "INFO_1_1_1.json"),
    ("stray_copy", lambda r: ((record_path(r).parent / "INFO_1_1_1 (1).json").write_text(
        record_path(r).read_text()), lambda: index_train(r))[1], "stray copy", "INFO_1_1_1 (1).json"),
    ("same_sample_twice", lambda r: (record_path(r, "1_2_2").write_text(record_path(r, "1_1_1").read_text().replace(
        '"viewidx": 1', '"viewidx": 1')), lambda: index_train(r))[1], "describe the same sample", "INFO_1_1_1.json"),
    ("split_twice", lambda r: ((r / "train.txt").write_text(f"{GROUP}\n{GROUP}\n"), lambda: index_train(r))[1],
     "listed again", "train.txt:2"),
    ("split_escapes", lambda r: ((r / "train.txt").write_text("../elsewhere\n"), lambda: index_train(r))[1],
     "outside the dataset root", "train.txt:1"),
    ("split_absolute", lambda r: ((r / "train.txt").write_text("/etc\n"), lambda: index_train(r))[1],
     "absolute path", "train.txt:1"),
    ("split_missing_group", lambda r: ((r / "train.txt").write_text("nope\n"), lambda: index_train(r))[1],
     "does not exist", "train.txt:1"),
    ("split_empty", lambda r: ((r / "train.txt").write_text("# nothing\n\n"), lambda: index_train(r))[1],
     "is empty", "train.txt"),
    ("split_not_utf8", lambda r: ((r / "train.txt").write_bytes(b"\xff\xfe\x00"), lambda: index_train(r))[1],
     "not UTF-8", "train.txt"),
    ("split_unknown", lambda r: (None, lambda: index(r, "validation"))[1], "unknown split", "validation.txt"),
    ("split_name_with_slash", lambda r: (None, lambda: index(r, "../train"))[1], "unknown split", "train.txt"),
    ("path_escapes_root", lambda r: (edit(r, lambda x: x["PATH"].update(depth="../../x.npy")),
                                     lambda: index_train(r))[1], "outside the dataset root", "INFO_1_1_1.json"),
    ("depth_pickled", lambda r: (np.save(first_array(r, "DEPTH"), np.array([{"a": 1}], dtype=object),
                                         allow_pickle=True), lambda: FaceDPDataset(r, "train")[0])[1],
     "refusing to unpickle", "DEPTH_"),
    ("depth_truncated", lambda r: (first_array(r, "DEPTH").write_bytes(first_array(r, "DEPTH").read_bytes()[:60]),
                                   lambda: FaceDPDataset(r, "train")[0])[1], "truncated", "DEPTH_"),
    ("depth_strings", lambda r: (np.save(first_array(r, "DEPTH"), np.array(["a", "b"])),
                                 lambda: FaceDPDataset(r, "train")[0])[1], "numeric array", "DEPTH_"),
    ("depth_nan", lambda r: (np.save(first_array(r, "DEPTH"), np.full((24, 32), np.nan, np.float32)),
                             lambda: FaceDPDataset(r, "train")[0])[1], "NaN/inf", "DEPTH_"),
    ("depth_wrong_shape", lambda r: (np.save(first_array(r, "DEPTH"), np.ones((5, 5), np.float32)),
                                     lambda: FaceDPDataset(r, "train")[0])[1], "disagrees with the images",
     "DEPTH_"),
    ("normal_wrong_shape", lambda r: (np.save(first_array(r, "NORMAL"), np.ones((24, 32), np.float32)),
                                      lambda: FaceDPDataset(r, "train")[0])[1], "disagrees with the images",
     "NORMAL_"),
    ("mask_wrong_shape", lambda r: (np.save(first_array(r, "MASK"), np.ones((24, 31), bool)),
                                    lambda: FaceDPDataset(r, "train")[0])[1], "disagrees with the images", "MASK_"),
    ("image_corrupt", lambda r: (sorted((r / GROUP / "IMG" / "LEFT").glob("*.JPG"))[0].write_bytes(b"\xff\xd8junk"),
                                 lambda: FaceDPDataset(r, "train")[0])[1], "not a readable image", "LEFT/IMG_"),
    ("image_missing", lambda r: (sorted((r / GROUP / "IMG" / "RIGHT").glob("*.JPG"))[0].unlink(),
                                 lambda: FaceDPDataset(r, "train")[0])[1], "image file is missing", "RIGHT/IMG_"),
    ("intrinsic_code", lambda r: (edit(r, lambda x: x["PARAMS"].update(intrinsic="__import__('os').getcwd()")),
                                  lambda: read_first(r))[1], "intrinsic", "INFO_1_1_1.json"),
    ("intrinsic_short", lambda r: (edit(r, lambda x: x["PARAMS"].update(intrinsic="[1, 2]")),
                                   lambda: read_first(r))[1], "intrinsic", "INFO_1_1_1.json"),
    ("pose_unclosed", lambda r: (edit(r, lambda x: x["PARAMS"].update(pose="array([1, 2")),
                                 lambda: read_first(r))[1], "pose", "INFO_1_1_1.json"),
    ("calibration_table_shape", lambda r: (
        np.save(r / GROUP / "CALIBRATION" / "Disp2Depth.npy", np.ones((3, 3))),
        edit(r, lambda x: x["PARAMS"].pop("abvalue")), lambda: read_first(r))[2], "unexpected shape", "Disp2Depth.npy"),
    ("calibration_table_short", lambda r: (
        np.save(r / GROUP / "CALIBRATION" / "Disp2Depth.npy", np.ones((1, 2))),
        edit(r, lambda x: x["PARAMS"].pop("abvalue"), "2_1_1"), lambda: read_sample(record_path(r, "2_1_1")))[2],
     "no row for camera 2", "Disp2Depth.npy"),
]


@pytest.mark.parametrize(("case", "broken", "message", "named"), READER_CASES, ids=[c[0] for c in READER_CASES])
def test_reader_refuses_bad_data_naming_the_file(tiny_dataset: Path, case, broken, message, named) -> None:
    call = broken(tiny_dataset)
    with pytest.raises(DatasetError, match=message) as info:
        call()
    assert named in str(info.value), str(info.value)


# ------------------------------------------------------------------------ silent wrong data, now right
def test_string_false_is_invalid_and_int8_minus_one_is_face(tiny_dataset: Path) -> None:
    edit(tiny_dataset, lambda x: x["INFO"].update(valid="false"))
    table = index(tiny_dataset, "train", valid_only=True)
    assert f"{GROUP}/INFO_1_1_1" not in set(table["sample_id"]) and len(table) > 0
    mask_file = Path(read_first(tiny_dataset)["meta"]["mask"])
    mask = np.load(mask_file)
    np.save(mask_file, np.where(mask, -1, 0).astype(np.int8))  # "non-zero" marks the face
    assert read_first(tiny_dataset)["mask"].sum() == mask.sum() > 0


def test_missing_abvalue_uses_the_groups_own_calibration(tiny_dataset: Path) -> None:
    own = np.load(tiny_dataset / GROUP / "CALIBRATION" / "Disp2Depth.npy")[0]
    edit(tiny_dataset, lambda x: x["PARAMS"].pop("abvalue"))
    sample = read_first(tiny_dataset)
    assert (sample["a"], sample["b"]) == pytest.approx(tuple(own))


# --------------------------------------------------------------------------------- parsers and fuzzing
PARSER_CASES = [
    ("literal_code", lambda: parse_literal_array("__import__('os')", name="x", file="f.json"), DatasetError, "f.json"),
    ("literal_lambda", lambda: parse_literal_array("(lambda: 1)()", name="x", file="f.json"), DatasetError, "f.json"),
    ("literal_nested", lambda: parse_literal_array("[[1, [2]]]", name="x", file="f.json"), DatasetError, "f.json"),
    ("literal_size", lambda: parse_literal_array("[1, 2, 3]", name="x", file="f.json", sizes=(2,)), DatasetError,
     "f.json"),
    ("override_no_equals", lambda: parse_key_value("train.lr"), ConfigError, "--set"),
    ("override_empty_key", lambda: parse_key_value("=3"), ConfigError, "--set"),
    ("override_bad_yaml", lambda: parse_key_value("a=[1, 2"), ConfigError, "--set"),
    ("override_yaml_tag", lambda: parse_key_value("a=!!python/object/apply:os.system ['true']"), ConfigError,
     "--set"),
    ("config_unknown_key", lambda: training_config("dpnet", "tiny", {"train": {"lr": 1}}), ConfigError,
     "overrides.train.lr"),
    ("config_wrong_type", lambda: training_config("dpnet", "tiny", {"data": {"batch_size": "4"}}), ConfigError,
     "data.batch_size"),
    ("model_unknown", lambda: build_model("resnet"), ModelConfigError, "resnet"),
    ("model_bad_override", lambda: build_model("dpnet", widht=1), ModelConfigError, "widht"),
]


@pytest.mark.parametrize(("case", "call", "error", "named"), PARSER_CASES, ids=[c[0] for c in PARSER_CASES])
def test_parsers_refuse_bad_text(case, call, error, named) -> None:
    with pytest.raises(error) as info:
        call()
    assert named in str(info.value)


def test_fuzz_literal_arrays_and_split_files(tmp_path: Path) -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None)
    @given(st.text(max_size=60))
    def literal(text):
        try:
            out = parse_literal_array(text, name="x", file="f.json")
        except DatasetError as exc:
            assert "f.json" in str(exc)
        else:
            assert isinstance(out, np.ndarray) and out.dtype == np.float64

    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=6))
    def split(lines):
        root = tmp_path / "fuzz"
        (root / "g1" / "JSON").mkdir(parents=True, exist_ok=True)
        (root / "train.txt").write_text("\n".join(lines), encoding="utf-8")
        try:
            groups = read_split(root, "train")
        except DatasetError as exc:
            assert "train.txt" in str(exc)
        else:
            assert groups and all((root / g).is_dir() and (root / g).resolve().is_relative_to(root.resolve())
                                  for g in groups)

    literal()
    split()


def test_fuzz_json_records_fail_only_with_dataset_error(tiny_dataset: Path) -> None:
    """Any field of a valid record replaced by any JSON value (or removed): the reader either reads the
    sample or raises DatasetError naming the record; never a raw TypeError/KeyError."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    path = record_path(tiny_dataset)
    original = json.loads(path.read_text())
    fields = [(section, key) for section in ("INFO", "PATH", "PARAMS") for key in original[section]]
    values = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=8)

    # fixed examples in CI; DPFACE_FUZZ_EXAMPLES=N explores N fresh random ones
    explore = os.environ.get("DPFACE_FUZZ_EXAMPLES")

    @settings(max_examples=int(explore or 120), deadline=None, derandomize=not explore,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(fields), st.one_of(st.just("<removed>"), values))
    def check(field, value):
        section, key = field
        record = json.loads(json.dumps(original))
        if value == "<removed>":
            del record[section][key]
        else:
            record[section][key] = value
        path.write_text(json.dumps(record))
        try:
            sample = read_sample(path, root=tiny_dataset)
        except DatasetError as exc:
            assert path.name in str(exc), str(exc)
        else:
            assert sample["depth"].ndim == 2 and sample["sample_id"].endswith(path.stem)
        finally:
            path.write_text(json.dumps(original))

    check()


def test_fuzz_metric_input_checks() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    values = st.floats(allow_nan=True, allow_infinity=True, width=32)

    @settings(max_examples=80, deadline=None)
    @given(hnp.arrays(np.float64, (2, 3, 4), elements=values), hnp.arrays(np.float64, (2, 3, 4), elements=values),
           hnp.arrays(np.float64, (2, 3, 4), elements=values))
    def affine(pred, gt, weight):
        try:
            out = affine_invariant_metrics(pred, gt, weight, allow_empty=True, min_valid=1)  # 12 px: no floor
        except EvaluationError as exc:
            assert "sample" in str(exc) or "weights" in str(exc)
        else:
            assert all(np.all(np.isnan(v) | (v >= 0)) for v in out.values())

    affine()


# --------------------------------------------------------------------------------------------- metrics
METRIC_CASES = [
    ("affine_nan_inside", lambda: affine_invariant_metrics(np.array([[np.nan, 1.0]]), np.ones((1, 2))),
     "non-finite values inside the mask in sample 0"),
    ("affine_negative_weight", lambda: affine_invariant_metrics(np.ones((1, 2)), np.ones((1, 2)), -np.ones((1, 2))),
     "weights must be finite"),
    ("affine_shapes", lambda: affine_invariant_metrics(np.ones((2, 2)), np.ones((2, 3))), "shape"),
    ("affine_empty", lambda: affine_invariant_metrics(np.ones((2, 2)), np.ones((2, 2)), np.zeros((2, 2))),
     "no valid pixel"),
    ("depth_range", lambda: depth_metrics(np.ones((2, 2)), np.ones((2, 2)), depth_range_mm=(5, 1)), "0 < low < high"),
    ("normals_channels", lambda: normal_metrics(np.ones((2, 2, 2)), np.ones((2, 2, 2))), "(3, H, W)"),
    ("normals_mask_shape", lambda: normal_metrics(np.ones((3, 2, 2)), np.ones((3, 2, 2)), np.ones((3, 3), bool)),
     "does not match"),
]


@pytest.mark.parametrize(("case", "call", "message"), METRIC_CASES, ids=[c[0] for c in METRIC_CASES])
def test_metrics_refuse_bad_inputs(case, call, message) -> None:
    with pytest.raises(EvaluationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


# ------------------------------------------------------------------------------------------ checkpoints
def test_checkpoints_refuse_bad_files(tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated.ckpt: not a readable checkpoint"):
        load_checkpoint(truncated)
    not_zip = tmp_path / "text.ckpt"
    not_zip.write_text("hello")
    with pytest.raises(CheckpointError, match="text.ckpt"):
        load_checkpoint(not_zip)
    no_meta = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, no_meta)
    with pytest.raises(CheckpointError, match="plain.ckpt: not a DP-Face training checkpoint"):
        load_model(no_meta)
    with pytest.raises(CheckpointError, match="missing.ckpt does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


# ------------------------------------------------------------------------------------------- commands
def run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip()


def pair(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "l.png")
    Image.fromarray(np.roll(image, 1, axis=0)).save(tmp_path / "r.png")
    return ["--left", str(tmp_path / "l.png"), "--right", str(tmp_path / "r.png"), "--a", "-20000", "--b", "25"]


def test_predict_refuses_and_leaves_nothing(tmp_path: Path, capsys) -> None:
    args = pair(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = run(["predict", *args, "--out", str(blocker / "out")], capsys)
    assert code == 2 and "file" in err and len(err.splitlines()) == 1
    out = tmp_path / "out"
    out.mkdir()
    (out / "normal.npy").write_bytes(b"old")  # a previous model's output
    code, err = run(["predict", *args, "--out", str(out)], capsys)
    assert code == 2 and "not empty" in err and (out / "normal.npy").read_bytes() == b"old"
    code, _ = run(["predict", *args, "--out", str(out), "--overwrite"], capsys)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["depth.npy", "depth.png", "disparity.npy", "normal.npy",
                                                      "normal.png"]
    assert (out / "normal.npy").read_bytes() != b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left
    bad_calib = tmp_path / "calib.json"
    bad_calib.write_text(json.dumps({"a": "x", "b": 1}))
    code, err = run(["predict", *args[:4], "--calib", str(bad_calib), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "calib.json" in err and not (tmp_path / "o2").exists()
    bad_ckpt = tmp_path / "bad.ckpt"
    bad_ckpt.write_bytes(b"PK\x03\x04 not really")
    code, err = run(["predict", *args, "--checkpoint", str(bad_ckpt), "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "bad.ckpt" in err and not (tmp_path / "o3").exists()


def test_eval_refuses_and_leaves_nothing(tiny_dataset: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    code, err = run(["eval", "--predictions", str(tmp_path / "none"), "--data-root", str(tiny_dataset),
                     "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and "none" in err and not (tmp_path / "o1").exists()
    bad = tmp_path / "m.ckpt"
    bad.write_bytes(b"0")
    code, err = run(["eval", "--checkpoint", str(bad), "--data-root", str(tiny_dataset), "--out",
                     str(tmp_path / "o2"), "--save-predictions", str(tmp_path / "p2")], capsys)
    assert code == 2 and "m.ckpt" in err and not (tmp_path / "o2").exists() and not (tmp_path / "p2").exists()
    # a relative --data-root is taken from the working directory
    monkeypatch.chdir(tiny_dataset.parent)
    code, err = run(["eval", "--predictions", str(tmp_path / "none"), "--data-root", tiny_dataset.name,
                     "--out", str(tmp_path / "o3")], capsys)
    assert code == 2 and "predictions folder does not exist" in err


def test_train_pipeline_simulate_refuse_bad_options(tmp_path: Path, capsys) -> None:
    cases = [
        (["train", "--model", "resnet", "--out", str(tmp_path / "t")], "resnet"),
        (["train", "--model", "dpnet", "--out", str(tmp_path / "t"), "--set", "train.lr=1"], "train.lr"),
        (["train", "--model", "dpnet", "--out", str(tmp_path / "t"), "--set", "a=[1"], "--set"),
        (["train", "--model", "dpnet", "--out", str(tmp_path / "t"), "--resume", str(tmp_path / "x.ckpt")],
         "x.ckpt"),
        (["pipeline", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "p")], "missing.yaml"),
    ]
    for argv, named in cases:
        code, err = run(argv, capsys)
        assert code == 2 and named in err, (argv, err)
        assert len(err.splitlines()) == 1, err
    tagged = tmp_path / "tagged.yaml"
    tagged.write_text("steps: !!python/object/apply:os.system ['echo hacked']\n")
    code, err = run(["pipeline", str(tagged), "--out", str(tmp_path / "p2")], capsys)
    assert code == 2 and "tagged.yaml" in err and not (tmp_path / "p2").exists()
    for option in (["--lights-per-view", "-1"], ["--persons", "0"], ["--tau", "nan"], ["--workers", "0"]):
        with pytest.raises(SystemExit) as info:
            cli.main(["simulate", "--out", str(tmp_path / "s"), *option])
        assert info.value.code == 2 and option[0] in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    code, err = run(["simulate", "--out", str(existing), "--persons", "1", "--quiet"], capsys)
    assert code == 2 and "not empty" in err and (existing / "keep.txt").read_text() == "mine"


def test_edge_turns_expected_errors_into_one_line_and_debug_shows_them(tmp_path: Path, capsys, monkeypatch):
    import dpface_lib.predict as predict

    def boom(argv):
        raise zipfile.BadZipFile(f"{tmp_path / 'x.ckpt'}: File is not a zip file")

    monkeypatch.setattr(predict, "cli", boom)
    code, err = run(["predict"], capsys)
    assert code == 2 and err.startswith("dpface predict: BadZipFile:") and "x.ckpt" in err
    with pytest.raises(zipfile.BadZipFile):
        cli.main(["--debug", "predict"])

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "cli", interrupted)
    assert cli.main(["predict"]) == 130

    def bug(argv):
        raise ZeroDivisionError("a bug, not bad input")

    monkeypatch.setattr(predict, "cli", bug)
    with pytest.raises(ZeroDivisionError):  # bugs are not hidden behind a one-line message
        cli.main(["predict"])


def test_checkpoint_arguments_are_checked_before_the_model_is_built(tmp_path: Path) -> None:
    import time

    small = build_model("dpnet", "tiny")
    meta = {"format": 1, "model": "dpnet", "profile": "tiny", "model_args": {"width": 0.25}}
    state = {f"model.{k}": v for k, v in small.state_dict().items()}
    huge = tmp_path / "huge.ckpt"
    torch.save({"dpface": {**meta, "model": "psmnet", "model_args": {"channels": 20000}}, "state_dict": {}}, huge)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="huge.ckpt: stored model argument channels=20000"):
        load_model(huge)
    assert time.perf_counter() - start < 5  # refused before any allocation
    unknown = tmp_path / "unknown.ckpt"
    torch.save({"dpface": {**meta, "model": "resnet"}, "state_dict": state}, unknown)
    with pytest.raises(CheckpointError, match="unknown.ckpt: unknown model 'resnet'"):
        load_model(unknown)
    mismatch = tmp_path / "mismatch.ckpt"
    torch.save({"dpface": meta, "state_dict": state}, mismatch)  # tiny weights, width 0.25 architecture
    with pytest.raises(CheckpointError, match="mismatch.ckpt: the stored weights do not fit") as info:
        load_model(mismatch)
    assert len(str(info.value).splitlines()) == 1
    bad_arg = tmp_path / "badarg.ckpt"
    torch.save({"dpface": {**meta, "model_args": {"wdth": 1.0}}, "state_dict": state}, bad_arg)
    with pytest.raises(CheckpointError, match="badarg.ckpt: cannot build the stored model"):
        load_model(bad_arg)
