"""``dpface predict``: depth and surface normals from one dual-pixel (DP) left/right pair.

::

    dpface predict --left L.jpg --right R.jpg --a -4619 --b 5.73 --out pred/
    dpface predict --left L.jpg --right R.jpg --calib INFO_1_6_1.json --checkpoint run/last.ckpt --out pred/
    dpface predict --data-root DP5K/ --kind dp5k --split test --sample 3 --out pred/

With ``--data-root`` the pair is one item of any layout that :func:`dpface_lib.datasets.open_dataset` reads
(its ``a, b`` and ``K`` are used where the dataset has them; one green channel is taken three times).

The two images are the DP half-images of one exposure (same size; disparity along the rows, the right view
being the left view moved down by ``d`` px). Depth needs the pair's Disp2Depth constants ``d = a / Z + b``
(Z in mm): ``--a/--b`` or ``--calib`` with a JSON holding either
``{"a": .., "b": .., "K": [[..], [..], [..]]}`` (``K`` optional; ``"intrinsic": [fx, fy, skew, cx, cy]``
also accepted) or a dataset ``INFO_*.json`` (its ``PARAMS.abvalue`` = [a, b] and ``PARAMS.intrinsic``).
Without intrinsics the normal module assumes ``fx = fy = 2.705 H`` (the framing of the generated set)
and the image centre as principal point.

Sizes that are not multiples of 16 (the network's coarsest stride) are padded at the bottom and right by
edge replication and the outputs cropped back; the command says so. Outputs in ``--out``:
``disparity.npy`` (H, W) px, ``depth.npy`` (H, W) float32 mm (0 where the depth is undefined),
``normal.npy`` (3, H, W) unit camera-frame normals, and PNG previews ``depth.png`` and ``normal.png``.
Every file is written to a temporary name and renamed, so a failure leaves no partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from dpface_lib.demo import DEMO_CHECKPOINT
from dpface_lib.fileio import atomic_folder, atomic_save_npy, atomic_write
from dpface_lib.geometry import intrinsics_from_vector
from dpface_lib.inference import DEFAULT_FOCAL_PER_HEIGHT, MULTIPLE, PredictError, predict_pair
from dpface_lib.layout import DatasetError, check_pair_colour, load_image, parse_literal_array

__all__ = [
    "DEFAULT_FOCAL_PER_HEIGHT",
    "PredictError",
    "cli",
    "load_predictor",
    "predict_pair",
    "read_pair_calibration",
    "read_rgb",
    "save_outputs",
]


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 1] from an 8- or 16-bit image file (grey repeated, alpha dropped)."""
    try:
        return load_image(Path(path))
    except DatasetError as exc:
        raise PredictError(str(exc)) from exc


def _number(value: Any, key: str, path: Path) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise PredictError(f"{path}: '{key}' must be a number, got {value!r}") from exc
    if not np.isfinite(number):
        raise PredictError(f"{path}: '{key}' must be finite, got {value!r}")
    return number


def _intrinsics(values: np.ndarray, key: str, path: Path) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.shape == (3, 3):
        K = values
    elif values.ndim == 1 and values.size in (5, 9):
        K = intrinsics_from_vector(values)
    else:
        raise PredictError(
            f"{path}: '{key}' must be a 3x3 matrix or [fx, fy, skew, cx, cy, ...], got shape {values.shape}"
        )
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise PredictError(f"{path}: '{key}' must be finite with positive focal lengths, got {K.tolist()}")
    return K


