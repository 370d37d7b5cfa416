"""Image decoding at the file's own precision (dpface_lib.images) and the 16-bit PNG writer (fileio)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dpface_lib.fileio import atomic_save_png, encode_png
from dpface_lib.images import ImageError, ImageWarning, read_image, to_rgb
from dpface_lib.layout import DatasetError, load_image
from dpface_lib.predict import PredictError, read_rgb

SHAPES = [(5, 7), (5, 7, 2), (5, 7, 3), (5, 7, 4)]


@pytest.mark.parametrize("shape", SHAPES, ids=["grey", "grey_alpha", "rgb", "rgba"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip_keeps_every_bit(tmp_path: Path, shape, dtype) -> None:
    top = np.iinfo(dtype).max
    array = np.random.default_rng(0).integers(0, top + 1, shape).astype(dtype)
    atomic_save_png(tmp_path / "x.png", array)
    decoded, bits = read_image(tmp_path / "x.png")
    assert bits == 8 * np.dtype(dtype).itemsize and decoded.dtype == np.float32
    assert decoded.shape == (5, 7, shape[2] if len(shape) == 3 else 1)
    assert np.array_equal(np.round(decoded * top).astype(dtype).reshape(shape), array)


def test_pillow_is_an_independent_decoder_of_the_writer_and_drops_low_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb8 = rng.integers(0, 256, (6, 4, 3)).astype(np.uint8)
    (tmp_path / "a.png").write_bytes(encode_png(rgb8))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), rgb8)
    grey16 = rng.integers(0, 65536, (6, 4)).astype(np.uint16)
    (tmp_path / "g.png").write_bytes(encode_png(grey16))
    with Image.open(tmp_path / "g.png") as image:
        assert image.mode == "I;16" and np.array_equal(np.asarray(image), grey16)
    # 48-bit RGB: Pillow keeps only the high byte, the kit's reader keeps all 16 bits
    rgb16 = rng.integers(0, 65536, (6, 4, 3)).astype(np.uint16)
    (tmp_path / "c.png").write_bytes(encode_png(rgb16))
    with Image.open(tmp_path / "c.png") as image:
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), (rgb16 >> 8).astype(np.uint8))
    ours = load_image(tmp_path / "c.png")
    assert np.allclose(ours, rgb16 / 65535.0, atol=1e-7)


def test_sixteen_bit_grey_reaches_predict_unsaturated(tmp_path: Path) -> None:
    """Converted to RGB by Pillow alone, a 16-bit grey PNG became white (every value clipped to 255)."""
    grey = np.linspace(1000, 60000, 48).reshape(6, 8).astype(np.uint16)
    atomic_save_png(tmp_path / "g16.png", grey)
    with Image.open(tmp_path / "g16.png") as image:
        assert np.asarray(image.convert("RGB")).min() == 255  # the failure this reader avoids
    rgb = read_rgb(tmp_path / "g16.png")
    assert rgb.shape == (6, 8, 3)
    assert np.allclose(rgb[..., 1], grey / 65535.0, atol=1e-7) and np.array_equal(rgb[..., 0], rgb[..., 2])


def test_other_formats_through_pillow(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    grey16 = rng.integers(0, 65536, (5, 6)).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g.pgm")  # 16-bit PGM, as the DP capture app writes
    decoded, bits = read_image(tmp_path / "g.pgm")
    assert bits == 16 and np.allclose(decoded[..., 0], grey16 / 65535.0, atol=1e-7)
    rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    with Image.open(tmp_path / "x.jpg") as image:
        expected = np.asarray(image.convert("RGB")) / 255.0
    decoded, bits = read_image(tmp_path / "x.jpg")
    assert bits == 8 and np.allclose(decoded, expected, atol=1e-7)
    palette = Image.fromarray(rgb).convert("P")
    palette.save(tmp_path / "p.gif")
    assert read_image(tmp_path / "p.gif")[0].shape == (8, 8, 3)


def test_lossy_conversions_warn_and_lossless_ones_do_not(tmp_path: Path) -> None:
    rgba = np.full((4, 4, 4), 200, np.uint8)
    atomic_save_png(tmp_path / "opaque.png", np.dstack([rgba[..., :3], np.full((4, 4), 255, np.uint8)]))
    atomic_save_png(tmp_path / "grey.png", rgba[..., 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(tmp_path / "opaque.png").shape == (4, 4, 3)
        assert np.allclose(load_image(tmp_path / "grey.png"), 200 / 255)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one pixel in 16
    atomic_save_png(tmp_path / "hole.png", rgba)
    with pytest.warns(ImageWarning, match=r"hole\.png: alpha channel dropped \(6\.2% of pixels"):
        load_image(tmp_path / "hole.png")
    Image.new("CMYK", (4, 4), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg")
    with pytest.warns(ImageWarning, match=r"cmyk\.jpg: CMYK image converted to RGB"):
        assert read_image(tmp_path / "cmyk.jpg")[0].shape == (4, 4, 3)
    assert to_rgb(np.zeros((2, 2, 1), np.float32), "x").shape == (2, 2, 3)


def test_bad_image_files_are_named(tmp_path: Path, monkeypatch) -> None:
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ImageError, match=r"float\.tiff: 'F' images .* no defined range"):
        read_image(tmp_path / "float.tiff")
    good = encode_png(np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"cut\.png: not a readable image"):
        load_image(tmp_path / "cut.png")
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(PredictError, match=r"text\.png: not a readable image"):
        read_rgb(tmp_path / "text.png")
    with pytest.raises(ImageError, match=r"none\.png: image file is missing"):
        read_image(tmp_path / "none.png")
    atomic_save_png(tmp_path / "big.png", np.zeros((64, 64), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a bomb is refused before decoding, PNG included
    with pytest.raises(ImageError, match=r"big\.png: image is too large"):
        read_image(tmp_path / "big.png")


def test_encoder_refuses_what_png_cannot_hold() -> None:
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="expected"):
        encode_png(np.zeros((2, 2, 5), np.uint8))
