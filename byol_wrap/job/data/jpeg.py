"""The faster JPEG decode for files that libjpeg's DCT scaling cannot shrink: simplejpeg, bit-identical to Pillow.

``read_image`` decodes a JPEG with Pillow's ``draft`` when the file is at least twice the load size (libjpeg
then decodes at 1/2, 1/4 or 1/8 scale: the fastest option measured). Below that (an ImageNet photo of about
500 x 375 at the 224 px view's load size, 256) ``draft`` does nothing and the whole image is decoded. For
those files ``simplejpeg`` (libjpeg-turbo, when installed) decodes the same pixels faster than Pillow's
decoder; the resize and centre crop stay Pillow's, so the result is bit-identical to Pillow decoding
(tests/test_jpeg_fast.py checks it; benchmarks/decode_options.py measures it, figures in BENCHMARKS.md
"Issue 20"). Faster options that change the pixels (torchvision's uint8 resize: 30.6-39 dB from the exact
resampling, further than ``draft`` itself) were measured and not taken: the tolerance is zero.

Files this path does not take (EXIF orientation, modes other than RGB and grey, CMYK, files twice the load
size, ``simplejpeg`` missing) or cannot decode (truncated, damaged) go to Pillow, which also names the reason
for unreadable files, as before.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> path = tempfile.mkdtemp() + "/a.jpg"
    >>> Image.new("RGB", (50, 40), (10, 200, 30)).save(path, quality=95)
    >>> with Image.open(path) as image:
    ...     fast = decode_jpeg_whole(path, image, (32, 32))
    >>> fast is None or fast.size == (50, 40)
    True
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

__all__ = ["decode_jpeg_whole", "draft_reduces", "jpeg_decoder_version", "FAST_JPEG_MODES"]

FAST_JPEG_MODES = ("RGB", "L")


def draft_reduces(image_size: Tuple[int, int], size: Tuple[int, int]) -> bool:
    """Whether libjpeg's DCT scaling (Pillow's ``draft``) shrinks a ``(W, H)`` JPEG for load ``size`` ``(H, W)``.

    Example:
        >>> draft_reduces((500, 375), (256, 256)), draft_reduces((1000, 750), (256, 256))
        (False, True)
    """
    w, h = image_size
    th, tw = size
    return w // 2 >= tw and h // 2 >= th


def jpeg_decoder_version() -> Optional[str]:
    """``"simplejpeg <version>"`` when the fast path is available, else None (part of the image cache's key)."""
    try:
        import simplejpeg
    except ImportError:
        return None
    return f"simplejpeg {getattr(simplejpeg, '__version__', '?')}"


def decode_jpeg_whole(path: str, image: Any, size: Tuple[int, int]) -> Optional[Any]:
    """The whole JPEG ``path`` decoded by simplejpeg as a Pillow RGB image (``image``: the file opened with
    Pillow, not loaded), or ``None`` where this path does not apply (decode with Pillow)."""
    if image.format != "JPEG" or image.mode not in FAST_JPEG_MODES or "exif" in image.info:
        return None
    if draft_reduces(image.size, size):
        return None
    try:
        import simplejpeg
        from PIL import Image
    except ImportError:
        return None
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        array = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except (ValueError, OSError, RuntimeError):
        return None
    if array.shape[1] != image.size[0] or array.shape[0] != image.size[1]:
        return None
    return Image.fromarray(array, "RGB")
