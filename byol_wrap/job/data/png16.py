"""PNG headers (bit depth, colour type, ``sBIT``), and 16-bit colour PNG (RGB, RGBA, grey with alpha) with
every bit, decoded by ``imagecodecs``.

Pillow opens such files as 8-bit images (it keeps the top 8 bits), so :mod:`.formats` hands them here:
``imagecodecs.png_decode`` (libpng or libspng; ``imagecodecs`` comes with the ``[train]`` extra) gives
uint16 samples. Full intensity is 65535, or ``2**n - 1`` when the file's ``sBIT`` chunk declares
``n < 16`` significant bits; alpha is composited onto white, as for every photo; EXIF orientation is
applied as Pillow applies it to other photos.

Example:
    >>> import tempfile, numpy as np, imagecodecs
    >>> p = tempfile.mkdtemp() + "/c.png"
    >>> _ = open(p, "wb").write(imagecodecs.png_encode(np.full((4, 6, 3), 40000, np.uint16)))
    >>> png16_info(p, 2, None).dtype, png16_decode(p, 2, None).pixels.shape
    ('uint16', (3, 4, 6))
"""
from __future__ import annotations

import struct
from typing import Any, Optional, Tuple

import numpy as np

from .formats import TRAIN_EXTRA, DecodedImage, ImageFormatError, ImageInfo, _composite, import_reader
from .orientation import ORIENTATION_TAG, orient, tag_value

#: PNG colour types this module reads at 16 bits: grey + alpha, RGB, RGBA
COLOUR_TYPES = {4: "grey + alpha", 2: "RGB", 6: "RGBA"}

__all__ = ["COLOUR_TYPES", "png_header", "png16_info", "png16_decode"]


def png_header(path: str) -> Tuple[int, int, Optional[int]]:
    """(bit depth, colour type, significant bits from ``sBIT`` or None) of a PNG file, from its header chunks.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/g.png"
        >>> Image.new("L", (2, 2)).save(p)
        >>> png_header(p)
        (8, 0, None)
    """
    with open(path, "rb") as handle:
        if handle.read(8) != b"\x89PNG\r\n\x1a\n":
            return 8, -1, None
        depth, colour, significant = 8, -1, None
        for _ in range(64):  # sBIT comes before the first IDAT
            head = handle.read(8)
            if len(head) < 8:
                break
            length, name = struct.unpack(">I4s", head)
            if name == b"IDAT" or length > 1 << 24:
                break
            body = handle.read(length)
            handle.read(4)
            if name == b"IHDR" and len(body) >= 10:
                depth, colour = body[8], body[9]
            elif name == b"sBIT" and body:
                significant = max(body[:3] if colour in (2, 6) else body[:1])
        return depth, colour, significant


def _import_imagecodecs() -> Any:
    return import_reader("imagecodecs", "16-bit colour PNG files with every bit", TRAIN_EXTRA)


def _scale(significant: Optional[int]) -> float:
    return float(2 ** significant - 1) if significant and 8 < significant < 16 else 65535.0


def png16_info(path: str, colour: int, significant: Optional[int]) -> ImageInfo:
    """What a 16-bit PNG of colour type ``colour`` (2, 4 or 6) becomes; ``significant``: its ``sBIT``.

    Example:
        >>> png16_info("any.png", 6, 12)
        ImageInfo(channels=3, alpha=True, dtype='uint16', scale=4095.0, kind='PNG 16-bit RGBA (12 significant bits)')
    """
    if colour not in COLOUR_TYPES:
        raise ValueError(f"PNG colour type {colour} is not one of {sorted(COLOUR_TYPES)}")
    bits = f" ({significant} significant bits)" if significant and 8 < significant < 16 else ""
    return ImageInfo(1 if colour == 4 else 3, colour in (4, 6), "uint16", _scale(significant),
                     f"PNG 16-bit {COLOUR_TYPES[colour]}{bits}")


def _exif_orientation(path: str) -> Optional[int]:
    from PIL import Image

    with Image.open(path) as image:
        return tag_value(image.getexif().get(ORIENTATION_TAG))


def png16_decode(path: str, colour: int, significant: Optional[int]) -> DecodedImage:
    """The pixels ``(C, H, W)`` uint16 of a 16-bit PNG of colour type ``colour`` (alpha composited onto white)."""
    codecs = _import_imagecodecs()
    info = png16_info(path, colour, significant)
    with open(path, "rb") as handle:
        data = codecs.png_decode(handle.read())
    if data.dtype != np.uint16 or data.ndim != 3 or data.shape[-1] != info.channels + info.alpha:
        raise ImageFormatError(f"{info.kind}: decoded as {data.dtype} {data.shape}, not the header's "
                               f"{info.channels + info.alpha} 16-bit samples")
    pixels = data.transpose(2, 0, 1)
    if info.alpha:  # alpha runs over the full 16 bits; white is the colour samples' full intensity
        pixels = _composite(pixels[:-1], pixels[-1], info.scale, alpha_scale=65535.0)
    pixels = orient(pixels, _exif_orientation(path))
    return DecodedImage(np.ascontiguousarray(pixels), info.scale, info.kind)
