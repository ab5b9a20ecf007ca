"""Decoding one image file to a tensor at the load size (in DataLoader workers).

With the run's :class:`~byol_wrap.job.data.channels.PixelFormat` (``fmt``), a file becomes
``(fmt.channels, H, W)`` of ``fmt.dtype`` with every band and bit kept (:mod:`.formats` reads it,
:func:`.channels.conform` converts it without loss or gives the reason it does not fit). Without
``fmt`` (the 0.2 behaviour, kept for callers that pass none) every file becomes uint8 RGB.

A file that cannot be decoded raises :class:`UnreadableImageError` with a ``reason``; the datasets turn it
into a skipped item.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> p = tempfile.mkdtemp() + "/a.png"
    >>> Image.new("RGB", (40, 20)).save(p)
    >>> read_image(p, 16).shape
    torch.Size([3, 16, 16])
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from .channels import PixelFormat, conform
from .formats import ImageFormatError, decode_image
from .geometry import Size, resize_center_crop, size_pair
from .jpeg import decode_jpeg_whole, jpeg_decoder_version

DECODER_VERSION = 3  # of read_image's output (the image cache's records are keyed by it)
TRAIN_EXTRA = 'pip install "byol-wrap[train]"'


class UnreadableImageError(RuntimeError):
    """An image that cannot be decoded, under ``strict=True`` (``path`` and ``reason`` attributes)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode {path}: {reason} (--strict stops at the first unreadable file; "
                         f"without it such files are skipped and listed in skipped.txt)")
        self.path = path
        self.reason = reason


def _import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(f"reading image files needs the training extras: {TRAIN_EXTRA}") from error
    return Image


