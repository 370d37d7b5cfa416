"""Throughput of the DP face simulator at 192x256 (H x W).

Prints, side by side in one run:
- DP pairs/s of the image-formation step (shading -> layered DP defocus -> vignetting -> noise) for one
  rendered view, with 1 and 2 torch threads, the defocus step alone, and 2 processes of 1 thread each
  (the way ``dpface simulate --workers 2`` uses 2 cores);
- whole samples/s written to disk (rasterise + ground-truth maps + images + JPEG + JSON) with 1 light per
  view and with all 6 lights per view (the geometry is rendered once per view);
- the ``dpface simulate`` generator end to end (6 persons, 192 samples) with 1 and 2 worker processes
  (process start-up included), and with 2 workers that keep numpy's default BLAS threads.

Every row renders the generator's default face model (ICT-FaceKit). Both wall-clock and process CPU time
are reported: on a shared machine the CPU figure shows what the code costs. Target: >= 20 DP pairs/s on
2 cores.

Usage: python benchmarks/bench_simulate.py [--size 192x256] [--repeats 20]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from dpface_lib.geometry import circle_of_confusion
from dpface_lib.simulate import optics as dp
from dpface_lib.simulate import writer
from dpface_lib.simulate.ict_face import face_model
from dpface_lib.simulate.rig import LIGHT_DIRECTIONS
from dpface_lib.simulate.scene import form_images, render_view, shade_scene
from dpface_lib.simulate.writer import SimConfig, generate, group_rig, person_plan, write_view


def timed(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per call, after one warm-up call."""
    fn()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - w0) / repeats, (time.process_time() - c0) / repeats


def _pairs_worker(args: tuple) -> tuple[float, int]:
    """In a fresh process with 1 torch thread: form ``n`` DP pairs of one view; (start, end) wall times."""
    h, w, n = args
    torch.set_num_threads(1)
    cfg = SimConfig(out=Path("."), persons=1, height=h, width=w, seed=0, f_number=2.0, test_persons=0)
    params, _, phase = person_plan(cfg, 1)
    cam = group_rig(cfg, 1)[1]
    view = render_view(face_model(cfg.face_model), params, "neutral", "forward", "front", cam, phase)
    rng = np.random.default_rng(0)
    form_images(view, cam, LIGHT_DIRECTIONS[0], rng)
    t0 = time.perf_counter()
    for _ in range(n):
        form_images(view, cam, LIGHT_DIRECTIONS[0], rng)
    return t0, time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="192x256")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    h, w = (int(x) for x in args.size.split("x"))
    cfg = SimConfig(
        out=Path("."), persons=1, height=h, width=w, seed=0, f_number=2.0, progress=False, test_persons=0
    )
    params, views, phase = person_plan(cfg, 1)
    cam = group_rig(cfg, 1)[1]
    model = face_model(cfg.face_model)  # the generator's default (ICT); `james` renders a 1.9 s scan
    view = render_view(model, params, "neutral", "forward", "front", cam, phase)
    radiance = shade_scene(view, cam, LIGHT_DIRECTIONS[0])
    coc = circle_of_confusion(view.scene_depth, cam.optics, fy_px=float(cam.K[1, 1]))
    layers, _ = dp.layer_weights(torch.as_tensor(coc, dtype=torch.float32))
    print(
        f"image {h}x{w}, f/{cfg.f_number}, CoC {coc.min():.1f}..{coc.max():.1f} px, "
        f"{len(layers)} depth layers"
    )
    rng = np.random.default_rng(0)
    print(f"{'step':<44}{'threads':>8}{'wall ms':>10}{'CPU ms':>10}{'per s (wall)':>14}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, fn in (
            ("defocus only (layers + FFT + composite)", lambda: dp.defocus_dp(radiance, coc)),
            (
                "image formation (shade..noise), 1 DP pair",
                lambda: form_images(view, cam, LIGHT_DIRECTIONS[0], rng),
            ),
            (
                "rasterise + GT maps of one view",
                lambda: render_view(model, params, "neutral", "forward", "front", cam, phase),
            ),
        ):
            wall, cpu = timed(fn, args.repeats)
            print(f"{name:<44}{threads:>8}{1e3 * wall:>10.1f}{1e3 * cpu:>10.1f}{1 / wall:>14.1f}")
    n = 4 * args.repeats
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        spans = pool.map(_pairs_worker, [(h, w, n)] * 2)
    wall = max(e for _, e in spans) - min(s for s, _ in spans)
    name = "image formation, 2 processes x 1 thread"
    print(f"{name:<44}{'1/proc':>8}{1e3 * wall / (2 * n):>10.1f}{'-':>10}{2 * n / wall:>14.1f}")
    k = dp.disparity_per_coc()
    viewidx, v = views[0]
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for lights in ((1,), tuple(range(1, 7))):
                c = SimConfig(**{**cfg.__dict__, "out": Path(tmp), "lights": lights})
                wall, cpu = timed(
                    lambda c=c: write_view(c, Path(tmp), 1, params, phase, cam, viewidx, v, k),
                    max(2, args.repeats // 4),
                )
                n = len(lights)
                name = f"whole samples written, {n} light(s)/view"
                print(f"{name:<44}{threads:>8}{1e3 * wall / n:>10.1f}{1e3 * cpu / n:>10.1f}{n / wall:>14.1f}")

    # The generator end to end on 6 persons. "inherited BLAS threads": the workers start with numpy's
    # default OpenBLAS/OpenMP thread count (how the generator ran before it pinned them to one).
    torch.set_num_threads(2)
    for workers, blas in ((1, "1"), (2, "1"), (2, "inherited")):
        with tempfile.TemporaryDirectory() as tmp:
            c = SimConfig(
                **{**cfg.__dict__, "out": Path(tmp), "persons": 6, "lights": (1, 2), "views_per_person": 2,
                   "workers": workers}
            )
            # "inherited": no variable is pinned while the pool starts
            pinned = () if blas == "inherited" else writer._THREAD_VARIABLES
            with mock.patch.object(writer, "_THREAD_VARIABLES", pinned):
                w0 = time.perf_counter()
                counts = generate(c)
                wall = time.perf_counter() - w0
            name = f"dpface simulate, {counts['samples']} samples, workers={workers}"
            print(
                f"{name:<44}{'BLAS ' + blas:>8}{1e3 * wall / counts['samples']:>10.1f}{'-':>10}"
                f"{counts['samples'] / wall:>14.1f}"
            )


if __name__ == "__main__":
    main()
