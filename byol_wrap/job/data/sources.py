"""What ``DATA`` names, opened as a Dataset: a folder, one file, a ``.npz``, ``digits``, a tensor or a Dataset.

Example:
    >>> len(open_images("digits", 32))
    1438
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from torch import Tensor
from torch.utils.data import Dataset

from .arrays import _is_digits, digits_dataset, load_npz_images
from .channels import PixelFormat
from .datasets import ImageFiles, ImageTensors, UserImages, _tensor_batch_to_uint8
from .discovery import IMAGE_EXTENSIONS, find_image_paths
from .geometry import Size

DataArg = Union[str, "os.PathLike[str]", Dataset, Tensor]


def open_images(data: DataArg, load_size: Optional[Size], strict: bool = False,
                exclude: Sequence[Union[str, os.PathLike[str]]] = (), fmt: Optional[PixelFormat] = None) -> Dataset:
    """The training images ``data`` names, as a Dataset of ``(image or None, index, reason)`` items.

    Args:
        data: a folder of images (searched recursively, see :func:`find_image_paths`), one image
            file, a ``.npz`` with ``x_train`` uint8 ``(N, H, W, C)``, ``"digits"`` (the built-in
            offline default: the training split of :func:`load_digits`, at ``load_size``), a
            uint8 ``(N, 3, H, W)`` tensor, or a torch Dataset of images (see :class:`UserImages`).
        load_size: the decode size of image files (see :func:`default_load_size`); in-memory
            arrays keep their own size.
        strict: recorded on the dataset; loaders then raise at the first unreadable image.
        exclude: folders left out of a folder's scan (RUN_DIR inside the data folder). Folders that
            cannot be read and links not followed are in the dataset's ``scan_skipped``.
        fmt: the pixel format image files are decoded to (see :mod:`.channels`; the job detects
            it with :func:`~byol_wrap.job.data.channels.detect_format`); None: uint8 RGB.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a folder without images (naming the extensions searched), a bad ``.npz``.

    Example:
        >>> len(open_images("digits", 32))
        1438
    """
    if isinstance(data, Dataset) and not isinstance(data, (ImageFiles, ImageTensors, UserImages)):
        return UserImages(data, load_size, strict)
    if isinstance(data, (ImageFiles, ImageTensors, UserImages)):
        data.strict = strict
        return data
    if isinstance(data, Tensor):
        return ImageTensors(_tensor_batch_to_uint8(data), name="images", strict=strict)
    if _is_digits(data):
        return digits_dataset(load_size, strict)
    if not isinstance(data, (str, os.PathLike)):
        return UserImages(data, load_size, strict)
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if path.is_file() and path.suffix.lower() == ".npz":
        return ImageTensors(load_npz_images(path), name=f"{path.name}:x_train", strict=strict)
    if load_size is None:
        raise ValueError("give load_size to decode image files")
    problems: List[Tuple[str, str]] = []
    paths = find_image_paths(path, exclude=exclude, problems=problems)
    if not paths:
        what = "is not an image file" if path.is_file() else "holds no images"
        if problems:
            what += f" that can be read ({problems[0][0]}: {problems[0][1]})"
        raise ValueError(f"{path} {what} (searched recursively for {', '.join(IMAGE_EXTENSIONS)}, any case; "
                         f"hidden files and folders skipped); give a folder of images, a .npz with x_train "
                         f"or 'digits'")
    dataset = ImageFiles(paths, load_size, strict=strict, root=path, fmt=fmt)
    dataset.scan_skipped = problems
    return dataset
