"""Deprecated aliases of renamed functions and keywords (one DeprecationWarning each call)."""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Dict, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now called ``new``."""
    warnings.warn(f"{old} is deprecated; use {new} (same behaviour)", DeprecationWarning, stacklevel=stacklevel)


def deprecated_alias(func: F, old_name: str) -> F:
    """``func`` under its old name, warning on every call."""

    @functools.wraps(func)
    def alias(*args: Any, **kwargs: Any) -> Any:
        warn_renamed(old_name, func.__name__)
        return func(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = old_name
    alias.__doc__ = f"Deprecated alias of :func:`{func.__name__}`."
    return alias  # type: ignore[return-value]


def renamed_keyword(
    kwargs: Dict[str, Any], old: str, new: str, value: Any, default: Any, where: str, stacklevel: int = 4
) -> Any:
    """Pop the old keyword ``old`` from ``kwargs`` (with a warning) and return the value of ``new``.

    Raises:
        TypeError: when both the old and the new keyword are given.
    """
    if old not in kwargs:
        return value
    old_value = kwargs.pop(old)
    if value is not default:
        raise TypeError(f"{where} got both {old}= (deprecated) and {new}=; pass only {new}=")
    warn_renamed(f"{where}({old}=...)", f"{new}=", stacklevel=stacklevel)
    return old_value


def reject_unknown(kwargs: Dict[str, Any], where: str) -> None:
    """Raise the TypeError Python raises for unexpected keywords."""
    if kwargs:
        raise TypeError(f"{where} got an unexpected keyword argument {next(iter(kwargs))!r}")

