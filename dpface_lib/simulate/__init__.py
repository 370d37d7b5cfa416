"""Physically based dual-pixel face simulator writing the benchmark layout.

Modules, in the order the image is made:

- :mod:`~dpface_lib.simulate.face`: the head scan (menpo3d's ``james.obj``), per-person shape and skin
  variation, expressions, head directions.
- :mod:`~dpface_lib.simulate.rig`: 8 cameras, 6 lights, 2 head positions; the benchmark lens.
- :mod:`~dpface_lib.simulate.render`: z-buffered rasteriser, background wall, Lambertian shading.
- :mod:`~dpface_lib.simulate.optics`: half-aperture PSFs, layered DP defocus, vignetting, noise, JPEG.
- :mod:`~dpface_lib.simulate.scene`: one view's ground truth and its DP images under a light.
- :mod:`~dpface_lib.simulate.writer`: the dataset layout, atomic writes, splits.

Command line: ``dpface simulate --out DIR --persons N --size HxW --seed S`` (see :func:`cli`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["cli", "parse_args"]


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size expects HxW (e.g. 192x256), got {text!r}") from None
    return h, w


def parse_args(argv: list[str]):
    """Parse ``dpface simulate`` options into a :class:`~dpface_lib.simulate.writer.SimConfig`."""
    from dpface_lib.geometry import BENCHMARK_OPTICS
    from dpface_lib.simulate.optics import DEFAULT_TAU
    from dpface_lib.simulate.writer import SimConfig

    p = argparse.ArgumentParser(prog="dpface simulate", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to write (created if missing)")
    p.add_argument("--persons", type=int, default=4, help="number of synthetic persons (one group each)")
    p.add_argument("--size", type=_size, default=(192, 256), help="stored image size HxW, multiples of 32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--cameras", type=_ints, default=tuple(range(1, 9)), help="subset of cameras 1..8, e.g. 1,2"
    )
    p.add_argument("--lights", type=_ints, default=tuple(range(1, 7)), help="subset of lights 1..6")
    p.add_argument("--expressions", type=_names, default=("neutral", "frowning", "yawning"))
    p.add_argument("--positions", type=_names, default=("forward", "backward"))
    p.add_argument("--directions", type=_names, default=("left", "right", "front", "upper"))
    p.add_argument("--test-persons", type=int, default=None, help="persons in test.txt (default: a quarter)")
    p.add_argument(
        "--views-per-person",
        type=int,
        default=0,
        help="random subset of the selected (expression, position, direction) views per person; 0 = all",
    )
    p.add_argument(
        "--lights-per-view", type=int, default=0, help="random subset of the lights per view; 0 = all"
    )
    p.add_argument("--f-number", type=float, default=BENCHMARK_OPTICS.f_number, help="lens f-number")
    p.add_argument("--tau", type=float, default=DEFAULT_TAU, help="softness of the DP half-pixel response")
    p.add_argument("--jpeg-quality", type=int, default=92)
    p.add_argument("--no-noise", action="store_true", help="skip the Poisson-Gaussian sensor noise")
    p.add_argument("--workers", type=int, default=1, help="processes rendering views in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    test_persons = a.test_persons if a.test_persons is not None else (a.persons // 4 if a.persons > 1 else 0)
    return SimConfig(
        out=a.out,
        persons=a.persons,
        height=a.size[0],
        width=a.size[1],
        seed=a.seed,
        cameras=a.cameras,
        lights=a.lights,
        expressions=a.expressions,
        positions=a.positions,
        directions=a.directions,
        test_persons=test_persons,
        views_per_person=a.views_per_person,
        lights_per_view=a.lights_per_view,
        f_number=a.f_number,
        tau=a.tau,
        jpeg_quality=a.jpeg_quality,
        noise=not a.no_noise,
        workers=a.workers,
        progress=not a.quiet,
    )


def cli(argv: list[str]) -> int:
    """``dpface simulate ...``: generate a set; returns the exit status (2 on bad options)."""
    from dpface_lib.simulate.writer import generate

    cfg = parse_args(argv)
    try:
        counts = generate(cfg)
    except ValueError as err:
        print(f"dpface simulate: {err}")
        return 2
    print(
        f"wrote {counts['samples']} samples ({counts['views']} views, {counts['groups']} groups) to {cfg.out}"
    )
    return 0
