"""Held-out checks of issue 19's reading rules: files the other domain tests did not make (empty arrays,
TIFF pages without pixels) are skipped with a reason that says what is wrong, never a crash or a silent
loss of channels."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from byol_wrap.job.data.channels import PixelFormat
from byol_wrap.job.data.datasets import ImageFiles
from byol_wrap.job.data.formats import ImageFormatError, decode_image, inspect_image

tifffile = pytest.importorskip("tifffile")

GREY16 = PixelFormat(1, "uint16", 65535.0)


@pytest.mark.parametrize("shape", [(0, 40), (3, 0, 40), (40, 0, 2)])
def test_npy_without_pixels_is_skipped_with_the_reason(tmp_path, shape):
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros(shape, np.uint16))
    for read in (inspect_image, decode_image):
        with pytest.raises(ImageFormatError, match="no pixels"):
            read(str(path))
    image, index, reason = ImageFiles([path], 8, fmt=GREY16)[0]  # was a ZeroDivisionError in the resize
    assert image is None and index == 0 and "no pixels" in reason


def _write_with_empty_page(path, pages: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile: "writing zero-size array to nonconformant TIFF"
        with tifffile.TiffWriter(path) as tif:
            for page in pages:
                tif.write(page, photometric="minisblack")
            tif.write(np.zeros((0, pages.shape[-1]), np.uint16), photometric="minisblack")


def test_tiff_with_a_zero_size_page_is_skipped_with_the_reason(tmp_path):
    lone = tmp_path / "zero.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tifffile.imwrite(lone, np.zeros((0, 12), np.uint16))
    stack = tmp_path / "stack.tif"  # three 16-bit bands and an empty fourth page: was read as 1 channel
    _write_with_empty_page(stack, np.arange(3 * 6 * 5, dtype=np.uint16).reshape(3, 6, 5))
    for path in (lone, stack):
        for read in (inspect_image, decode_image):
            with pytest.raises(ImageFormatError, match="zero size"):
                read(str(path))
    image, _, reason = ImageFiles([stack], 8, fmt=PixelFormat(3, "uint16", 65535.0))[0]
    assert image is None and "zero size" in reason


def test_tiff_stack_without_empty_pages_keeps_every_page(tmp_path):
    bands = np.random.default_rng(0).integers(0, 65536, (3, 6, 5), dtype=np.uint16)
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tif:
        for page in bands:
            tif.write(page, photometric="minisblack")
    assert inspect_image(str(path)).channels == 3
    np.testing.assert_array_equal(decode_image(str(path)).pixels, bands)


@pytest.mark.parametrize("photometric, bright", [("minisblack", True), ("miniswhite", False)])
def test_bilevel_tiff_is_bright_where_the_file_says_white(tmp_path, photometric, bright):
    bits = np.zeros((4, 9), bool)
    bits[1, 2] = bits[3, 8] = True  # set bits: black in MINISWHITE (scans, faxes), white in MINISBLACK
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, bits, photometric=photometric)
    decoded = decode_image(str(path))
    expected = np.where(bits == bright, 255, 0).astype(np.uint8)[None]
    assert decoded.scale == 255.0
    np.testing.assert_array_equal(decoded.pixels, expected)


def test_skip_reason_of_an_eight_band_tiff_in_an_rgb_run_describes_the_file(tmp_path):
    from byol_wrap.job.data.channels import RGB8, conform

    path = tmp_path / "scan_017.tif"
    tifffile.imwrite(path, np.zeros((6, 5, 8), np.uint16), photometric="minisblack", planarconfig="contig")
    with pytest.raises(ImageFormatError) as error:
        conform(decode_image(str(path)), RGB8)
    # the example in docs/domain-imagery-command.md
    assert str(error.value) == ("8 channels (TIFF MINISBLACK uint16, 8 bands) in a 3-channel run "
                                "(pass --channels 8 for a run of such files)")


@pytest.mark.parametrize("suffix", [".tif", ".npy"])
def test_float_file_with_nan_or_inf_is_skipped_with_the_reason(tmp_path, suffix):
    bands = np.full((3, 8, 8), 0.25, np.float32)
    bands[1, 4, 4] = np.nan  # nodata in the middle: it would reach the network after any crop
    bands[2, 0, 0] = np.inf
    path = tmp_path / f"scene{suffix}"
    if suffix == ".npy":
        np.save(path, bands)
    else:
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
    assert inspect_image(str(path)).channels == 3  # the header is fine; the pixels are not
    image, _, reason = ImageFiles([path], 8, fmt=PixelFormat(3, "float32", 1.0))[0]
    assert image is None and reason.startswith("2 of 192 samples are NaN or infinite")
    finite = tmp_path / f"filled{suffix}"
    bands = np.nan_to_num(bands, nan=0.0, posinf=1.0)
    np.save(finite, bands) if suffix == ".npy" else tifffile.imwrite(
        finite, bands, photometric="minisblack", planarconfig="separate")
    np.testing.assert_array_equal(decode_image(str(finite)).pixels, bands)


def test_statistics_error_names_an_example_file_and_its_reason(tmp_path):
    from byol_wrap.job.data.channels import dataset_statistics

    bands = np.full((2, 6, 6), np.nan, np.float32)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"nodata{i}.npy")
        np.save(paths[-1], bands)
    fmt = PixelFormat(2, "float32", 1.0)
    with pytest.raises(ValueError, match=r"could be decoded, e.g. .*nodata0\.npy: 72 of 72 samples are NaN"):
        dataset_statistics(ImageFiles(paths, 6, fmt=fmt), fmt, workers=0)
