"""Reproducible sample order and augmentation: the training data of step N depends only on (seed, N).

:class:`StepSampler` draws a shuffled order and one augmentation seed per sample from (seed, epoch);
:class:`SeededSamples` applies a dataset's transform under that seed; :func:`rng_state` /
:func:`set_rng_state` carry the global RNGs through a checkpoint. Together they make a stopped and resumed
training run identical to an uninterrupted one (single process).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["SeededSamples", "StepSampler", "rng_state", "seeded", "set_rng_state"]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with python, numpy and torch (CPU) global RNGs seeded by ``seed``, then restore them."""
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)  # noqa: NPY002 - transforms may draw from the legacy global RNG
        torch.default_generator.manual_seed(seed)  # the CPU generator only: torch.manual_seed would
        try:                                        # also queue a CUDA seeding (0.4 ms) that nothing restores
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)  # noqa: NPY002


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` applies ``transform`` under a fixed RNG seed.

    A plain integer index applies the transform without seeding (evaluation, deterministic transforms).
    """

    def __init__(self, dataset: Dataset, transform=None) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.dataset[int(index)]
        if self.transform is None:
            return sample
        if seed is None:
            return self.transform(sample)
        with seeded(int(seed)):
            return self.transform(sample)


class StepSampler(Sampler):
    """Shuffled sample order and per-sample augmentation seeds as a function of (seed, epoch) only.

    Yields ``(index, item_seed)``. :meth:`position` places the next iteration at the sample that follows
    ``global_step`` optimiser steps of ``batch_size`` samples, so a resumed run continues mid-epoch exactly
    where the interrupted one stopped (``len`` stays the full epoch, so the trainer's epoch length is fixed).

    Data parallel (:meth:`shard`): process ``rank`` of ``replicas`` takes positions ``rank, rank + replicas,
    ...`` of the epoch's order, cut to whole global batches, so global batch k is the same set of samples
    as batch k of one process with ``replicas`` times the batch size.
    """

    def __init__(self, n: int, seed: int, batch_size: int, drop_last: bool = True) -> None:
        self.n, self.seed, self.batch_size, self.drop_last = n, int(seed), batch_size, drop_last
        self.epoch, self.skip = 0, 0
        self.replicas, self.rank = 1, 0

    def shard(self, replicas: int, rank: int) -> None:
        """Make this the sampler of process ``rank`` (0-based) of ``replicas``."""
        if not 0 <= rank < replicas:
            raise ValueError(f"StepSampler.shard: rank {rank} outside 0..{replicas - 1}")
        if self.n < replicas * self.batch_size:
            raise ValueError(f"StepSampler.shard: {self.n} samples cannot fill one global batch of "
                             f"{replicas} x {self.batch_size}")
        self.replicas, self.rank = int(replicas), int(rank)

    @property
    def batches_per_epoch(self) -> int:
        if self.replicas > 1:
            return self.n // (self.batch_size * self.replicas)
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def position(self, global_step: int, resume_mid_epoch: bool = True) -> None:
        self.epoch, done = divmod(int(global_step), self.batches_per_epoch)
        self.skip = done * self.batch_size if resume_mid_epoch else 0

    def __len__(self) -> int:
        return self.n if self.replicas == 1 else self.batches_per_epoch * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.n, generator=generator).tolist()
        seeds = torch.randint(0, 2**62, (self.n,), generator=generator).tolist()
        items = list(zip(order, seeds, strict=True))
        if self.replicas > 1:
            items = items[self.rank : len(self) * self.replicas : self.replicas]
        yield from items[skip:]


def rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain containers (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": numpy_state}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the global RNGs from :func:`rng_state` (CUDA only with the same device count)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
