"""Batches for one rank: a seeded order per epoch, sharded per rank, resumable mid-epoch, decoded in workers.

Example:
    >>> ds = ImageTensors(torch.zeros(10, 3, 4, 4, dtype=torch.uint8))
    >>> [b.indices.tolist() for b in make_loader(ds, 4, seed=1, epoch=0, shuffle=False)]
    [[0, 1, 2, 3], [4, 5, 6, 7]]
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from .datasets import ImageTensors, Item
from .decode import UnreadableImageError
from .geometry import size_pair


def default_workers() -> int:
    """DataLoader worker processes for decoding: the CPUs this process may use, at most 4
    (on the project's 2-core machine: 2; see benchmarks/pipeline.py)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


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
        self.size = size_pair(getattr(dataset, "load_size", (1, 1)))
        fmt = getattr(dataset, "pixel_format", None)
        self.empty_shape = (0, fmt.channels if fmt is not None else 3, *self.size)
        self.empty_dtype = fmt.torch_dtype if fmt is not None else torch.uint8

    def __call__(self, items: Sequence[Item]) -> Batch:
        if isinstance(items, Batch):  # a dataset that fetches whole batches (``__getitems__``, the image cache)
            return items
        good = [(img, idx) for img, idx, _ in items if img is not None]
        skipped = [(self.describe(idx), str(reason)) for img, idx, reason in items if img is None]
        if good:
            images = torch.stack([img for img, _ in good])
        else:
            images = torch.empty(self.empty_shape, dtype=self.empty_dtype)
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
    tensors are indexed directly; a dataset whose ``complete()`` says every item is at hand (the
    image cache once full) is read by a thread of this process, the workers stopped. With
    ``continuous`` (the default), the workers run ahead into the next epoch: iterating epoch ``e``
    to its end and then ``set_epoch(e + 1)`` continues without a stall (any other position restarts
    the workers' queue there, counted in ``restarts``; the order is the same either way). With
    ``strict``, the first unreadable image raises :class:`UnreadableImageError` (in the caller's
    process). A batch holds fewer images than ``batch_size`` when some were skipped (possibly none:
    check ``len(batch.images)``).
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
        self._stream: Optional[Iterator[Batch]] = None  # the continuous DataLoader iterator (or reading thread)
        self._threaded = False  # whether _stream is a thread of this process
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
        complete = getattr(self.dataset, "complete", None)
        threaded = callable(complete) and bool(complete())  # every item at hand (a full image cache)
        if self._continuous is None:
            if threaded:
                from .prefetch import threaded_batches

                batches = threaded_batches(self.dataset, iter(self.sampler), self.pin_memory)
            else:
                batches = iter(self._loader)
        else:
            epoch, skip = self.sampler.epoch, self.sampler.skip_batches
            if self._stream is None or self._next_position != (epoch, skip) or self._threaded != threaded:
                self._stop_stream(shutdown_workers=threaded)
                self._continuous.start = (epoch, skip)
                if threaded:  # read by a thread of this process, running ahead across epochs as workers do
                    from .prefetch import threaded_batches

                    self._stream = threaded_batches(self.dataset, iter(self._continuous), self.pin_memory)
                else:
                    self._stream = iter(self._loader)  # (re)starts the workers' queue at (epoch, skip)
                self._threaded = threaded
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

    def _stop_stream(self, shutdown_workers: bool = False) -> None:
        """End the running stream: the reading thread, or (``shutdown_workers``) the persistent workers
        (a later DataLoader iteration starts them again)."""
        stream, self._stream, self._next_position = self._stream, None, None
        if stream is None:
            return
        if self._threaded:
            stream.close()  # type: ignore[attr-defined]
            return
        if not shutdown_workers:
            return
        iterator = getattr(self._loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            self._loader._iterator = None  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        if self._threaded:
            self._stop_stream()
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
        >>> ds = ImageTensors(torch.zeros(10, 3, 4, 4, dtype=torch.uint8))
        >>> [b.indices.tolist() for b in make_loader(ds, 4, seed=1, epoch=0, shuffle=False)]
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    loader = ImageLoader(dataset, batch_size, workers, seed, drop_last, rank, world_size, pin_memory, strict,
                         shuffle, continuous=continuous)
    loader.set_epoch(epoch, skip_batches)
    return loader
