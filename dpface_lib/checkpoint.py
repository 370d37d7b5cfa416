"""Checkpoints: the kit's training checkpoint format, atomic writes, weights-only reads, model rebuilding.

A checkpoint is Lightning's dict plus a ``"dpface"`` entry (written by ``DPFaceModule.checkpoint_meta``)
holding the model name, profile, constructor arguments and training config as plain containers, so
:func:`load_model` rebuilds the network without the training code, and every read is
``torch.load(weights_only=True)``. Writes go through :func:`dpface_lib.fileio.atomic_write` (temporary
file, fsync, rename).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from dpface_lib.fileio import atomic_write
from dpface_lib.models import build_model, list_models

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEY", "AtomicCheckpointIO", "CheckpointError",
           "SaveLastCheckpoint", "load_checkpoint", "load_model", "plain"]

class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not hold a DP-Face model; the message names it."""


CHECKPOINT_KEY = "dpface"
CHECKPOINT_FORMAT = 1


def plain(value: Any) -> Any:
    """Deep copy with tuples as lists and numpy scalars as Python numbers (safe for weights-only loads)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file in the target folder, fsyncs it and renames it over the
    target, so an interrupted save never leaves a truncated file under the final name; loads weights-only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp), durable=True)

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint dict with ``torch.load(weights_only=True)``; a missing or unreadable file raises
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling errors come in several types
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_failure(exc)})") from exc


def _load_failure(exc: Exception) -> str:
    """torch's reason for a failed weights-only load, without its advice to load with
    ``weights_only=False`` (which would run code stored in the file; the kit never does)."""
    text = " ".join(str(exc).split())
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split(" Please use", 1)[0].strip()
        return f"it stores objects other than tensors and plain containers: {reason}"
    return text.split(". ", 1)[0] or type(exc).__name__  # torch's first sentence; the rest is advice


#: Limits on the stored constructor arguments, checked before anything is allocated: a few bytes of
#: checkpoint must not be able to ask for gigabytes (widths, levels and channel counts of the kit's models
#: are far below these).
MAX_INT_ARGUMENT = 4096
MAX_LIST_ARGUMENT = 64


def _check_model_args(path: os.PathLike, name: Any, args: Any) -> None:
    if not isinstance(name, str) or name not in list_models():
        raise CheckpointError(f"{path}: unknown model {name!r}; registered: {', '.join(list_models())}")
    if not isinstance(args, Mapping):
        raise CheckpointError(f"{path}: the stored model arguments are not a mapping")

    def check(key: str, value: Any) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, int) and abs(value) <= MAX_INT_ARGUMENT:
            return
        if isinstance(value, float) and math.isfinite(value) and abs(value) <= 1e6:
            return
        if isinstance(value, list | tuple) and len(value) <= MAX_LIST_ARGUMENT:
            for item in value:
                check(key, item)
            return
        raise CheckpointError(f"{path}: stored model argument {key}={value!r} is outside the kit's limits "
                              f"(integers up to {MAX_INT_ARGUMENT}, lists up to {MAX_LIST_ARGUMENT} items); "
                              "refusing to build it")

    for key, value in args.items():
        check(str(key), value)


def load_model(checkpoint_path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """The trained network of a checkpoint, rebuilt from the configuration saved in it, in eval mode.

    The stored model name and arguments are checked before the network is built; an architecture that does
    not match the stored weights raises :class:`CheckpointError` in one line."""
    checkpoint = load_checkpoint(checkpoint_path, map_location=map_location)
    meta = checkpoint.get(CHECKPOINT_KEY)
    state_dict = checkpoint.get("state_dict")
    if not isinstance(meta, dict) or "model" not in meta or not isinstance(state_dict, dict):
        raise CheckpointError(f"{checkpoint_path}: not a DP-Face training checkpoint (no '{CHECKPOINT_KEY}' "
                              "entry or no state_dict)")
    _check_model_args(checkpoint_path, meta["model"], meta.get("model_args", {}))
    try:
        model = build_model(meta["model"], "full", **meta.get("model_args", {}))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{checkpoint_path}: cannot build the stored model: {exc}") from exc
    prefix = "model."
    state = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{checkpoint_path}: the stored weights do not fit the stored architecture "
                              f"({first[0] if first else 'state_dict mismatch'}; "
                              f"{len(first) - 1} more line(s) with --debug)") from exc
    model.to(map_location if isinstance(map_location, str | torch.device) else "cpu")
    return model.eval()


class SaveLastCheckpoint(pl.Callback):
    """``checkpoints/last.ckpt`` every ``every_n_steps`` optimiser steps, at each epoch end and at the end of
    training (plus ``epoch=NNN.ckpt`` per epoch when ``keep_epochs``); written through the trainer's
    checkpoint IO (atomic)."""

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int | None = None,
                 keep_epochs: bool = False) -> None:
        self.dirpath, self.every_n_steps, self.keep_epochs = Path(dirpath), every_n_steps, keep_epochs

    @property
    def last(self) -> Path:
        return self.dirpath / "last.ckpt"

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.last, weights_only=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.last, weights_only=False)
        if self.keep_epochs:
            path = self.dirpath / f"epoch={trainer.current_epoch:03d}.ckpt"
            trainer.save_checkpoint(path, weights_only=False)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.save_checkpoint(self.last, weights_only=False)
