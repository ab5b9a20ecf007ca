"""The construction-time probe: input shape, device/dtype, and a side-effect-free forward.

``BYOL`` and :func:`byol_wrap.core.layers.list_layers` run the net once on a zero batch to learn
what a layer gives. This module holds what both need: the per-sample input shape
(:func:`infer_input_shape`), the net's device and dtype, a context that leaves no trace
(:func:`probe_context`) and the one message for a net that refuses the probe input
(:func:`probe_failure`).
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, List, Optional, Sequence, Tuple, Type, Union

import torch
from torch import Tensor, nn

ImageSize = Union[int, Sequence[int], None]
#: What a net that refuses the probe input may raise (wrapped by :func:`probe_failure`).
PROBE_ERRORS: Tuple[Type[BaseException], ...] = (RuntimeError, ValueError, TypeError, IndexError, AssertionError)


def image_size_pair(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``224 -> (224, 224)``; ``(H, W)`` is checked and returned as a tuple.

    Example:
        >>> image_size_pair(32), image_size_pair([24, 40])
        ((32, 32), (24, 40))
    """
    if isinstance(image_size, bool):
        raise TypeError("image_size must be an int or an (H, W) pair, got a bool")
    if isinstance(image_size, int):
        size = (image_size, image_size)
    elif isinstance(image_size, Sequence) and len(image_size) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) for s in image_size
    ):
        size = (int(image_size[0]), int(image_size[1]))
    else:
        raise TypeError(f"image_size must be an int or an (H, W) pair of ints, got {image_size!r}")
    if min(size) <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return size


def infer_input_shape(
    net: nn.Module,
    image_size: ImageSize = None,
    input_shape: Optional[Sequence[int]] = None,
) -> Tuple[int, ...]:
    """The per-sample input shape for the construction-time probe.

    ``input_shape`` wins when given (e.g. ``(channels, length)`` for a 1-D signal
    encoder). Otherwise ``(C, H, W)`` from ``image_size`` with C the ``in_channels`` of
    the net's first convolution (3 if it has none); a net whose first convolution is a
    ``Conv1d`` or ``Conv3d`` raises a ValueError asking for ``input_shape``.

    Example:
        >>> infer_input_shape(nn.Conv2d(1, 8, 3), 28)
        (1, 28, 28)
    """
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
        return shape
    first_conv = next((m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    if image_size is None:
        raise ValueError(
            "give image_size (an int or (H, W)) for image inputs, or input_shape (the per-sample shape, "
            "e.g. (channels, length) for a 1-D signal encoder)"
        )
    if isinstance(first_conv, (nn.Conv1d, nn.Conv3d)):
        layout = "(channels, length)" if isinstance(first_conv, nn.Conv1d) else "(channels, depth, height, width)"
        raise ValueError(
            f"{type(net).__name__} starts with a {type(first_conv).__name__}, so its inputs are {layout}, which "
            f"image_size cannot describe; pass input_shape={layout} (e.g. input_shape=({first_conv.in_channels}, ...))"
        )
    height, width = image_size_pair(image_size)
    channels = first_conv.in_channels if first_conv is not None else 3
    return (int(channels), height, width)


def module_device_dtype(net: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the net's first parameter (or buffer); CPU/float32 if none.

    Example:
        >>> module_device_dtype(nn.Linear(2, 2).double())
        (device(type='cpu'), torch.float64)
    """
    first: Optional[Tensor] = None
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
        first = tensor if first is None else first
    return (first.device if first is not None else torch.device("cpu")), torch.get_default_dtype()


def cuda_rng_devices(device: torch.device) -> List[int]:
    """The CUDA device indices whose RNG ``torch.random.fork_rng`` must save for ``device``.

    Example:
        >>> cuda_rng_devices(torch.device("cpu"))
        []
    """
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


@contextlib.contextmanager
def probe_context(net: nn.Module, grad: bool = False) -> Iterator[None]:
    """Run ``net`` without side effects: eval mode (no BatchNorm statistics update, no
    dropout), the global RNG (CPU and the net's CUDA devices) forked, every module's
    train/eval flag restored afterwards, and gradients off unless ``grad=True``."""
    modes = [(module, module.training) for module in net.modules()]
    device, _ = module_device_dtype(net)
    try:
        with torch.random.fork_rng(devices=cuda_rng_devices(device)), torch.set_grad_enabled(grad):
            net.eval()
            yield
    finally:
        for module, training in modes:
            module.training = training


def probe_failure(
    net: nn.Module, shape: Sequence[int], error: BaseException, image_size: ImageSize = None
) -> ValueError:
    """The one error for a net that refuses the probe input of per-sample ``shape``
    (raise it ``from error``).

    Example:
        >>> print(probe_failure(nn.Linear(4, 2), (3, 8, 8), RuntimeError("mat1 and mat2"), image_size=8))
        Linear does not accept inputs of shape (3, 8, 8) (image_size=8): mat1 and mat2. Give the image_size the net \
was built for, or input_shape=(channels, ...) for inputs that are not RGB images.
    """
    given = f" (image_size={image_size!r})" if image_size is not None else ""
    first_conv = next((m for m in net.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    channels = ""
    if first_conv is not None and len(shape) > 1 and first_conv.in_channels != shape[0]:
        channels = (f" Its first convolution takes {first_conv.in_channels} channels but the inputs have {shape[0]}: "
                    f"pass input_shape with {first_conv.in_channels} channels, or leave it out (the channel count is "
                    f"then read from that convolution).")
    return ValueError(
        f"{type(net).__name__} does not accept inputs of shape {tuple(shape)}{given}: {error}. Give the image_size "
        f"the net was built for, or input_shape=(channels, ...) for inputs that are not RGB images.{channels}"
    )