def _to_rgb(image: Any, Image: Any) -> Any:
    """Any Pillow mode -> RGB: 16/32-bit grey scaled to 8 bits, alpha composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        import numpy as np

        arr = np.asarray(image)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = np.clip(arr.astype(np.float32), 0, 65535) / 257.0
        elif mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr.astype(np.float32) * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize_center_crop_pil(image: Any, size: Tuple[int, int], Image: Any) -> Any:
    """Resize so the image covers ``size`` (short side), then take the centre: one resampling."""
    th, tw = size
    w, h = image.size
    if (w, h) == (tw, th):
        return image
    scale = max(th / h, tw / w)
    # clamped: in floating point the centred box can stick out of the image by ~1e-14, which Pillow refuses
    box_w, box_h = min(float(w), tw / scale), min(float(h), th / scale)
    left, top = max(0.0, (w - box_w) / 2), max(0.0, (h - box_h) / 2)
    right, bottom = min(float(w), left + box_w), min(float(h), top + box_h)
    return image.resize((tw, th), Image.BILINEAR, box=(left, top, right, bottom))


def _pil_to_tensor(image: Any, size: Optional[Tuple[int, int]], Image: Any) -> Tensor:
    import numpy as np

    image = _to_rgb(image, Image)
    if size is not None:
        image = _resize_center_crop_pil(image, size, Image)
    arr = np.array(image, dtype=np.uint8)  # (H, W, 3), a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1)


def error_reason(error: BaseException) -> str:
    """A one-line reason for a failed decode or item, for ``skipped.txt``."""
    name = type(error).__name__
    if name == "UnidentifiedImageError":
        return "UnidentifiedImageError: not an image Pillow can read (wrong extension, or a damaged header)"
    text = str(error).strip().splitlines()
    return f"{name}: {text[0]}" if text else name


def read_image(path: Union[str, os.PathLike[str]], load_size: Optional[Size],
               fmt: Optional[PixelFormat] = None) -> Tensor:
    """Decode one image file to ``(C, H, W)`` in the run's pixel format ``fmt`` (see
    :func:`read_pixels`), or, without ``fmt``, to uint8 ``(3, H, W)``: RGB, EXIF orientation applied,
    resized on the short side and centre-cropped to ``load_size`` (``None``: the file's own size).

    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is kept.

    Raises:
        UnreadableImageError: empty, truncated or foreign files, bombs, unsupported modes
            (``.reason`` says which).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/a.png"
        >>> Image.new("LA", (40, 20)).save(p)
        >>> read_image(p, 16).shape
        torch.Size([3, 16, 16])
    """
    if fmt is not None:
        return read_pixels(path, load_size, fmt)
    Image = _import_pil()
    from PIL import ImageOps

    size = None if load_size is None else size_pair(load_size)
    path_str = os.fspath(path)
    try:
        if os.path.getsize(path_str) == 0:
            raise UnreadableImageError(path_str, "empty file (0 bytes)")
        with Image.open(path_str) as image:
            if size is not None and image.format == "JPEG":
                whole = decode_jpeg_whole(path_str, image, size)  # simplejpeg: the same pixels, faster
                if whole is not None:
                    return _pil_to_tensor(whole, size, Image)
                image.draft("RGB", (size[1], size[0]))  # decode at a reduced scale, still >= size
            image.load()
            if "exif" in image.info or image.format == "TIFF":  # exif_transpose copies even with no EXIF
                image = ImageOps.exif_transpose(image)
            return _pil_to_tensor(image, size, Image)
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(path_str, f"decompression bomb over Pillow's limit: {error}") from error
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # OSError (truncated), UnidentifiedImageError, ValueError (modes), SyntaxError...
        raise UnreadableImageError(path_str, error_reason(error)) from error


def read_pixels(path: Union[str, os.PathLike[str]], load_size: Optional[Size], fmt: PixelFormat) -> Tensor:
    """Decode one image file to ``(fmt.channels, H, W)`` of ``fmt.dtype``, resized on the short side
    and centre-cropped to ``load_size`` (``None``: its own size).

    8-bit grey and colour photos are resized by Pillow (as before channels were detected); other
    data by bilinear antialiased resampling in float32, rounded back to uint16 (floats stay float).

    Raises:
        UnreadableImageError: a damaged file, or one that does not fit ``fmt`` without loss
            (``.reason`` says which and what to pass).

    Example:
        >>> import tempfile
        >>> import numpy as np
        >>> p = tempfile.mkdtemp() + "/a.npy"
        >>> np.save(p, np.full((4, 10, 20), 60000, np.uint16))
        >>> x = read_pixels(p, 8, PixelFormat(4, "uint16", 65535.0))
        >>> x.shape, x.dtype, int(x.int().max())
        (torch.Size([4, 8, 8]), torch.uint16, 60000)
    """
    size = None if load_size is None else size_pair(load_size)
    path_str = os.fspath(path)
    if fmt.is_photo and path_str.lower().endswith((".jpg", ".jpeg")):
        return read_image(path_str, load_size)  # 8-bit RGB from a JPEG: the photo path (and its fast decoder)
    try:
        decoded = decode_image(path_str, draft_size=size)
        if decoded.photo is not None and fmt.dtype == "uint8":
            Image = _import_pil()
            photo = decoded.photo if size is None else _resize_center_crop_pil(decoded.photo, size, Image)
            import numpy as np

            arr = np.array(photo, dtype=np.uint8)
            decoded.pixels = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
            return torch.from_numpy(np.ascontiguousarray(conform(decoded, fmt)))
        pixels = conform(decoded, fmt)
        x = torch.from_numpy(pixels.copy() if not pixels.flags.writeable else pixels)
        return resize_center_crop(x, size) if size is not None else x
    except ImageFormatError as error:
        raise UnreadableImageError(path_str, str(error)) from error
def decoder_id() -> str:
    """The decoder the records come from: byol-wrap's ``read_image`` and the libraries under it.

    The image cache keys its records by it: records of another decoder are never read back as if they were
    this one's. Raise :data:`DECODER_VERSION` when ``read_image`` changes its output.

    Example:
        >>> decoder_id().startswith("read_image/")
        True
    """
    parts = [f"read_image/{DECODER_VERSION}"]
    try:
        import PIL
        from PIL import features

        parts.append(f"Pillow {PIL.__version__}")
        for lib in ("libjpeg_turbo", "jpg", "zlib", "libtiff", "webp"):
            try:
                version = features.version(lib)
            except Exception:  # noqa: BLE001 - a feature Pillow was built without
                version = None
            if version:
                parts.append(f"{lib} {version}")
    except ImportError:  # pragma: no cover - the job needs Pillow
        pass
    for module in ("tifffile", "imagecodecs"):  # TIFF and 16-bit colour PNG
        try:
            parts.append(f"{module} {importlib.import_module(module).__version__}")
        except ImportError:
            pass
    fast = jpeg_decoder_version()
    if fast:
        parts.append(fast)
    return "; ".join(parts)
