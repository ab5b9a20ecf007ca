"""The run's recipe: defaults (run length, learning rates), the digits' views, precision and autocast.

Example:
    >>> resolve_precision(None, torch.device("cpu"))
    '32'
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional, Union

import torch
from torch import nn

from .checkpoint import RunError

EXTRAS_MESSAGE = 'byol-wrap pretrain needs the training extras: pip install "byol-wrap[train]"'
DIGITS_STEPS = 300          # the built-in default run: ~1-3 minutes on 2 CPU cores
DEFAULT_EPOCHS = 100        # run length for your own data when neither steps nor epochs is given
ADAM_LR = 3e-4
DIGITS_LR = 2e-3            # Adam on the digits default (examples/pretrain.py's measured rate)
WARMUP_SHARE = 0.01         # the paper's warm-up: 10 of 1000 epochs
PRECISIONS = ("32", "bf16", "16")
OPTIMIZERS = ("adam", "lars")


def require_extras() -> None:
    """Raise one ``ImportError`` line naming the ``[train]`` extra when tqdm or matplotlib is missing."""
    missing = []
    for module in ("tqdm", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"{EXTRAS_MESSAGE} (missing: {', '.join(missing)})")




def digits_augmentation(image_size: int) -> nn.Sequential:
    """Views for the built-in digits: the paper's T without flips (a mirrored 2 is no 2), milder crops
    (an 8 % crop of an 8x8 digit is a blob), jitter reduced to brightness and contrast, a small affine
    (examples/pretrain.py measured 65 % -> 80 % kNN in 300 steps with it). No normalisation: the
    learner applies ImageNet statistics after it.

    Example:
        >>> digits_augmentation(32)(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """
    import kornia.augmentation as K

    return nn.Sequential(
        K.RandomResizedCrop((image_size, image_size), scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)),
        K.RandomAffine(degrees=15, translate=(0.1, 0.1)),
        K.ColorJitter(brightness=0.4, contrast=0.4, p=0.8),
        K.RandomGaussianBlur((3, 3), sigma=(0.1, 2.0), p=0.5),
    )


def resolve_precision(precision: Optional[Union[str, int]], device: torch.device) -> str:
    """``--precision`` checked against the device; ``None``: bf16 where the device supports it, else 32."""
    if precision is None:
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "32"
    precision = str(precision)
    if precision not in PRECISIONS:
        raise RunError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "16" and device.type != "cuda":
        raise RunError(f"--precision 16 needs a CUDA device (this run is on {device}); use 32 or bf16")
    return precision


def autocast(precision: str, device: torch.device) -> Any:
    """The autocast context of ``precision`` (a no-op for 32)."""
    if precision == "32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
