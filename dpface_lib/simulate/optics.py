r"""Dual-pixel image formation: half-aperture PSFs, layered defocus, vignetting, noise, JPEG.

Half-aperture PSFs
------------------
A point at signed circle of confusion ``c`` (px, positive beyond the focus plane, see
:func:`dpface_lib.geometry.circle_of_confusion`) images through aperture position ``u`` (unit disc,
``u = (u_x, u_y)``; ``u_y`` along the DP split, i.e. image rows) at offset ``(c / 2) u`` from its
sharp position; the sign of ``c`` turns the disc over on either side of the focus plane. Each DP
half-pixel weighs the aperture with a smooth angular response instead of a hard half-disc
(Punnappurath et al., "Modeling Defocus-Disparity in Dual-Pixel Sensors", ICCP 2020; Abuolaim et al.,
"Learning to Reduce Defocus Blur by Realistically Modeling Dual-Pixel Data", ICCV 2021)::

    w_R(u) = (1 + tanh(u_y / tau)) / 2,        w_L(u) = 1 - w_R(u)

so the left and right PSFs sum to the full disc. Each PSF is built by splatting a mirror-symmetric
sunflower sampling of the aperture with those weights (bilinearly), blurring with a small Gaussian
(``sigma``: lens and pixel blur) and normalising to unit sum. The right PSF's centroid sits at
``+k c / 2`` rows and the left one's at ``-k c / 2`` with ``k = E_R[u_y]`` (see
:func:`disparity_per_coc`), so the DP disparity is ``d = k c`` and ``(a, b)`` follow from
:func:`dpface_lib.geometry.thin_lens_ab` with that ``k``. A hard split (``tau -> 0``) gives
``k = 4 / (3 pi) ~ 0.42``; the default ``tau`` gives ``k`` near the benchmark sensor's 0.134.

Blur models from the literature (``psf=``)
------------------------------------------
Every model is a pair of weights over the same aperture samples, so each one's ``k`` follows from its own
centroids (:func:`disparity_per_coc`) and the left/right views stay exact mirror images:

- ``soft`` (default): the tanh response above;
- ``half-disc``: the ideal split, ``w_R = [u_y > 0]`` (``tau -> 0``);
- ``butterworth`` (Abuolaim et al., ICCV 2021): the disc times a radial Butterworth high-pass of order 3
  and cut-off 0.8 of the radius, rescaled to ``[beta, 1]`` (``beta = 0.15``), times a linear ramp
  ``(1 - u_y) / 2`` for the left view; the right view is its 180-degree rotation;
- ``translating-disc`` (Punnappurath et al., ICCP 2020): the right weight of a point is the share of a
  disc translated from 0 to one radius along the DP axis that still covers it, a graded half-disc; the
  left weight is its mirror image;
- ``calibrated=LEFT.npy,RIGHT.npy`` (after Xin et al., ICCV 2021): measured left/right kernels of shape
  ``(tiles, k, k)``, averaged over the tiles (the spatial variation across the frame is not modelled), are
  read as weight maps over the aperture: the kernel's support circle is the aperture rim, so rescaling to
  each layer's CoC and the 180-degree flip for negative CoC follow from the splat at ``(c / 2) u``.

Layered defocus with occlusion
------------------------------
The scene (radiance, per-pixel signed CoC) is sliced into depth layers by CoC, on a fixed grid of a
log-warped CoC so that PSFs and their spectra are cached (empty layers dropped); each pixel's coverage
is split linearly between its two nearest layers. Premultiplied radiance and coverage of every layer
are convolved with that layer's left/right PSFs (FFT in torch over the layer's support grown by the
PSF radius; both PSFs and all four planes batched) and composited back to front (``over``). The result
is divided by the composited coverage, which removes the seams of the soft split and the dark border
of zero padding.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

#: softness of the half-pixel angular response (aperture radii) at the benchmark's f/5.657
DEFAULT_TAU = 1.8
#: the f-number at which :data:`DEFAULT_TAU` gives the benchmark sensor's ``k`` (0.134)
TAU_F_NUMBER = 5.657


def sensor_tau(f_number: float) -> float:
    """``tau`` (aperture radii) of the benchmark sensor's half-pixel response behind an f/``f_number`` lens.

    The response is a property of the sensor's micro-lenses, so it is fixed in the *angle* of the incoming
    ray, not in aperture radii. A ray through aperture position ``u_y`` reaches an in-focus pixel at
    ``tan(theta) = u_y / (2 N)`` (paraxial), so ``tanh(tan(theta) / t)`` reads ``tanh(u_y / (2 N t))``:
    ``tau = 2 N t``, with ``t = DEFAULT_TAU / (2 * 5.657)`` calibrated where the benchmark's
    ``k = 0.134`` was measured (f/5.657). Wide apertures bring rays from steeper angles, where the two
    half-pixels separate them more sharply, so ``k`` grows towards the hard split's 0.42: 0.134 at
    f/5.657, about 0.36 at f/1.2 (Punnappurath et al., ICCP 2020, model the DP response in angle).
    """
    if not f_number > 0:
        raise ValueError(f"f-number must be > 0, got {f_number}")
    return DEFAULT_TAU * float(f_number) / TAU_F_NUMBER
#: Gaussian blur of the lens and pixel (px)
DEFAULT_SIGMA_PX = 0.5
#: number of aperture samples per PSF
APERTURE_SAMPLES = 1024


@lru_cache(maxsize=4)
def aperture_samples(n: int = APERTURE_SAMPLES) -> np.ndarray:
    """(n, 2) deterministic, evenly spread points of the unit disc, ``(u_x, u_y)``: a sunflower pattern
    of ``n / 4`` points mirrored into all four quadrants, so the left/right PSFs are exact mirror images."""
    m = max(1, n // 4)
    i = np.arange(m) + 0.5
    r = np.sqrt(i / m)
    theta = i * math.pi * (3.0 - math.sqrt(5.0))
    p = np.stack([np.abs(r * np.cos(theta)), np.abs(r * np.sin(theta))], axis=1)
    return np.concatenate([p * [sx, sy] for sx in (1, -1) for sy in (1, -1)])


def right_response(u_y: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Angular response ``w_R`` of the right half-pixel across the aperture (0..1); ``w_L = 1 - w_R``."""
    if tau <= 0:
        return (u_y > 0).astype(np.float64)
    return 0.5 * (1.0 + np.tanh(u_y / tau))


