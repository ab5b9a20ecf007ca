"""Intensity augmentations for images with any number of channels, at the data's own scale.

The paper's colour stages (jitter of brightness, contrast, saturation and hue; grayscale;
solarization) assume RGB in [0, 1]. For grayscale, multi-band or 16-bit/float data,
:func:`byol_wrap.core.augment.byol_augmentation` with ``channels != 3`` uses these stages instead:

- :class:`IntensityJitter`: brightness, contrast and gamma, factors drawn per sample (or per
  sample and channel), applied in a random order per sample, the whole stage with the paper's
  colour-jitter probability (0.8). No step clips.
- :class:`RandomSolarizeRange`: the paper's solarization (``x -> 1 - x`` where ``x >= 0.5``)
  mirrored inside a value range: ``x -> lo + hi - x`` where ``x >= (lo + hi) / 2``.

Each operation is also a function on a batch (:func:`adjust_brightness`, :func:`adjust_contrast`,
:func:`adjust_gamma`, :func:`solarize`). Where an operation needs a value range (gamma,
solarization), it is ``value_range=(lo, hi)`` when given, else each image's own per-channel
minimum and maximum. Random parameters are drawn on the CPU from torch's global generator and
applied on the batch's device in its dtype.

Example:
    >>> torch.manual_seed(0) is not None
    True
    >>> jitter = IntensityJitter(p=1.0)
    >>> x = torch.rand(4, 13, 8, 8) * 1000  # e.g. 13 bands of reflectance x 1000
    >>> y = jitter(x)
    >>> y.shape, y.dtype, tuple(jitter._params["order"].shape)
    (torch.Size([4, 13, 8, 8]), torch.float32, (4, 3))
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

#: ``(lo, hi)`` of the data's values, or ``None`` for each image's own per-channel min and max.
ValueRange = Optional[Tuple[float, float]]
#: A factor ``f`` (drawn from ``[max(0, 1 - f), 1 + f]``, as Kornia's ColorJitter) or a range ``(lo, hi)``.
FactorSpec = Union[float, Tuple[float, float]]
#: nnU-Net's gamma range (Isensee et al., 2021): half the draws below 1, half above.
DEFAULT_GAMMA: Tuple[float, float] = (0.7, 1.5)
#: The step names of :class:`IntensityJitter`, indexed by the numbers in ``params["order"]``.
INTENSITY_STEPS = ("brightness", "contrast", "gamma")


def check_value_range(value_range: ValueRange) -> ValueRange:
    """``None`` or a finite pair ``(lo, hi)`` with ``lo < hi``, returned as floats.

    Example:
        >>> check_value_range((0, 65535))
        (0.0, 65535.0)
    """
    if value_range is None:
        return None
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError) as error:
        raise ValueError(f"value_range must be None or a pair (lo, hi) of numbers, got {value_range!r}") from error
    if not (torch.isfinite(torch.tensor([lo, hi])).all() and lo < hi):
        raise ValueError(f"value_range must be finite with lo < hi, got {value_range!r}")
    return lo, hi


def factor_range(spec: FactorSpec, name: str) -> Tuple[float, float]:
    """The range a multiplicative factor is drawn from: ``f -> (max(0, 1 - f), 1 + f)``, or ``(lo, hi)`` as given.

    Example:
        >>> factor_range(0.4, "brightness"), factor_range((0.5, 2.0), "contrast")
        ((0.6, 1.4), (0.5, 2.0))
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        if spec < 0:
            raise ValueError(f"{name} must be >= 0 (factors drawn from [1 - {name}, 1 + {name}]), got {spec}")
        return max(0.0, 1.0 - float(spec)), 1.0 + float(spec)
    try:
        lo, hi = (float(v) for v in spec)  # type: ignore[union-attr]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a number or a pair (lo, hi), got {spec!r}") from error
    if not 0 <= lo <= hi:
        raise ValueError(f"{name} range must satisfy 0 <= lo <= hi, got {spec!r}")
    return lo, hi


