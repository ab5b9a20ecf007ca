"""The paper's two image augmentation distributions T and T', with Kornia, per sample.

For RGB (3 channels) they are the paper's; for any other channel count,
:func:`byol_augmentation` builds their channel-agnostic counterpart from the stages in
:mod:`byol_wrap.core.augment_channels` (docs/domain-imagery.md).

Every random parameter (crop box, flip, jitter factors, blur sigma, ...) is drawn
independently for each image of the batch, on the batch's device. The order of the four colour
adjustments is drawn once per batch by default, as Kornia does, where the paper draws it per
image: each image's augmentation has the paper's distribution, only the images of one batch
share that order. ``jitter_order="image"`` draws it per image, at a cost (BENCHMARKS.md).

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
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import kornia.augmentation as K
import torch
from kornia.color import rgb_to_grayscale
from torch import Tensor, nn

from .augment_channels import (
    DEFAULT_GAMMA,
    CheckChannels,
    FactorSpec,
    IntensityJitter,
    RandomSolarizeRange,
    ValueRange,
    check_value_range,
)
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
    k = sixths + (torch.remainder(turn * (3 / math.pi), 6) + offsets)  # in [-1, 17): the turn wrapped per image
    k = k - 6 * torch.floor(k * (1 / 6))
    return value - chroma * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


#: Kornia's names of the four jitter factors, in the order of the steps (brightness, contrast, saturation, hue).
JITTER_FACTORS = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
_JITTER_NEUTRAL = (1.0, 1.0, 1.0, 0.0)

class ColorJitter(K.ColorJitter):
    """Kornia's ``ColorJitter``, faster, and optionally with the paper's order per image.

    Kornia draws one order of the four adjustments for the whole batch; the paper (appendix
    B) draws it for each image, which ``per_image_order=True`` (the default here) does. The
    orders are drawn with the other parameters, as ``params["sample_order"]`` (``(N, 4)``,
    each row a permutation of 0-3: brightness, contrast, saturation, hue; with
    ``per_image_order=False`` every row is Kornia's batch order), so
    ``jitter(x, params=jitter._params)`` repeats a call. The steps are Kornia's
    (``adjust_brightness_accumulative``, ``adjust_contrast_with_mean_subtraction``,
    ``adjust_saturation_with_gray_subtraction``, ``adjust_hue``), written as a few
    whole-tensor operations (brightness, contrast and saturation of one position in one
    pass, :func:`shift_hue` for the hue); factors, ranges and probability are Kornia's.

    Example:
        >>> jitter = ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1, p=1.0)
        >>> jitter(torch.rand(4, 3, 8, 8)).shape, tuple(jitter._params["sample_order"].shape)
        (torch.Size([4, 3, 8, 8]), (4, 4))
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0, hue: float = 0.0,
                 p: float = 1.0, *, per_image_order: bool = True) -> None:
        super().__init__(brightness, contrast, saturation, hue, p=p)
        self.per_image_order = bool(per_image_order)

    def generate_parameters(self, batch_shape: Tuple[int, ...]) -> Dict[str, Tensor]:
        params = super().generate_parameters(batch_shape)
        if self.per_image_order:
            params["sample_order"] = torch.rand(batch_shape[0], 4).argsort(dim=1)
        else:  # Kornia's one order for the batch
            params["sample_order"] = params["order"].view(1, 4).expand(batch_shape[0], 4).clone()
        return params

    def apply_transform(self, input: Tensor, params: Dict[str, Tensor], flags: Dict[str, Any],
                        transform: Optional[Tensor] = None) -> Tensor:
        if input.shape[-3] != 3:
            raise ValueError(f"ColorJitter takes RGB images (N, 3, H, W), got shape {tuple(input.shape)}")
        out = input.clamp(0, 1)
        n = out.shape[0]
        order = params["sample_order"].cpu()  # (N, 4): the step at each position
        # kornia hands over the whole batch and keeps the result where batch_prob is set: only those change
        chosen = params["batch_prob"].cpu().bool() if "batch_prob" in params else torch.ones(n, dtype=torch.bool)
        factors = torch.stack([params[key].cpu().double() for key in JITTER_FACTORS], dim=1)  # (N, 4) by step
        factor = factors.gather(1, order)  # (N, 4) by position
        neutral = torch.tensor(_JITTER_NEUTRAL, dtype=torch.float64)[order]
        active = chosen[:, None] & (factor != neutral)
        blend = active & (order < 3)
        # brightness, contrast and saturation as clamp(lerp(reference, x, weight)), the reference being 0, the
        # mean grey level or the grey image; weight 1 (and reference 0) leaves an image exactly as it is
        on_device = torch.stack([torch.where(blend, factor, torch.ones_like(factor)),
                                 (blend & (order == 2)).double(), (blend & (order == 1)).double()])
        on_device = on_device.to(device=out.device, dtype=out.dtype).view(3, n, 4, *([1] * (out.ndim - 1)))
        weight, to_gray, to_mean = on_device
        for position in range(4):
            if bool(blend[:, position].any()):
                reference: Union[Tensor, float] = 0.0
                if bool((blend[:, position] & (order[:, position] > 0)).any()):
                    gray = rgb_to_grayscale(out)
                    mean = gray.mean(dim=(-2, -1), keepdim=True)
                    reference = gray * to_gray[:, position] + mean * to_mean[:, position]
                out = torch.lerp(torch.as_tensor(reference, device=out.device, dtype=out.dtype), out,
                                 weight[:, position]).clamp_(0, 1)
            hue = (active[:, position] & (order[:, position] == 3)).nonzero().flatten()
            if hue.numel():
                index = hue.to(out.device)
                turns = factor[hue, position].to(out.device, out.dtype)
                out.index_copy_(0, index, shift_hue(out.index_select(0, index), turns * (2 * math.pi)))
        return out