PSF_MODELS = ("soft", "half-disc", "butterworth", "translating-disc")
#: Butterworth high-pass of Abuolaim et al. 2021: order, cut-off (share of the radius), floor beta
BUTTERWORTH = (3, 0.8, 0.15)


def half_weights(psf: str = "soft", tau: float = DEFAULT_TAU) -> np.ndarray:
    """``(2, n)`` left/right weights of the aperture samples (:func:`aperture_samples`) for blur model
    ``psf`` (see the module docstring); the right row is the left row mirrored across ``u_y = 0``."""
    u = aperture_samples()
    ux, uy = u[:, 0], u[:, 1]
    if psf == "soft":
        right = right_response(uy, tau)
    elif psf == "half-disc":
        right = right_response(uy, 0.0)
    elif psf == "butterworth":
        order, cutoff, beta = BUTTERWORTH
        rho = np.hypot(ux, uy)
        highpass = 1.0 - 1.0 / (1.0 + (rho / cutoff) ** (2 * order))
        right = (beta + (1 - beta) * highpass) * (1.0 + uy) / 2.0
    elif psf.startswith("calibrated="):
        return _calibrated_weights(psf)
    elif psf == "translating-disc":
        shifts = (np.arange(16) + 0.5) / 16  # translations of the disc along +u_y, up to one radius
        right = (np.hypot(ux[:, None], uy[:, None] - shifts[None]) <= 1.0).mean(axis=1)
    else:
        raise ValueError(f"unknown DP blur model {psf!r}; expected one of {PSF_MODELS}")
    if psf == "soft":  # 1 - w_R is its mirror image too, and the form the kit's sets were made with
        return np.stack([1.0 - right, right])
    return np.stack([right[_mirror_index()], right])


@lru_cache(maxsize=8)
def _calibrated_weights(psf: str) -> np.ndarray:
    """``(2, n)`` aperture weights sampled (bilinearly) from the mean calibrated kernel of each view."""
    from dpface_lib.layout import load_npy

    u = aperture_samples()
    out = []
    for name in psf.split("=", 1)[1].split(","):
        kernels = load_npy(Path(name)).astype(np.float64)
        if kernels.ndim != 3 or kernels.shape[1] != kernels.shape[2] or kernels.shape[1] < 3:
            raise ValueError(f"{name}: calibrated kernels must have shape (tiles, k, k), got {kernels.shape}")
        kernel = kernels.mean(axis=0)
        half = (kernel.shape[0] - 1) / 2
        y, x = half + u[:, 1] * half, half + u[:, 0] * half  # aperture rim -> the kernel's inscribed circle
        y0, x0 = np.clip(np.floor(y).astype(int), 0, kernel.shape[0] - 2), np.clip(np.floor(x).astype(int), 0,
                                                                                     kernel.shape[1] - 2)
        fy, fx = y - y0, x - x0
        out.append(kernel[y0, x0] * (1 - fy) * (1 - fx) + kernel[y0 + 1, x0] * fy * (1 - fx)
                   + kernel[y0, x0 + 1] * (1 - fy) * fx + kernel[y0 + 1, x0 + 1] * fy * fx)
    if len(out) != 2:
        raise ValueError(f"calibrated blur model needs two kernel files, LEFT.npy,RIGHT.npy; got {psf!r}")
    weights = np.clip(np.stack(out), 0.0, None)
    if (weights.sum(axis=1) <= 0).any():
        raise ValueError(f"{psf}: a calibrated kernel is zero on the whole aperture")
    return weights


