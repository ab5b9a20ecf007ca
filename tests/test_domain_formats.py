"""Domain imagery files (issue 19): every band and bit of 16-bit PNG, multi-band TIFF, .npy and DICOM,
the run's channel count from the headers, lossless conversion or a reason. Expected values are the
arrays the test wrote, never the decoder's own output."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from byol_wrap.job.data.channels import (
    ChannelStatistics,
    PixelFormat,
    choose_format,
    conform,
    parse_channels,
    to_device_float,
)
from byol_wrap.job.data.formats import ImageFormatError, ImageInfo, decode_image, inspect_image

tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")


def _bands(seed: int = 0, shape=(4, 12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, size=shape, dtype=np.uint16)


def _png_with_sbit(path: Path, array: np.ndarray, bits: int) -> None:
    """A 16-bit grey PNG with an sBIT chunk declaring ``bits`` significant bits (inserted by hand)."""
    import struct
    import zlib

    Image.fromarray(array).save(path)
    data = path.read_bytes()
    body = bytes([bits])
    chunk = struct.pack(">I", len(body)) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    end_of_ihdr = 8 + 8 + 13 + 4
    path.write_bytes(data[:end_of_ihdr] + chunk + data[end_of_ihdr:])


def test_16_bit_png_keeps_every_value(tmp_path):
    values = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 34) % 4096  # 12-bit data stored in 16 bits
    values[0, 0] = 4095
    Image.fromarray(values).save(tmp_path / "a.png")
    info, decoded = inspect_image(str(tmp_path / "a.png")), decode_image(str(tmp_path / "a.png"))
    assert (info.channels, info.dtype, info.scale) == (1, "uint16", 65535.0)
    np.testing.assert_array_equal(decoded.pixels[0], values)
    fmt, _ = choose_format([("a.png", info)])
    batch = torch.from_numpy(conform(decoded, fmt).copy())[None]
    # the brightest pixel is 4095 / 65535 of full intensity (not 16/255 after an 8-bit conversion)
    assert float(to_device_float(batch, fmt).max()) == pytest.approx(4095 / 65535, rel=1e-7)


def test_png_declaring_12_significant_bits_maps_4095_to_full_intensity(tmp_path):
    values = np.array([[0, 1000], [2048, 4095]], dtype=np.uint16)
    _png_with_sbit(tmp_path / "b.png", values, 12)
    info = inspect_image(str(tmp_path / "b.png"))
    assert info.scale == 4095.0, info
    fmt, _ = choose_format([("b.png", info)])
    x = to_device_float(torch.from_numpy(conform(decode_image(str(tmp_path / "b.png")), fmt).copy())[None], fmt)
    np.testing.assert_allclose(x[0, 0].numpy(), values / 4095.0, rtol=1e-6)


@pytest.mark.parametrize("layout", ["pages", "planar", "contig"])
def test_four_band_16_bit_tiff_gives_all_bands_unchanged(tmp_path, layout):
    bands = _bands()
    path = tmp_path / f"{layout}.tif"
    if layout == "pages":
        with tifffile.TiffWriter(path) as writer:
            for band in bands:
                writer.write(band, photometric="minisblack", contiguous=False)
    elif layout == "planar":
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
    else:
        tifffile.imwrite(path, bands.transpose(1, 2, 0), photometric="minisblack", planarconfig="contig")
    info = inspect_image(str(path))
    assert (info.channels, info.alpha, info.dtype) == (4, False, "uint16"), info
    decoded = decode_image(str(path))
    np.testing.assert_array_equal(decoded.pixels, bands)
    fmt, _ = choose_format([(str(path), info)])
    np.testing.assert_array_equal(conform(decoded, fmt), bands)


def test_tiff_extra_band_is_alpha_only_when_declared_in_an_8_bit_file(tmp_path):
    rgbx = (_bands(1, (10, 8, 4)) // 257).astype(np.uint8)
    tifffile.imwrite(tmp_path / "x.tif", rgbx, photometric="rgb", extrasamples=["unspecified"])
    info = inspect_image(str(tmp_path / "x.tif"))
    assert (info.channels, info.alpha) == (4, False)
    tifffile.imwrite(tmp_path / "a.tif", rgbx, photometric="rgb", extrasamples=["unassalpha"])
    info = inspect_image(str(tmp_path / "a.tif"))
    assert (info.channels, info.alpha) == (3, True)
    # composited onto white: colour * a + full * (1 - a), a = alpha / 255
    a = rgbx[..., 3:].astype(np.float64) / 255
    expected = np.rint(rgbx[..., :3] * a + 255 * (1 - a)).transpose(2, 0, 1)
    np.testing.assert_array_equal(decode_image(str(tmp_path / "a.tif")).pixels, expected.astype(np.uint8))


@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_16_bit_tiff_keeps_every_band_even_where_the_writer_tagged_one_as_alpha(tmp_path, layout):
    """tifffile's defaults tag the fourth sample of a 4-band array as alpha: a fourth stain is still data."""
    bands = _bands(2, (4, 10, 8))  # (C, H, W)
    path = tmp_path / "stain4.tif"
    tifffile.imwrite(path, bands.transpose(1, 2, 0) if layout == "hwc" else bands)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].extrasamples  # the writer did declare an alpha band
    assert inspect_image(str(path)).channels == 4
    np.testing.assert_array_equal(decode_image(str(path)).pixels, bands)


