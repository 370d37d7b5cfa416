"""The demo StereoDPNet shipped in ``dpface_lib/assets``: a weights-only checkpoint that rebuilds from its own
configuration and reproduces the test-split metrics recorded next to it (``stereodpnet_demo.json``, also
quoted in docs/stereodpnet.md) when evaluated afresh on ``data_samples``."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from dpface_lib import DATA_SAMPLES, REPO_ROOT
from dpface_lib.checkpoint import load_checkpoint, load_model
from dpface_lib.data import FaceDPDataset
from dpface_lib.demo import DEMO_CHECKPOINT, DEMO_RECORD, split_fingerprint
from dpface_lib.evaluate import aggregate, evaluate_model

RTOL, ATOL = 1e-3, 1e-6


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads(DEMO_RECORD.read_text(encoding="utf-8"))


def test_demo_checkpoint_is_a_small_weights_only_asset(record) -> None:
    assert DEMO_CHECKPOINT.is_file() and DEMO_CHECKPOINT.stat().st_size <= 20 * 2**20
    checkpoint = load_checkpoint(DEMO_CHECKPOINT)  # torch.load(weights_only=True)
    assert set(checkpoint) <= {"dpface", "state_dict", "global_step"}  # no optimiser state
    assert checkpoint["dpface"]["model"] == record["model"] == "stereodpnet"
    assert checkpoint["dpface"]["profile"] == record["profile"]
    assert "dpface train --model stereodpnet" in record["command"]


def test_docs_quote_the_recorded_metrics(record) -> None:
    docs = (REPO_ROOT / "docs" / "stereodpnet.md").read_text(encoding="utf-8")
    assert "dpface_lib/assets/stereodpnet_demo.ckpt" in docs
    line = next(s for s in docs.splitlines() if s.startswith("Test-split metrics of the demo checkpoint"))
    quoted = dict(re.findall(r"(ai1|ai2|spearman|absrel|mean_deg) ([0-9.]+)", line))
    assert set(quoted) == {"ai1", "ai2", "spearman", "absrel", "mean_deg"}
    for key, text in quoted.items():
        decimals = len(text.split(".")[1])
        assert float(text) == pytest.approx(record["metrics"][key], abs=0.5 * 10**-decimals + 1e-12), key


def test_demo_checkpoint_reproduces_its_recorded_metrics(record) -> None:
    evaluation = record["evaluation"]
    assert split_fingerprint(DATA_SAMPLES, evaluation["split"]) == evaluation["fingerprint"], (
        f"{DATA_SAMPLES} changed since the demo metrics were recorded; retrain and re-export the demo "
        f"checkpoint (docs/stereodpnet.md, 'Demo checkpoint'): {record['command']}"
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = load_model(DEMO_CHECKPOINT)
        dataset = FaceDPDataset(DATA_SAMPLES, evaluation["split"])
        frame = evaluate_model(model, dataset, name="demo", batch_size=evaluation["batch_size"])
    finally:
        torch.set_num_threads(threads)
    assert len(frame) == evaluation["samples"] == 32
    means = aggregate(frame).iloc[0]
    for key, expected in record["metrics"].items():
        assert math.isfinite(expected), key
        assert float(means[key]) == pytest.approx(expected, rel=RTOL, abs=ATOL), key
    # a trained model, not a constant: normals better than the 59.5 deg of a saturated ANM, depth error small
    assert record["metrics"]["mean_deg"] < 45 and record["metrics"]["absrel"] < 0.2
