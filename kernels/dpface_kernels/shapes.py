"""Argument helpers shared by the op wrapper, the layers and the pure-PyTorch reference."""

from __future__ import annotations

__all__ = ["output_size", "triple"]


def triple(value: int | tuple[int, int, int] | list[int], name: str) -> tuple[int, int, int]:
    """Normalise an int or a 3-sequence (t, h, w) to a tuple of three ints."""
    if isinstance(value, int):
        return (value, value, value)
    values = tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"deform_conv3d: {name} must be an int or 3 ints (t, h, w), got {value!r}")
    return values  # type: ignore[return-value]


def output_size(
    size: tuple[int, int, int],
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    dilation: tuple[int, int, int],
) -> tuple[int, int, int]:
    """(T', H', W') of a convolution over a (T, H, W) volume, as for ``nn.Conv3d``."""
    return tuple(  # type: ignore[return-value]
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True)
    )
