"""The pipeline's teaching set: options -> command line, hash-keyed cache, atomic generation, data card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpface_lib.simulate import cache
from dpface_lib.simulate.cache import cached_dataset, simulate_argv

TINY = {"persons": 2, "test_persons": 1, "size": "64x64", "seed": 3, "cameras": [1], "views_per_person": 1,
        "lights_per_view": 1, "f_number": 1.2}


def test_options_become_the_simulator_command_line():
    argv = simulate_argv({"persons": 4, "size": "160x128", "cameras": [1, 2], "f_number": 1.2,
                          "no_noise": True})
    assert argv == ["--persons", "4", "--size", "160x128", "--f-number", "1.2", "--cameras", "1,2",
                    "--no-noise"]
    with pytest.raises(ValueError, match="unknown.*accepted"):
        simulate_argv({"person": 4})


def test_generated_once_then_reused_and_keyed_by_the_options(tmp_path: Path, monkeypatch):
    root = cached_dataset(TINY, tmp_path, progress=False, workers=1)
    assert (root / "train.txt").read_text().split() == ["sim_group001"]
    assert (root / "test.txt").read_text().split() == ["sim_group002"]
    facts = json.loads((root / "datacard.json").read_text())
    assert facts["samples"] == {"train": 1, "test": 1} and facts["persons"] == {"train": 1, "test": 1}
    assert facts["optics"]["f_number"] == pytest.approx(1.2)
    assert 0 < facts["span_px"] < facts["benchmark_span_px"]  # f/1.2 at 64 px vs the benchmark camera
    assert 0 < facts["relief_beyond_bowl_px"] < facts["span_px"]
    assert "px" in (root / "DATACARD.md").read_text()

    def fail(cfg):
        raise AssertionError("a cached set must not be generated again")

    monkeypatch.setattr("dpface_lib.simulate.writer.generate", fail)
    assert cached_dataset(dict(TINY), tmp_path, progress=False) == root
    with pytest.raises(AssertionError, match="generated again"):
        cached_dataset({**TINY, "seed": 4}, tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # the failed attempt left nothing behind


def test_interrupted_generation_leaves_no_set(tmp_path: Path, monkeypatch):
    real = cache.data_card

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "data_card", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_dataset(TINY, tmp_path, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(cache, "data_card", real)
    assert (cached_dataset(TINY, tmp_path, progress=False, workers=1) / "datacard.json").is_file()
