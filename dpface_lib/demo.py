"""The demo StereoDPNet shipped inside the package, and the tooling that makes its record.

:data:`DEMO_CHECKPOINT` (tiny profile trained on a generated set) is what ``dpface predict`` and the
notebooks use without ``--checkpoint``; :data:`DEMO_RECORD` next to it holds the training command, the
test split's fingerprint and the metrics that ``tests/test_demo_checkpoint.py`` reproduces.
:func:`export_demo` makes both from a training checkpoint (docs/stereodpnet.md, "Demo checkpoint").
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from dpface_lib.checkpoint import CHECKPOINT_KEY, CheckpointError, load_checkpoint, load_model
from dpface_lib.fileio import atomic_write

__all__ = ["DEMO_CHECKPOINT", "DEMO_RECORD", "export_demo", "split_fingerprint"]

#: The demo StereoDPNet shipped inside the package (tiny profile trained on a generated set; its test-split
#: metrics and the command that reproduces it are in ``stereodpnet_demo.json`` next to it and in
#: docs/stereodpnet.md).
DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "stereodpnet_demo.ckpt"
#: Its record: training command, test-split fingerprint and metrics (written by :func:`export_demo`).
DEMO_RECORD = DEMO_CHECKPOINT.with_suffix(".json")
#: Focal length in units of the image height assumed when no intrinsics are given.


def split_fingerprint(root: str | os.PathLike, split: str = "test") -> str:
    """SHA-256 over the split file and every file of the groups it lists (relative names and bytes): the
    identity of the data a recorded metric was measured on, independent of the image decoder."""
    root = Path(root)
    split_file = root / f"{split}.txt"
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file}: split file does not exist")
    digest = hashlib.sha256(split_file.read_bytes())
    for group in sorted(set(split_file.read_text(encoding="utf-8").split())):
        for path in sorted(p for p in (root / group).rglob("*") if p.is_file()):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def export_demo(
    training_checkpoint: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    out: str | os.PathLike = DEMO_CHECKPOINT,
    command: str = "",
) -> dict[str, Any]:
    """Keep the network of a ``dpface train`` checkpoint as a demo model and record its test-split metrics.

    Writes ``out`` (the ``dpface`` meta and ``state_dict`` only, no optimiser state) and ``out`` with the
    suffix ``.json``: ``metrics`` (means of :func:`dpface_lib.evaluate.evaluate_model` over the ``test``
    split of ``data_root``, batch size 4), the split's :func:`split_fingerprint`, the checkpoint's training
    profile and step, and ``command`` (how the training checkpoint was made). Both atomically. Returns the
    record.
    """
    from dpface_lib.data import FaceDPDataset, resolve_data_root
    from dpface_lib.evaluate import aggregate, evaluate_model, metric_columns

    out, root = Path(out), resolve_data_root(None if data_root is None else str(data_root))
    checkpoint = load_checkpoint(training_checkpoint)
    if CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"{training_checkpoint}: not a DP-Face training checkpoint")
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = {key: checkpoint[key] for key in ("dpface", "state_dict", "global_step") if key in checkpoint}
    atomic_write(out, lambda tmp: torch.save(kept, tmp))
    frame = evaluate_model(load_model(out), FaceDPDataset(root, "test"), name="demo", batch_size=4)
    means = aggregate(frame).iloc[0]
    meta = checkpoint["dpface"]
    record = {
        "checkpoint": out.name,
        "model": meta["model"],
        "profile": meta.get("profile"),
        "global_step": checkpoint.get("global_step"),
        "command": command,
        "evaluation": {"split": "test", "samples": len(frame), "batch_size": 4,
                       "data_root": root.name, "fingerprint": split_fingerprint(root, "test")},
        "metrics": {key: float(means[key]) for key in metric_columns(frame)},
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return record
