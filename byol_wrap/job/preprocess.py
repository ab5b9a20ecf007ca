"""The preprocessing ``embed`` applies, as one public call: files or images in, the encoder's input out.

``byol-wrap embed`` decodes each file at ``image_size x 8/7`` on the short side (RGB, EXIF orientation,
one bilinear resampling), takes the centre ``image_size`` window, and the encoder then scales to [0, 1]
and applies the training normalisation. :func:`preprocess` does exactly the same to paths, PIL images,
numpy arrays or tensors, so ``encoder(preprocess(paths, encoder.image_size))`` gives ``embed``'s
vectors (``Encoder.preprocess`` fills in the size and statistics).

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

Size = Union[int, Tuple[int, int]]

__all__ = ["preprocess"]


def _size(image_size: Any) -> Size:
    if isinstance(image_size, bool) or image_size is None:
        raise ValueError(f"preprocess needs the encoder's image_size (an int or [H, W]), got {image_size!r}")
    if isinstance(image_size, int):
        return image_size
    height, width = (int(v) for v in image_size)
    return (height, width)


def _one(item: Any, size: Size) -> Tensor:
    """One image as uint8 ``(3, H, W)`` at the encoder's size: embed's path for its kind."""
    from .data import default_load_size, eval_images, read_image
    from .data.datasets import _tensor_to_uint8  # the decoders embed's datasets use
    from .data.decode import _pil_to_tensor

    load_size = default_load_size(size)
    if isinstance(item, (str, os.PathLike)):
        return eval_images(read_image(item, load_size), size)
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


def preprocess(images: Any, image_size: Any, *, normalize: Optional[Sequence[Sequence[float]]] = None) -> Tensor:
    """What ``embed`` feeds the encoder, for images given in Python.

    Args:
        images: a path, a folder (every image under it, in :func:`byol_wrap.data.find_image_paths`'s
            order, the order of ``embed``'s rows), a PIL image, a numpy ``(H, W, C)`` uint8 array, a
            ``(C, H, W)`` / ``(N, C, H, W)`` tensor (uint8, or float in [0, 1]), or a list of these.
        image_size: the encoder's ``image_size`` (``encoder.image_size``).
        normalize: ``(mean, std)`` (``encoder.meta["normalize"]``): return float tensors normalised
            as the backbone's input (for ``encoder.net``); ``None``: uint8 images, the input of
            ``encoder(...)``, which normalises them itself.

    Returns:
        ``(N, 3, H, W)`` uint8 (or float with ``normalize``) at ``image_size``.

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
    batch = torch.stack([_one(item, size) for item in items])
    if normalize is None:
        return batch
    mean, std = normalize
    normalized: Tensor = ChannelNormalize(mean, std)(to_float_images(batch))
    return normalized
