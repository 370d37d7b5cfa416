"""Runs Google's reference affine-invariant metrics on saved samples, in a side environment.

Called by ``bench_metrics.py --reference tf`` with that environment's Python (one that has tensorflow-cpu);
it never imports the kit. ``REFERENCE_FILE`` is a copy of ``dual_pixels/eval/get_metrics.py`` from the
google-research repository (not shipped with the kit). Reads ``pred``, ``gt``, ``weight`` (N, H, W) from an
.npz, calls the reference ``metrics`` on each sample (full-size crop), and prints one JSON object: per-sample
values and median seconds per sample after one warm-up call.

    python reference_metrics_runner.py REFERENCE_FILE DATA.npz
"""

import importlib.util
import json
import statistics
import sys
import time

import numpy as np


def main(reference_file: str, data_file: str) -> None:
    spec = importlib.util.spec_from_file_location("get_metrics", reference_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with np.load(data_file, allow_pickle=False) as data:
        pred, gt, weight = data["pred"], data["gt"], data["weight"]
    height, width = gt.shape[1:]
    module.metrics(pred[0], gt[0], weight[0], height, width)  # warm-up (graph building, thread pools)
    values, seconds = {"wmae": [], "wrmse": [], "spearman": []}, []
    for i in range(len(gt)):
        start = time.perf_counter()
        out = {k: float(v) for k, v in module.metrics(pred[i], gt[i], weight[i], height, width).items()}
        seconds.append(time.perf_counter() - start)
        for key in values:
            values[key].append(out[key])
    print(json.dumps({"values": values, "seconds": statistics.median(seconds)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