def read_pair_calibration(path: str | os.PathLike) -> dict[str, Any]:
    """``{"a": float, "b": float, "K": (3, 3) array or None}`` from a calibration JSON (module doc)."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: calibration file does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(record, dict):
        raise PredictError(f"{path}: expected a JSON object")
    K = None
    try:
        if isinstance(record.get("PARAMS"), dict):  # a dataset INFO_*.json
            params = record["PARAMS"]
            if params.get("abvalue") is None:
                raise PredictError(f"{path}: PARAMS.abvalue ([a, b]) is missing")
            a, b = parse_literal_array(params["abvalue"], name="abvalue", file=path, sizes=(2,))
            if params.get("intrinsic") is not None:
                K = _intrinsics(
                    parse_literal_array(params["intrinsic"], name="intrinsic", file=path, sizes=(5, 9)),
                    "PARAMS.intrinsic",
                    path,
                )
            a, b = _number(a, "PARAMS.abvalue[0]", path), _number(b, "PARAMS.abvalue[1]", path)
        else:
            missing = [key for key in ("a", "b") if key not in record]
            if missing:
                raise PredictError(
                    f"{path}: calibration needs keys 'a' and 'b' (d = a / Z + b); missing {missing}"
                )
            a, b = _number(record["a"], "a", path), _number(record["b"], "b", path)
            for key in ("K", "intrinsic"):
                if record.get(key) is not None:
                    K = _intrinsics(np.asarray(record[key], dtype=np.float64), key, path)
                    break
    except DatasetError as exc:
        raise PredictError(str(exc)) from exc
    except (TypeError, ValueError) as exc:
        if isinstance(exc, PredictError):
            raise
        raise PredictError(f"{path}: malformed calibration ({exc})") from exc
    if a == 0:
        raise PredictError(f"{path}: 'a' must be non-zero (d = a / Z + b)")
    return {"a": a, "b": b, "K": K}


def load_predictor(checkpoint: str | os.PathLike | None = None) -> torch.nn.Module:
    """The network of a training checkpoint (``dpface train``), in eval mode on the CPU; by default the
    demo checkpoint :data:`DEMO_CHECKPOINT`."""
    from dpface_lib.checkpoint import load_model

    path = Path(checkpoint) if checkpoint is not None else DEMO_CHECKPOINT
    if not path.is_file():
        hint = (
            ""
            if checkpoint is not None
            else " (the demo checkpoint; pass --checkpoint or see docs/stereodpnet.md)"
        )
        raise PredictError(f"{path}: checkpoint does not exist{hint}")
    try:
        return load_model(path, map_location="cpu")
    except (ValueError, KeyError, RuntimeError) as exc:
        raise PredictError(f"{path}: cannot load the model ({exc})") from exc


def _save_png(path: Path, rgb01: np.ndarray) -> None:
    image = Image.fromarray(np.clip(np.round(rgb01 * 255), 0, 255).astype(np.uint8))
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def depth_preview(depth: np.ndarray) -> np.ndarray:
    """(H, W, 3) colours of a depth map (mm): near = bright; invalid (<= 0) black; 2-98 % percentile range."""
    from matplotlib import colormaps

    valid = depth > 0
    rgb = np.zeros((*depth.shape, 3))
    if valid.any():
        low, high = np.percentile(depth[valid], [2, 98])
        scaled = np.clip((high - depth) / max(high - low, 1e-6), 0, 1)
        rgb = np.where(valid[..., None], colormaps["turbo"](scaled)[..., :3], 0.0)
    return rgb


def save_outputs(out_dir: str | os.PathLike, result: dict[str, np.ndarray]) -> list[Path]:
    """Write the arrays of :func:`predict_pair` (``.npy``) and PNG previews into ``out_dir``; return paths."""
    from dpface_lib.geometry import normals_to_rgb

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, array in result.items():
        path = out_dir / f"{key}.npy"
        atomic_save_npy(path, array.astype(np.float32))
        written.append(path)
    _save_png(out_dir / "depth.png", depth_preview(result["depth"]))
    written.append(out_dir / "depth.png")
    if "normal" in result:
        _save_png(out_dir / "normal.png", normals_to_rgb(result["normal"]))
        written.append(out_dir / "normal.png")
    return written


def _dataset_item(args: argparse.Namespace) -> dict[str, Any]:
    """Item ``--sample`` of ``--data-root`` read by :func:`dpface_lib.datasets.open_dataset`."""
    from dpface_lib.datasets import open_dataset

    try:
        dataset = open_dataset(Path(args.data_root), args.split, args.kind)
    except DatasetError as exc:
        raise PredictError(str(exc)) from exc
    if not 0 <= args.sample < len(dataset):
        raise PredictError(f"--sample {args.sample} is out of range: {args.data_root} ({dataset.kind}, "
                           f"{args.split}) has {len(dataset)} items")
    try:
        return dataset[args.sample]
    except DatasetError as exc:
        raise PredictError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpface predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--left", help="left DP half-image (JPG/PNG, 8 or 16 bit)")
    parser.add_argument("--right", help="right DP half-image, same size")
    parser.add_argument("--data-root", help="instead of --left/--right: a DP dataset (dpface_lib.datasets)")
    parser.add_argument("--kind", default="auto", help="its layout: auto, facedp, google-dp, dpdd, dp5k")
    parser.add_argument("--split", default="test", help="its split (default test)")
    parser.add_argument("--sample", type=int, default=0, help="index of the item to predict (default 0)")
    parser.add_argument("--a", type=float, help="Disp2Depth a of d = a / Z + b (px·mm)")
    parser.add_argument("--b", type=float, help="Disp2Depth b (px)")
    parser.add_argument("--calib", help="calibration JSON ({a, b[, K]} or a dataset INFO_*.json)")
    parser.add_argument(
        "--checkpoint",
        help="training checkpoint (default: the demo model dpface_lib/assets/stereodpnet_demo.ckpt)",
    )
    parser.add_argument("--out", required=True, help="output folder (new or empty unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder whole")
    return parser


def cli(argv: list[str]) -> int:
    """``dpface predict``; returns 0 on success, 2 on bad input (with a message on stderr)."""
    args = _parser().parse_args(argv)
    try:
        if args.calib is not None and (args.a is not None or args.b is not None):
            raise PredictError("give either --calib or --a/--b, not both")
        if (args.data_root is None) == (args.left is None or args.right is None):
            raise PredictError("give --left and --right, or --data-root (with --kind/--split/--sample)")
        item = _dataset_item(args) if args.data_root is not None else None
        if item is not None and "a" in item and args.calib is None and args.a is None:
            K = item["K"].numpy() if "K" in item else None
            calib = {"a": float(item["a"]), "b": float(item["b"]), "K": K}
        elif args.calib is not None:
            calib = read_pair_calibration(args.calib)
        elif args.a is not None and args.b is not None:
            if args.a == 0 or not (np.isfinite(args.a) and np.isfinite(args.b)):
                raise PredictError(
                    f"--a must be finite and non-zero and --b finite, got a={args.a}, b={args.b}"
                )
            calib = {"a": args.a, "b": args.b, "K": None}
        else:
            raise PredictError(
                "missing calibration: depth needs the pair's d = a / Z + b constants; pass --a and "
                "--b, or --calib JSON"
            )
        if item is not None:
            from dpface_lib.datasets import rgb_pair

            left, right = rgb_pair(item)
            args.left = args.right = f"{args.data_root} item {args.sample} ({item['sample_id']})"
        else:
            left, right = read_rgb(args.left), read_rgb(args.right)
            check_pair_colour(left, right, args.left, args.right)
        if left.shape != right.shape:
            raise PredictError(
                f"{args.left} is {left.shape[1]}x{left.shape[0]} (WxH) but {args.right} is "
                f"{right.shape[1]}x{right.shape[0]}: the two DP views must have the same size"
            )
        h, w = left.shape[:2]
        if h < MULTIPLE * 2 or w < MULTIPLE * 2:
            raise PredictError(
                f"{args.left}: {w}x{h} (WxH) is too small; the network needs at least 32x32 px"
            )
        if h % MULTIPLE or w % MULTIPLE:
            print(
                f"note: {w}x{h} (WxH) is not a multiple of {MULTIPLE}; padding to "
                f"{w + (-w % MULTIPLE)}x{h + (-h % MULTIPLE)} by edge replication, outputs cropped back"
            )
        if calib["K"] is None:
            print(
                f"note: no intrinsics given; assuming fx = fy = {DEFAULT_FOCAL_PER_HEIGHT} x height and the "
                "image centre (affects the normals only)"
            )
        model = load_predictor(args.checkpoint)
        result = predict_pair(model, left, right, calib["a"], calib["b"], calib["K"])
        with atomic_folder(args.out, overwrite=args.overwrite) as folder:  # all files, or none
            written = save_outputs(folder, result)
    except PredictError as exc:
        print(f"dpface predict: {exc}", file=sys.stderr)
        return 2
    valid = result["depth"][result["depth"] > 0]
    summary = f"depth {valid.min():.0f}-{valid.max():.0f} mm" if valid.size else "no valid depth"
    print(
        f"disparity {result['disparity'].min():.2f}..{result['disparity'].max():.2f} px, {summary}; wrote "
        + ", ".join(p.name for p in written)
        + f" to {args.out}"
    )
    return 0
