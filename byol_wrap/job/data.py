"""Training data for the job layer: image folders, ``.npz`` arrays, scikit-learn's digits, torch Datasets.

Memory holds the file list, not the images: a folder streams from disk, decoded by Pillow in
DataLoader workers to uint8 ``(3, S, S)`` at a fixed load size (default: the view size x 8/7,
resized on the short side and centre-cropped, so batches collate). The random crops and
colour augmentations run later, on the device, in the learner.

A file that cannot be decoded (truncated, not an image, empty, a decompression bomb over
Pillow's limit) does not stop the run: the dataset item is ``(None, index, reason)``, the
collate function drops it and the batch carries ``skipped = [(path, reason), ...]`` for the
trainer's ``skipped.txt``; ``strict=True`` raises :class:`UnreadableImageError` naming the
first one instead.

API:
    IMAGE_EXTENSIONS, find_images(root) -> list[Path], find_image_paths(root) -> list[str] (faster)
    default_load_size(image_size) -> int | (H, W);  default_workers() -> int
    read_image(path, load_size) -> uint8 (3, H, W) tensor      (raises UnreadableImageError)
    open_images(data, load_size, strict=False) -> Dataset       folder | .npz | "digits" | Dataset | tensor
    load_labelled(data, image_size) -> (bank_x, bank_y, query_x, query_y)   for --knn-data
    make_loader(dataset, batch_size, workers, seed, epoch, drop_last, rank, world_size, pin_memory,
                skip_batches=0, strict=None) -> ImageLoader   yields Batch(images, indices, skipped)
    batches_per_epoch(num_images, batch_size, world_size=1, drop_last=True) -> int
    eval_images(images, image_size) -> uint8 tensor at image_size (centre view, for kNN/embedding)

Example:
    >>> ds = open_images("digits", load_size=16)
    >>> loader = make_loader(ds, batch_size=64, workers=0, seed=0, epoch=0)
    >>> batch = next(iter(loader))
    >>> batch.images.shape, batch.images.dtype, batch.skipped
    (torch.Size([64, 3, 16, 16]), torch.uint8, [])
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

TRAIN_EXTRA = 'pip install "byol-wrap[train]"'
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
Size = Union[int, Tuple[int, int]]
DataArg = Union[str, "os.PathLike[str]", Dataset, Tensor]

__all__ = [
    "IMAGE_EXTENSIONS", "Batch", "ImageFiles", "ImageTensors", "UserImages", "ImageLoader", "UnreadableImageError",
    "find_images", "find_image_paths", "default_load_size", "default_workers", "read_image", "open_images",
    "load_labelled", "load_digits", "load_npz_images", "make_loader", "batches_per_epoch", "eval_images", "center_crop",
    "resize_center_crop", "SkipCollate",
]


class UnreadableImageError(RuntimeError):
    """An image that cannot be decoded, under ``strict=True`` (``path`` and ``reason`` attributes)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot decode {path}: {reason} (--strict stops at the first unreadable file; "
                         f"without it such files are skipped and listed in skipped.txt)")
        self.path = path
        self.reason = reason


def _import_pil() -> Any:
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(f"reading image files needs the training extras: {TRAIN_EXTRA}") from error
    return Image


