"""Image files as their pixels: every channel and every bit, with what the header says about them.

Two calls per file format: :func:`inspect_image` reads only the header (channel count, declared
transparency, sample type, the value that means full intensity), :func:`decode_image` the
pixels, as a ``(C, H, W)`` numpy array in the file's own sample type. Colour photos (JPEG, PNG,
BMP, WebP) are read by Pillow, 16-bit colour PNG by ``imagecodecs`` (:mod:`.png16`); TIFF by
``tifffile`` (all bands: samples of a page, contiguous or planar, or the pages of a ``(C, H, W)``
stack; :mod:`.tiff`); ``.npy`` by numpy (``allow_pickle=False``); DICOM by ``pydicom`` (the
``[dicom]`` extra).

What each file becomes (docs/domain-imagery-command.md has the full table):

=============================  =========================================================
8-bit grey / RGB / palette     uint8, 1 or 3 channels, full intensity 255
16-bit PNG or TIFF             uint16, 1 or 3 channels, 65535 (or ``2**bits - 1`` when the file
                               declares fewer significant bits: PNG ``sBIT``, TIFF
                               ``BitsPerSample`` 9-15, DICOM ``BitsStored``)
multi-band TIFF                all bands as channels (uint8 / uint16 / float32)
float TIFF, float ``.npy``     float32, values as stored (full intensity 1.0)
RGBA, grey + alpha             alpha composited onto white, then 3 or 1 channels (only
                               where the file declares the band as alpha)
DICOM                          float32 after ``RescaleSlope``/``RescaleIntercept``, one
                               frame per file
=============================  =========================================================

Example:
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/bands.npy"
    >>> np.save(path, np.zeros((4, 8, 8), np.uint16))
    >>> info = inspect_image(path)
    >>> info.channels, info.dtype, info.scale
    (4, 'uint16', 65535.0)
    >>> decode_image(path).pixels.shape
    (4, 8, 8)
"""
from __future__ import annotations

import importlib
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

DICOM_EXTRA = 'pip install "byol-wrap[dicom]"'
TRAIN_EXTRA = 'pip install "byol-wrap[train]"'
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TIFF_EXTENSIONS = (".tif", ".tiff")
ARRAY_EXTENSIONS = (".npy",)
DICOM_EXTENSIONS = (".dcm", ".dicom")
#: every extension the job reads (folders are searched for these)
ALL_EXTENSIONS = PHOTO_EXTENSIONS + TIFF_EXTENSIONS + ARRAY_EXTENSIONS + DICOM_EXTENSIONS
DTYPES = ("uint8", "uint16", "float32")
WHITE = {"uint8": 255.0}

__all__ = ["ImageInfo", "DecodedImage", "ImageFormatError", "inspect_image", "decode_image", "ALL_EXTENSIONS",
           "PHOTO_EXTENSIONS", "TIFF_EXTENSIONS", "ARRAY_EXTENSIONS", "DICOM_EXTENSIONS", "DTYPES"]


