"""Score a pipeline run's trained models on persons that no choice of the teaching recipe ever saw.

The `tiny` recipes (learning rates, step counts, loss weights; docs/training.md) were compared on the teaching
set's 4 held-out test persons, so that split has informed the recipe. This check draws new persons from the
face model with another simulator seed (same optics, size and views as ``pipeline.yaml``'s ``dataset:``),
and evaluates every ``train__model-*/checkpoints/last.ckpt`` of a run there, next to the constant and the
block matcher (notebook 04's settings). If the recipe had been fitted to the 4 test persons, the models
would lose ground against the two references here.

Usage: ``.venv/bin/python tools/fresh_persons_check.py runs/NAME [--persons 8] [--seed 11]``. The new set is
cached under ``runs/cache/`` like the teaching set. Prints one row per model: ai1 (px), ai1 over the
constant's, 1 - |spearman|, and the normal error where a model predicts normals.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from dpface_lib import REPO_ROOT, RUNS_DIR
from dpface_lib.checkpoint import load_model
from dpface_lib.classical import BlockMatcher, ConstantPredictor
from dpface_lib.data import FaceDPDataset
from dpface_lib.evaluate import aggregate, evaluate_model
from dpface_lib.pipeline import dataset_options
from dpface_lib.simulate.cache import cached_dataset


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `make pipeline` run folder (runs/NAME)")
    parser.add_argument("--persons", type=int, default=8, help="new test persons (32 samples each)")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed (the teaching set uses 7)")
    args = parser.parse_args(argv)
    options = dict(dataset_options(REPO_ROOT / "pipeline.yaml") or {})
    if options.get("seed") == args.seed:
        parser.error(f"--seed {args.seed} is the teaching set's own seed: pick another one")
    # one training person keeps the layout's train split non-empty; only the test persons are scored
    options.update(persons=args.persons + 1, test_persons=args.persons, seed=args.seed)
    root = cached_dataset(options, RUNS_DIR / "cache", prefix="fresh", progress=False)
    test = FaceDPDataset(root, "test")
    models: dict[str, torch.nn.Module] = {
        "constant": ConstantPredictor(0.0),  # every constant scores the same under ai1 and spearman
        "block_matching": BlockMatcher(-3.0, 4.0, step=1.0, window=15, smooth_sigma=2.0),
    }
    for ckpt in sorted(args.run.glob("train__model-*/checkpoints/last.ckpt")):
        models[ckpt.parts[-3].removeprefix("train__model-")] = load_model(ckpt, map_location="cpu")
    if len(models) == 2:
        parser.error(f"{args.run}: no train__model-*/checkpoints/last.ckpt (run `make pipeline` first)")
    tables = [aggregate(evaluate_model(m, test, name=name, batch_size=4)) for name, m in models.items()]
    table = pd.concat(tables, ignore_index=True)
    constant = float(table.loc[table["model"] == "constant", "ai1"].iloc[0])
    table["x_constant"] = table["ai1"] / constant
    columns = [c for c in ("model", "n", "ai1", "x_constant", "spearman", "mean_deg") if c in table]
    table = table[columns].sort_values("ai1")
    print(f"{root}: {len(test)} test samples of {args.persons} new persons (simulator seed {args.seed})")
    print(table.round(4).to_string(index=False))
    return table


if __name__ == "__main__":
    main()