def _per_image(factor: Union[Tensor, float], x: Tensor) -> Tensor:
    """``factor`` of shape ``(N,)``, ``(N, 1)`` or ``(N, C)`` (or a number) as ``(N, C or 1, 1, ...)`` on x."""
    f = torch.as_tensor(factor, device=x.device, dtype=x.dtype)
    if f.ndim == 0:
        return f
    f = f.reshape(f.shape[0], -1)
    if f.shape[0] != x.shape[0] or f.shape[1] not in (1, x.shape[1]):
        raise ValueError(f"factors of shape {tuple(f.shape)} do not fit a batch of shape {tuple(x.shape)}: give one "
                         f"per image (N,) or one per image and channel (N, C)")
    return f.view(*f.shape, *([1] * (x.ndim - 2)))


def value_bounds(x: Tensor, value_range: ValueRange = None) -> Tuple[Tensor, Tensor]:
    """``(lo, hi)`` broadcastable to ``x`` ``(N, C, ...)``: ``value_range`` when given, else each image's
    per-channel minimum and maximum over the spatial dimensions.

    Example:
        >>> lo, hi = value_bounds(torch.tensor([[[[2.0, 6.0]], [[-1.0, 1.0]]]]))
        >>> lo.flatten().tolist(), hi.flatten().tolist()
        ([2.0, -1.0], [6.0, 1.0])
    """
    if value_range is not None:
        lo, hi = check_value_range(value_range)  # type: ignore[misc]
        return (torch.tensor(lo, device=x.device, dtype=x.dtype), torch.tensor(hi, device=x.device, dtype=x.dtype))
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    lo_t, hi_t = torch.aminmax(flat, dim=-1)
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
    return lo_t.view(shape), hi_t.view(shape)


def adjust_brightness(x: Tensor, factor: Union[Tensor, float], origin: float = 0.0) -> Tensor:
    """``origin + factor * (x - origin)``: multiplicative brightness (the paper's, for ``origin=0``),
    one factor per image ``(N,)`` or per image and channel ``(N, C)``. No clipping.

    Example:
        >>> adjust_brightness(torch.full((1, 1, 1, 2), 500.0), torch.tensor([1.2])).flatten().tolist()
        [600.0, 600.0]
    """
    f = _per_image(factor, x)
    return x * f if origin == 0 else (x - origin) * f + origin


def adjust_contrast(x: Tensor, factor: Union[Tensor, float]) -> Tensor:
    """``mean + factor * (x - mean)`` with the mean of each image and channel over its pixels. No clipping.

    Example:
        >>> adjust_contrast(torch.tensor([[[[0.0, 1000.0]]]]), torch.tensor([0.5])).flatten().tolist()
        [250.0, 750.0]
    """
    f = _per_image(factor, x)
    mean = x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)
    return torch.lerp(mean, x, f)


def adjust_gamma(x: Tensor, gamma: Union[Tensor, float], value_range: ValueRange = None) -> Tensor:
    """``lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma`` for ``x`` in ``[lo, hi]``, other values unchanged.

    ``(lo, hi)`` is ``value_range`` when given, else each image's per-channel min and max (so the
    extremes stay where they are and nothing is clipped). A constant channel is left as it is.

    Example:
        >>> adjust_gamma(torch.tensor([[[[0.0, 250.0, 1000.0]]]]), torch.tensor([2.0])).flatten().tolist()
        [0.0, 62.5, 1000.0]
    """
    g = _per_image(gamma, x)
    lo, hi = value_bounds(x, value_range)
    span = hi - lo
    mapped = (x - lo).div_(torch.where(span > 0, span, torch.ones_like(span))).clamp_(0, 1).pow_(g).mul_(span).add_(lo)
    if value_range is None:  # every value lies in its own range; a constant channel gives lo + 0 * 0 = x
        return mapped
    return torch.where((x >= lo) & (x <= hi), mapped, x)


def solarize(x: Tensor, value_range: ValueRange = None) -> Tensor:
    """``lo + hi - x`` where ``x >= (lo + hi) / 2``, else ``x``: the paper's ``1 - x`` above 0.5 for
    ``value_range=(0, 1)``; ``(lo, hi)`` as in :func:`adjust_gamma`.

    Example:
        >>> solarize(torch.tensor([[[[100.0, 400.0, 900.0]]]]), value_range=(0, 1000)).flatten().tolist()
        [100.0, 400.0, 100.0]
    """
    lo, hi = value_bounds(x, value_range)
    return torch.where(x >= (lo + hi) / 2, (lo + hi) - x, x)