class ImageFormatError(ValueError):
    """A file that cannot be read as an image (``str(error)`` is the reason for ``skipped.txt``)."""


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says: ``channels`` (alpha not counted), ``alpha`` (a band the file
    declares as transparency), ``dtype`` (``uint8``, ``uint16`` or ``float32``), ``scale``
    (the value of full intensity), ``kind`` (a short description for messages)."""

    channels: int
    alpha: bool
    dtype: str
    scale: float
    kind: str


@dataclass
class DecodedImage:
    """Pixels ``(C, H, W)`` (alpha already composited onto white), their ``scale`` and ``kind``;
    ``photo`` is the Pillow image for 8-bit grey/RGB files (the fast resize path), else None."""

    pixels: np.ndarray
    scale: float
    kind: str
    photo: Any = None


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


# ----------------------------------------------------------------------------- Pillow formats
def _pil_info(path: str) -> ImageInfo:
    from PIL import Image

    from .png16 import png16_info, png_header  # png16 imports this module

    with Image.open(path) as image:
        mode, fmt = image.mode, image.format or "image"
        transparency = "transparency" in image.info
    kind = f"{fmt} {mode}"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        scale = 65535.0
        if fmt == "PNG":
            depth, _, significant = png_header(path)
            if significant and 8 < significant < 16:
                scale = float(2 ** significant - 1)
                kind += f" ({significant} significant bits)"
        return ImageInfo(1, False, "uint16", scale, kind)
    if mode == "F":
        return ImageInfo(1, False, "float32", 1.0, kind)
    if mode in ("1", "L"):
        return ImageInfo(1, False, "uint8", 255.0, kind)
    if fmt == "PNG" and mode in ("RGB", "RGBA", "LA"):
        depth, colour, significant = png_header(path)
        if depth == 16:  # Pillow would keep 8 of the 16 bits
            return png16_info(path, colour, significant)
    if mode in ("LA", "La"):
        return ImageInfo(1, True, "uint8", 255.0, kind)
    alpha = mode in ("RGBA", "RGBa", "PA") or (mode == "P" and transparency)
    return ImageInfo(3, alpha, "uint8", 255.0, kind)


def _pil_decode(path: str, draft_size: Optional[Tuple[int, int]]) -> DecodedImage:
    from PIL import Image, ImageOps

    from .png16 import png16_decode, png_header

    with Image.open(path) as opened:
        image: Any = opened
        if image.format == "PNG" and image.mode in ("RGB", "RGBA", "LA"):
            depth, colour, significant = png_header(path)
            if depth == 16:
                return png16_decode(path, colour, significant)
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB" if image.mode != "L" else "L", (draft_size[1], draft_size[0]))
        image.load()
        if "exif" in image.info or image.format == "TIFF":  # exif_transpose copies even with no EXIF
            image = ImageOps.exif_transpose(image)
        fmt = image.format or "image"
        mode = image.mode
        kind = f"{fmt} {mode}"
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
            arr = np.asarray(image)
            if arr.dtype != np.uint16:
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise ImageFormatError(f"{kind}: 32-bit integer values outside 0..65535; store them as "
                                           f"float TIFF or .npy")
                arr = arr.astype(np.uint16)
            return DecodedImage(np.ascontiguousarray(arr)[None], _pil_info(path).scale, kind)
        if mode == "F":
            return DecodedImage(np.asarray(image, dtype=np.float32)[None].copy(), 1.0, kind)
        if mode in ("1", "L"):
            grey = image.convert("L") if mode == "1" else image
            return DecodedImage(np.asarray(grey)[None], 255.0, kind, photo=grey)
        if mode in ("LA", "La"):
            rgba = image.convert("RGBA")
            grey = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("L")
            return DecodedImage(np.asarray(grey)[None], 255.0, kind, photo=grey)
        if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        else:
            rgb = image if mode == "RGB" else image.convert("RGB")
        return DecodedImage(np.asarray(rgb).transpose(2, 0, 1), 255.0, kind, photo=rgb)


# ----------------------------------------------------------------------------- sample types
def _dtype_of(dtype: np.dtype) -> Tuple[str, float]:
    """The job's sample type for a numpy dtype, and its full intensity."""
    if dtype == np.uint8 or dtype == np.bool_:
        return "uint8", 255.0
    if dtype in (np.uint16, np.int8, np.int16):
        return ("uint16", 65535.0) if dtype == np.uint16 else ("float32", 1.0)
    if dtype.kind in "fiu":
        return "float32", 1.0
    raise ImageFormatError(f"samples of type {dtype} are not image data")


def _as_job_dtype(data: np.ndarray) -> np.ndarray:
    dtype, _ = _dtype_of(data.dtype)
    if data.dtype == np.bool_:
        return data.astype(np.uint8) * 255
    out = data if data.dtype == np.dtype(dtype) else data.astype(np.float32)
    if out.dtype.kind == "f" and not np.isfinite(out).all():  # a network cannot train on NaN or inf
        raise ImageFormatError(f"{np.count_nonzero(~np.isfinite(out))} of {out.size} samples are NaN or infinite "
                               f"(nodata?): fill them (e.g. numpy.nan_to_num) or leave the file out")
    return out


