"""The preprocessing ``embed`` applies, as one public call: files or images in, the encoder's input out.

``byol-wrap embed`` decodes each file at ``image_size x 8/7`` on the short side in the encoder's pixel
format (``meta["pixel_format"]``: its channel count and sample type, every band and bit kept; 8-bit RGB
for photo runs and encoders that record none), takes the centre ``image_size`` window, and the encoder
then scales to float (``x / scale``) and applies the training normalisation. :func:`preprocess` does
exactly the same to paths, PIL images, numpy arrays or tensors, so
``encoder(preprocess(paths, encoder.image_size, fmt=...))`` gives ``embed``'s vectors
(``Encoder.preprocess`` fills in the size, the pixel format and the statistics).

Example:
    >>> import torch
    >>> x = preprocess(torch.zeros(2, 3, 40, 50, dtype=torch.uint8), 32)
    >>> x.shape, x.dtype
    (torch.Size([2, 3, 32, 32]), torch.uint8)
    >>> preprocess(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), 32, normalize=([0.5] * 3, [0.25] * 3)).flatten()[0]
    tensor(-2.)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..core.augment import ChannelNormalize, to_float_images
from .data.channels import PixelFormat, to_device_float

Size = Union[int, Tuple[int, int]]

__all__ = ["preprocess"]


def _size(image_size: Any) -> Size:
    if isinstance(image_size, bool) or image_size is None:
        raise ValueError(f"preprocess needs the encoder's image_size (an int or [H, W]), got {image_size!r}")
    if isinstance(image_size, int):
        return image_size
    height, width = (int(v) for v in image_size)
    return (height, width)


def _one(item: Any, size: Size, fmt: Optional[PixelFormat]) -> Tensor:
    """One image ``(C, H, W)`` at the encoder's size in its pixel format: embed's path for its kind."""
    from .data import default_load_size, eval_images, read_image
    from .data.datasets import _tensor_to_uint8  # the decoders embed's datasets use
    from .data.decode import _pil_to_tensor

    load_size = default_load_size(size)
    if isinstance(item, (str, os.PathLike)):
        return eval_images(read_image(item, load_size, fmt), size)
    if fmt is not None and not fmt.is_photo:  # as a file of these samples: to the load size, then the centre
        from .data import resize_center_crop

        return eval_images(resize_center_crop(_in_format(item, fmt), load_size), size)
    if type(item).__module__.startswith("PIL"):
        from PIL import Image

        return eval_images(_pil_to_tensor(item, _pair(load_size), Image), size)
    if type(item).__module__ == "numpy":
        array = torch.from_numpy(item.copy())
        if array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] not in (1, 3, 4):
            array = array.permute(2, 0, 1)
        item = array
    if isinstance(item, Tensor):
        return eval_images(_tensor_to_uint8(item), size)
    raise TypeError(f"preprocess takes image paths, PIL images, numpy arrays or tensors, got {type(item).__name__}")


def _in_format(item: Any, fmt: PixelFormat) -> Tensor:
    """An image given in Python for an encoder of another format than 8-bit RGB: ``(C, H, W)`` (or
    ``(H, W)`` for one channel; numpy ``(H, W, C)`` too) with ``fmt.channels`` channels, either in
    the run's sample type (``fmt.dtype``: the files' own values) or float as the encoder takes them
    (``x / fmt.scale``, passed unchanged). Resized as ``embed`` resizes a file of these samples."""
    if type(item).__module__.startswith("PIL"):
        import numpy as np

        item = np.asarray(item)  # I;16 -> uint16, F -> float32, L -> uint8 (H, W) or (H, W, C)
    if type(item).__module__ == "numpy":
        array = torch.from_numpy(item.copy())
        if array.ndim == 3 and array.shape[-1] == fmt.channels and array.shape[0] != fmt.channels:
            array = array.permute(2, 0, 1)
        item = array
    if not isinstance(item, Tensor):
        raise TypeError(f"preprocess takes image paths, PIL images, numpy arrays or tensors, got {type(item).__name__}")
    x = item.unsqueeze(0) if item.ndim == 2 else item
    if x.ndim != 3 or int(x.shape[0]) != fmt.channels:
        raise ValueError(f"the encoder takes {fmt.channels}-channel images (C, H, W), got shape {tuple(item.shape)}")
    if x.dtype != fmt.torch_dtype and not x.is_floating_point():
        raise TypeError(f"the encoder's images are {fmt.dtype} (full intensity {fmt.scale:g}) or float already "
                        f"divided by {fmt.scale:g}; got {x.dtype}")
    return x.contiguous()


def _pair(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else size


def _items(images: Any) -> List[Any]:
    from .data import find_image_paths

    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            found = find_image_paths(path)
            if not found:
                raise ValueError(f"{path} holds no images")
            return list(found)
        return [images]
    if isinstance(images, Tensor):
        if images.ndim == 4:
            return list(images.unbind(0))
        return [images]
    if type(images).__module__ == "numpy" and getattr(images, "ndim", 0) == 4:
        return list(images)
    if type(images).__module__.startswith("PIL") or type(images).__module__ == "numpy":
        return [images]
    if isinstance(images, Sequence):
        return list(images)
    raise TypeError(f"preprocess takes a path, a folder, an image, a batch tensor or a list of them, got "
                    f"{type(images).__name__}")


def preprocess(images: Any, image_size: Any, *, normalize: Optional[Sequence[Sequence[float]]] = None,
               fmt: Optional[PixelFormat] = None) -> Tensor:
    """What ``embed`` feeds the encoder, for images given in Python.

    Args:
        images: a path, a folder (every image under it, in :func:`byol_wrap.data.find_image_paths`'s
            order, the order of ``embed``'s rows), a PIL image, a numpy ``(H, W, C)`` uint8 array, a
            ``(C, H, W)`` / ``(N, C, H, W)`` tensor (uint8, or float in [0, 1]), or a list of these.
            For an encoder of another pixel format (``fmt``), arrays and tensors have its channel count
            and its sample type (``fmt.dtype``), or are float already divided by ``fmt.scale``.
        image_size: the encoder's ``image_size`` (``encoder.image_size``).
        normalize: ``(mean, std)`` (``encoder.meta["normalize"]``): return float tensors normalised
            as the backbone's input (for ``encoder.net``); ``None``: images in the encoder's sample
            type, the input of ``encoder(...)``, which scales and normalises them itself.
        fmt: the encoder's pixel format (:func:`byol_wrap.job.data.channels.meta_pixel_format` of its
            ``meta``); ``None``: 8-bit RGB, as encoders that record none.

    Returns:
        ``(N, C, H, W)`` at ``image_size``: uint8 RGB, or ``fmt``'s channels and sample type (float
        ``x / scale`` normalised with ``normalize``).

    Raises:
        UnreadableImageError: a file that cannot be decoded (``embed`` would skip it).

    Example:
        >>> import numpy as np
        >>> preprocess([np.zeros((20, 30, 3), np.uint8)], 16).shape
        torch.Size([1, 3, 16, 16])
    """
    size = _size(image_size)
    items = _items(images)
    if not items:
        raise ValueError("preprocess got no images")
    batch = torch.stack([_one(item, size, fmt) for item in items])
    if normalize is None:
        return batch
    mean, std = normalize
    x = to_device_float(batch, fmt) if fmt is not None and batch.dtype == torch.uint16 else batch  # as Encoder does
    normalized: Tensor = ChannelNormalize(mean, std)(to_float_images(x))
    return normalized
