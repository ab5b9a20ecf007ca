"""Networks for C-channel images: the first convolution rebuilt for C inputs, RGB weights adapted to it.

``torchvision/<name>`` networks are built for RGB; for a run of C != 3 channels their first
``nn.Conv2d`` is replaced by one with C input channels and the same kernel, stride, padding,
dilation, bias and padding mode (:func:`rebuild_first_conv`). Pretrained RGB weights
(``--weights``) are carried into the C-channel kernel the way timm's ``adapt_input_conv`` does
(:func:`adapt_rgb_kernel`): C = 1 sums the three kernels; C > 3 repeats them over the channels
and scales by 3 / C, so a grey image repeated into every channel gives the response the RGB network
gave it. Kernels of any other input count are refused with a message.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
    >>> print(rebuild_first_conv(net, 4))
    first convolution 0 rebuilt for 4 input channels (was 3): kernel (3, 3), stride (2, 2), padding (1, 1)
    >>> net(torch.zeros(1, 4, 8, 8)).shape
    torch.Size([1, 8, 4, 4])
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["first_conv", "rebuild_first_conv", "adapt_rgb_kernel", "adapt_state_dict", "conv_channels"]


def first_conv(net: nn.Module) -> Optional[Tuple[str, nn.Conv2d]]:
    """The first ``nn.Conv2d`` of ``net`` in registration order (the stem of torchvision and timm
    networks), with its qualified name; None when there is none.

    Example:
        >>> first_conv(nn.Sequential(nn.Identity(), nn.Conv2d(1, 2, 3)))[0]
        '1'
    """
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def conv_channels(net: nn.Module) -> Optional[int]:
    """Input channels of the first convolution (None without one).

    Example:
        >>> conv_channels(nn.Conv2d(13, 4, 1))
        13
    """
    found = first_conv(net)
    return None if found is None else int(found[1].in_channels)


def rebuild_first_conv(net: nn.Module, channels: int) -> str:
    """Replace ``net``'s first convolution by one taking ``channels`` inputs; returns the log line.

    The new kernel keeps every other setting; its weights are drawn (under the global seed) from a
    normal distribution with the replaced kernel's standard deviation, so the network's own
    initialisation scale is kept. The bias is copied. Torchvision's ``transform_input`` (an RGB
    re-normalisation in Inception and GoogLeNet) is switched off.

    Raises:
        ValueError: no ``nn.Conv2d``, or a grouped first convolution.
    """
    found = first_conv(net)
    if found is None:
        raise ValueError(f"{type(net).__name__} has no nn.Conv2d whose input channels could be set to {channels}")
    name, old = found
    if old.groups != 1:
        raise ValueError(f"the first convolution {name} of {type(net).__name__} is grouped (groups={old.groups}); "
                         f"it cannot be rebuilt for {channels} input channels")
    geometry: Any = (old.kernel_size, old.stride, old.padding, old.dilation)
    new = nn.Conv2d(channels, old.out_channels, geometry[0], stride=geometry[1], padding=geometry[2],
                    dilation=geometry[3], groups=1, bias=old.bias is not None, padding_mode=old.padding_mode,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        std = float(old.weight.std()) if old.weight.numel() > 1 else 1.0
        new.weight.normal_(0.0, std if std > 0 else 1.0)
        if old.bias is not None and new.bias is not None:
            new.bias.copy_(old.bias)
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], new)
    if getattr(net, "transform_input", False):
        net.transform_input = False  # type: ignore[assignment]
    padding = old.padding if isinstance(old.padding, str) else tuple(old.padding)
    return (f"first convolution {name} rebuilt for {channels} input channels (was {old.in_channels}): kernel "
            f"{tuple(old.kernel_size)}, stride {tuple(old.stride)}, padding {padding}")


def adapt_rgb_kernel(weight: Tensor, channels: int) -> Tensor:
    """An RGB kernel ``(O, 3, kh, kw)`` for ``channels`` inputs, as timm's ``adapt_input_conv``:
    1 channel: the sum over RGB; more: RGB repeated, cut to ``channels``, times ``3 / channels``.

    Raises:
        ValueError: a kernel whose input count is not 3.

    Example:
        >>> adapt_rgb_kernel(torch.ones(1, 3, 1, 1), 1).flatten().tolist()
        [3.0]
        >>> adapt_rgb_kernel(torch.tensor([1., 2., 3.]).view(1, 3, 1, 1), 4).flatten().tolist()
        [0.75, 1.5, 2.25, 0.75]
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"only an RGB kernel (O, 3, kh, kw) can be adapted to {channels} channels, got shape "
                         f"{tuple(weight.shape)}")
    dtype = weight.dtype
    w = weight.float()
    if channels == 1:
        w = w.sum(dim=1, keepdim=True)
    elif channels != 3:
        w = w.repeat(1, int(math.ceil(channels / 3)), 1, 1)[:, :channels] * (3.0 / channels)
    return w.to(dtype)


def adapt_state_dict(state: Dict[str, Tensor], net: nn.Module, source: str) -> Tuple[Dict[str, Tensor], Optional[str]]:
    """``state`` with its first-convolution kernel adapted from RGB to ``net``'s input channels
    (and a log line), or unchanged (and None) when the shapes already agree.

    Raises:
        ValueError: the file's kernel takes neither 3 nor ``net``'s channel count (the message
            names both and the file).
    """
    found = first_conv(net)
    if found is None:
        return state, None
    name, conv = found
    key = f"{name}.weight" if name else "weight"
    if key not in state or state[key].ndim != 4:
        return state, None
    have, want = int(state[key].shape[1]), int(conv.in_channels)
    if have == want or tuple(state[key].shape[:1] + state[key].shape[2:]) != (conv.out_channels, *conv.kernel_size):
        return state, None  # nothing to adapt; any other difference is reported by the state_dict check
    if have != 3:
        raise ValueError(f"{source}: the first convolution {key} has shape {tuple(state[key].shape)}, which cannot be "
                         f"adapted to this {want}-channel network's {tuple(conv.weight.shape)} (only RGB kernels "
                         f"are adapted); give weights of a {want}-channel or an RGB network of the same architecture")
    adapted = dict(state)
    adapted[key] = adapt_rgb_kernel(state[key], want)
    how = "summed over R, G, B" if want == 1 else f"R, G, B repeated and scaled by 3/{want}"
    return adapted, f"weights: the RGB kernel of {key} adapted to {want} input channels ({how}, as timm does)"