def _check_float_images(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim < 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} takes a batch (N, C, H, W), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"{what} takes floating-point images, got dtype {x.dtype}: convert them first, e.g. "
                        f"x.float() / 65535 for 16-bit data (on the device, after the transfer)")


class CheckChannels(nn.Module):
    """The first stage of a ``channels != 3`` pipeline: a ValueError naming both channel counts when a
    batch does not have the channels the pipeline was built for, a TypeError for integer images.

    Example:
        >>> CheckChannels(2)(torch.zeros(1, 2, 4, 4)).shape
        torch.Size([1, 2, 4, 4])
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = int(channels)

    def forward(self, x: Tensor) -> Tensor:
        _check_float_images(x, "the augmentation")
        if x.shape[1] != self.channels:
            raise ValueError(f"this augmentation was built for {self.channels}-channel images (channels="
                             f"{self.channels}) but the batch has {x.shape[1]} channels, shape {tuple(x.shape)}; "
                             f"build it with channels={x.shape[1]} or pass {self.channels}-channel images")
        return x

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class IntensityJitter(nn.Module):
    """Brightness, contrast and gamma jitter for any number of channels: the colour jitter of a
    ``channels != 3`` pipeline.

    With probability ``p`` per image, the three steps run in a random order (drawn per image,
    or once per batch with ``per_image_order=False``), each with a factor drawn per image (or
    per image and channel with ``per_channel=True``):

    - brightness: :func:`adjust_brightness`, factor uniform in ``[1 - brightness, 1 + brightness]``,
      around ``value_range[0]`` when given, else around 0;
    - contrast: :func:`adjust_contrast`, factor uniform in ``[1 - contrast, 1 + contrast]``, around each
      channel's mean;
    - gamma: :func:`adjust_gamma` in ``value_range`` (else each image's per-channel range), exponent
      drawn as nnU-Net does: with probability 1/2 uniform in ``[gamma[0], 1]``, else in ``[1, gamma[1]]``.

    Nothing is clipped unless ``clip=True`` (which needs ``value_range`` and clamps to it after
    each step, as the paper's RGB jitter clamps to [0, 1]). The parameters of the last call are
    in ``self._params`` (CPU tensors); ``jitter(x, params=jitter._params)`` repeats it.

    Example:
        >>> jitter = IntensityJitter(brightness=0.4, contrast=0.4, gamma=(0.7, 1.5), p=0.8, per_channel=True)
        >>> jitter(torch.rand(2, 4, 8, 8)).shape, tuple(jitter._params["gamma"].shape)
        (torch.Size([2, 4, 8, 8]), (2, 4))
    """

    def __init__(
        self,
        brightness: FactorSpec = 0.4,
        contrast: FactorSpec = 0.4,
        gamma: Tuple[float, float] = DEFAULT_GAMMA,
        p: float = 0.8,
        *,
        per_channel: bool = False,
        value_range: ValueRange = None,
        clip: bool = False,
        per_image_order: bool = True,
    ) -> None:
        super().__init__()
        self.brightness = factor_range(brightness, "brightness")
        self.contrast = factor_range(contrast, "contrast")
        try:
            g_lo, g_hi = (float(v) for v in gamma)
        except (TypeError, ValueError) as error:
            raise ValueError(f"gamma must be a pair (lo, hi) of exponents, got {gamma!r}") from error
        if not 0 < g_lo <= g_hi:
            raise ValueError(f"gamma must satisfy 0 < lo <= hi, got {gamma!r}")
        self.gamma = (g_lo, g_hi)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = float(p)
        self.per_channel = bool(per_channel)
        self.value_range = check_value_range(value_range)
        if clip and self.value_range is None:
            raise ValueError("clip=True clamps to value_range: give value_range=(lo, hi) as well")
        self.clip = bool(clip)
        self.per_image_order = bool(per_image_order)
        self._params: Dict[str, Tensor] = {}

    def generate_parameters(self, batch_shape: Sequence[int]) -> Dict[str, Tensor]:
        """Per-image draws (CPU tensors): ``applied`` (N,), ``brightness``, ``contrast`` and ``gamma``
        (N, C or 1), ``order`` (N, 3)."""
        n = int(batch_shape[0])
        k = int(batch_shape[1]) if self.per_channel else 1
        applied = torch.rand(n) < self.p
        b_lo, b_hi = self.brightness
        c_lo, c_hi = self.contrast
        brightness = b_lo + (b_hi - b_lo) * torch.rand(n, k)
        contrast = c_lo + (c_hi - c_lo) * torch.rand(n, k)
        g_lo, g_hi = self.gamma
        below = (g_lo, min(g_hi, 1.0))
        above = (max(g_lo, 1.0), g_hi)
        p_below = 0.5 if g_lo < 1.0 < g_hi else (1.0 if g_hi <= 1.0 else 0.0)
        side = torch.rand(n, k) < p_below
        u = torch.rand(n, k)
        gamma = torch.where(side, below[0] + (below[1] - below[0]) * u, above[0] + (above[1] - above[0]) * u)
        if self.per_image_order:
            order = torch.rand(n, 3).argsort(dim=1)
        else:
            order = torch.randperm(3).view(1, 3).expand(n, 3).clone()
        return {"applied": applied, "brightness": brightness, "contrast": contrast, "gamma": gamma, "order": order}

    def _step(self, x: Tensor, step: int, factor: Tensor) -> Tensor:
        if step == 0:
            out = adjust_brightness(x, factor, self.value_range[0] if self.value_range is not None else 0.0)
        elif step == 1:
            out = adjust_contrast(x, factor)
        else:
            out = adjust_gamma(x, factor, self.value_range)
        if self.clip and self.value_range is not None:
            out = out.clamp(*self.value_range)
        return out

    def forward(self, x: Tensor, params: Optional[Dict[str, Tensor]] = None) -> Tensor:
        _check_float_images(x, "IntensityJitter")
        params = self.generate_parameters(x.shape) if params is None else params
        self._params = params
        applied = params["applied"].cpu().bool()
        if not bool(applied.any()):
            return x
        factors = torch.stack([params[name] for name in INTENSITY_STEPS], dim=1)  # (N, 3, C or 1)
        factors = factors.to(device=x.device, dtype=x.dtype)
        order = params["order"].cpu()
        out = x.clone()
        rows = order[applied].unique(dim=0)
        for row in rows:  # the images that share one order of the steps, together
            members = (applied & (order == row).all(dim=1)).nonzero().flatten()
            every = members.numel() == x.shape[0]
            index = members.to(x.device)
            part = x if every else x.index_select(0, index)
            part_factors = factors if every else factors.index_select(0, index)
            for step in row.tolist():
                part = self._step(part, step, part_factors[:, step])
            out.index_copy_(0, index, part)
        return out

    def extra_repr(self) -> str:
        return (f"brightness={self.brightness}, contrast={self.contrast}, gamma={self.gamma}, p={self.p}, "
                f"per_channel={self.per_channel}, value_range={self.value_range}, clip={self.clip}, "
                f"per_image_order={self.per_image_order}")


class RandomSolarizeRange(nn.Module):
    """:func:`solarize` with probability ``p`` per image, in ``value_range`` (else each image's
    per-channel range). The parameters of the last call are in ``self._params`` (``applied``, (N,)).

    Example:
        >>> RandomSolarizeRange(p=1.0, value_range=(0.0, 1.0))(torch.tensor([[[[0.2, 0.7]]]])).flatten().tolist()
        [0.20000000298023224, 0.30000001192092896]
    """

    def __init__(self, p: float = 0.2, value_range: ValueRange = None) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must lie in [0, 1], got {p}")
        self.p = float(p)
        self.value_range = check_value_range(value_range)
        self._params: Dict[str, Tensor] = {}

    def forward(self, x: Tensor, params: Optional[Dict[str, Tensor]] = None) -> Tensor:
        _check_float_images(x, "RandomSolarizeRange")
        params = {"applied": torch.rand(x.shape[0]) < self.p} if params is None else params
        self._params = params
        applied = params["applied"].cpu().bool()
        if not bool(applied.any()):
            return x
        if bool(applied.all()):
            return solarize(x, self.value_range)
        index = applied.nonzero().flatten().to(x.device)
        return x.index_copy(0, index, solarize(x.index_select(0, index), self.value_range))

    def extra_repr(self) -> str:
        return f"p={self.p}, value_range={self.value_range}"