def test_rgba_png_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = [[255, 0], [51, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    info = inspect_image(str(tmp_path / "a.png"))
    assert (info.channels, info.alpha) == (3, True)
    pixels = decode_image(str(tmp_path / "a.png")).pixels
    assert pixels[:, 0, 1].tolist() == [255, 255, 255]          # fully transparent -> white
    assert pixels[:, 0, 0].tolist() == [200, 0, 0]              # opaque -> its colour
    assert pixels[0, 1, 0] == round(200 * 0.2 + 255 * 0.8)       # 20 % opaque


def test_npy_and_float_tiff_keep_float_values(tmp_path):
    data = np.random.default_rng(2).normal(0, 300, size=(13, 20, 24)).astype(np.float32)
    np.save(tmp_path / "s.npy", data)
    np.save(tmp_path / "hwc.npy", data.transpose(1, 2, 0))
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="minisblack", planarconfig="separate")
    for name in ("s.npy", "hwc.npy", "f.tif"):
        info = inspect_image(str(tmp_path / name))
        assert (info.channels, info.dtype, info.scale) == (13, "float32", 1.0), (name, info)
        np.testing.assert_array_equal(decode_image(str(tmp_path / name)).pixels, data)


def test_npy_with_objects_is_refused_without_pickle(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ImageFormatError, match="pickle|objects"):
        inspect_image(str(tmp_path / "o.npy"))
    with pytest.raises(ImageFormatError, match="pickle|objects"):
        decode_image(str(tmp_path / "o.npy"))


def test_corrupt_tiff_gives_a_reason(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", _bands(), photometric="minisblack", planarconfig="separate")
    data = (tmp_path / "c.tif").read_bytes()
    (tmp_path / "c.tif").write_bytes(data[: len(data) // 3])
    (tmp_path / "h.tif").write_bytes(b"II*\x00garbage")
    for name in ("c.tif", "h.tif"):
        with pytest.raises(ImageFormatError) as caught:
            decode_image(str(tmp_path / name))
        assert str(caught.value)


def _info(channels: int, dtype: str = "uint8", scale: float = 255.0, alpha: bool = False) -> ImageInfo:
    return ImageInfo(channels, alpha, dtype, scale, "test")


@pytest.mark.parametrize("files,expected", [
    ([3] * 95 + [1] * 5, 3),       # colour photos with a few grey ones stay RGB
    ([3] * 60 + [1] * 40, 3),      # grey and colour without a majority: grey into RGB loses nothing
    ([1] * 100, 1),                # a grey folder: a 1-channel run
    ([4] * 100, 4),                # 4-band TIFFs: a 4-channel run
    ([13] * 95 + [3] * 5, 13),     # a clear majority wins; the rest are skipped
])
def test_auto_channel_detection(files, expected):
    fmt, message = choose_format([(f"f{i}", _info(c)) for i, c in enumerate(files)])
    assert fmt.channels == expected, message


def test_mixed_channel_counts_without_majority_are_an_error_saying_what_to_pass():
    infos = [(f"f{i}.tif", _info(4)) for i in range(50)] + [(f"g{i}.png", _info(1)) for i in range(50)]
    with pytest.raises(ValueError, match=r"--channels N") as caught:
        choose_format(infos)
    assert "50 with 4 channels" in str(caught.value) and "50 with 1 channel" in str(caught.value)
    assert choose_format(infos, "4")[0].channels == 4


def test_sample_type_is_the_narrowest_lossless_one():
    u8, u16 = _info(1), _info(1, "uint16", 65535.0)
    assert choose_format([("a", u8), ("b", u8)])[0] == PixelFormat(1, "uint8", 255.0)
    assert choose_format([("a", u8), ("b", u16)])[0] == PixelFormat(1, "uint16", 65535.0)
    assert choose_format([("a", u16), ("b", _info(1, "uint16", 4095.0))])[0] == PixelFormat(1, "float32", 1.0)


def test_conform_converts_losslessly_or_says_why():
    from byol_wrap.job.data.formats import DecodedImage

    grey8 = DecodedImage(np.array([[[0, 1, 255]]], np.uint8), 255.0, "PNG L")
    run16 = PixelFormat(1, "uint16", 65535.0)
    assert conform(grey8, run16).tolist() == [[[0, 257, 65535]]]
    equal_rgb = DecodedImage(np.repeat(np.array([[[5, 6]]], np.uint8), 3, axis=0), 255.0, "JPEG RGB")
    assert conform(equal_rgb, PixelFormat(1, "uint8", 255.0)).tolist() == [[[5, 6]]]
    colour = DecodedImage(np.array([[[5]], [[6]], [[7]]], np.uint8), 255.0, "JPEG RGB")
    with pytest.raises(ImageFormatError, match="--channels 3"):
        conform(colour, PixelFormat(1, "uint8", 255.0))
    eight = DecodedImage(np.zeros((8, 2, 2), np.uint16), 65535.0, "TIFF 8 bands")
    with pytest.raises(ImageFormatError, match=r"8 channels .* in a 3-channel run .*--channels 8"):
        conform(eight, PixelFormat(3, "uint8", 255.0))
    sixteen = DecodedImage(np.zeros((1, 2, 2), np.uint16), 65535.0, "PNG I;16")
    with pytest.raises(ImageFormatError, match="lose bits"):
        conform(sixteen, PixelFormat(1, "uint8", 255.0))


def test_parse_channels():
    assert parse_channels("auto") is None and parse_channels(" 13 ") == 13
    for bad in ("0", "x", -1, True):
        with pytest.raises(ValueError, match="--channels"):
            parse_channels(bad)


def test_channel_statistics_match_numpy():
    x = torch.from_numpy(np.random.default_rng(3).normal(2.0, 3.0, size=(5, 4, 6, 7)))
    stats = ChannelStatistics(4)
    stats.add(x[:2])
    stats.add(x[2:])
    arr = x.numpy()
    np.testing.assert_allclose(stats.mean(), arr.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(stats.std(), arr.std(axis=(0, 2, 3)), rtol=1e-8)


def test_dicom_rescale_slope_and_intercept(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    stored = np.array([[0, 100], [2000, 4095]], dtype=np.uint16)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(tmp_path / "ct.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 2, 2, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
    ds.PixelData = stored.tobytes()
    ds.save_as(str(tmp_path / "ct.dcm"), enforce_file_format=True)
    info = inspect_image(str(tmp_path / "ct.dcm"))
    assert (info.channels, info.dtype) == (1, "float32")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "ct.dcm")).pixels[0], stored * 2.0 - 1024)
    assert pydicom is not None


def test_lzw_tiff_keeps_16_bits(tmp_path):
    # decoded by tifffile with imagecodecs, or by Pillow where imagecodecs is missing
    values = np.random.default_rng(4).integers(0, 65536, size=(9, 7), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "l.tif", compression="tiff_lzw")
    decoded = decode_image(str(tmp_path / "l.tif"))
    assert decoded.pixels.dtype == np.uint16
    np.testing.assert_array_equal(decoded.pixels[0], values)
