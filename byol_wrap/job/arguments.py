"""The run's arguments: checks of the numbers given, and comparable stand-ins for objects (as saved in last.pt).

Example:
    >>> positive_int("steps", 10), describe(3.5)
    (10, 3.5)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import RunError


def positive_int(name: str, value: Any) -> int:
    """``value`` when it is a positive int, else a RunError naming the flag."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RunError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    return value


def describe(obj: Any) -> Any:
    """A comparable stand-in for arguments that are objects (a Dataset, an nn.Module)."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, os.PathLike):
        return str(Path(obj).resolve())
    if isinstance(obj, nn.Module):
        return f"<{type(obj).__module__}.{type(obj).__name__}, {sum(p.numel() for p in obj.parameters())} parameters>"
    size = len(obj) if hasattr(obj, "__len__") else "?"
    return f"<{type(obj).__module__}.{type(obj).__name__} of {size} items>"


def check_batch_fits(batch_size: int, size: int, world_size: int = 1) -> None:
    """A RunError naming the data's size as the limit when ``batch_size`` (per process) does not fit it.

    Example:
        >>> check_batch_fits(4, 10)
    """
    if batch_size * world_size <= size:
        return
    processes = f" x {world_size} processes" if world_size > 1 else ""
    images = f"{size} image{'s' if size != 1 else ''}"
    if size < 2 * world_size:
        raise RunError(f"the data set is too small for BYOL ({images}): it needs at least 2 images per process "
                       f"(a batch of 2 for its BatchNorm layers)")
    raise RunError(f"--batch-size {batch_size}{processes} is larger than the data set ({images}); use --batch-size "
                   f"{size // world_size} or less")


def length_flag(steps: Any, epochs: Any, total_steps: int) -> str:
    """How the run's length was given, for messages: ``"--steps 100"``, ``"--epochs 5"``, or the default.

    Example:
        >>> length_flag(None, 5, 75)
        '--epochs 5'
    """
    if steps is not None:
        return f"--steps {steps}"
    if epochs is not None:
        return f"--epochs {epochs}"
    return f"no --steps or --epochs (the default: {total_steps} steps)"
