"""Data augmentation over the kit's sample dict (see :class:`dpface_lib.data.FaceDPDataset`).

Every transform is a callable ``sample -> sample`` on one un-batched sample of torch tensors:
images ``left``, ``right``, ``lrsum``, ``albedo`` and ``normal`` are (3, H, W); ``depth``, ``disparity`` and
``mask`` are (H, W); ``K`` is (3, 3), ``pose`` (4, 4) and ``light`` (3,). Geometry stays consistent: crops
move the principal point, flips mirror K, normals, pose and light, and the DP disparity keeps its meaning
``d = a / Z + b`` (``a``, ``b`` never change, because neither depth nor the lens changes).

The DP geometry behind the flips. The two half-aperture views differ by a shift along image **rows**:
``right(y, x) ≈ left(y - d, x)``.

- Mirroring columns (``x -> W - 1 - x``) is perpendicular to that axis: both views are mirrored, the relation
  still holds pixel for pixel, so the views keep their names and the disparity map is only mirrored.
- Mirroring rows (``y -> H - 1 - y``) runs along the DP axis: the mirrored right view now sits at ``-d``
  relative to the mirrored left view. Exchanging the two views restores ``right(y, x) ≈ left(y - d, x)`` with
  the same ``d = a / Z + b``. The half-aperture PSF shapes and the DP vignetting ramps are mirrored too, so
  this is a close but not exact picture of a real capture; it is off by default.

Random transforms draw from ``generator`` when one is given (reproducible), else from torch's global RNG
(which a DataLoader seeds differently in every worker).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["CenterCrop", "Compose", "PhotometricJitter", "RandomCrop", "RandomFlip", "crop", "flip"]

Sample = dict[str, Any]
#: Keys holding (C, H, W) or (H, W) maps that move with the pixels.
SPATIAL_KEYS = ("left", "right", "lrsum", "albedo", "normal", "depth", "disparity", "mask")
#: The three DP images, one exposure: they share every photometric draw.
VIEW_KEYS = ("left", "right", "lrsum")
#: AlexNet PCA lighting (Krizhevsky et al., NIPS 2012): eigenvalues and eigenvectors (columns) of the RGB
#: covariance of ImageNet pixels, as used by the benchmark's training augmentation.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def _size(sample: Sample) -> tuple[int, int]:
    for key in SPATIAL_KEYS:
        if key in sample:
            return tuple(sample[key].shape[-2:])
    raise KeyError("sample holds none of the spatial keys " + ", ".join(SPATIAL_KEYS))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


# --------------------------------------------------------------------------------------------- crop
def crop(sample: Sample, y0: int, x0: int, height: int, width: int) -> Sample:
    """Crop every spatial map to rows ``y0:y0+height``, columns ``x0:x0+width`` (pixels).

    ``K`` becomes ``cx - x0``, ``cy - y0`` (a pixel keeps its 3-D ray), and ``crop_origin`` (int64 (2,),
    ``(x0, y0)`` in the coordinates of the image as read, accumulated over successive crops) records where the
    crop lies.
    """
    H, W = _size(sample)
    if not (0 <= y0 and 0 <= x0 and y0 + height <= H and x0 + width <= W and height > 0 and width > 0):
        raise ValueError(
            f"crop rows {y0}:{y0 + height}, cols {x0}:{x0 + width} does not fit a {H}x{W} sample"
        )
    out = dict(sample)
    for key in SPATIAL_KEYS:
        if key in out:
            out[key] = out[key][..., y0 : y0 + height, x0 : x0 + width]
    if "K" in out:
        K = out["K"].clone()
        K[0, 2] -= x0
        K[1, 2] -= y0
        out["K"] = K
    origin = out.get("crop_origin", torch.zeros(2, dtype=torch.int64))
    out["crop_origin"] = origin + torch.tensor([x0, y0], dtype=torch.int64)
    return out


def _crop_size(
    size: int | float | Sequence[int | float], H: int, W: int, multiple_of: int
) -> tuple[int, int]:
    """(h, w) from ints (pixels) or floats (fractions of H, W), rounded down to ``multiple_of``."""
    pair = (size, size) if isinstance(size, int | float) else tuple(size)
    if len(pair) != 2:
        raise ValueError(f"crop size must be one number or (height, width), not {size!r}")
    h, w = (int(s * n) if isinstance(s, float) else int(s) for s, n in zip(pair, (H, W), strict=True))
    h, w = h - h % multiple_of, w - w % multiple_of
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"crop size {size!r} (multiple of {multiple_of}) -> {h}x{w} does not fit {H}x{W}")
    return h, w


class RandomCrop:
    """Crop at a uniformly drawn top-left corner (the benchmark's training crop ignores the mask).

    ``size``: (height, width) in pixels, one int for a square, or floats as fractions of the image; the
    size is rounded down to ``multiple_of`` (the benchmark uses 96 with a fraction of 0.75).
    """

    def __init__(
        self,
        size: int | float | Sequence[int | float],
        multiple_of: int = 1,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size, self.multiple_of, self.generator = size, multiple_of, generator

    def __call__(self, sample: Sample) -> Sample:
        H, W = _size(sample)
        h, w = _crop_size(self.size, H, W, self.multiple_of)
        y0 = int(torch.randint(0, H - h + 1, (), generator=self.generator))
        x0 = int(torch.randint(0, W - w + 1, (), generator=self.generator))
        return crop(sample, y0, x0, h, w)


class CenterCrop:
    """Crop the centre (top-left at ``((H - h) // 2, (W - w) // 2)``); ``size`` as in :class:`RandomCrop`.
    ``CenterCrop(1.0, multiple_of=96)`` is the benchmark's test crop."""

    def __init__(self, size: int | float | Sequence[int | float], multiple_of: int = 1) -> None:
        self.size, self.multiple_of = size, multiple_of

    def __call__(self, sample: Sample) -> Sample:
        H, W = _size(sample)
        h, w = _crop_size(self.size, H, W, self.multiple_of)
        return crop(sample, (H - h) // 2, (W - w) // 2, h, w)


# --------------------------------------------------------------------------------------------- flips
def flip(sample: Sample, *, horizontal: bool = False, vertical: bool = False) -> Sample:
    """Mirror a sample; see the module docstring for why a vertical flip exchanges ``left`` and ``right``.

    Horizontal (columns, ``x' = W - 1 - x``): ``cx' = W - 1 - cx``, skew negated, normal x negated; the
    scene is mirrored about the camera's y-z plane, so ``pose`` becomes ``F pose F`` and ``light`` has x
    negated, with ``F = diag(-1, 1, 1, 1)``. Vertical (rows, ``y' = H - 1 - y``): likewise with ``cy``, the
    y components and ``F = diag(1, -1, 1, 1)``, and the left/right views are exchanged so the disparity
    keeps its sign. Disparity, depth and mask are mirrored as maps; ``a``, ``b`` are unchanged.
    ``crop_origin`` refers to the image as read and is not changed. A bool (2,) ``flipped`` = (horizontal,
    vertical) is accumulated (xor).
    """
    out = dict(sample)
    H, W = _size(sample)
    for axis, dim, size, on in ((0, -1, W, horizontal), (1, -2, H, vertical)):
        if not on:
            continue
        for key in SPATIAL_KEYS:
            if key in out:
                out[key] = torch.flip(out[key], dims=(dim,))
        if "normal" in out:
            normal = out["normal"].clone()
            normal[axis] = -normal[axis]
            out["normal"] = normal
        if "K" in out:
            K = out["K"].clone()
            K[axis, 2] = size - 1 - K[axis, 2]
            K[0, 1] = -K[0, 1]
            out["K"] = K
        mirror = torch.ones(4, dtype=torch.float64)
        mirror[axis] = -1
        if "pose" in out:
            pose = out["pose"]
            out["pose"] = (mirror[:, None] * pose.double() * mirror[None, :]).to(pose.dtype)
        if "light" in out and out["light"] is not None:
            light = out["light"].clone()
            light[axis] = -light[axis]
            out["light"] = light
        if axis == 1 and "left" in out and "right" in out:
            out["left"], out["right"] = out["right"], out["left"]
    flipped = out.get("flipped", torch.zeros(2, dtype=torch.bool))
    out["flipped"] = flipped ^ torch.tensor([horizontal, vertical])
    return out


class RandomFlip:
    """Horizontal flip with probability ``p_horizontal``, vertical (DP-axis) flip with ``p_vertical``."""

    def __init__(
        self, p_horizontal: float = 0.5, p_vertical: float = 0.0, generator: torch.Generator | None = None
    ) -> None:
        self.p_horizontal, self.p_vertical, self.generator = p_horizontal, p_vertical, generator

    def __call__(self, sample: Sample) -> Sample:
        draws = torch.rand(2, generator=self.generator, dtype=torch.float64)
        return flip(
            sample, horizontal=bool(draws[0] < self.p_horizontal), vertical=bool(draws[1] < self.p_vertical)
        )


# --------------------------------------------------------------------------------------------- photometric
class PhotometricJitter:
    """Brightness, gamma, contrast and AlexNet PCA lighting, with ONE draw shared by ``left``, ``right`` and
    ``lrsum`` (the three images are one exposure; the benchmark's code drew them independently).

    Each factor range is ``(low, high)`` sampled uniformly per sample, or ``None`` to skip that step. Order as
    in the benchmark: ``x * brightness``, ``x ** gamma``, ``mean + contrast * (x - mean)`` (``mean`` = grey
    level of ``lrsum``, shared), then lighting: ``sigma ~ U(lighting)``, ``alpha ~ N(0, sigma)^3`` and every
    pixel gets ``eigvec @ (alpha * eigval)`` added (Krizhevsky et al. 2012). The defaults are the benchmark's
    training setting (lighting only, sigma in [0.5, 5]). Results are clamped to [0, 1] when ``clamp``.
    Targets (albedo, depth, normals, ...) are never touched.
    """

    def __init__(
        self,
        brightness: tuple[float, float] | None = None,
        contrast: tuple[float, float] | None = None,
        gamma: tuple[float, float] | None = None,
        lighting: tuple[float, float] | None = (0.5, 5.0),
        clamp: bool = True,
        keys: Iterable[str] = VIEW_KEYS,
        generator: torch.Generator | None = None,
    ) -> None:
        self.brightness, self.contrast, self.gamma, self.lighting = brightness, contrast, gamma, lighting
        self.clamp, self.keys, self.generator = clamp, tuple(keys), generator

    def draw(self) -> dict[str, Any]:
        """One set of factors (None for a disabled step)."""
        g = self.generator
        params: dict[str, Any] = {
            name: (_uniform(*rng, g) if rng is not None else None)
            for name, rng in (
                ("brightness", self.brightness),
                ("gamma", self.gamma),
                ("contrast", self.contrast),
            )
        }
        params["lighting"] = None
        if self.lighting is not None:
            sigma = _uniform(*self.lighting, g)
            alpha = torch.randn(3, generator=g, dtype=torch.float64) * sigma
            shift = torch.tensor(PCA_EIGVEC, dtype=torch.float64) @ (alpha * torch.tensor(PCA_EIGVAL))
            params["lighting"] = shift
        return params

    def apply(self, sample: Sample, params: dict[str, Any]) -> Sample:
        """Apply given factors (from :meth:`draw`) to the view images of ``sample``."""
        out = dict(sample)
        keys = [k for k in self.keys if k in out]
        mean = None
        if params["contrast"] is not None:
            grey_source = out.get("lrsum", out[keys[0]])
            if params["brightness"] is not None:
                grey_source = grey_source * params["brightness"]
            if params["gamma"] is not None:
                grey_source = grey_source.clamp(min=0) ** params["gamma"]
            weights = torch.tensor([0.299, 0.587, 0.114], dtype=grey_source.dtype)
            mean = (weights[:, None, None] * grey_source).sum(0).mean()
        for key in keys:
            image = out[key]
            if params["brightness"] is not None:
                image = image * params["brightness"]
            if params["gamma"] is not None:
                image = image.clamp(min=0) ** params["gamma"]
            if mean is not None:
                image = mean + params["contrast"] * (image - mean)
            if params["lighting"] is not None:
                image = image + params["lighting"].to(image.dtype)[:, None, None]
            out[key] = image.clamp(0.0, 1.0) if self.clamp else image
        return out

    def __call__(self, sample: Sample) -> Sample:
        return self.apply(sample, self.draw())


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Iterable[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(type(t).__name__ for t in self.transforms) + "])"


def build_transform(data_cfg: Mapping[str, Any], train: bool):
    """Crop (+ photometric augmentation when ``train``) from a ``data:`` config: a callable on sample dicts.

    ``crop.size`` [h, w] in px, else ``crop.ratio`` of the image; both rounded down to ``crop.multiple`` px.
    ``photometric``: ``lighting`` = range of the PCA lighting sigma, ``brightness``/``contrast``/``gamma``
    = factor ranges (see :class:`PhotometricJitter`); all None = no jitter.
    """
    crop = data_cfg["crop" if train else "eval_crop"]
    steps = []
    if crop["mode"] != "none":
        size = [int(v) for v in crop["size"]] if crop["size"] else float(crop["ratio"])
        cls = RandomCrop if crop["mode"] == "random" else CenterCrop
        steps.append(cls(size, multiple_of=int(crop["multiple"])))
    photo = {k: None if v is None else tuple(float(x) for x in v) for k, v in data_cfg["photometric"].items()}
    if train and any(v is not None for v in photo.values()):
        steps.append(PhotometricJitter(**photo))
    return Compose(steps) if steps else None