def _composite(colour: np.ndarray, alpha: np.ndarray, scale: float, alpha_scale: float = 0.0) -> np.ndarray:
    """Colour bands over a white (``scale``) background, the photo rule for transparency, in the same sample
    type; alpha's full opacity is ``alpha_scale`` (``scale`` when 0)."""
    a = np.clip(alpha.astype(np.float64) / (alpha_scale or scale), 0, 1)
    out = colour.astype(np.float64) * a + scale * (1 - a)
    if colour.dtype.kind == "f":
        return out.astype(np.float32)
    return np.clip(np.rint(out), 0, np.iinfo(colour.dtype).max).astype(colour.dtype)


# ----------------------------------------------------------------------------- .npy
def _npy_header(path: str) -> Tuple[Tuple[int, ...], np.dtype, bool]:
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
    return tuple(shape), np.dtype(dtype), bool(fortran)


def _npy_channel_axis(shape: Tuple[int, ...]) -> Optional[int]:
    """(H, W): None; (C, H, W) or (H, W, C): the smaller of the first and last axes (first when equal)."""
    if len(shape) not in (2, 3):
        raise ImageFormatError(f".npy of shape {shape}: one image per file, (H, W), (C, H, W) or (H, W, C)")
    if 0 in shape:
        raise ImageFormatError(f".npy of shape {shape} has no pixels (an axis of length 0)")
    if len(shape) == 2:
        return None
    return 0 if shape[0] <= shape[2] else 2


def _npy_info(path: str) -> ImageInfo:
    shape, dtype, _ = _npy_header(path)
    if dtype.hasobject:
        raise ImageFormatError(".npy holds Python objects (read without pickle): store a numeric array")
    job_dtype, scale = _dtype_of(dtype)
    axis = _npy_channel_axis(shape)
    channels = 1 if axis is None else int(shape[axis])
    return ImageInfo(channels, False, job_dtype, scale, f".npy {dtype} {shape}")


def _npy_decode(path: str) -> DecodedImage:
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ImageFormatError(f".npy cannot be read without pickle: {error}") from error
    if not isinstance(data, np.ndarray):
        raise ImageFormatError("not a .npy array")
    axis = _npy_channel_axis(data.shape)
    if axis is None:
        data = data[None]
    elif axis == 2:
        data = data.transpose(2, 0, 1)
    _, scale = _dtype_of(data.dtype)
    return DecodedImage(np.ascontiguousarray(_as_job_dtype(data)), scale, f".npy {data.dtype}")


