"""Labelled images for evaluation (``--knn-data``): class folders, a ``.npz`` with labels, or the digits.

Example:
    >>> bank_x, bank_y, query_x, query_y = load_labelled("digits", 16)
    >>> len(bank_y) + len(query_y)
    1797
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .arrays import _images_from_array, _is_digits, _npz_array, _open_npz, load_digits, stratified_split
from .channels import PixelFormat
from .datasets import ImageFiles
from .discovery import find_image_paths
from .geometry import Size, center_crop, default_load_size, eval_images, size_pair
from .loader import default_workers, make_loader


def _decode_all(dataset: Dataset, workers: int, batch_size: int = 64) -> Tuple[Tensor, Tensor, List[Tuple[str, str]]]:
    loader = make_loader(dataset, batch_size, workers=workers, seed=0, epoch=0, drop_last=False, shuffle=False,
                         continuous=False)
    images, indices, skipped = [], [], []
    for batch in loader:
        images.append(batch.images)
        indices.append(batch.indices)
        skipped += batch.skipped
    loader.close()
    size = size_pair(dataset.load_size)  # type: ignore[attr-defined]
    fmt = getattr(dataset, "pixel_format", None)
    empty = (0, fmt.channels if fmt is not None else 3, *size)
    x = torch.cat(images) if images else torch.empty(empty, dtype=fmt.torch_dtype if fmt is not None else torch.uint8)
    i = torch.cat(indices) if indices else torch.empty(0, dtype=torch.int64)
    return x, i, skipped


def load_labelled(data: Union[str, os.PathLike[str]], image_size: Size, workers: Optional[int] = None,
                  split_fraction: float = 0.2, seed: int = 0,
                  fmt: Optional[PixelFormat] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Labelled images for kNN evaluation (``--knn-data``), as uint8 tensors at ``image_size``.

    ``data`` is a folder with one subfolder per class (sorted class names give labels 0..C-1),
    a ``.npz`` with ``x_train``/``y_train`` (and ``x_test``/``y_test`` when present), or
    ``"digits"``. Without a test split, a deterministic ``split_fraction`` of each class
    becomes the query set. Images are in their evaluation view (:func:`eval_images`);
    undecodable files are left out with a warning. ``fmt``: the run's pixel format, so that the
    kNN images are decoded as the training images are (files that do not fit it are left out);
    in-memory sets (``.npz``, digits) are 8-bit RGB and need ``fmt`` None or 8-bit RGB.

    Returns:
        ``(bank_images, bank_labels, query_images, query_labels)``.

    Example:
        >>> bank_x, bank_y, query_x, query_y = load_labelled("digits", 16)
        >>> bank_x.shape[1:], len(bank_y) + len(query_y)
        (torch.Size([3, 16, 16]), 1797)
    """
    size = size_pair(image_size)
    if fmt is not None and not fmt.is_photo and (_is_digits(data) or Path(data).is_file()):
        raise ValueError(f"kNN data {data} holds 8-bit RGB images but the run's images have {fmt.channels} "
                         f"channel(s) of {fmt.dtype}; give a folder of such images, one subfolder per class")
    if _is_digits(data):
        return load_digits(size)
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"kNN data path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"kNN data {path} must be a folder with one subfolder per class or a .npz with "
                             f"x_train and y_train")
        with _open_npz(path) as npz:
            x = _images_from_array(_npz_array(npz, "x_train", path), f"{path.name}['x_train']")
            y = torch.from_numpy(_npz_array(npz, "y_train", path)).long().flatten()
            if len(y) != len(x):
                raise ValueError(f"{path}: x_train has {len(x)} images but y_train {len(y)} labels")
            if "x_test" in npz.files and "y_test" in npz.files:
                xq = _images_from_array(_npz_array(npz, "x_test", path), f"{path.name}['x_test']")
                yq = torch.from_numpy(_npz_array(npz, "y_test", path)).long().flatten()
                return eval_images(x, size), y, eval_images(xq, size), yq
        bank, query = stratified_split(y, split_fraction, seed)
        x = eval_images(x, size)
        return x[bank], y[bank], x[query], y[query]
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        found = find_image_paths(path / name)
        files += found
        labels += [label] * len(found)
    if len(set(labels)) < 2:
        raise ValueError(f"kNN data {path} needs one subfolder of images per class (at least 2 classes), found "
                         f"{len(set(labels))} class folder(s) with images")
    dataset = ImageFiles(files, default_load_size(size), fmt=fmt)
    x, kept, skipped = _decode_all(dataset, default_workers() if workers is None else workers)
    if skipped:
        warnings.warn(f"kNN data: {len(skipped)} unreadable file(s) left out, e.g. {skipped[0][0]}: "
                      f"{skipped[0][1]}", stacklevel=2)
    x = center_crop(x, size).contiguous()
    y = torch.tensor(labels, dtype=torch.int64)[kept]
    bank, query = stratified_split(y, split_fraction, seed)
    return x[bank], y[bank], x[query], y[query]
