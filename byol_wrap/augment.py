"""The paper's two image augmentation distributions T and T', with Kornia, per sample.

Every random parameter (crop box, flip, jitter factors, blur sigma, ...) is drawn
independently for each image of the batch, on the batch's device. One exception: Kornia's
``ColorJitter`` draws the order of its four adjustments once per batch, where the paper draws
it per image; each image's augmentation has the paper's distribution, only images of one
batch share that order.

Table 6 of Grill et al. (2020):

=========================  ======  ======
parameter                  T       T'
=========================  ======  ======
random crop probability    1.0     1.0
flip probability           0.5     0.5
colour jitter probability  0.8     0.8
brightness / contrast      0.4     0.4
saturation / hue           0.2/0.1 0.2/0.1
grayscale probability      0.2     0.2
Gaussian blur probability  1.0     0.1
solarization probability   0.0     0.2
=========================  ======  ======
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from .probe import image_size_pair

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)
#: ``(mean, std)`` per channel, or ``None`` for no normalisation.
Normalization = Optional[Tuple[Sequence[float], Sequence[float]]]


class ChannelNormalize(nn.Module):
    """``(x - mean[c]) / std[c]`` along dim 1 of a batch of any rank ``(N, C, ...)``.

    Works for images with any number of channels and for 1-D signals ``(N, C, L)``;
    one value for ``mean`` and ``std`` applies to every channel.

    Example:
        >>> ChannelNormalize([0.5, 0.0], [0.5, 2.0])(torch.ones(1, 2, 3))
        tensor([[[1.0000, 1.0000, 1.0000],
                 [0.5000, 0.5000, 0.5000]]])
    """

    mean: Tensor
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.numel() == 0 or mean_t.shape != std_t.shape:
            raise ValueError(f"normalize needs mean and std of equal, non-zero length, got {list(mean_t.shape)} "
                             f"and {list(std_t.shape)} values")
        if not bool((std_t > 0).all()):
            raise ValueError(f"normalize std values must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or self.mean.numel() not in (1, x.shape[1]):
            raise ValueError(f"normalize has {self.mean.numel()} values per statistic but the batch has shape "
                             f"{tuple(x.shape)} (channels in dim 1)")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (x - self.mean.view(shape).to(x)) / self.std.view(shape).to(x)


def check_normalization(normalize: Normalization, channels: int) -> None:
    """Raise a ValueError unless ``normalize`` is ``None`` or ``(mean, std)`` with 1 or
    ``channels`` values each.

    Example:
        >>> check_normalization(([0.5] * 4, [0.25] * 4), channels=4)
    """
    if normalize is None:
        return
    try:
        mean, std = normalize
        lengths = {len(torch.as_tensor(mean).flatten()), len(torch.as_tensor(std).flatten())}
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"normalize must be None or a pair (mean, std) of sequences of floats, got {normalize!r}"
        ) from error
    if not lengths <= {1, channels}:
        raise ValueError(
            f"normalize has mean/std of {sorted(lengths)} values but the inputs have {channels} channels; "
            f"give one value per channel (or one for all)"
        )


def blur_kernel_size(side: int) -> int:
    """An odd Gaussian-blur kernel of about 10% of the image side (23 for 224), at least 3.

    Example:
        >>> blur_kernel_size(224), blur_kernel_size(32)
        (23, 3)
    """
    return max(3, int(0.1 * side) // 2 * 2 + 1)


def shift_hue(image: Tensor, factor: Union[float, Tensor]) -> Tensor:
    """Rotate the HSV hue of RGB images in [0, 1] by ``factor`` radians, one angle per image (or one for all).

    The same function as ``kornia.enhance.adjust_hue`` (RGB -> HSV, hue + angle modulo
    2 pi, back to RGB), written as a few whole-tensor operations: hue in sixths of a turn
    from the largest channel, then each output channel as ``V - C * clamp(min(k, 4 - k), 0, 1)``
    with ``k = (n + hue) mod 6`` and ``n = 5, 3, 1`` for R, G, B (C is the chroma, max - min).
    Grey pixels (C = 0) are left as they are.

    Example:
        >>> red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        >>> shift_hue(red, torch.tensor([2 * math.pi / 3])).flatten().tolist()  # a third of a turn: green
        [0.0, 1.0, 0.0]
    """
    if image.ndim < 3 or image.shape[-3] != 3:
        raise ValueError(f"shift_hue takes RGB images (..., 3, H, W), got shape {tuple(image.shape)}")
    angle = torch.as_tensor(factor, device=image.device, dtype=image.dtype)
    batch = image.shape[0] if image.ndim > 3 else 1
    if angle.numel() not in (1, batch):
        raise ValueError(f"shift_hue takes one angle, or one per image ({batch}), got {angle.numel()}")
    value = image.amax(dim=-3, keepdim=True)
    chroma = value - image.amin(dim=-3, keepdim=True)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    red, green, blue = image.split(1, dim=-3)
    sixths = torch.where(value == red, (green - blue) / safe,
                         torch.where(value == green, (blue - red) / safe + 2, (red - green) / safe + 4))
    offsets = torch.tensor([5.0, 3.0, 1.0], device=image.device, dtype=image.dtype).view(3, 1, 1)
    turn = angle.reshape(-1, *([1] * (image.ndim - 1))) if image.ndim > 3 else angle.reshape(1, 1, 1)
    k = torch.remainder(sixths + turn * (3 / math.pi) + offsets, 6)
    return value - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def with_fast_hue(jitter: K.ColorJitter) -> K.ColorJitter:
    """``jitter`` with its hue step computed by :func:`shift_hue` (2-3x faster than Kornia's on a CPU,
    same result to float rounding; BENCHMARKS.md). Kornia keeps its step functions in attributes
    (``_hue_fn``, taking radians); a Kornia without that attribute keeps its own, and so does a
    jitter with a fixed ``order`` (Kornia then calls its own functions). Call ``jitter.compile()``
    after this, not before, or the compiled hue step is replaced by this uncompiled one.

    Example:
        >>> with_fast_hue(K.ColorJitter(hue=0.1))._hue_fn is shift_hue
        True
    """
    if hasattr(jitter, "_hue_fn") and getattr(jitter, "_fixed_order", None) is None:
        jitter._hue_fn = shift_hue
    return jitter


def byol_augmentation(
    image_size: Union[int, Sequence[int]],
    view: int = 1,
    normalize: Normalization = None,
    *,
    crop_scale: Tuple[float, float] = (0.08, 1.0),
    jitter_p: float = 0.8,
    blur_p: Optional[float] = None,
    solarize_p: Optional[float] = None,
) -> nn.Sequential:
    """One of the paper's two augmentation pipelines, as a Kornia ``nn.Sequential``.

    Args:
        image_size: output size, an int or ``(H, W)``.
        view: 1 for T (blur always, no solarization), 2 for T' (blur p=0.1, solarization p=0.2).
        normalize: ``(mean, std)`` applied last; ``None`` (the default) for none. ``BYOL`` leaves
            this at ``None`` and normalises after augmenting (its ``normalize`` option).
        crop_scale, jitter_p: area range of the random resized crop and probability of the
            colour jitter (the paper's values by default).
        blur_p, solarize_p: override the view's blur / solarization probability; a stage
            with probability 0 is left out.

    Input: float RGB images in [0, 1], ``(N, 3, H, W)``, any device. Output: ``(N, 3, *image_size)``.

    Example:
        >>> t1 = byol_augmentation(32, view=1)
        >>> t1(torch.rand(4, 3, 40, 40)).shape
        torch.Size([4, 3, 32, 32])
    """
    if view not in (1, 2):
        raise ValueError(f"view must be 1 (T) or 2 (T'), got {view!r}")
    height, width = image_size_pair(image_size)
    view_blur_p, view_solarize_p = (1.0, 0.0) if view == 1 else (0.1, 0.2)
    blur_p = view_blur_p if blur_p is None else blur_p
    solarize_p = view_solarize_p if solarize_p is None else solarize_p
    stages: List[nn.Module] = [
        K.RandomResizedCrop((height, width), scale=(float(crop_scale[0]), float(crop_scale[1])), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(p=0.5),
        # the four adjustments in a random order (drawn per batch by kornia, per image in the paper)
        with_fast_hue(K.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=jitter_p)),
        K.RandomGrayscale(p=0.2),
    ]
    if blur_p > 0:
        stages.append(
            K.RandomGaussianBlur((blur_kernel_size(height), blur_kernel_size(width)), sigma=(0.1, 2.0), p=blur_p)
        )
    if solarize_p > 0:
        # thresholds=0, additions=0: x -> 1 - x exactly where x >= 0.5, the paper's solarization
        stages.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    if normalize is not None:
        mean, std = normalize
        stages.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
    return nn.Sequential(*stages)


def default_augmentations(
    image_size: Union[int, Sequence[int]],
    normalize: Normalization = None,
) -> Tuple[nn.Sequential, nn.Sequential]:
    """The pair ``(T, T')`` that ``BYOL`` uses by default (unnormalised: ``BYOL`` applies
    its ``normalize`` after them; pass ``normalize`` here to end both with it).

    Example:
        >>> t1, t2 = default_augmentations(64)
        >>> t2(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
    """
    return byol_augmentation(image_size, 1, normalize), byol_augmentation(image_size, 2, normalize)


def to_float_images(x: Tensor) -> Tensor:
    """uint8 images in [0, 255] become float32 in [0, 1]; floating images pass unchanged.

    Raises:
        TypeError: for any other dtype.
    """
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if x.is_floating_point():
        return x
    raise TypeError(f"images must be floating point in [0, 1] or uint8 in [0, 255], got dtype {x.dtype}")


def imagenet_normalize(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] or float images in [0, 1] -> float, ``(x - IMAGENET_MEAN) / IMAGENET_STD``
    per channel: what ``BYOL``'s default views and embedding inputs end with (``normalize="auto"``).

    Example:
        >>> imagenet_normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)).flatten()
        tensor([2.2489, 2.4286, 2.6400])
    """
    normalized: Tensor = _IMAGENET_NORMALIZE(to_float_images(images))
    return normalized


_IMAGENET_NORMALIZE = ChannelNormalize(IMAGENET_MEAN, IMAGENET_STD)