@lru_cache(maxsize=1)
def _mirror_index() -> np.ndarray:
    """Index of each aperture sample's mirror image ``(u_x, -u_y)`` (the samples are quadrant-symmetric)."""
    u = aperture_samples()
    keys = {(round(x, 12), round(y, 12)): i for i, (x, y) in enumerate(u)}
    return np.array([keys[(round(x, 12), round(-y, 12))] for x, y in u])


def disparity_per_coc(tau: float = DEFAULT_TAU, psf: str = "soft") -> float:
    """``k`` of the PSF pair: distance between the right and left PSF centroids per pixel of CoC diameter.

    With offsets ``(c / 2) u``: ``centroid_R - centroid_L = (c / 2) (E_R[u_y] - E_L[u_y])`` (the weights
    are mirror images, so this is ``c E_R[u_y]``), evaluated numerically on the aperture samples.
    """
    u_y = aperture_samples()[:, 1]
    left, right = half_weights(psf, tau)
    return float((right * u_y).sum() / right.sum() - (left * u_y).sum() / left.sum()) / 2.0


def dp_psf_pair(
    coc_px: float, radius: int | None = None, tau: float = DEFAULT_TAU, sigma_px: float = DEFAULT_SIGMA_PX,
    psf: str = "soft",
) -> tuple[np.ndarray, np.ndarray]:
    """Left and right PSFs of a point with signed CoC diameter ``coc_px`` under blur model ``psf``.

    Returns:
        ``(left, right)``, each (2 r + 1, 2 r + 1) float64 with unit sum, centred on the middle pixel;
        rows are the DP axis. ``r`` defaults to ``ceil(|c| / 2 + 3 sigma) + 1``.
    """
    return tuple(
        k.numpy()
        for k in _psf_batch(torch.tensor([float(coc_px)], dtype=torch.float64), radius, tau, sigma_px, psf)[0]
    )  # type: ignore[return-value]


def _psf_batch(coc: torch.Tensor, radius: int | None, tau: float, sigma_px: float,
               psf: str = "soft") -> torch.Tensor:
    """(L,) signed CoCs -> (L, 2, 2r+1, 2r+1) left/right PSFs with unit sums.

    Each aperture sample is splatted bilinearly (which keeps the centroid exact for sub-pixel blur),
    then the splat is blurred by a symmetric discrete Gaussian (which keeps it too); both are separable.
    """
    if radius is None:
        radius = int(math.ceil(float(coc.abs().max()) / 2 + 3 * sigma_px)) + 1
    u = torch.as_tensor(aperture_samples(), dtype=coc.dtype)
    grid = torch.arange(-radius, radius + 1, dtype=coc.dtype)
    pos = 0.5 * coc[:, None, None] * u[None]  # (L, n, 2): (x, y) offsets
    tx = (1.0 - (grid - pos[..., 0:1]).abs()).clamp_min(0.0)  # (L, n, G) bilinear weights
    ty = (1.0 - (grid - pos[..., 1:2]).abs()).clamp_min(0.0)
    if sigma_px > 0:
        g = int(math.ceil(3 * sigma_px))
        taps = torch.exp(-0.5 * (torch.arange(-g, g + 1, dtype=coc.dtype) / sigma_px) ** 2)
        taps = (taps / taps.sum()).reshape(1, 1, -1)
        tx = torch.nn.functional.conv1d(tx.reshape(-1, 1, tx.shape[-1]), taps, padding=g).reshape(tx.shape)
        ty = torch.nn.functional.conv1d(ty.reshape(-1, 1, ty.shape[-1]), taps, padding=g).reshape(ty.shape)
    weights = torch.as_tensor(half_weights(psf, tau), dtype=coc.dtype)  # (2, n): left, right
    psf = torch.einsum("sn,lny,lnx->lsyx", weights, ty, tx)
    return psf / psf.sum(dim=(-2, -1), keepdim=True)


