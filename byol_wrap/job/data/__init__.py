"""Training data for the job layer: image folders, ``.npz`` arrays, scikit-learn's digits, torch Datasets.

One concept a module, in the order data flows: ``discovery`` (finding files) -> ``decode`` (one file to a
tensor) -> ``datasets`` (files, tensors, a user's Dataset) and ``arrays`` (``.npz``, digits) -> ``sources``
(what ``DATA`` names) -> ``loader`` (seeded, sharded, resumable batches); ``geometry`` holds sizes and crops,
``labelled`` the labelled sets for evaluation; ``formats`` reads each file type with every band and bit,
``channels`` chooses the run's channel count and sample type and converts files to it.

Memory holds the file list, not the images: a folder streams from disk, decoded in DataLoader
workers (``formats``: Pillow, tifffile, numpy, pydicom) to the run's pixel format (``channels``:
``(C, S, S)`` uint8, uint16 or float32, chosen from the files' headers) at a fixed load size
(default: the view size x 8/7, resized on the short side and centre-cropped, so batches collate). The random crops and
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
from .arrays import digits_dataset, load_digits, load_npz_images
from .datasets import ImageFiles, ImageTensors, Item, UserImages
from .decode import TRAIN_EXTRA, UnreadableImageError, error_reason, read_image
from .discovery import IMAGE_EXTENSIONS, find_image_paths, find_images
from .geometry import Size, center_crop, default_load_size, eval_images, resize_center_crop, size_pair
from .labelled import load_labelled
from .loader import Batch, EpochBatchSampler, ImageLoader, SkipCollate, batches_per_epoch, default_workers, make_loader
from .sources import DataArg, open_images

__all__ = [
    "IMAGE_EXTENSIONS", "Batch", "DataArg", "EpochBatchSampler", "ImageFiles", "ImageLoader", "ImageTensors", "Item",
    "Size", "SkipCollate", "TRAIN_EXTRA", "UnreadableImageError", "UserImages", "batches_per_epoch", "center_crop",
    "default_load_size", "default_workers", "digits_dataset", "error_reason", "eval_images", "find_image_paths",
    "find_images", "load_digits", "load_labelled", "load_npz_images", "make_loader", "open_images", "read_image",
    "resize_center_crop", "size_pair",
]
