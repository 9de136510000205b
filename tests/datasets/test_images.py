"""load_rgb: every image quirk becomes 8-bit RGB; broken files raise errors naming the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.datasets.replicas import KINDS, class_pixels, write_image
from usb_cfsg.datasets.images import array_to_rgb, load_rgb, to_rgb
from usb_cfsg.errors import DatasetError

PIXELS = class_pixels(2, 5, 0, (20, 16))  # 16 rows, 20 columns
GOOD_KINDS = [k for k in KINDS if k not in ("corrupt", "truncated")]


def _rgb(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    assert img.size == (20, 16)
    return np.asarray(img).astype(int)


@pytest.mark.parametrize("kind", GOOD_KINDS)
def test_every_quirk_decodes_to_rgb(tmp_path: Path, kind: str) -> None:
    suffix = ".jpg" if kind in ("rgb", "gray", "cmyk") else ".png"
    path = write_image(tmp_path / f"img{suffix}", PIXELS, kind)
    arr = _rgb(load_rgb(path))
    assert arr.dtype == int and arr.min() >= 0 and arr.max() <= 255


def test_gray_and_cmyk_keep_the_picture(tmp_path: Path) -> None:
    gray = _rgb(load_rgb(write_image(tmp_path / "g.jpg", PIXELS, "gray")))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    cmyk = _rgb(load_rgb(write_image(tmp_path / "c.jpg", PIXELS, "cmyk")))
    assert np.abs(cmyk - PIXELS.astype(int)).mean() < 20  # JPEG is lossy, colours must survive


def test_transparent_pixels_become_white(tmp_path: Path) -> None:
    rgba = _rgb(load_rgb(write_image(tmp_path / "a.png", PIXELS, "rgba")))
    assert (rgba[:8] == 255).all()  # top half was fully transparent
    assert np.abs(rgba[8:] - PIXELS[8:].astype(int)).max() <= 1
    la = _rgb(load_rgb(write_image(tmp_path / "la.png", PIXELS, "la")))
    assert la.min() >= 120  # half-transparent gray over white is light


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    path = write_image(tmp_path / "pt.png", PIXELS, "palette_transparent")
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" in raw.info
        index0 = np.asarray(raw) == 0
    out = _rgb(load_rgb(path))
    assert index0.any() and (out[index0] == 255).all()
    plain = _rgb(load_rgb(write_image(tmp_path / "p.png", PIXELS, "palette")))
    assert np.abs(plain - PIXELS.astype(int)).mean() < 25


def test_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = write_image(tmp_path / "w.png", PIXELS, "i16")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    expected = np.asarray(Image.fromarray(PIXELS).convert("L")).astype(int)
    out = _rgb(load_rgb(path))
    assert np.abs(out[..., 0] - expected).max() <= 1


def test_32_bit_and_float_images() -> None:
    as_int = Image.fromarray(np.arange(320, dtype=np.int32).reshape(16, 20) * 200)
    assert as_int.mode == "I"
    out = np.asarray(to_rgb(as_int))
    assert out.dtype == np.uint8 and out.max() > 200 and out.min() == 0
    as_float = Image.fromarray(np.linspace(0, 1, 320, dtype=np.float32).reshape(16, 20))
    assert as_float.mode == "F"
    out = np.asarray(to_rgb(as_float))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


@pytest.mark.parametrize(
    "array",
    [
        PIXELS[..., 0],
        PIXELS[..., :1],
        PIXELS,
        np.concatenate([PIXELS, np.full((16, 20, 1), 255, np.uint8)], axis=2),
        PIXELS[..., 0].astype(np.uint16) * 257,
        PIXELS[..., 0].astype(np.float32) / 255.0,
        PIXELS[..., 0] > 100,
    ],
    ids=["HxW", "HxWx1", "HxWx3", "HxWx4", "uint16", "float01", "bool"],
)
def test_arrays(array: np.ndarray) -> None:
    out = _rgb(load_rgb(array))
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] >= 3:
        assert (out == PIXELS).all()


def test_bad_array_shape() -> None:
    with pytest.raises(DatasetError, match=r"shape \(2, 3, 5\)"):
        array_to_rgb(np.zeros((2, 3, 5), np.uint8))


@pytest.mark.parametrize("kind", ["corrupt", "truncated"])
def test_broken_files_name_the_path(tmp_path: Path, kind: str) -> None:
    path = write_image(tmp_path / "sub dir" / f"broken_{kind}.jpg", PIXELS, kind)
    with pytest.raises(DatasetError) as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert "skip_bad_images" in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found") as info:
        load_rgb(tmp_path / "nope.jpg")
    assert str(tmp_path / "nope.jpg") in str(info.value)
