"""Samples per second of the FaceDPDataset DataLoader reading the files with 0 and 2 worker processes, and
reading a decoded pack (``dpface_lib.pack``, the tiny profiles' ``data.pack: true``) in the main process,
side by side, with the ratios. The pack is built in a temporary folder first (its build time is printed).

Reads ``data_samples/`` when it holds a dataset, else a generated set in a temporary folder (sphere "faces" of
``--size``, written by the test fixture's ``write_tiny_dataset``). Usage::

    python benchmarks/bench_data.py [--root DIR] [--split train] [--batch-size 4] [--epochs 3]
                                    [--size 192x256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from dpface_lib import DATA_SAMPLES, REPO_ROOT
from dpface_lib.data import FaceDPDataset
from dpface_lib.pack import open_pack


def generated_root(tmp: Path, size: tuple[int, int]) -> Path:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from conftest import write_tiny_dataset

    return write_tiny_dataset(
        tmp / "bench", n_groups=2, cameras=(1, 2, 3, 4), n_views=3, lights=(1, 2), size=size
    )


def samples_per_second(dataset: FaceDPDataset, workers: int, batch_size: int, epochs: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up epoch: worker start-up, file cache
        pass
    start, count = time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            count += batch["left"].shape[0]
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", default="192x256", help="HxW of the generated set when no data_samples/")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = DATA_SAMPLES if (DATA_SAMPLES / f"{args.split}.txt").is_file() else None
        if root is None:
            height, width = (int(v) for v in args.size.lower().split("x"))
            root = generated_root(Path(tmp), (height, width))
        dataset = FaceDPDataset(root, args.split)
        H, W = dataset[0]["left"].shape[-2:]
        print(f"dataset {root} split={args.split}: {len(dataset)} samples of {H}x{W}")
        print(f"batch size {args.batch_size}, {args.epochs} timed epochs after one warm-up epoch")
        print(f"torch threads {torch.get_num_threads()}")
        results = {
            f"files, num_workers={workers}": samples_per_second(dataset, workers, args.batch_size,
                                                                args.epochs)
            for workers in (0, 2)
        }
        start = time.perf_counter()
        packed = FaceDPDataset(root, args.split)
        packed.reader = open_pack(root, packed.frame, label=args.split, pack_dir=Path(tmp) / "packs",
                                  progress=False)
        print(f"pack built in {time.perf_counter() - start:.1f} s")
        results["pack, num_workers=0"] = samples_per_second(packed, 0, args.batch_size, args.epochs)
    for name, rate in results.items():
        print(f"{name:22s}: {rate:8.1f} samples/s")
    files = results["files, num_workers=0"]
    print(f"ratio 2 workers / 0 workers (files): {results['files, num_workers=2'] / files:.2f}")
    print(f"ratio pack / files (0 workers):      {results['pack, num_workers=0'] / files:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
