"""Rebuilding a network from the model spec recorded in a file: built-in families only.

``encoder.pt`` and ``checkpoints/last.pt`` record the spec the network was built from. A file never
decides which code runs, so rebuilding from what a file says uses only the built-in families:

- ``torchvision/<name>`` (a name of ``torchvision.models.list_models()``),
- ``timm/<name>`` (a name of ``timm.list_models()``; no ``hf-hub:``, nothing downloaded),
- ``byol_wrap/small_cnn`` or ``byol_wrap/small_cnn:<width>``.

Any other recorded spec (``my_nets.py:make``, ``package.module:build``, ``os:abort``...) is refused with
:class:`UntrustedSpecError` *before* anything is imported. To load such a file, the caller names the code
itself: ``load_encoder(path, model=net)`` with a module it built (or ``model="my_nets.py:make"``), or
``--model SPEC`` on the command line (``byol-wrap embed`` / ``export``). A spec the user gives runs that
code, as ``pip install`` or ``python my_nets.py`` would.

Example:
    >>> is_builtin_spec("torchvision/resnet18"), is_builtin_spec("byol_wrap/small_cnn:32")
    (True, True)
    >>> is_builtin_spec("os:abort"), is_builtin_spec("torchvision/../evil.py:make")
    (False, False)
"""
from __future__ import annotations

import re
from typing import Any, Optional, Union

from torch import nn

__all__ = ["BUILTIN_FAMILIES", "is_builtin_spec", "UntrustedSpecError", "rebuild_recorded", "shown_spec"]

BUILTIN_FAMILIES = ("torchvision/", "timm/", "byol_wrap/")
_BUILTIN = re.compile(r"torchvision/[A-Za-z0-9_]+|timm/[A-Za-z0-9_][A-Za-z0-9_.\-]*|byol_wrap/small_cnn(:[0-9]{1,6})?")


def is_builtin_spec(spec: Any) -> bool:
    """Whether ``spec`` names a built-in family's network (no file, no module of the user's: no code runs).

    Example:
        >>> is_builtin_spec("timm/resnet18.a1_in1k"), is_builtin_spec("timm/hf-hub:org/model")
        (True, False)
    """
    return isinstance(spec, str) and _BUILTIN.fullmatch(spec.strip()) is not None


def shown_spec(spec: Any, limit: int = 120) -> str:
    """``repr(spec)``, shortened: a spec read from a file goes into a message as data, on one line.

    Example:
        >>> shown_spec("a" * 200)[-5:]
        "...'"
    """
    text = repr(spec)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


class UntrustedSpecError(ValueError):
    """A file records a model spec outside the built-in families; nothing was imported or run.

    A ValueError: the command line prints it as one line and exits with code 2.
    """


def rebuild_recorded(spec: Any, source: str, image_size: Optional[int] = None,
                     model: Union[nn.Module, str, None] = None, how: str = "pass model=<a new instance of it>",
                     channels: int = 3) -> nn.Module:
    """The network a file's recorded ``spec`` names, or the caller's own ``model``.

    Args:
        spec: the spec recorded in the file (``None``/empty: a module given in Python).
        source: the file, for messages (``"encoder run/encoder.pt"``).
        image_size: passed to the builder (ViTs).
        model: ``None``: rebuild ``spec``, built-in families only. An ``nn.Module``: returned as it is
            (the caller built it). A string: the caller's own spec, built as given (it may run code: the
            caller named it).
        how: what the caller can do instead, for the message (``"--model SPEC"`` on the command line).
        channels: the input channels the run recorded (a C-channel model is rebuilt for them).

    Raises:
        UntrustedSpecError: ``model`` is ``None`` and ``spec`` is not built-in (nothing was imported).
        RuntimeError: ``model`` is ``None`` and the file records no spec.

    Example:
        >>> rebuild_recorded("byol_wrap/small_cnn:8", "encoder e.pt")[0].out_channels
        8
        >>> try:
        ...     rebuild_recorded("os:abort", "encoder e.pt")
        ... except UntrustedSpecError as error:
        ...     print(str(error)[:52])
        encoder e.pt records the model spec 'os:abort', whic
    """
    from .models import build_model

    if isinstance(model, nn.Module):
        return model
    if isinstance(model, str):
        return build_model(model, image_size=image_size, channels=channels)
    if model is not None:
        raise TypeError(f"model must be an nn.Module, a spec string or None, got {type(model).__name__}")
    if not spec:
        raise RuntimeError(f"{source} holds a module that was given in Python, not a model spec; {how}")
    if not is_builtin_spec(spec):
        raise UntrustedSpecError(
            f"{source} records the model spec {shown_spec(spec)}, which is not one of the built-in families "
            f"(torchvision/<name>, timm/<name>, byol_wrap/small_cnn): a file never decides which code runs, so "
            f"nothing was imported. If you wrote that network and trust its code, {how}")
    return build_model(spec.strip(), image_size=image_size, channels=channels)