def byol_augmentation(
    image_size: Union[int, Sequence[int]],
    view: int = 1,
    normalize: Normalization = None,
    *,
    channels: int = 3,
    rgb: Optional[bool] = None,
    crop_scale: Tuple[float, float] = (0.08, 1.0),
    jitter_p: float = 0.8,
    blur_p: Optional[float] = None,
    solarize_p: Optional[float] = None,
    jitter_order: Optional[str] = None,
    brightness: FactorSpec = 0.4,
    contrast: FactorSpec = 0.4,
    gamma: Optional[Tuple[float, float]] = None,
    per_channel: bool = False,
    value_range: ValueRange = None,
    clip: bool = False,
) -> nn.Sequential:
    """One of the paper's two augmentation pipelines, as an ``nn.Sequential``, for ``channels``-channel images.

    ``channels=3`` (the default) gives the paper's T and T' for RGB, with Kornia. Any other
    count gives their channel-agnostic counterpart (docs/domain-imagery.md): the same crop,
    flip, blur and probabilities, :class:`~byol_wrap.core.augment_channels.IntensityJitter`
    (brightness, contrast, gamma) in place of the colour jitter, no grayscale step, and
    :class:`~byol_wrap.core.augment_channels.RandomSolarizeRange` in place of the solarization.

    Args:
        image_size: output size, an int or ``(H, W)``.
        view: 1 for T (blur always, no solarization), 2 for T' (blur p=0.1, solarization p=0.2).
        normalize: ``(mean, std)`` applied last (1 or ``channels`` values each); ``None`` (the
            default) for none. ``BYOL`` leaves this at ``None`` and normalises after augmenting
            (its ``normalize`` option).
        channels: the number of input channels.
        rgb: whether the images are RGB colour photographs (the paper's pipeline); ``None``
            (default): ``channels == 3``. ``rgb=False`` with 3 channels gives the channel-agnostic
            pipeline, e.g. for three microscopy stains or radar bands.
        crop_scale, jitter_p: area range of the random resized crop and probability of the
            colour (or intensity) jitter (the paper's values by default).
        blur_p, solarize_p: override the view's blur / solarization probability; a stage
            with probability 0 is left out.
        jitter_order: ``"batch"``: one random order of the jitter steps per batch, as Kornia;
            ``"image"``: one per image, as the paper (for RGB slower on small images;
            BENCHMARKS.md). ``None`` (default): ``"batch"`` for RGB, ``"image"`` otherwise.
        brightness, contrast: jitter strength ``f`` (factors drawn from ``[1 - f, 1 + f]``) or a
            range ``(lo, hi)``; 0.4 each in the paper.
        gamma, per_channel, value_range, clip: channel-agnostic pipelines only (a ValueError for RGB):
            the gamma exponent range (default ``(0.7, 1.5)``), factors drawn per channel too,
            the data's value range ``(lo, hi)`` for gamma, solarization and the brightness
            origin (``None``: each image's per-channel min and max, and brightness around 0),
            and clamping the jitter's output to ``value_range``.

    Input: RGB: float images in [0, 1], ``(N, 3, H, W)``. Other channel counts: float images
    ``(N, channels, H, W)`` at any scale (nothing is clipped unless ``clip=True``). Any device;
    the output stays on it, ``(N, channels, *image_size)``.

    Example:
        >>> t1 = byol_augmentation(32, view=1)
        >>> t1(torch.rand(4, 3, 40, 40)).shape
        torch.Size([4, 3, 32, 32])
        >>> t2 = byol_augmentation(32, view=2, channels=13)
        >>> t2(torch.rand(4, 13, 40, 40) * 1000).shape
        torch.Size([4, 13, 32, 32])
    """
    if view not in (1, 2):
        raise ValueError(f"view must be 1 (T) or 2 (T'), got {view!r}")
    if jitter_order not in (None, "batch", "image"):
        raise ValueError(f"jitter_order must be 'batch' or 'image', got {jitter_order!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    check_normalization(normalize, channels)
    height, width = image_size_pair(image_size)
    view_blur_p, view_solarize_p = (1.0, 0.0) if view == 1 else (0.1, 0.2)
    blur_p = view_blur_p if blur_p is None else blur_p
    solarize_p = view_solarize_p if solarize_p is None else solarize_p
    if rgb is None:
        rgb = channels == 3
    elif rgb and channels != 3:
        raise ValueError(f"rgb=True needs channels=3, got channels={channels}")
    if not rgb:
        return _channel_augmentation(
            (height, width), channels, normalize, crop_scale=crop_scale, jitter_p=jitter_p, blur_p=blur_p,
            solarize_p=solarize_p, per_image_order=jitter_order != "batch", brightness=brightness, contrast=contrast,
            gamma=DEFAULT_GAMMA if gamma is None else gamma, per_channel=per_channel, value_range=value_range,
            clip=clip)
    rgb_only = {"gamma": gamma is not None, "per_channel": per_channel, "value_range": value_range is not None,
                "clip": clip}
    if any(rgb_only.values()):
        raise ValueError(f"{', '.join(k for k, v in rgb_only.items() if v)} only apply to the channel-agnostic "
                         f"pipelines (channels != 3, or rgb=False); the RGB pipeline is the paper's, for images "
                         f"in [0, 1]")
    stages: List[nn.Module] = [
        K.RandomResizedCrop((height, width), scale=(float(crop_scale[0]), float(crop_scale[1])), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(p=0.5),
        ColorJitter(brightness=brightness, contrast=contrast, saturation=0.2, hue=0.1,  # type: ignore[arg-type]
                    p=jitter_p, per_image_order=jitter_order == "image"),
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


def _channel_augmentation(
    size: Tuple[int, int],
    channels: int,
    normalize: Normalization,
    *,
    crop_scale: Tuple[float, float],
    jitter_p: float,
    blur_p: float,
    solarize_p: float,
    per_image_order: bool,
    brightness: FactorSpec,
    contrast: FactorSpec,
    gamma: Tuple[float, float],
    per_channel: bool,
    value_range: ValueRange,
    clip: bool,
) -> nn.Sequential:
    """The channel-agnostic T or T' (see :func:`byol_augmentation`): the paper's stages and probabilities
    with the RGB-only steps replaced (intensity jitter, range solarization) or left out (grayscale)."""
    height, width = size
    stages: List[nn.Module] = [
        CheckChannels(channels),
        K.RandomResizedCrop((height, width), scale=(float(crop_scale[0]), float(crop_scale[1])), ratio=(3 / 4, 4 / 3)),
        K.RandomHorizontalFlip(p=0.5),
    ]
    if jitter_p > 0:
        stages.append(IntensityJitter(brightness, contrast, gamma, p=jitter_p, per_channel=per_channel,
                                      value_range=value_range, clip=clip, per_image_order=per_image_order))
    elif clip and value_range is None:
        raise ValueError("clip=True clamps to value_range: give value_range=(lo, hi) as well")
    if blur_p > 0:
        stages.append(
            K.RandomGaussianBlur((blur_kernel_size(height), blur_kernel_size(width)), sigma=(0.1, 2.0), p=blur_p)
        )
    if solarize_p > 0:
        stages.append(RandomSolarizeRange(p=solarize_p, value_range=value_range))
    else:
        check_value_range(value_range)
    if normalize is not None:
        stages.append(ChannelNormalize(*normalize))
    return nn.Sequential(*stages)


def default_augmentations(
    image_size: Union[int, Sequence[int]],
    normalize: Normalization = None,
    jitter_order: Optional[str] = None,
    *,
    channels: int = 3,
    rgb: Optional[bool] = None,
) -> Tuple[nn.Sequential, nn.Sequential]:
    """The pair ``(T, T')`` that ``BYOL`` uses by default for ``channels``-channel images
    (unnormalised: ``BYOL`` applies its ``normalize`` after them; pass ``normalize`` here to end
    both with it). ``jitter_order`` and ``rgb`` as in :func:`byol_augmentation`.

    Example:
        >>> t1, t2 = default_augmentations(64)
        >>> t2(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 3, 64, 64])
        >>> t1, t2 = default_augmentations(64, channels=1)
        >>> t1(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 1, 64, 64])
    """
    return (byol_augmentation(image_size, 1, normalize, channels=channels, rgb=rgb, jitter_order=jitter_order),
            byol_augmentation(image_size, 2, normalize, channels=channels, rgb=rgb, jitter_order=jitter_order))


def to_float_images(x: Tensor) -> Tensor:
    """uint8 images in [0, 255] become float32 in [0, 1]; floating images pass unchanged.

    Raises:
        TypeError: for any other dtype.
    """
    if x.dtype == torch.uint8:
        return x.float().div_(255)
    if x.is_floating_point():
        return x
    raise TypeError(f"images must be floating point (in [0, 1] for RGB images; any scale for other channel counts) "
                    f"or uint8 in [0, 255], got dtype {x.dtype}; convert other integers on the device, e.g. "
                    f"x.float() / 65535 for 16-bit images")


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
