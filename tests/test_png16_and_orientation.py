"""16-bit colour PNG keeps every bit (issue 19) and TIFF's orientation tag turns the pixels as Pillow turns
photos with the same EXIF orientation.

The PNG files are written by a minimal encoder here (zlib, filter 0, the chunks by the PNG specification), not
by the library that decodes them; Pillow's ``exif_transpose`` of 8-bit PNGs is the reference for orientation.
"""
from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image, ImageOps

from byol_wrap.job.data.channels import detect_format
from byol_wrap.job.data.formats import decode_image, inspect_image

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("imagecodecs")

COLOUR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> PNG colour type


def _chunk(name: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + name + body + struct.pack(">I", zlib.crc32(name + body) & 0xFFFFFFFF)


def write_png16(path: Path, samples: np.ndarray, significant: Optional[int] = None,
                orientation: Optional[int] = None) -> None:
    """``samples`` (H, W, S) uint16 as a 16-bit PNG, big-endian rows with filter type 0."""
    h, w, s = samples.shape
    rows = samples.astype(">u2").reshape(h, w * s).view(np.uint8).reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, COLOUR_TYPE[s], 0, 0, 0))]
    if significant is not None:
        chunks.append(_chunk(b"sBIT", bytes([significant] * s)))
    if orientation is not None:
        exif = Image.Exif()
        exif[274] = orientation
        body = exif.tobytes()
        chunks.append(_chunk(b"eXIf", body[6:] if body.startswith(b"Exif\x00\x00") else body))
    chunks += [_chunk(b"IDAT", zlib.compress(raw)), _chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks))


def _random(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, size=shape, dtype=np.uint16)


def test_16_bit_rgb_png_keeps_every_bit(tmp_path):
    values = _random((6, 9, 3))
    write_png16(tmp_path / "c.png", values)
    info = inspect_image(str(tmp_path / "c.png"))
    assert (info.channels, info.alpha, info.dtype, info.scale) == (3, False, "uint16", 65535.0), info
    decoded = decode_image(str(tmp_path / "c.png"))
    assert decoded.pixels.dtype == np.uint16 and decoded.scale == 65535.0
    np.testing.assert_array_equal(decoded.pixels, values.transpose(2, 0, 1))
    assert len(np.unique(decoded.pixels & 0xFF)) > 100  # the low byte is there, not zeros


@pytest.mark.parametrize("samples", [2, 4])
def test_16_bit_png_alpha_is_composited_onto_white_at_16_bits(tmp_path, samples):
    values = _random((5, 7, samples), seed=samples)
    write_png16(tmp_path / "a.png", values)
    info = inspect_image(str(tmp_path / "a.png"))
    assert (info.channels, info.alpha, info.dtype) == (samples - 1, True, "uint16"), info
    alpha = values[..., -1:].astype(np.float64) / 65535
    expected = np.rint(values[..., :-1] * alpha + 65535 * (1 - alpha)).astype(np.uint16).transpose(2, 0, 1)
    got = decode_image(str(tmp_path / "a.png")).pixels
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, expected)


def test_16_bit_rgb_png_declaring_12_significant_bits(tmp_path):
    values = _random((4, 4, 3)) % 4096
    write_png16(tmp_path / "s.png", values, significant=12)
    decoded = decode_image(str(tmp_path / "s.png"))
    assert decoded.scale == 4095.0 and inspect_image(str(tmp_path / "s.png")).scale == 4095.0
    np.testing.assert_array_equal(decoded.pixels, values.transpose(2, 0, 1))


def test_16_bit_rgb_png_exif_orientation_turns_like_pillow(tmp_path):
    values = (_random((4, 6, 3)) // 257 * 257).astype(np.uint16)  # 8-bit values, so Pillow can be the reference
    write_png16(tmp_path / "r.png", values, orientation=6)
    eight = Image.fromarray((values // 257).astype(np.uint8), "RGB")
    exif = eight.getexif()
    exif[274] = 6
    eight.save(tmp_path / "r8.png", exif=exif)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "r8.png"))).astype(np.uint16) * 257
    got = decode_image(str(tmp_path / "r.png")).pixels
    assert got.shape == (3, 6, 4), got.shape
    np.testing.assert_array_equal(got, reference.transpose(2, 0, 1))


def test_a_folder_of_16_bit_colour_pngs_is_a_16_bit_rgb_run(tmp_path):
    for i in range(4):
        write_png16(tmp_path / f"{i}.png", _random((8, 8, 3), seed=i))
    fmt, message = detect_format([str(p) for p in sorted(tmp_path.glob("*.png"))])
    assert (fmt.channels, fmt.dtype, fmt.scale) == (3, "uint16", 65535.0), (fmt, message)


def test_without_imagecodecs_a_16_bit_colour_png_is_an_error_naming_it(tmp_path, monkeypatch):
    write_png16(tmp_path / "c.png", _random((4, 4, 3)))
    monkeypatch.setitem(sys.modules, "imagecodecs", None)
    with pytest.raises(ImportError, match="imagecodecs"):
        decode_image(str(tmp_path / "c.png"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_tag_turns_every_band_like_pillow_turns_exif(tmp_path, orientation):
    bands = _random((3, 4, 6), seed=orientation)
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate",
                     extratags=[(274, "H", 1, orientation, True)])
    reference = []
    for band in bands:
        image = Image.fromarray(band)
        exif = image.getexif()
        exif[274] = orientation
        image.save(tmp_path / "band.png", exif=exif)
        reference.append(np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "band.png"))))
    got = decode_image(str(path)).pixels
    expected = np.stack(reference)
    assert got.shape == expected.shape, (orientation, got.shape, expected.shape)
    np.testing.assert_array_equal(got, expected)