# ----------------------------------------------------------------------------- DICOM
def import_reader(module: str, files: str, extra: str) -> Any:
    """The library that reads ``files``, or an ImportError naming it and the extra that brings it.

    Example:
        >>> import_reader("numpy", ".npy files", TRAIN_EXTRA).__name__
        'numpy'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"reading {files} needs {module}: {extra}") from error


def _import_pydicom() -> Any:
    return import_reader("pydicom", "DICOM files", DICOM_EXTRA)


def _dicom_info(path: str) -> ImageInfo:
    pydicom = _import_pydicom()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageFormatError(f"multi-frame DICOM ({frames} frames): one frame per file is read; split it "
                               f"into single-frame files")
    samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    return ImageInfo(samples, False, "float32", 1.0,
                     f"DICOM {getattr(ds, 'PhotometricInterpretation', '?')} {bits}-bit")


def _dicom_decode(path: str) -> DecodedImage:
    pydicom = _import_pydicom()
    info = _dicom_info(path)
    ds = pydicom.dcmread(path)
    try:
        data = np.asarray(ds.pixel_array)
    except Exception as error:  # noqa: BLE001 - compressed transfer syntaxes need extra decoders
        raise ImageFormatError(f"DICOM pixel data cannot be decoded here: {error}") from error
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    values = data.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    if str(getattr(ds, "PhotometricInterpretation", "")) == "MONOCHROME1":
        bits = int(getattr(ds, "BitsStored", 16) or 16)
        signed = int(getattr(ds, "PixelRepresentation", 0) or 0) == 1
        lo = -(2 ** (bits - 1)) if signed else 0
        hi = 2 ** (bits - 1) - 1 if signed else 2 ** bits - 1
        # the display range reversed: larger means brighter, as in MONOCHROME2
        values = (np.float32(lo + hi) * np.float32(slope) + 2 * np.float32(intercept)) - values
    if values.ndim == 2:
        values = values[None]
    elif values.ndim == 3:
        values = values.transpose(2, 0, 1)  # (H, W, samples)
    return DecodedImage(np.ascontiguousarray(values, dtype=np.float32), 1.0, info.kind)


# ----------------------------------------------------------------------------- dispatch
def _guard(path: str, read: Any, *args: Any) -> Any:
    try:
        if os.path.getsize(path) == 0:
            raise ImageFormatError("empty file (0 bytes)")
        return read(path, *args)
    except (ImageFormatError, ImportError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 - damaged files raise anything
        name = type(error).__name__
        if name == "UnidentifiedImageError":
            raise ImageFormatError("UnidentifiedImageError: not an image Pillow can read (wrong extension, or a "
                                   "damaged header)") from error
        if name == "DecompressionBombError":
            raise ImageFormatError(f"decompression bomb over Pillow's limit: {error}") from error
        if isinstance(error, (zlib.error, EOFError, struct.error)) or name in ("TiffFileError", "InvalidDicomError"):
            text = str(error).strip().splitlines()
            raise ImageFormatError(f"{name}: {text[0] if text else 'damaged file'}") from error
        text = str(error).strip().splitlines()
        raise ImageFormatError(f"{name}: {text[0]}" if text else name) from error


def _readers(path: str) -> Tuple[Callable[..., ImageInfo], Callable[..., DecodedImage]]:
    """The header and pixel readers of a file's format, chosen by its extension (Pillow for the rest)."""
    ext = _extension(path)
    if ext in TIFF_EXTENSIONS:
        from .tiff import tiff_decode, tiff_info  # tiff imports this module

        return tiff_info, tiff_decode
    if ext in ARRAY_EXTENSIONS:
        return _npy_info, _npy_decode
    if ext in DICOM_EXTENSIONS:
        return _dicom_info, _dicom_decode
    return _pil_info, _pil_decode


def inspect_image(path: str) -> ImageInfo:
    """The header of an image file (no pixels decoded).

    Raises:
        ImageFormatError: a file that is not a readable image of a known format (the reason).
        ImportError: a DICOM file without pydicom installed.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/a.png"
        >>> Image.new("RGBA", (4, 4)).save(p)
        >>> inspect_image(p)
        ImageInfo(channels=3, alpha=True, dtype='uint8', scale=255.0, kind='PNG RGBA')
    """
    info, _ = _readers(os.fspath(path))
    return _guard(os.fspath(path), info)  # type: ignore[no-any-return]


def decode_image(path: str, draft_size: Optional[Tuple[int, int]] = None) -> DecodedImage:
    """The pixels of an image file, ``(C, H, W)`` in the file's own sample type.

    ``draft_size`` lets JPEG decode at a reduced scale that still covers it.

    Raises:
        ImageFormatError: the reason a file cannot be decoded.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/g.png"
        >>> Image.new("I;16", (5, 4), 4095).save(p)
        >>> d = decode_image(p)
        >>> d.pixels.shape, d.pixels.dtype, int(d.pixels.max()), d.scale
        ((1, 4, 5), dtype('uint16'), 4095, 65535.0)
    """
    path = os.fspath(path)
    _, decode = _readers(path)
    if decode is _pil_decode:
        return _guard(path, decode, draft_size)  # type: ignore[no-any-return]
    return _guard(path, decode)  # type: ignore[no-any-return]
