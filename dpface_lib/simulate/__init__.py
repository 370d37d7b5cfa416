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
import sys
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


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    """The options of ``dpface simulate``, each checked before anything is written."""
    from dpface_lib.geometry import BENCHMARK_OPTICS
    from dpface_lib.simulate.ict_face import FACE_MODELS
    from dpface_lib.simulate.layouts import LAYOUTS
    from dpface_lib.simulate.optics import DEFAULT_TAU, TAU_F_NUMBER
    from dpface_lib.simulate.rig import RIGS

    p = argparse.ArgumentParser(prog="dpface simulate", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="dataset root to write (created if missing)")
    p.add_argument("--persons", type=_at_least(1), default=4,
                   help="number of synthetic persons (one group each)")
    p.add_argument("--size", type=_size, default=(192, 256), help="stored image size HxW, multiples of 32")
    p.add_argument("--seed", type=_at_least(0), default=0, help="random seed, >= 0")
    p.add_argument(
        "--cameras", type=_ints, default=tuple(range(1, 9)), help="subset of cameras 1..8, e.g. 1,2"
    )
    p.add_argument("--lights", type=_ints, default=tuple(range(1, 7)), help="subset of lights 1..6")
    p.add_argument("--expressions", type=_names, default=("neutral", "frowning", "yawning"))
    p.add_argument("--positions", type=_names, default=("forward", "backward"))
    p.add_argument("--directions", type=_names, default=("left", "right", "front", "upper"))
    p.add_argument("--test-persons", type=_at_least(0), default=None,
                   help="persons in test.txt (default: a quarter)")
    p.add_argument("--val-persons", type=_at_least(0), default=0,
                   help="persons in val.txt, taken between the training and the test persons (default 0)")
    p.add_argument(
        "--views-per-person",
        type=_at_least(0),
        default=0,
        help="random subset of the selected (expression, position, direction) views per person; 0 = all",
    )
    p.add_argument(
        "--lights-per-view", type=_at_least(0), default=0,
        help="random subset of the lights per view; 0 = all",
    )
    p.add_argument("--camera", choices=sorted(RIGS), default="benchmark-lens",
                   help="camera model (dpface_lib.simulate.rig.RIGS): benchmark-lens (the benchmark's 135 mm "
                        "lens, default) or teaching (Canon EOS R5 + RF 85 mm F1.2: the teaching set's)")
    p.add_argument("--f-number", type=_positive_float, default=None,
                   help=f"lens f-number (default: the camera model's, f/{BENCHMARK_OPTICS.f_number:g} for "
                        "benchmark-lens)")
    p.add_argument("--tau", type=_positive_float, default=None,
                   help="softness of the DP half-pixel response in aperture radii (default: the benchmark "
                        f"sensor's angular response at the f-number, {DEFAULT_TAU:g} at f/{TAU_F_NUMBER:g})")
    p.add_argument("--psf", choices=("soft", "half-disc", "butterworth", "translating-disc", "calibrated"),
                   default="soft",
                   help="DP blur model (dpface_lib.simulate.optics): soft (default), half-disc, butterworth "
                        "(Abuolaim et al. 2021), translating-disc (Punnappurath et al. 2020), calibrated "
                        "(measured kernels, --psf-kernels)")
    p.add_argument("--psf-kernels", nargs=2, type=Path, metavar=("LEFT.npy", "RIGHT.npy"),
                   help="left/right kernels (tiles, k, k) for --psf calibrated (after Xin et al. 2021)")
    p.add_argument("--jpeg-quality", type=_at_least(1), default=92)
    p.add_argument("--no-noise", action="store_true", help="skip the Poisson-Gaussian sensor noise")
    p.add_argument("--workers", type=_at_least(1), default=1, help="processes rendering views in parallel")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder whole")
    p.add_argument("--face-model", choices=FACE_MODELS, default=FACE_MODELS[0],
                   help="faces: ict (ICT-FaceKit's morphable model: 100 identity modes and expression "
                        "blendshapes) or james (one head scan with procedural variation)")
    p.add_argument("--layout", choices=LAYOUTS, default="facedp",
                   help="file layout to write: the facial benchmark's (default) or a public DP dataset's "
                        "(dpface_lib.simulate.layouts)")
    return p


def parse_args(argv: list[str]):
    """Parse ``dpface simulate`` options into a :class:`~dpface_lib.simulate.writer.SimConfig`."""
    return _config(_parser().parse_args(argv))


def _psf_model(a: argparse.Namespace) -> str:
    """The blur-model string of :func:`dpface_lib.simulate.optics.half_weights` for the options."""
    if a.psf != "calibrated":
        if a.psf_kernels:
            raise ValueError("--psf-kernels goes with --psf calibrated")
        return a.psf
    if not a.psf_kernels:
        raise ValueError("--psf calibrated needs --psf-kernels LEFT.npy RIGHT.npy")
    for path in a.psf_kernels:
        if not path.is_file():
            raise ValueError(f"{path}: --psf-kernels file does not exist")
    return "calibrated=" + ",".join(str(p.resolve()) for p in a.psf_kernels)


def _config(a: argparse.Namespace):
    from dpface_lib.simulate.writer import SimConfig

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
        val_persons=a.val_persons,
        views_per_person=a.views_per_person,
        lights_per_view=a.lights_per_view,
        f_number=a.f_number,
        tau=a.tau,
        psf=_psf_model(a),
        camera=a.camera,
        face_model=a.face_model,
        jpeg_quality=a.jpeg_quality,
        noise=not a.no_noise,
        workers=a.workers,
        progress=not a.quiet,
    )


def cli(argv: list[str]) -> int:
    """``dpface simulate ...``: generate a set; returns the exit status (2 on bad options).

    The set is written into a temporary folder beside ``--out`` and renamed into place when complete, so an
    interrupted run leaves no partial set under ``--out`` (and a rerun starts clean); an existing non-empty
    ``--out`` is refused unless ``--overwrite``."""
    import dataclasses

    from dpface_lib.fileio import atomic_folder
    from dpface_lib.simulate.writer import generate

    args = _parser().parse_args(argv)
    if args.jpeg_quality > 100:
        print(f"dpface simulate: --jpeg-quality must be 1..100, got {args.jpeg_quality}", file=sys.stderr)
        return 2
    try:
        cfg = _config(args)
        from dpface_lib.simulate.optics import disparity_per_coc

        disparity_per_coc(cfg.dp_tau, cfg.psf)  # a bad blur model (calibrated kernels) fails before writing
        with atomic_folder(cfg.out, overwrite=args.overwrite) as folder:
            if args.layout == "facedp":
                counts = generate(dataclasses.replace(cfg, out=folder))
            else:  # render in the benchmark layout beside the output, then rewrite it in the chosen one
                import shutil

                from dpface_lib.fileio import temporary_folder_beside
                from dpface_lib.simulate.layouts import export_layout

                scratch = temporary_folder_beside(cfg.out, "render-")  # removed by the next run if killed
                try:
                    counts = generate(dataclasses.replace(cfg, out=scratch))
                    export_layout(scratch, folder, args.layout)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
    except (ValueError, FileExistsError) as err:
        print(f"dpface simulate: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {counts['samples']} samples ({counts['views']} views, {counts['groups']} groups) to {cfg.out}"
    )
    return 0
