"""Cost of the size-and-header check of every file that ``FaceDPDataset`` runs at construction
(:mod:`dpface_lib.filecheck`), side by side with indexing the same split's JSON records, with the ratio.

Reads ``--root`` (e.g. a simulated set), else a generated tiny set in a temporary folder. Usage::

    python benchmarks/bench_dataset_check.py [--root DIR] [--split train] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dpface_lib import REPO_ROOT
from dpface_lib.data import index
from dpface_lib.filecheck import check_dataset_files
from dpface_lib.layout import ARRAY_KEYS, IMAGE_KEYS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--split", default="train")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            sys.path.insert(0, str(REPO_ROOT / "tests"))
            from conftest import write_tiny_dataset

            root = write_tiny_dataset(Path(tmp) / "tiny", n_groups=4)
        print("samples  index_s  check_s  check/index  check_us_per_sample")
        for _ in range(args.repeats):
            start = time.perf_counter()
            frame = index(root, args.split)
            indexed = time.perf_counter()
            check_dataset_files(frame[[*IMAGE_KEYS, *ARRAY_KEYS]].to_dict("records"), str(root))
            checked = time.perf_counter()
            t_index, t_check = indexed - start, checked - indexed
            print(f"{len(frame):7d}  {t_index:7.2f}  {t_check:7.2f}  {t_check / t_index:11.2f}  "
                  f"{1e6 * t_check / len(frame):19.0f}")


if __name__ == "__main__":
    main()
