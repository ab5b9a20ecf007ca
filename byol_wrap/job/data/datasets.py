"""The Datasets the loader reads: image files, in-memory uint8 tensors, a user's own torch Dataset.

Every item is ``(image or None, index, reason)``: a file or item that cannot be read is ``(None, i, reason)``
and is skipped by the loader's collate function.

Example:
    >>> ds = ImageTensors(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), name="x_train")
    >>> ds.describe(2)
    'x_train[2]'
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .channels import PixelFormat
from .decode import UnreadableImageError, _import_pil, _pil_to_tensor, error_reason, read_image
from .geometry import Size, resize_center_crop, size_pair

Item = Tuple[Optional[Tensor], int, Optional[str]]
FIRST_ITEMS = 64  # a user's Dataset: items tried for the first readable one (its size sets the batches')


class ImageFiles(Dataset):
    """Image files decoded on access (in DataLoader workers) to ``(C, *load_size)`` in the pixel
    format ``fmt`` (:class:`~byol_wrap.job.data.channels.PixelFormat`; without one: uint8 RGB).

    ``dataset[i]`` is ``(image, i, None)``, or ``(None, i, reason)`` for a file that cannot
    be decoded or does not fit ``fmt``. ``describe(i)`` is the file's path.

    Example:
        >>> ImageFiles([], 32).load_size
        (32, 32)
    """

    def __init__(self, paths: Sequence[Union[str, Path]], load_size: Size, strict: bool = False,
                 root: Optional[Path] = None, fmt: Optional[PixelFormat] = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.load_size = size_pair(load_size)
        self.strict = strict
        self.root = root
        self.pixel_format = fmt
        self.scan_skipped: List[Tuple[str, str]] = []  # folders not read, links not followed: (path, reason)

    @property
    def channels(self) -> Optional[int]:
        """The channel count of the decoded images (None without a pixel format: RGB)."""
        return None if self.pixel_format is None else self.pixel_format.channels

    @property
    def dtype(self) -> Optional[torch.dtype]:
        """The sample type of the decoded images (None without a pixel format: uint8)."""
        return None if self.pixel_format is None else self.pixel_format.torch_dtype

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        try:
            return read_image(self.paths[index], self.load_size, self.pixel_format), index, None
        except UnreadableImageError as error:
            return None, index, error.reason

    def describe(self, index: int) -> str:
        return self.paths[index]


class ImageTensors(Dataset):
    """Images already in memory, uint8 ``(N, 3, H, W)`` (``.npz`` arrays, digits, a tensor).

    ``describe(i)`` is ``"<name>[i]"``. Loaders index the tensor directly (no workers).

    Example:
        >>> ds = ImageTensors(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), name="x_train")
        >>> ds.describe(2), ds[2][1]
        ('x_train[2]', 2)
    """

    def __init__(self, images: Tensor, labels: Optional[Tensor] = None, name: str = "images",
                 strict: bool = False) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"in-memory images must be uint8 (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images = images
        self.labels = labels
        self.name = name
        self.strict = strict
        self.load_size = (int(images.shape[2]), int(images.shape[3]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> Item:
        return self.images[index], index, None

    def describe(self, index: int) -> str:
        return f"{self.name}[{index}]"


def _tensor_to_uint8(x: Tensor) -> Tensor:
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3:
        raise ValueError(f"an image tensor must be (C, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        raise ValueError(f"image tensors must be channels-first (C, H, W), got shape {tuple(x.shape)} "
                         f"(channels last?); use x.permute(2, 0, 1)")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    elif x.shape[0] == 4:
        x = x[:3]
    elif x.shape[0] != 3:
        raise ValueError(f"image tensors need 1, 3 or 4 channels, got {x.shape[0]}")
    if x.dtype == torch.uint8:
        return x
    if x.is_floating_point():
        if x.numel() and float(x.max()) > 1.0 + 1e-3:
            raise ValueError("float image tensors must be in [0, 1] (got values above 1); divide by 255 or "
                             "return uint8")
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)
    raise TypeError(f"image tensors must be uint8 or float in [0, 1], got {x.dtype}")


class UserImages(Dataset):
    """A user's torch Dataset of images, as uint8 ``(3, H, W)`` items.

    Items may be PIL images, tensors (uint8, or float in [0, 1], ``(C, H, W)`` with 1, 3 or 4
    channels), numpy ``(H, W, C)`` uint8 arrays, or tuples/lists whose first element is one of
    these (``(image, label)``: the label is ignored). PIL images are resized and centre-cropped
    to ``load_size``; tensors keep their size unless it differs from the first item's (then they
    are resized to it), so batches collate. An item that raises when read (a corrupt file in an
    ``ImageFolder``) is skipped and reported like an unreadable file, named by its file when the
    Dataset lists them (``samples``); ``strict`` stops at it.

    Example:
        >>> ds = UserImages([(torch.rand(3, 8, 8), 0)] * 4, load_size=8)
        >>> ds[1][0].dtype
        torch.uint8
    """

    def __init__(self, dataset: Any, load_size: Optional[Size] = None, strict: bool = False) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(f"data must be a folder, a .npz, 'digits' or a map-style torch Dataset "
                            f"(with __getitem__ and __len__), got {type(dataset).__name__}")
        self.dataset = dataset
        self.strict = strict
        if len(dataset) == 0:
            raise ValueError("the Dataset is empty")
        self._size: Optional[Tuple[int, int]] = None if load_size is None else size_pair(load_size)
        first, reason = None, ""
        for index in range(min(len(dataset), FIRST_ITEMS)):
            try:
                item = dataset[index]
            except (MemoryError, KeyboardInterrupt):
                raise
            except Exception as error:  # a corrupt file in an ImageFolder: skipped like a file, when drawn
                reason = reason or f"{self.describe(index)}: {error_reason(error)}"
                continue
            first = self._convert(item)  # a wrong kind of item fails early, in the caller's process
            break
        if first is None:
            raise ValueError(f"the first {min(len(dataset), FIRST_ITEMS)} items of the Dataset all raise when "
                             f"read, e.g. {reason}; check the Dataset (or its files)")
        self.load_size = self._size or (int(first.shape[1]), int(first.shape[2]))
        self._tensor_size = (int(first.shape[1]), int(first.shape[2]))

    def _convert(self, item: Any) -> Tensor:
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        elif isinstance(item, dict):
            key = next((k for k in ("image", "img", "pixel_values") if k in item), None)
            if key is None:
                raise TypeError(f"Dataset items are dicts without an 'image' entry (keys: {sorted(item)})")
            item = item[key]
        if isinstance(item, Tensor):
            x = _tensor_to_uint8(item)
            ref = getattr(self, "_tensor_size", None)
            if ref is not None and tuple(x.shape[1:]) != ref:
                x = resize_center_crop(x, ref)
            return x
        if type(item).__module__.startswith("PIL"):
            Image = _import_pil()
            return _pil_to_tensor(item, self._size, Image)
        if type(item).__module__ == "numpy":
            arr = torch.from_numpy(item.copy())
            if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
                arr = arr.permute(2, 0, 1)
            return self._convert(arr)
        raise TypeError(f"Dataset items must be images (PIL images, uint8 or float [0, 1] (C, H, W) tensors) "
                        f"or (image, label) tuples, got {type(item).__name__}")

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Item:
        try:
            return self._convert(self.dataset[index]), index, None
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as error:
            return None, index, error_reason(error)

    def describe(self, index: int) -> str:
        """``"dataset[i]"``, with the item's file when the Dataset lists them (``ImageFolder.samples``)."""
        samples = getattr(self.dataset, "samples", None)
        if isinstance(samples, (list, tuple)) and len(samples) == len(self.dataset) and 0 <= index < len(samples):
            entry = samples[index]
            path = entry[0] if isinstance(entry, (tuple, list)) and entry else entry
            if isinstance(path, (str, os.PathLike)):
                return f"{os.fspath(path)} (dataset[{index}])"
        return f"dataset[{index}]"


def _tensor_batch_to_uint8(x: Tensor) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"an image tensor must be (N, C, H, W), got shape {tuple(x.shape)}")
    return torch.stack([_tensor_to_uint8(img) for img in x]) if x.dtype != torch.uint8 or x.shape[1] != 3 else x
