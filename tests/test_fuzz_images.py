"""Fuzzing image decoding: whatever bytes a file holds, load_rgb returns an RGB image or raises our
one-line DatasetError, and skip_bad_images drops the file with a warning (issue 10, item 7).

Bounded: a few dozen examples per property, no deadline surprises on a loaded CPU.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from usb_cfsg.datasets.common import check_images
from usb_cfsg.datasets.images import DATASET_FIX, load_rgb
from usb_cfsg.errors import DatasetError

FUZZ = settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
EXTENSIONS = (".jpg", ".png", ".gif", ".bmp", ".tif", ".webp", ".ppm", ".txt", "")
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


def _encoded(fmt: str, size=(9, 7), mode="RGB") -> bytes:
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


VALID = {fmt: _encoded(fmt) for fmt in FORMATS}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def assert_decodes_or_our_error(path) -> None:
    """load_rgb gives an 8-bit RGB image or a one-line DatasetError naming the file, nothing else."""
    try:
        img = load_rgb(path)
    except DatasetError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message and DATASET_FIX in message, message
        assert exc.__suppress_context__  # no chained traceback of PIL's internals
        return
    assert img.mode == "RGB" and img.size[0] >= 1 and img.size[1] >= 1


@FUZZ
@given(fmt=st.sampled_from(FORMATS), cut=st.floats(0.0, 1.0), ext=st.sampled_from(EXTENSIONS))
def test_truncated_files_under_any_extension(tmp_path, fmt, cut, ext):
    data = VALID[fmt]
    path = tmp_path / f"img{ext}"
    path.write_bytes(data[: int(len(data) * cut)])
    assert_decodes_or_our_error(path)


@FUZZ
@given(
    fmt=st.sampled_from(FORMATS),
    ext=st.sampled_from(EXTENSIONS),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_corrupted_bytes_under_any_extension(tmp_path, fmt, ext, flips):
    data = bytearray(VALID[fmt])
    for pos, value in flips:
        data[pos % len(data)] = value
    path = tmp_path / f"img{ext}"
    path.write_bytes(bytes(data))
    assert_decodes_or_our_error(path)


@FUZZ
@given(data=st.binary(max_size=2048), ext=st.sampled_from(EXTENSIONS))
def test_random_bytes(tmp_path, data, ext):
    path = tmp_path / f"random{ext}"
    path.write_bytes(data)
    assert_decodes_or_our_error(path)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 2**31 - 1), height=st.integers(1, 2**31 - 1))
def test_huge_dimensions_never_allocate_or_crash(tmp_path, width, height):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(width, height))
    with pytest.raises(DatasetError) as info:  # no pixel data: too large, or truncated
        load_rgb(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_decompression_bomb_and_zero_byte_messages(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(100_000, 100_000))
    with pytest.raises(DatasetError, match="too large to decode safely"):
        load_rgb(bomb)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="not an image PIL can read"):
        load_rgb(empty)
    png_as_jpg = tmp_path / "really_a_png.jpg"  # wrong extension, valid content: decoded by content
    png_as_jpg.write_bytes(VALID["PNG"])
    assert load_rgb(png_as_jpg).size == (9, 7)
    with pytest.raises(DatasetError, match="not an image file but a folder"):
        load_rgb(tmp_path)
    with pytest.raises(DatasetError, match="predict.py skipped it"):
        load_rgb(empty, fix="predict.py skipped it")


@settings(max_examples=15, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bad=st.lists(
        st.one_of(st.binary(max_size=64), st.sampled_from([b"", _png_header_only(10**5, 10**5)])),
        min_size=1,
        max_size=4,
    )
)
def test_skip_bad_images_drops_what_cannot_be_decoded(tmp_path_factory, caplog, bad):
    folder = tmp_path_factory.mktemp("imgs")
    good = folder / "good.png"
    good.write_bytes(VALID["PNG"])
    items = [str(good)]
    for i, data in enumerate(bad):
        (folder / f"bad{i}.jpg").write_bytes(data)
        items.append(str(folder / f"bad{i}.jpg"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="usb_cfsg"):
        kept, targets = check_images("fuzz", "train", items, list(range(len(items))), skip_bad_images=True)
    assert kept[0] == str(good) and targets[0] == 0
    dropped = set(items) - set(kept)
    assert len(kept) + len(dropped) == len(items)
    for path in dropped:
        assert "skipping unreadable image: " in caplog.text and path in caplog.text
