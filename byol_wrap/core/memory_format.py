"""Channels-last activations: the views reach a convolutional net as NHWC tensors.

On the CPU, PyTorch's oneDNN convolutions and its BatchNorm kernels run faster on
channels-last (NHWC) tensors than on the default NCHW layout, and a convolution keeps the
layout of its input, so converting the two views once makes every activation of the net
channels-last. The values are the same to float rounding; the user's net (its weights and
their layout) is not touched. ``BYOL(memory_format="auto")`` does this on the CPU for nets
that contain an ``nn.Conv2d`` and give the same representation for both layouts (checked
once at construction: a net that calls ``.view`` on a feature map fails on NHWC input, and
then the views stay as they are). BENCHMARKS.md has the step times.
"""
from __future__ import annotations

from typing import Callable, Literal, Optional, Sequence

import torch
from torch import Tensor, nn

from .probe import PROBE_ERRORS, probe_context

__all__ = ["MemoryFormat", "MEMORY_FORMATS", "check_memory_format", "has_conv2d", "channels_last_problem",
           "wants_channels_last"]

#: ``BYOL(memory_format=...)``: ``"auto"``, ``"channels_last"`` or ``"preserve"``.
MemoryFormat = Literal["auto", "channels_last", "preserve"]
MEMORY_FORMATS = ("auto", "channels_last", "preserve")

#: Largest difference (relative to the representation's largest magnitude) between the two layouts' probe outputs
#: that still counts as "the same"; a layout-dependent net gives differences of order 1.
AGREEMENT_RTOL = 1e-2


def check_memory_format(memory_format: str) -> None:
    """Raise a ValueError unless ``memory_format`` is one of :data:`MEMORY_FORMATS`.

    Example:
        >>> check_memory_format("auto")
    """
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(
            f"memory_format must be one of {', '.join(map(repr, MEMORY_FORMATS))}, got {memory_format!r}"
        )


def has_conv2d(net: nn.Module) -> bool:
    """Whether ``net`` contains an ``nn.Conv2d`` (the layers that gain from channels-last input).

    Example:
        >>> has_conv2d(nn.Sequential(nn.Conv2d(3, 8, 3))), has_conv2d(nn.Linear(2, 2))
        (True, False)
    """
    return any(isinstance(module, nn.Conv2d) for module in net.modules())


def channels_last_problem(
    net: nn.Module,
    representation: Callable[[Tensor], Tensor],
    input_shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype,
) -> Optional[str]:
    """Why channels-last input does not suit ``net``, or None when it does.

    Runs ``representation`` (the net up to the hidden layer, pooled) on one input in
    both layouts, without side effects (:func:`~byol_wrap.core.probe.probe_context`: eval
    mode, RNG forked, no gradients; the input comes from a private generator), and
    compares the results. Only 3-D per-sample shapes ``(C, H, W)`` qualify.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> channels_last_problem(net, net, (3, 8, 8), torch.device("cpu"), torch.float32) is None
        True
    """
    if len(input_shape) != 3:
        return f"inputs of per-sample shape {tuple(input_shape)} are not (C, H, W) images"
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((2, *input_shape), generator=generator).to(device=device, dtype=dtype)
    try:
        with probe_context(net):
            expected = representation(x)
            actual = representation(x.contiguous(memory_format=torch.channels_last))
    except PROBE_ERRORS as error:
        return f"{type(net).__name__} fails on channels-last input ({type(error).__name__}: {error})"
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    difference = float((actual.detach().float() - expected.detach().float()).abs().max()) if expected.numel() else 0.0
    if not difference <= AGREEMENT_RTOL * scale:  # also catches NaN
        return (f"{type(net).__name__} gives another representation for channels-last input (largest difference "
                f"{difference:.3g} at a scale of {scale:.3g}); its forward depends on the memory layout")
    return None


def wants_channels_last(memory_format: str, suitable: bool, x: Tensor) -> bool:
    """Whether ``x`` (a batch of views) goes to the net as channels-last.

    ``"channels_last"``: always (``suitable`` was checked when it was chosen);
    ``"auto"``: when the net is ``suitable`` and ``x`` is a 4-D batch on the CPU (the
    layout was measured faster there; not measured on a GPU, where you may pass
    ``"channels_last"`` yourself); ``"preserve"``: never.

    Example:
        >>> wants_channels_last("auto", True, torch.zeros(2, 3, 8, 8))
        True
    """
    if not suitable or x.ndim != 4 or memory_format == "preserve":
        return False
    return memory_format == "channels_last" or x.device.type == "cpu"
