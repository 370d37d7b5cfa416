"""The training data of :mod:`dpface_lib.train`: a Lightning data module over the benchmark layout.

Train, validation and test loaders over :class:`dpface_lib.data.FaceDPDataset` as the ``data:`` config
describes them (:mod:`dpface_lib.config`): light filter, optional memory-mapped packs
(:mod:`dpface_lib.pack`), the seeded crops and photometric jitter of :mod:`dpface_lib.transforms`, and the
step-addressed sample order of :class:`dpface_lib.sampling.StepSampler`, which the data module places at
the trainer's global step (exact resume) and shards over processes itself (DDP).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from dpface_lib.data import evenly_spaced
from dpface_lib.sampling import SeededSamples, StepSampler
from dpface_lib.transforms import build_transform

__all__ = ["DPFaceDataModule"]


def _pack_or_none(root: Path, frame: Any, split: str) -> Any:
    """The split's :class:`dpface_lib.pack.Pack`, or None (file reads) with a warning when it cannot be
    packed (views of different sizes or kinds)."""
    from dpface_lib.pack import PackError, open_pack

    try:
        return open_pack(root, frame, label=split)
    except PackError as exc:
        warnings.warn(f"data.pack: {exc}; reading the files instead", stacklevel=2)
        return None


class DPFaceDataModule(pl.LightningDataModule):
    """Train / validation / test loaders over :class:`dpface_lib.data.FaceDPDataset` (``data:`` config)."""

    def __init__(self, root: str | os.PathLike, data_cfg: Mapping[str, Any], seed: int = 0) -> None:
        super().__init__()
        self.root, self.cfg, self.seed = Path(root), dict(data_cfg), int(seed)
        self.datasets: dict[str, Dataset] = {}
        self.train_sampler: StepSampler | None = None

    @property
    def val_split(self) -> str:
        """The split validated on: ``data.val_split``, where ``auto`` is ``val`` if the set has a ``val.txt``
        (the teaching set's validation persons) and ``test`` otherwise (the benchmark has no such split)."""
        split = self.cfg["val_split"]
        if split == "auto":
            return "val" if (self.root / "val.txt").is_file() else "test"
        return split

    def _dataset(self, split: str, train: bool) -> SeededSamples:
        from dpface_lib.data import FaceDPDataset

        filters = {"lights": self.cfg["lights"]} if self.cfg["lights"] else {}
        base = FaceDPDataset(self.root, split, **filters)
        if self.cfg["pack"]:
            base.reader = _pack_or_none(self.root, base.frame, split)
        return SeededSamples(base, build_transform(self.cfg, train))

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._dataset(self.cfg["train_split"], train=True)
            n = len(self.datasets["train"])
            batch = min(self.cfg["batch_size"], n)
            self.train_sampler = StepSampler(n, self.seed, batch, drop_last=True)
        if stage in (None, "fit", "validate") and "val" not in self.datasets:
            val = self._dataset(self.val_split, train=False)
            if self.cfg["val_subset"]:
                val = Subset(val, evenly_spaced(len(val), int(self.cfg["val_subset"])))
            self.datasets["val"] = val
        if stage in (None, "test") and "test" not in self.datasets:
            self.datasets["test"] = self._dataset("test", train=False)

    def steps_per_epoch(self, world_size: int = 1) -> int:
        """Optimiser steps per epoch on each of ``world_size`` processes (incomplete global batches are
        dropped)."""
        assert self.train_sampler is not None, "call setup('fit') first"
        return max(1, self.train_sampler.n // (max(1, world_size) * self.train_sampler.batch_size))

    def place_sampler(self) -> None:
        """Point the training sampler at the trainer's global step (mid-epoch only in single-process runs)."""
        if self.train_sampler is not None and self.trainer is not None:
            single = self.trainer.world_size == 1
            self.train_sampler.position(self.trainer.global_step, resume_mid_epoch=single)

    def _loader(self, name: str, **kwargs: Any) -> DataLoader:
        workers = self.cfg["num_workers"]
        return DataLoader(self.datasets[name], num_workers=workers, persistent_workers=workers > 0, **kwargs)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        assert self.train_sampler is not None
        world_size, rank = self._world()
        if world_size > 1:  # sharded here: the trainer runs with use_distributed_sampler=False
            self.train_sampler.shard(world_size, rank)
        self.place_sampler()
        return self._loader("train", sampler=self.train_sampler, batch_size=self.train_sampler.batch_size,
                            drop_last=True)

    def _eval_loader(self, name: str) -> DataLoader:
        world_size, rank = self._world()
        sampler = None
        if world_size > 1:  # each process scores its share; logged metrics are reduced over processes
            sampler = DistributedSampler(self.datasets[name], world_size, rank, shuffle=False)
        return self._loader(name, batch_size=self.cfg["eval_batch_size"], shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
