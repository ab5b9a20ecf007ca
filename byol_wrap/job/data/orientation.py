"""The orientation tag (TIFF tag 274, the same code as EXIF's): pixels turned the way viewers show them.

Pillow applies EXIF orientation to the photos it decodes (``ImageOps.exif_transpose``); files read by
other libraries (tifffile for TIFF, imagecodecs for 16-bit colour PNG) get the same turn here, on
``(C, H, W)`` arrays, so that a file means the same picture whichever library decodes it.

=====  ==========================================  ==================================
code   stored rows are                             turned by
=====  ==========================================  ==================================
1      top to bottom, left to right (the default)  nothing
2      mirrored left-right                         flip left-right
3      rotated 180 degrees                         rotate 180
4      mirrored top-bottom                         flip top-bottom
5      transposed                                  transpose
6      rotated 90 degrees counter-clockwise        rotate 90 clockwise
7      transversed                                 transverse
8      rotated 90 degrees clockwise                rotate 90 counter-clockwise
=====  ==========================================  ==================================

Example:
    >>> import numpy as np
    >>> pixels = np.arange(6).reshape(1, 2, 3)
    >>> orient(pixels, 6).tolist()
    [[[3, 0], [4, 1], [5, 2]]]
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

ORIENTATION_TAG = 274

__all__ = ["ORIENTATION_TAG", "orient", "tag_value"]


def tag_value(value: Any) -> Optional[int]:
    """The orientation code 1-8 from a tag's value (an int, an enum or a one-item tuple), else None.

    Example:
        >>> tag_value((6,)), tag_value(9), tag_value(None)
        (6, None, None)
    """
    if isinstance(value, (tuple, list)):
        value = value[0] if len(value) == 1 else None
    try:
        code = int(value)
    except (TypeError, ValueError):
        return None
    return code if 1 <= code <= 8 else None


def orient(pixels: np.ndarray, code: Optional[int]) -> np.ndarray:
    """``pixels`` ``(C, H, W)`` as a viewer shows a file with orientation ``code`` (None or 1: unchanged).

    Codes 5-8 swap height and width. The result may be a view of ``pixels``.

    Example:
        >>> import numpy as np
        >>> orient(np.arange(6).reshape(1, 2, 3), 2).tolist()
        [[[2, 1, 0], [5, 4, 3]]]
    """
    if code is None or code == 1:
        return pixels
    if code == 2:
        return pixels[:, :, ::-1]
    if code == 3:
        return pixels[:, ::-1, ::-1]
    if code == 4:
        return pixels[:, ::-1, :]
    if code == 5:
        return pixels.transpose(0, 2, 1)
    if code == 6:
        return pixels[:, ::-1, :].transpose(0, 2, 1)
    if code == 7:
        return pixels[:, ::-1, ::-1].transpose(0, 2, 1)
    if code == 8:
        return pixels[:, :, ::-1].transpose(0, 2, 1)
    raise ValueError(f"orientation codes are 1 to 8, got {code!r}")
