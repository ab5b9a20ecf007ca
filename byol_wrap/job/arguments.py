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
