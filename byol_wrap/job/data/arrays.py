"""Images held in arrays: ``.npz`` files (read without pickle) and scikit-learn's bundled digits.

Example:
    >>> len(digits_dataset(16))
    1438
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .datasets import ImageTensors
from .decode import TRAIN_EXTRA, error_reason
from .geometry import Size, size_pair


def _images_from_array(arr: Any, where: str) -> Tensor:
    import numpy as np

    if arr.dtype != np.uint8:
        raise ValueError(f"{where} must be uint8 images (0..255), got {arr.dtype}; convert with "
                         f"(x * 255).round().astype(np.uint8) for floats in [0, 1]")
    if arr.ndim == 3:  # N, H, W grey
        arr = arr[:, :, :, None]
    if arr.ndim != 4:
        raise ValueError(f"{where} must be (N, H, W, C) images, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.shape[-1] in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3, 4):
        raise ValueError(f"{where} must be (N, H, W, C) with 1, 3 or 4 channels, got shape {arr.shape}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 4:
        x = x[:, :3]
    return x.contiguous()


def _open_npz(path: Path) -> Any:
    import numpy as np

    try:
        return np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{path} is not a readable .npz file: {error_reason(error)}") from error


def _npz_array(npz: Any, key: str, path: Path) -> Any:
    try:
        return npz[key]
    except KeyError as error:
        raise ValueError(f"{path} has no {key!r} array (it has: {', '.join(npz.files) or 'none'})") from error
    except ValueError as error:  # object arrays refused by allow_pickle=False
        raise ValueError(f"{path}[{key!r}] cannot be read without pickle ({error}); store plain uint8 arrays"
                         ) from error


def load_npz_images(path: Union[str, Path], key: str = "x_train") -> Tensor:
    """uint8 ``(N, 3, H, W)`` from the ``key`` array of a ``.npz`` (``(N, H, W, C)`` uint8,
    grey and RGBA accepted), read with ``allow_pickle=False``."""
    path = Path(path)
    with _open_npz(path) as npz:
        return _images_from_array(_npz_array(npz, key, path), f"{path.name}[{key!r}]")


def stratified_split(labels: Tensor, fraction: float = 0.2, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """``(keep, held_out)`` index tensors: ``fraction`` of each class (rounded, at least one when the
    class has two or more images) held out, drawn by ``seed``; both sorted.

    Example:
        >>> keep, held = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
        >>> len(keep), len(held)
        (6, 2)
    """
    if not 0 < fraction < 1:
        raise ValueError(f"a split fraction must be between 0 and 1, got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_held = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def load_digits(image_size: Size = 32) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """scikit-learn's bundled digits (1797 8x8 greys, offline) as RGB uint8 at ``image_size``
    (bilinear upscaling), split deterministically 80/20 per class:
    ``(train_images, train_labels, test_images, test_labels)``.

    Example:
        >>> x, y, xq, yq = load_digits(16)
        >>> x.shape[1:], x.dtype, len(x) + len(xq)
        (torch.Size([3, 16, 16]), torch.uint8, 1797)
    """
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError as error:
        raise ImportError(f"the built-in digits data needs the training extras: {TRAIN_EXTRA}") from error
    digits = sk_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=size_pair(image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    bank, query = stratified_split(labels)
    return images[bank], labels[bank], images[query], labels[query]


def _is_digits(data: Any) -> bool:
    return isinstance(data, str) and data == "digits" and not Path(data).exists()


def digits_dataset(load_size: Optional[Size] = None, strict: bool = False) -> ImageTensors:
    """The built-in offline training set: the training split of :func:`load_digits` at ``load_size`` (32).

    Example:
        >>> len(digits_dataset(16))
        1438
    """
    images, labels, _, _ = load_digits(load_size if load_size is not None else 32)
    return ImageTensors(images, labels, name="digits", strict=strict)
