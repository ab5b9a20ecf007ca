"""Sizes and crops: the load size of the views, resize-and-centre-crop of uint8 image tensors.

Example:
    >>> default_load_size(224)
    256
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Size = Union[int, Tuple[int, int]]


def default_load_size(image_size: Size) -> Size:
    """The decode size for views of ``image_size``: x 8/7, rounded (224 -> 256, 32 -> 37).

    Example:
        >>> default_load_size(224), default_load_size((64, 96))
        (256, (73, 110))
    """
    if isinstance(image_size, int):
        return int(round(image_size * 8 / 7))
    h, w = image_size
    return (int(round(h * 8 / 7)), int(round(w * 8 / 7)))


def size_pair(size: Size) -> Tuple[int, int]:
    """``size`` as ``(H, W)``, checked.

    Example:
        >>> size_pair(8), size_pair((4, 6))
        ((8, 8), (4, 6))
    """
    if isinstance(size, bool):
        raise TypeError("a size must be an int or an (H, W) pair, got a bool")
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = (int(size[0]), int(size[1]))
    if min(pair) < 1:
        raise ValueError(f"sizes must be positive, got {size!r}")
    return pair


def resize_center_crop(images: Tensor, size: Size) -> Tensor:
    """``(N, C, H, W)`` (or ``(C, H, W)``) images resized on the short side to cover ``size``
    (bilinear, antialiased) and centre-cropped; returned unchanged when already that size.
    uint8 and uint16 results are rounded and clamped to their type's range, float ones are not.

    Example:
        >>> resize_center_crop(torch.zeros(2, 3, 10, 20, dtype=torch.uint8), 8).shape
        torch.Size([2, 3, 8, 8])
    """
    th, tw = size_pair(size)
    single = images.ndim == 3
    x = images.unsqueeze(0) if single else images
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) != (th, tw):
        scale = max(th / h, tw / w)
        nh, nw = max(th, int(math.ceil(h * scale - 1e-6))), max(tw, int(math.ceil(w * scale - 1e-6)))
        if (nh, nw) != (h, w):
            x = _resample(x, (nh, nw))
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw].contiguous()
    return x[0] if single else x


def _resample(x: Tensor, size: Tuple[int, int]) -> Tensor:
    """Bilinear antialiased resampling of ``(N, C, H, W)`` in float32 (exact for 8- and 16-bit
    samples), back to the input's sample type."""
    y = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    if x.is_floating_point():
        return y.to(x.dtype)
    top = 255 if x.dtype == torch.uint8 else 65535
    return y.round_().clamp_(0, top).to(x.dtype)


def eval_images(images: Tensor, image_size: Size) -> Tensor:
    """The evaluation view of uint8 images at ``image_size``: unchanged when they already have
    that size; otherwise resized to ``default_load_size(image_size)`` on the short side and
    centre-cropped to ``image_size`` (ImageNet's resize-256/crop-224 rule)."""
    target = size_pair(image_size)
    if tuple(images.shape[-2:]) == target:
        return images
    return center_crop(resize_center_crop(images, default_load_size(target)), target)


def center_crop(images: Tensor, size: Size) -> Tensor:
    """The centre ``size`` window of ``(..., H, W)`` images (no resampling; H, W >= size).

    Example:
        >>> center_crop(torch.arange(16).view(1, 4, 4), 2)
        tensor([[[ 5,  6],
                 [ 9, 10]]])
    """
    th, tw = size_pair(size)
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if h < th or w < tw:
        raise ValueError(f"cannot crop {th}x{tw} from {h}x{w} images")
    top, left = (h - th) // 2, (w - tw) // 2
    return images[..., top:top + th, left:left + tw]
