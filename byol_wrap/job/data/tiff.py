"""TIFF files with every band: the samples of a page (contiguous or planar) or the pages of a ``(C, H, W)``
stack, read by ``tifffile``; an extra band is alpha only where ``ExtraSamples`` says so (see :mod:`.formats`).
The first page's ``Orientation`` tag is applied (:mod:`.orientation`), as Pillow applies EXIF orientation.

Example:
    >>> import tempfile, numpy as np, tifffile
    >>> p = tempfile.mkdtemp() + "/b.tif"
    >>> tifffile.imwrite(p, np.zeros((4, 8, 8), np.uint16), photometric="minisblack", planarconfig="separate")
    >>> tiff_info(p).channels, tiff_decode(p).pixels.shape
    (4, (4, 8, 8))
"""
from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

from .formats import (
    TRAIN_EXTRA,
    DecodedImage,
    ImageFormatError,
    ImageInfo,
    _as_job_dtype,
    _composite,
    _dtype_of,
    _pil_decode,
    import_reader,
)
from .orientation import ORIENTATION_TAG, orient, tag_value

__all__ = ["tiff_info", "tiff_decode"]


def _tiff_layout(tif: Any) -> Tuple[List[Any], Tuple[int, ...], str, str]:
    """The series holding the image (several for a stack of 2-D pages), its shape, axes and kind."""
    series = list(tif.series)
    if not series:
        raise ImageFormatError("TIFF without image data")
    pages = list(tif.pages)
    for number, page in enumerate(pages):
        shape = getattr(page, "shape", None)
        if shape is not None and 0 in tuple(shape):
            raise ImageFormatError(f"TIFF page {number + 1} of {len(pages)} has zero size (no pixels): a damaged "
                                   f"or nonconformant file; write it again without the empty page")
    first = series[0]
    if len(series) > 1 and all(s.shape == first.shape and s.dtype == first.dtype and s.axes == "YX"
                               for s in series):
        return series, (len(series), *first.shape), "CYX", f"TIFF stack of {len(series)} pages"
    return [first], tuple(first.shape), first.axes, "TIFF"


def _tiff_alpha(page: Any, dtype: str) -> int:
    """How many trailing samples the file declares as alpha (ExtraSamples 1 or 2), in 8-bit files only.

    In 16-bit and float files every band is data: writers mark extra bands as alpha by default (tifffile
    tags the fourth sample of any ``(H, W, 4)`` or ``(4, H, W)`` array as unassociated alpha), and a fourth
    stain or band read as transparency would be composited away.
    """
    if dtype != "uint8":
        return 0
    extra = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
    return sum(1 for e in extra if e in (1, 2))


def _tiff_scale(page: Any, dtype: str) -> Tuple[float, str]:
    if dtype != "uint16":
        return (255.0 if dtype == "uint8" else 1.0), ""
    bits = page.bitspersample
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    if 8 < bits < 16:
        return float(2 ** bits - 1), f" ({bits}-bit)"
    return 65535.0, ""


def _channels_from_axes(shape: Tuple[int, ...], axes: str) -> int:
    if "Y" not in axes or "X" not in axes:
        raise ImageFormatError(f"TIFF data of shape {shape} (axes {axes}) has no image plane")
    return int(np.prod([n for n, a in zip(shape, axes) if a not in "YX"], dtype=np.int64)) if len(axes) > 2 else 1


def _import_tifffile() -> Any:
    return import_reader("tifffile", "TIFF files", TRAIN_EXTRA)


def tiff_info(path: str) -> ImageInfo:
    tifffile = _import_tifffile()

    with tifffile.TiffFile(path) as tif:
        series, shape, axes, kind = _tiff_layout(tif)
        page: Any = tif.pages[0]
        dtype, _ = _dtype_of(np.dtype(series[0].dtype))
        scale, _ = _tiff_scale(page, dtype)
        total = _channels_from_axes(shape, axes)
        alpha = _tiff_alpha(page, dtype) if len(series) == 1 and "S" in axes else 0
        return ImageInfo(total - alpha, alpha > 0, dtype, scale, _describe(kind, page, dtype, total, alpha))


def _describe(kind: str, page: Any, dtype: str, total: int, alpha: int) -> str:
    """The file's description for logs and skip reasons, e.g. ``TIFF MINISBLACK uint16, 8 bands``."""
    photometric = getattr(page.photometric, "name", str(page.photometric))
    _, bits = _tiff_scale(page, dtype)
    kind = f"{kind} {photometric} {dtype}{bits}, {total} band{'s' * (total != 1)}"
    return kind + (" (last one alpha)" if alpha else "")


def tiff_decode(path: str) -> DecodedImage:
    tifffile = _import_tifffile()

    with tifffile.TiffFile(path) as tif:
        series, shape, axes, kind = _tiff_layout(tif)
        page: Any = tif.pages[0]
        try:
            if len(series) > 1:
                data = np.stack([s.asarray() for s in series])
            else:
                data = series[0].asarray()
        except (KeyError, ValueError) as error:  # a compression tifffile needs imagecodecs for
            if "imagecodecs" not in str(error):
                raise
            return _tiff_codec_fallback(path, str(error).strip("'\""))
        dtype, _ = _dtype_of(data.dtype)
        scale, _ = _tiff_scale(page, dtype)
        alpha = _tiff_alpha(page, dtype) if len(series) == 1 and "S" in axes else 0
        photometric = getattr(page.photometric, "name", str(page.photometric))
        kind = _describe(kind, page, dtype, _channels_from_axes(shape, axes), alpha)
        tag = page.tags.get(ORIENTATION_TAG)
        orientation = tag_value(tag.value) if tag is not None else None
    if data.shape != shape:
        raise ImageFormatError(f"TIFF data of shape {data.shape} where the header says {shape}")
    # (..., Y, ..., X, ...) -> (channels, Y, X): every axis but Y and X is a channel axis
    order = [i for i, a in enumerate(axes) if a not in "YX"] + [axes.index("Y"), axes.index("X")]
    data = data.transpose(order).reshape(-1, shape[axes.index("Y")], shape[axes.index("X")])
    if photometric == "PALETTE":
        raise ImageFormatError("palette TIFF: save it as RGB or grey")
    if photometric == "MINISWHITE" and data.dtype.kind in "ub":
        # 0 means white: turned so that larger means brighter (bilevel scans and faxes read as bool)
        data = ~data if data.dtype.kind == "b" else np.iinfo(data.dtype).max - data
    data = _as_job_dtype(orient(data, orientation))
    if alpha:
        data = _composite(data[:-alpha], data[-1], scale)
    return DecodedImage(np.ascontiguousarray(data), scale, kind)


def _tiff_codec_fallback(path: str, reason: str) -> DecodedImage:
    """LZW/JPEG/PackBits TIFF without imagecodecs: Pillow, where it keeps every bit."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
    except Exception:  # noqa: BLE001 - the codec message below says more
        mode = "?"
    if mode in ("1", "L", "LA", "RGB", "RGBA", "P", "I;16", "I;16B", "I;16L", "F"):
        return _pil_decode(path, None)
    raise ImageFormatError(f"{reason} (pip install imagecodecs), or save the TIFF uncompressed or zlib-compressed")