def coc_warp(coc: torch.Tensor, c0: float = 2.0) -> torch.Tensor:
    """Warp ``sign(c) log(1 + |c| / c0)`` used to space depth layers: dense near focus, where a CoC step
    moves the disparity most relative to the blur, and sparse for large blur."""
    return torch.sign(coc) * torch.log1p(coc.abs() / c0)


def coc_unwarp(psi: torch.Tensor, c0: float = 2.0) -> torch.Tensor:
    """Inverse of :func:`coc_warp`."""
    return torch.sign(psi) * c0 * torch.expm1(psi.abs())


#: spacing of the depth-layer grid in warped CoC (:func:`coc_warp`)
LAYER_STEP = 0.4


def layer_weights(
    coc: torch.Tensor, step: float = LAYER_STEP, max_layers: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice a CoC map into depth layers.

    Layer centres lie on a fixed grid ``psi = j * step`` of the warped CoC (:func:`coc_warp`), so their
    PSFs can be cached; only grid points between the smallest and largest CoC are used, every m-th one
    if more than ``max_layers`` would be needed. Each pixel's coverage is split linearly (in the warped
    CoC) between the two centres that bracket it; layers that no pixel touches are dropped.

    Args:
        coc: (H, W) signed CoC (px).

    Returns:
        ``(grid_index (L,), weights (L, H, W))``: increasing integer grid indices ``j`` (layer CoC =
        ``coc_unwarp(j * step)``) and float weights summing to 1 per pixel.
    """
    psi = coc_warp(coc) / step
    lo, hi = math.floor(float(psi.min())), math.ceil(float(psi.max()))
    m = max(1, math.ceil((hi - lo) / max(1, max_layers - 1)))
    lo, hi = m * math.floor(lo / m), m * math.ceil(hi / m)
    n = max(2, (hi - lo) // m + 1)
    t = ((psi - lo) / m).clamp(0, n - 1)
    i0 = t.floor().clamp(max=n - 2).long()
    frac = t - i0
    out = torch.zeros((n, *coc.shape), dtype=coc.dtype)
    out.scatter_(0, i0[None], (1 - frac)[None])
    out.scatter_add_(0, (i0 + 1)[None], frac[None])
    used = out.flatten(1).amax(dim=1) > 0
    return (lo + m * torch.arange(n))[used], out[used]


@lru_cache(maxsize=256)
def _psf_cached(j: int, step: float, tau: float, sigma_px: float, psf: str = "soft") -> torch.Tensor:
    """(2, k, k) float32 left/right PSFs of the layer grid point ``j`` (own radius)."""
    coc = coc_unwarp(torch.tensor([j * step], dtype=torch.float64))
    return _psf_batch(coc, None, tau, sigma_px, psf)[0].float()


@lru_cache(maxsize=512)
def _psf_spectrum(j: int, step: float, tau: float, sigma_px: float, model: str, hp: int,
                  wp: int) -> torch.Tensor:
    """(2, hp, wp // 2 + 1) rFFT of the grid point's PSFs laid out circularly (centre at index 0)."""
    psf = _psf_cached(j, step, tau, sigma_px, model)
    r = psf.shape[-1] // 2
    kern = torch.zeros((2, hp, wp), dtype=torch.float32)
    rows = (torch.arange(-r, r + 1) % hp)[:, None]
    cols = (torch.arange(-r, r + 1) % wp)[None, :]
    kern[:, rows, cols] = psf
    return torch.fft.rfft2(kern)


def _fast_len(n: int) -> int:
    """Smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def defocus_dp(
    radiance: np.ndarray | torch.Tensor,
    coc_px: np.ndarray | torch.Tensor,
    layer_step: float = LAYER_STEP,
    max_layers: int = 12,
    tau: float = DEFAULT_TAU,
    sigma_px: float = DEFAULT_SIGMA_PX,
    psf: str = "soft",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Form the left and right DP views of a scene by layered, occlusion-aware defocus.

    Args:
        radiance: (H, W, 3) linear radiance of the all-in-focus scene.
        coc_px: (H, W) signed CoC diameter of every pixel (px); finite everywhere (the background too).
        layer_step, max_layers: layer grid spacing in warped CoC and the cap on their number
            (:func:`layer_weights`).

    Returns:
        ``(left, right)``: (H, W, 3) float32 tensors, each a full exposure (left + right = 2 x the
        ordinary photo before vignetting).
    """
    rad = torch.as_tensor(radiance, dtype=torch.float32).permute(2, 0, 1)
    coc = torch.as_tensor(coc_px, dtype=torch.float32)
    h, w = coc.shape
    grid_idx, alpha = layer_weights(coc, layer_step, max_layers)  # (L,), (L, H, W)
    key = (float(layer_step), float(tau), float(sigma_px), psf)
    acc = torch.zeros((2, 4, h, w), dtype=torch.float32)
    for i in range(len(grid_idx) - 1, -1, -1):  # far (large CoC) to near, "over" compositing
        j = int(grid_idx[i])
        r = _psf_cached(j, *key).shape[-1] // 2
        rows = torch.nonzero(alpha[i].amax(dim=1) > 0)[:, 0]
        cols = torch.nonzero(alpha[i].amax(dim=0) > 0)[:, 0]
        # the layer's support grown by the PSF radius: nothing outside it changes
        y0, y1 = max(0, int(rows[0]) - r), min(h, int(rows[-1]) + r + 1)
        x0, x1 = max(0, int(cols[0]) - r), min(w, int(cols[-1]) + r + 1)
        a = alpha[i, y0:y1, x0:x1]
        planes = torch.cat([rad[:, y0:y1, x0:x1] * a, a[None]])  # (4, h', w') premultiplied + coverage
        hp, wp = _fast_len(y1 - y0 + r), _fast_len(x1 - x0 + r)  # padding of r absorbs the circular wrap
        spec = torch.fft.rfft2(planes, s=(hp, wp))
        layer = torch.fft.irfft2(spec[None] * _psf_spectrum(j, *key, hp, wp)[:, None], s=(hp, wp))
        layer = layer[..., : y1 - y0, : x1 - x0]  # (2, 4, h', w')
        cov = layer[:, 3:4].clamp(0.0, 1.0)
        acc[..., y0:y1, x0:x1] = acc[..., y0:y1, x0:x1] * (1.0 - cov) + layer
    out = acc[:, :3] / acc[:, 3:4].clamp_min(1e-6)
    out = out.clamp_min(0.0).permute(0, 2, 3, 1)
    return out[0], out[1]


def dp_vignetting(height: int, width: int, strength: float = 0.12, falloff: float = 0.12) -> torch.Tensor:
    """(2, H, W, 1) gains of the left and right views: a shared radial falloff times opposite linear
    ramps along the DP axis (rows), ``1 -/+ strength * (y - cy) / (H / 2)``."""
    y = (torch.arange(height, dtype=torch.float32) - (height - 1) / 2) / (height / 2)
    x = (torch.arange(width, dtype=torch.float32) - (width - 1) / 2) / (height / 2)
    radial = 1.0 - falloff * (y[:, None] ** 2 + x[None] ** 2) / 2
    ramp = strength * y[:, None].expand(height, width)
    return torch.stack([radial * (1 - ramp), radial * (1 + ramp)])[..., None]


def sensor_noise(
    image: torch.Tensor, rng: np.random.Generator, full_well: float = 800.0, read_sigma: float = 0.004
) -> torch.Tensor:
    """Poisson-Gaussian sensor noise on an image ``x`` in [0, 1] (signal in units of the full well).

    Photon shot noise has variance ``x / full_well`` and read noise ``read_sigma^2``; at the photon counts
    of a stored (binned) pixel the Poisson law is Gaussian to a very good approximation, so the noisy
    value is ``x + sqrt(x / full_well + read_sigma^2) * N(0, 1)`` (the heteroscedastic Gaussian form of
    Foi et al., "Practical Poissonian-Gaussian noise modeling", IEEE TIP 2008).
    """
    x = image.clamp_min(0.0)
    z = torch.from_numpy(rng.standard_normal(size=tuple(x.shape), dtype=np.float32))
    return x + torch.sqrt(x / full_well + read_sigma**2) * z


def encode_jpeg(image: np.ndarray | torch.Tensor, quality: int = 92) -> bytes:
    """(H, W, 3) float image in [0, 1] -> baseline JPEG bytes (4:4:4, no chroma subsampling)."""
    from PIL import Image

    arr = np.asarray(image, dtype=np.float32)
    u8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8, "RGB").save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def jpeg_round_trip(image: np.ndarray | torch.Tensor, quality: int = 92) -> np.ndarray:
    """(H, W, 3) float image in [0, 1] -> the same image after :func:`encode_jpeg` and decoding (float32):
    what the writer stores, without a file."""
    from PIL import Image

    with Image.open(io.BytesIO(encode_jpeg(image, quality))) as decoded:
        return np.asarray(decoded.convert("RGB"), dtype=np.float32) / 255.0