# ----------------------------------------------------------------------------- discovery
def find_images(root: Union[str, os.PathLike[str]], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[Path]:
    """Every image file under ``root``, recursively, sorted (so runs repeat).

    Extensions are matched case-insensitively; hidden files and folders (name starting with
    ``.``) are skipped; no file is opened. Symlinked folders are followed once (loops are cut).
    ``root`` may be one image file. The order is a tree listing's: folder by folder, names
    sorted. :func:`find_image_paths` returns the same as strings, faster for large folders
    (building ``Path`` objects is most of the cost; timings in BENCHMARKS.md).

    Raises:
        FileNotFoundError: ``root`` does not exist.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b/x.PNG", "a.jpg", ".hidden/c.jpg", "notes.txt"):
        ...     (root / name).parent.mkdir(exist_ok=True); (root / name).touch()
        >>> [p.relative_to(root).as_posix() for p in find_images(root)]
        ['a.jpg', 'b/x.PNG']
    """
    return [Path(p) for p in find_image_paths(root, extensions)]


def find_image_paths(root: Union[str, os.PathLike[str]], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """:func:`find_images` as strings (what the datasets store).

    Example:
        >>> find_image_paths(".", extensions=(".no-such-extension",))
        []
    """
    root_path = Path(root)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not root_path.exists():
        raise FileNotFoundError(f"data path {root_path} does not exist")
    if root_path.is_file():
        return [os.fspath(root_path)] if root_path.name.lower().endswith(exts) else []
    found: List[str] = []
    _scan(os.fspath(root_path), exts, set(), found)
    return found


def _scan(folder: str, exts: Tuple[str, ...], seen: set, found: List[str]) -> None:
    """Depth-first, names sorted within each folder: the order of a sorted tree listing."""
    try:
        info = os.stat(folder)
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return
        seen.add(key)
        with os.scandir(folder) as iterator:
            entries = sorted((e for e in iterator if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        try:
            if entry.name.lower().endswith(exts) and entry.is_file():
                found.append(entry.path)
            elif entry.is_dir():
                _scan(entry.path, exts, seen, found)
        except OSError:
            continue


def default_load_size(image_size: Size) -> Size:
    """The decode size for views of ``image_size``: x 8/7, rounded (224 -> 256, 32 -> 37).

    Example:
        >>> default_load_size(224), default_load_size((64, 96))
        (256, (73, 110))
    """
    if isinstance(image_size, int):
        return int(round(image_size * 8 / 7))
    h, w = image_size
    return (int(round(h * 8 / 7)), int(round(w * 8 / 7)))


def _pair(size: Size) -> Tuple[int, int]:
    if isinstance(size, bool):
        raise TypeError("a size must be an int or an (H, W) pair, got a bool")
    if isinstance(size, int):
        pair = (size, size)
    else:
        pair = (int(size[0]), int(size[1]))
    if min(pair) < 1:
        raise ValueError(f"sizes must be positive, got {size!r}")
    return pair


def default_workers() -> int:
    """DataLoader worker processes for decoding: the CPUs this process may use, at most 4
    (on the project's 2-core machine: 2; see benchmarks/pipeline.py)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


# ----------------------------------------------------------------------------- decoding
def _to_rgb(image: Any, Image: Any) -> Any:
    """Any Pillow mode -> RGB: 16/32-bit grey scaled to 8 bits, alpha composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        import numpy as np

        arr = np.asarray(image)
        if mode.startswith("I;16") or (mode == "I" and arr.size and arr.max() > 255):
            arr = np.clip(arr.astype(np.float32), 0, 65535) / 257.0
        elif mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr.astype(np.float32) * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize_center_crop_pil(image: Any, size: Tuple[int, int], Image: Any) -> Any:
    """Resize so the image covers ``size`` (short side), then take the centre: one resampling."""
    th, tw = size
    w, h = image.size
    if (w, h) == (tw, th):
        return image
    scale = max(th / h, tw / w)
    # clamped: in floating point the centred box can stick out of the image by ~1e-14, which Pillow refuses
    box_w, box_h = min(float(w), tw / scale), min(float(h), th / scale)
    left, top = max(0.0, (w - box_w) / 2), max(0.0, (h - box_h) / 2)
    right, bottom = min(float(w), left + box_w), min(float(h), top + box_h)
    return image.resize((tw, th), Image.BILINEAR, box=(left, top, right, bottom))


def _pil_to_tensor(image: Any, size: Optional[Tuple[int, int]], Image: Any) -> Tensor:
    import numpy as np

    image = _to_rgb(image, Image)
    if size is not None:
        image = _resize_center_crop_pil(image, size, Image)
    arr = np.array(image, dtype=np.uint8)  # (H, W, 3), a writable copy
    return torch.from_numpy(arr).permute(2, 0, 1)


def _reason(error: BaseException) -> str:
    name = type(error).__name__
    if name == "UnidentifiedImageError":
        return "UnidentifiedImageError: not an image Pillow can read (wrong extension, or a damaged header)"
    text = str(error).strip().splitlines()
    return f"{name}: {text[0]}" if text else name


def read_image(path: Union[str, os.PathLike[str]], load_size: Optional[Size]) -> Tensor:
    """Decode one image file to uint8 ``(3, H, W)``: RGB, EXIF orientation applied, resized on
    the short side and centre-cropped to ``load_size`` (``None``: the file's own size).

    Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) is kept.

    Raises:
        UnreadableImageError: empty, truncated or foreign files, bombs, unsupported modes
            (``.reason`` says which).

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> p = tempfile.mkdtemp() + "/a.png"
        >>> Image.new("LA", (40, 20)).save(p)
        >>> read_image(p, 16).shape
        torch.Size([3, 16, 16])
    """
    Image = _import_pil()
    from PIL import ImageOps

    size = None if load_size is None else _pair(load_size)
    path_str = os.fspath(path)
    try:
        if os.path.getsize(path_str) == 0:
            raise UnreadableImageError(path_str, "empty file (0 bytes)")
        with Image.open(path_str) as image:
            if size is not None and image.format == "JPEG":
                image.draft("RGB", (size[1], size[0]))  # decode at a reduced scale, still >= size
            image.load()
            if "exif" in image.info or image.format == "TIFF":  # exif_transpose copies even with no EXIF
                image = ImageOps.exif_transpose(image)
            return _pil_to_tensor(image, size, Image)
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(path_str, f"decompression bomb over Pillow's limit: {error}") from error
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as error:  # OSError (truncated), UnidentifiedImageError, ValueError (modes), SyntaxError...
        raise UnreadableImageError(path_str, _reason(error)) from error


# ----------------------------------------------------------------------------- datasets
Item = Tuple[Optional[Tensor], int, Optional[str]]


class ImageFiles(Dataset):
    """Image files decoded on access (in DataLoader workers) to uint8 ``(3, *load_size)``.

    ``dataset[i]`` is ``(image, i, None)``, or ``(None, i, reason)`` for a file that cannot
    be decoded. ``describe(i)`` is the file's path.

    Example:
        >>> ImageFiles([], 32).load_size
        (32, 32)
    """

    def __init__(self, paths: Sequence[Union[str, Path]], load_size: Size, strict: bool = False,
                 root: Optional[Path] = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.load_size = _pair(load_size)
        self.strict = strict
        self.root = root

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Item:
        try:
            return read_image(self.paths[index], self.load_size), index, None
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


def resize_center_crop(images: Tensor, size: Size) -> Tensor:
    """uint8 ``(N, C, H, W)`` (or ``(C, H, W)``) resized on the short side to cover ``size``
    (bilinear, antialiased) and centre-cropped; returned unchanged when already that size.

    Example:
        >>> resize_center_crop(torch.zeros(2, 3, 10, 20, dtype=torch.uint8), 8).shape
        torch.Size([2, 3, 8, 8])
    """
    th, tw = _pair(size)
    single = images.ndim == 3
    x = images.unsqueeze(0) if single else images
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) != (th, tw):
        scale = max(th / h, tw / w)
        nh, nw = max(th, int(math.ceil(h * scale - 1e-6))), max(tw, int(math.ceil(w * scale - 1e-6)))
        if (nh, nw) != (h, w):
            x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True).round_().clamp_(0, 255).to(torch.uint8)
        top, left = (nh - th) // 2, (nw - tw) // 2
        x = x[..., top:top + th, left:left + tw].contiguous()
    return x[0] if single else x


def eval_images(images: Tensor, image_size: Size) -> Tensor:
    """The evaluation view of uint8 images at ``image_size``: unchanged when they already have
    that size; otherwise resized to ``default_load_size(image_size)`` on the short side and
    centre-cropped to ``image_size`` (ImageNet's resize-256/crop-224 rule)."""
    target = _pair(image_size)
    if tuple(images.shape[-2:]) == target:
        return images
    return center_crop(resize_center_crop(images, default_load_size(target)), target)


def center_crop(images: Tensor, size: Size) -> Tensor:
    """The centre ``size`` window of ``(..., H, W)`` images (no resampling; H, W >= size).

    Example:
        >>> center_crop(torch.arange(16).view(1, 4, 4), 2)
        tensor([[[ 5,  6],
                 [ 9, 10]]])
    """
    th, tw = _pair(size)
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if h < th or w < tw:
        raise ValueError(f"cannot crop {th}x{tw} from {h}x{w} images")
    top, left = (h - th) // 2, (w - tw) // 2
    return images[..., top:top + th, left:left + tw]


class UserImages(Dataset):
    """A user's torch Dataset of images, as uint8 ``(3, H, W)`` items.

    Items may be PIL images, tensors (uint8, or float in [0, 1], ``(C, H, W)`` with 1, 3 or 4
    channels), numpy ``(H, W, C)`` uint8 arrays, or tuples/lists whose first element is one of
    these (``(image, label)``: the label is ignored). PIL images are resized and centre-cropped
    to ``load_size``; tensors keep their size unless it differs from the first item's (then they
    are resized to it), so batches collate. An item that raises is reported as skipped.

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
        self._size: Optional[Tuple[int, int]] = None if load_size is None else _pair(load_size)
        first = self._convert(dataset[0])  # fails early, in the caller's process, with a clear message
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
            return None, index, _reason(error)

    def describe(self, index: int) -> str:
        return f"dataset[{index}]"


# ----------------------------------------------------------------------------- arrays
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
        raise ValueError(f"{path} is not a readable .npz file: {_reason(error)}") from error


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


def _stratified_split(labels: Tensor, fraction: float = 0.2, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """Deterministic per-class split: ``fraction`` of each class (at least one) becomes the query set."""
    generator = torch.Generator().manual_seed(seed)
    bank, query = [], []
    for cls in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == cls).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n_query = max(1, int(round(fraction * len(idx)))) if len(idx) > 1 else 0
        query.append(idx[:n_query])
        bank.append(idx[n_query:])
    return torch.cat(bank).sort().values, torch.cat(query).sort().values


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
    images = F.interpolate(images, size=_pair(image_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    bank, query = _stratified_split(labels)
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


# ----------------------------------------------------------------------------- dispatch
def open_images(data: DataArg, load_size: Optional[Size], strict: bool = False) -> Dataset:
    """The training images ``data`` names, as a Dataset of ``(image or None, index, reason)`` items.

    Args:
        data: a folder of images (searched recursively, see :func:`find_images`), one image
            file, a ``.npz`` with ``x_train`` uint8 ``(N, H, W, C)``, ``"digits"`` (the built-in
            offline default: the training split of :func:`load_digits`, at ``load_size``), a
            uint8 ``(N, 3, H, W)`` tensor, or a torch Dataset of images (see :class:`UserImages`).
        load_size: the decode size of image files (see :func:`default_load_size`); in-memory
            arrays keep their own size.
        strict: recorded on the dataset; loaders then raise at the first unreadable image.

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
    paths = find_image_paths(path)
    if not paths:
        what = "is not an image file" if path.is_file() else "holds no images"
        raise ValueError(f"{path} {what} (searched recursively for {', '.join(IMAGE_EXTENSIONS)}, any case; "
                         f"hidden files and folders skipped); give a folder of images, a .npz with x_train "
                         f"or 'digits'")
    return ImageFiles(paths, load_size, strict=strict, root=path)


def _tensor_batch_to_uint8(x: Tensor) -> Tensor:
    if x.ndim != 4:
        raise ValueError(f"an image tensor must be (N, C, H, W), got shape {tuple(x.shape)}")
    return torch.stack([_tensor_to_uint8(img) for img in x]) if x.dtype != torch.uint8 or x.shape[1] != 3 else x


def _decode_all(dataset: Dataset, workers: int, batch_size: int = 64) -> Tuple[Tensor, Tensor, List[Tuple[str, str]]]:
    loader = make_loader(dataset, batch_size, workers=workers, seed=0, epoch=0, drop_last=False, shuffle=False,
                         continuous=False)
    images, indices, skipped = [], [], []
    for batch in loader:
        images.append(batch.images)
        indices.append(batch.indices)
        skipped += batch.skipped
    loader.close()
    size = _pair(dataset.load_size)  # type: ignore[attr-defined]
    x = torch.cat(images) if images else torch.empty((0, 3, *size), dtype=torch.uint8)
    i = torch.cat(indices) if indices else torch.empty(0, dtype=torch.int64)
    return x, i, skipped


def load_labelled(data: Union[str, os.PathLike[str]], image_size: Size, workers: Optional[int] = None,
                  split_fraction: float = 0.2, seed: int = 0) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Labelled images for kNN evaluation (``--knn-data``), as uint8 tensors at ``image_size``.

    ``data`` is a folder with one subfolder per class (sorted class names give labels 0..C-1),
    a ``.npz`` with ``x_train``/``y_train`` (and ``x_test``/``y_test`` when present), or
    ``"digits"``. Without a test split, a deterministic ``split_fraction`` of each class
    becomes the query set. Images are in their evaluation view (:func:`eval_images`);
    undecodable files are left out with a warning.

    Returns:
        ``(bank_images, bank_labels, query_images, query_labels)``.

    Example:
        >>> bank_x, bank_y, query_x, query_y = load_labelled("digits", 16)
        >>> bank_x.shape[1:], len(bank_y) + len(query_y)
        (torch.Size([3, 16, 16]), 1797)
    """
    size = _pair(image_size)
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
        bank, query = _stratified_split(y, split_fraction, seed)
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
    dataset = ImageFiles(files, default_load_size(size))
    x, kept, skipped = _decode_all(dataset, default_workers() if workers is None else workers)
    if skipped:
        warnings.warn(f"kNN data: {len(skipped)} unreadable file(s) left out, e.g. {skipped[0][0]}: "
                      f"{skipped[0][1]}", stacklevel=2)
    x = center_crop(x, size).contiguous()
    y = torch.tensor(labels, dtype=torch.int64)[kept]
    bank, query = _stratified_split(y, split_fraction, seed)
    return x[bank], y[bank], x[query], y[query]


# ----------------------------------------------------------------------------- loaders
class Batch(NamedTuple):
    """One loader step: uint8 ``images (n, 3, H, W)``, their dataset ``indices (n,)``, and the
    ``skipped`` items of this batch as ``(path, reason)`` (n = batch size - len(skipped))."""

    images: Tensor
    indices: Tensor
    skipped: List[Tuple[str, str]]


class SkipCollate:
    """Collate ``(image or None, index, reason)`` items into a :class:`Batch`, dropping failures."""

    def __init__(self, dataset: Dataset) -> None:
        self.describe: Callable[[int], str] = getattr(dataset, "describe", lambda i: f"dataset[{i}]")
        self.size = _pair(getattr(dataset, "load_size", (1, 1)))

    def __call__(self, items: Sequence[Item]) -> Batch:
        good = [(img, idx) for img, idx, _ in items if img is not None]
        skipped = [(self.describe(idx), str(reason)) for img, idx, reason in items if img is None]
        if good:
            images = torch.stack([img for img, _ in good])
        else:
            images = torch.empty((0, 3, *self.size), dtype=torch.uint8)
        return Batch(images, torch.tensor([idx for _, idx in good], dtype=torch.int64), skipped)


def batches_per_epoch(num_images: int, batch_size: int, world_size: int = 1, drop_last: bool = True) -> int:
    """Batches each rank gets per epoch (the same on every rank).

    Example:
        >>> batches_per_epoch(1000, 64), batches_per_epoch(1000, 64, world_size=2), batches_per_epoch(10, 4, 1, False)
        (15, 7, 3)
    """
    per_rank = num_images // world_size if drop_last else -(-num_images // world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


class EpochBatchSampler(Sampler):
    """Batches of indices for one rank: a permutation seeded by ``seed + epoch`` (as
    ``DistributedSampler.set_epoch``), shard ``perm[rank::world_size]`` (truncated to a
    multiple of ``world_size`` with ``drop_last``, else padded from its start), split into
    batches; ``set_epoch(epoch, skip_batches)`` starts the next iteration ``skip_batches`` in.
    """

    def __init__(self, num_images: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, shuffle: bool = True) -> None:
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.rank, self.world_size, self.drop_last, self.shuffle = rank, world_size, drop_last, shuffle
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)

    def indices(self, epoch: Optional[int] = None) -> List[int]:
        """This rank's sample order for ``epoch`` (default: the current one), before skipping."""
        n = self.num_images
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(n))
        if self.drop_last:
            order = order[: n - n % self.world_size]
        elif n % self.world_size:
            pad = self.world_size - n % self.world_size
            order += (order * math.ceil(pad / max(1, n)))[:pad]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[List[int]]:
        order = self.indices()
        total = batches_per_epoch(self.num_images, self.batch_size, self.world_size, self.drop_last)
        for b in range(self.skip_batches, total):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return max(0, self.total() - self.skip_batches)

    def total(self) -> int:
        """Batches in a whole epoch."""
        return batches_per_epoch(self.num_images, self.batch_size, self.world_size, self.drop_last)


class _ContinuousBatchSampler(Sampler):
    """The batches of every epoch from ``start = (epoch, batch)`` on, without end, so DataLoader
    workers prefetch across epoch boundaries (no stall at the start of each epoch)."""

    def __init__(self, epochs: EpochBatchSampler) -> None:
        self.epochs = epochs
        self.start = (0, 0)

    def __iter__(self) -> Iterator[List[int]]:
        epoch, skip = self.start
        size, total = self.epochs.batch_size, self.epochs.total()
        while True:
            order = self.epochs.indices(epoch)
            for b in range(skip, total):
                yield order[b * size:(b + 1) * size]
            epoch, skip = epoch + 1, 0


class ImageLoader:
    """Iterates :class:`Batch` es of a dataset for one rank; ``set_epoch(epoch, skip_batches)``
    chooses the epoch's deterministic order and where to start in it (exact resume).

    Image files are decoded by ``workers`` persistent DataLoader worker processes; in-memory
    tensors are indexed directly. With ``continuous`` (the default), the workers run ahead into
    the next epoch: iterating epoch ``e`` to its end and then ``set_epoch(e + 1)`` continues without
    a stall (any other position restarts the workers' queue there, counted in ``restarts``; the
    order is the same either way). With ``strict``, the first unreadable image raises
    :class:`UnreadableImageError` (in the caller's process). A batch holds fewer images than
    ``batch_size`` when some were skipped (possibly none: check ``len(batch.images)``).
    Call :meth:`close` to stop the workers.
    """

    def __init__(self, dataset: Dataset, batch_size: int, workers: Optional[int] = None, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 strict: Optional[bool] = None, shuffle: bool = True, prefetch_factor: int = 4,
                 continuous: bool = True) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        self.dataset = dataset
        self.batch_size = batch_size
        self.strict = bool(getattr(dataset, "strict", False) if strict is None else strict)
        self.pin_memory = pin_memory
        n = len(dataset)  # type: ignore[arg-type]
        if batches_per_epoch(n, batch_size, world_size, drop_last) == 0:
            per = f" per rank ({world_size} ranks)" if world_size > 1 else ""
            raise ValueError(f"batch size {batch_size} is larger than the data set: {n} images{per}; lower "
                             f"--batch-size to at most {max(1, n // world_size)}")
        self.sampler = EpochBatchSampler(n, batch_size, seed, rank, world_size, drop_last, shuffle)
        self.in_memory = isinstance(dataset, ImageTensors)
        self.workers = 0 if self.in_memory else (default_workers() if workers is None else int(workers))
        self._loader: Optional[DataLoader] = None
        self._continuous = _ContinuousBatchSampler(self.sampler) if continuous else None
        self._stream: Optional[Iterator[Batch]] = None  # the continuous DataLoader iterator
        self._next_position: Optional[Tuple[int, int]] = None  # (epoch, batch) it delivers next
        self.restarts = 0
        if not self.in_memory:
            extra: Dict[str, Any] = (
                {"persistent_workers": True, "prefetch_factor": prefetch_factor} if self.workers > 0 else {})
            self._loader = DataLoader(dataset, batch_sampler=self._continuous or self.sampler,
                                      num_workers=self.workers, collate_fn=SkipCollate(dataset),
                                      pin_memory=pin_memory, **extra)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Use epoch ``epoch``'s order from its ``skip_batches``-th batch on, for the next iteration."""
        self.sampler.set_epoch(epoch, skip_batches)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Batch]:
        if self.in_memory:
            images = self.dataset.images  # type: ignore[attr-defined]
            for indices in self.sampler:
                idx = torch.tensor(indices, dtype=torch.int64)
                x = images[idx]
                yield Batch(x.pin_memory() if self.pin_memory else x, idx, [])
            return
        if self._loader is None:
            raise RuntimeError("this ImageLoader was closed")
        batches: Iterator[Batch]
        if self._continuous is None:
            batches = iter(self._loader)
        else:
            epoch, skip = self.sampler.epoch, self.sampler.skip_batches
            if self._stream is None or self._next_position != (epoch, skip):
                self._continuous.start = (epoch, skip)
                self._stream = iter(self._loader)  # (re)starts the workers' queue at (epoch, skip)
                self.restarts += 1
                self._next_position = (epoch, skip)
            batches = self._epoch_of(self._stream, epoch, skip, self.sampler.total())
        for batch in batches:
            if self.strict and batch.skipped:
                raise UnreadableImageError(*batch.skipped[0])
            yield batch

    def _epoch_of(self, stream: Iterator[Batch], epoch: int, skip: int, total: int) -> Iterator[Batch]:
        for b in range(skip, total):
            batch = next(stream)
            self._next_position = (epoch, b + 1) if b + 1 < total else (epoch + 1, 0)
            yield batch

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        self._stream = None
        self._next_position = None
        self._loader = None


def make_loader(dataset: Dataset, batch_size: int, workers: Optional[int] = None, seed: int = 0, epoch: int = 0,
                drop_last: bool = True, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                skip_batches: int = 0, strict: Optional[bool] = None, shuffle: bool = True,
                continuous: bool = True) -> ImageLoader:
    """An :class:`ImageLoader` positioned at ``epoch``, ``skip_batches`` batches in.

    The order is a permutation seeded by ``seed + epoch``; rank ``r`` of ``world_size`` gets
    ``perm[r::world_size]`` (like ``DistributedSampler`` with ``set_epoch``), so the ranks'
    shards are disjoint and together make the epoch. ``workers=None``: :func:`default_workers`.
    Reuse the loader across epochs with ``loader.set_epoch(epoch)`` (workers stay alive and, with
    ``continuous``, run ahead into the next epoch; pass ``continuous=False`` for a single pass).

    Example:
        >>> ds = open_images(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), None)
        >>> [b.indices.tolist() for b in make_loader(ds, 4, seed=1, epoch=0, shuffle=False)]
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    loader = ImageLoader(dataset, batch_size, workers, seed, drop_last, rank, world_size, pin_memory, strict,
                         shuffle, continuous=continuous)
    loader.set_epoch(epoch, skip_batches)
    return loader
