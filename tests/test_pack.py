"""The decoded pack (dpface_lib.pack): the same tensors as the file reader, never stale, built atomically."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from dpface_lib import DATA_SAMPLES, pack
from dpface_lib.config import training_config
from dpface_lib.data import DatasetError, FaceDPDataset
from dpface_lib.datamodule import DPFaceDataModule
from dpface_lib.pack import PackError, open_pack, pack_key


def leftovers(packs: Path) -> list[str]:
    """What a pack folder holds besides its build lock (which stays, empty, as lock files do)."""
    return sorted(p.name for p in packs.glob("*") if p.name != pack.BUILD_LOCK) if packs.exists() else []


def assert_same_items(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("root_name", ["tiny", "samples"])
def test_packed_items_equal_the_file_reader_bit_for_bit(root_name: str, tiny_dataset: Path,
                                                         tmp_path: Path) -> None:
    root = tiny_dataset if root_name == "tiny" else DATA_SAMPLES  # JPEG 8-bit / simulated PNG sets
    files = FaceDPDataset(root, "train")
    packed = FaceDPDataset(root, "train")
    packed.reader = open_pack(root, packed.frame, label="train", pack_dir=tmp_path / "packs", progress=False)
    assert len(packed.reader) == len(files)
    for i in range(len(files)):
        assert_same_items(packed[i], files[i])


def test_sixteen_bit_images_round_trip_and_mixed_depths_are_refused(tiny_dataset: Path,
                                                                    tmp_path: Path) -> None:
    from dpface_lib.fileio import atomic_save_png

    frame = FaceDPDataset(tiny_dataset, "test").frame
    h, w = FaceDPDataset(tiny_dataset, "test")[0]["left"].shape[1:]
    rng = np.random.default_rng(0)
    for key in ("left", "right", "lrsum"):   # JPEG bytes -> 16-bit PNG bytes; the reader sniffs the format
        for path in frame[key]:
            atomic_save_png(path, rng.integers(0, 65536, (h, w, 3), dtype=np.uint16))
    files = FaceDPDataset(tiny_dataset, "test")
    packed = FaceDPDataset(tiny_dataset, "test")
    packed.reader = open_pack(tiny_dataset, packed.frame, pack_dir=tmp_path, progress=False)
    assert packed.reader.scale == 65535
    for i in range(len(files)):
        assert_same_items(packed[i], files[i])
    atomic_save_png(frame.at[1, "right"], rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    with pytest.raises(PackError, match=f"{frame.at[1, 'right']}: 8-bit, unlike the split's earlier"):
        open_pack(tiny_dataset, frame, pack_dir=tmp_path, progress=False)


def test_an_edited_file_gives_a_new_pack_and_the_old_one_is_never_read(tiny_dataset: Path,
                                                                       tmp_path: Path) -> None:
    dataset = FaceDPDataset(tiny_dataset, "test")
    first = open_pack(tiny_dataset, dataset.frame, pack_dir=tmp_path, progress=False)
    assert open_pack(tiny_dataset, dataset.frame, pack_dir=tmp_path, build=False).folder == first.folder
    depth_path = Path(dataset.frame.at[0, "depth"])
    depth = np.load(depth_path)
    np.save(depth_path, np.where(depth > 0, depth + 5.0, 0).astype(depth.dtype))
    os.utime(depth_path, ns=(1, 1))   # a different mtime even on coarse clocks
    assert open_pack(tiny_dataset, dataset.frame, pack_dir=tmp_path, build=False) is None
    second = open_pack(tiny_dataset, dataset.frame, pack_dir=tmp_path, progress=False)
    assert second.folder != first.folder
    assert np.array_equal(second(dataset.frame.at[0, "json"])["depth"], np.load(depth_path))


def test_checks_still_run_on_packed_views(tiny_dataset: Path, tmp_path: Path) -> None:
    dataset = FaceDPDataset(tiny_dataset, "test")
    depth_path = Path(dataset.frame.at[0, "depth"])
    depth = np.load(depth_path)
    depth[0, 0] = np.nan
    np.save(depth_path, depth)
    dataset.reader = open_pack(tiny_dataset, dataset.frame, pack_dir=tmp_path, progress=False)
    with pytest.raises(DatasetError, match=f"{depth_path}.*NaN"):
        dataset[0]


def test_views_of_different_sizes_are_refused_and_training_reads_the_files(
        tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    frame = FaceDPDataset(tiny_dataset, "train").frame
    packs = tmp_path / "packs"
    last = frame.iloc[-1]
    for key in ("depth", "mask"):
        array = np.load(last[key])
        np.save(last[key], np.pad(array, ((0, 2), (0, 0))))
    for key in ("normal", "albedo"):
        array = np.load(last[key])
        np.save(last[key], np.pad(array, ((0, 2), (0, 0), (0, 0))))
    from PIL import Image
    for key in ("left", "right", "lrsum"):
        image = np.asarray(Image.open(last[key]))
        Image.fromarray(np.pad(image, ((0, 2), (0, 0), (0, 0)))).save(last[key], format="JPEG")
    with pytest.raises(PackError, match=r"sim_group001/.*\(26, 32\) unlike the split's first view"):
        open_pack(tiny_dataset, frame, pack_dir=packs, progress=False)
    assert leftovers(packs) == []   # nothing half-built is left
    monkeypatch.setattr(pack, "DEFAULT_PACK_DIR", packs)
    cfg = training_config("dpnet", "tiny")["data"]
    module = DPFaceDataModule(tiny_dataset, {**cfg, "val_subset": None}, seed=0)
    with pytest.warns(UserWarning, match="data.pack: .*reading the files instead"):
        module.setup("fit")
    assert module.datasets["train"].dataset.reader is None
    assert module.datasets["val"].dataset.reader is not None   # the test split packs fine


def test_an_interrupted_build_leaves_nothing(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:
    frame = FaceDPDataset(tiny_dataset, "train").frame
    packs = tmp_path / "packs"
    calls = []

    def failing(json_path, root):
        calls.append(json_path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(json_path, root)

    real = pack.read_files
    monkeypatch.setattr(pack, "read_files", failing)
    with pytest.raises(KeyboardInterrupt):
        open_pack(tiny_dataset, frame, pack_dir=packs, progress=False)
    assert leftovers(packs) == []
    monkeypatch.setattr(pack, "read_files", real)
    assert len(open_pack(tiny_dataset, frame, pack_dir=packs, progress=False)) == len(frame)


def test_a_pickled_pack_carries_no_arrays(tiny_dataset: Path, tmp_path: Path) -> None:
    frame = FaceDPDataset(tiny_dataset, "train").frame
    packed = open_pack(tiny_dataset, frame, pack_dir=tmp_path, progress=False)
    packed(frame.at[0, "json"])                       # maps the arrays in this process
    clone = pickle.loads(pickle.dumps(packed))         # what a DataLoader worker receives
    assert clone._arrays is None and len(pickle.dumps(packed)) < 100_000
    assert np.array_equal(clone(frame.at[1, "json"])["left"], packed(frame.at[1, "json"])["left"])


def test_a_rebuilt_pack_replaces_the_stale_one(tiny_dataset: Path, tmp_path: Path) -> None:
    dataset = FaceDPDataset(tiny_dataset, "test")
    other = open_pack(tiny_dataset, FaceDPDataset(tiny_dataset, "train").frame, label="train",
                      pack_dir=tmp_path, progress=False)
    subset = open_pack(tiny_dataset, dataset.frame.iloc[:2], label="test", pack_dir=tmp_path, progress=False)
    first = open_pack(tiny_dataset, dataset.frame, label="test", pack_dir=tmp_path, progress=False)
    os.utime(dataset.frame.at[3, "albedo"], ns=(2, 2))
    second = open_pack(tiny_dataset, dataset.frame, label="test", pack_dir=tmp_path, progress=False)
    assert not first.folder.exists() and second.folder.is_dir()
    assert other.folder.is_dir() and subset.folder.is_dir()   # other selections of the same root stay


def test_pack_key_names_the_views(tiny_dataset: Path) -> None:
    frame = FaceDPDataset(tiny_dataset, "train").frame
    assert pack_key(tiny_dataset, frame) == pack_key(tiny_dataset, frame)
    assert pack_key(tiny_dataset, frame.iloc[:-1]) != pack_key(tiny_dataset, frame)
    with pytest.raises(DatasetError, match="not in the pack"):
        open_pack(tiny_dataset, frame.iloc[:-1], pack_dir=tiny_dataset.parent / "p", progress=False)(
            frame.at[len(frame) - 1, "json"])


def test_a_damaged_pack_names_its_file(tiny_dataset: Path, tmp_path: Path) -> None:
    frame = FaceDPDataset(tiny_dataset, "test").frame
    packed = open_pack(tiny_dataset, frame, pack_dir=tmp_path / "packs", progress=False)
    (packed.folder / "depth.npy").write_bytes(b"\x93NUMPY truncated")
    with pytest.raises(DatasetError, match=r"depth\.npy: unreadable pack array .*delete"):
        pack.Pack(packed.folder)(frame.at[0, "json"])


def _open_in_child(root: Path, pack_dir: Path, queue) -> None:
    frame = FaceDPDataset(root, "test").frame
    queue.put(str(open_pack(root, frame, label="test", pack_dir=pack_dir, progress=False).folder))


def test_a_run_that_waits_on_another_build_reuses_it(tiny_dataset: Path, tmp_path: Path) -> None:
    """While one process holds the build lock, a second open waits, then finds the pack and does not rebuild
    it (without the lock both would build, and one would replace the folder the other had just opened)."""
    import multiprocessing

    from dpface_lib.fileio import exclusive_lock

    frame = FaceDPDataset(tiny_dataset, "test").frame
    packs = tmp_path / "packs"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with exclusive_lock(packs / pack.BUILD_LOCK):
        child = context.Process(target=_open_in_child, args=(tiny_dataset, packs, queue))
        child.start()
        child.join(timeout=1.0)
        assert child.is_alive()                                   # blocked on the lock, nothing built
        assert not list(packs.glob("test-*"))
        folder = packs / f"test-{pack_key(tiny_dataset.resolve(), frame)}"
        pack._build(tiny_dataset.resolve(), list(frame["json"]), "test", folder, progress=False)
        built = (folder / "manifest.json").stat().st_mtime_ns
    assert queue.get(timeout=60) == str(folder)
    child.join(timeout=10)
    assert child.exitcode == 0
    assert (folder / "manifest.json").stat().st_mtime_ns == built   # reused, not rebuilt
    assert leftovers(packs) == [folder.name]
