"""An exact cache of decoded images: the first epoch decodes and keeps each image's bytes, later epochs read them.

The decoded image at the load size is the same in every epoch (resize and centre crop are deterministic; all
randomness happens later, on the device), so it can be kept: one fixed-size record per image in a file that
the loader reads back at memory speed (a plain copy out of the page cache, about 100x faster than decoding a
JPEG per core; figures in BENCHMARKS.md). The tensors are the decoder's own bytes: a cached epoch is bit-identical
to a decoded one, and a resumed run stays exact whatever the cache holds.

The files, and why a kill at any moment leaves a usable cache or one that is detected and redone, are in
:mod:`.cache_store`; this module chooses whether and where to cache (``--cache auto|off|DIR``) and reads
through it (:class:`CachedImages`). Files that changed, vanished or appeared since the cache was written are
decoded again, said in one line.

Who writes what. The process that opens the cache (the main process; under torchrun the local rank 0 of each
machine) takes the lock, checks the files, writes the index and reserves the space; then every process's
DataLoader workers write the records of the images they decode (each rank its own shard, so nobody writes a
slot another process is writing, and a rare overlap across an epoch boundary writes the same bytes), and
every process reads any record. Under torchrun on several machines each machine has its own cache (the key
names the machine), so nothing is written by two machines into one file even on a shared file system.

Example:
    >>> import tempfile
    >>> from PIL import Image
    >>> from byol_wrap.job.data import open_images
    >>> folder = Path(tempfile.mkdtemp())
    >>> for i in range(4):
    ...     Image.new("RGB", (40 + i, 30), (60 * i, 20, 200)).save(folder / f"{i}.png")
    >>> dataset = open_images(folder, 16)
    >>> cached = attach_cache(dataset, "auto", Path(tempfile.mkdtemp()), say=lambda line: None)
    >>> bool((cached[2][0] == dataset[2][0]).all()), cached.cache.filled()
    (True, 1)
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..checkpoint import RunError
from ..io import prove_writable
from .cache_store import CACHE_FILES, INDEX, RECORDS, VERSION, CacheLayout, ImageCache
from .datasets import ImageFiles, Item
from .decode import decoder_id
from .loader import Batch

AUTO_SHARE = 0.5      # "auto" uses at most this share of the free disk space
CacheArg = Union[str, "os.PathLike[str]", None]

__all__ = ["CacheError", "CachedImages", "attach_cache", "attach_run_cache", "cache_key", "remove_run_cache",
           "CacheLayout", "ImageCache", "INDEX", "RECORDS"]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


class CacheError(RunError):
    """A cache that cannot be used as asked (``--cache DIR`` unwritable or too small): one line saying what to do
    (a :class:`~byol_wrap.job.checkpoint.RunError`, so a ``ValueError``: the command exits with 2)."""


# ============================================================================ the dataset
class CachedImages(Dataset):
    """An :class:`~byol_wrap.job.data.ImageFiles` whose items come from an :class:`ImageCache` when their
    record is complete, and are decoded (and stored) otherwise; the items are the same tensors either way.

    DataLoader fetches whole batches (``__getitems__``): complete records are copied straight into the
    batch (in shared memory inside a worker), so a cached batch costs one copy per image. Unreadable files
    are never cached (decoded, and skipped, every epoch, as without the cache). Other attributes
    (``paths``, ``root``, ``describe``...) are the wrapped dataset's.
    """

    def __init__(self, files: ImageFiles, cache: ImageCache) -> None:
        self.files = files
        self.cache = cache

    def __len__(self) -> int:
        return len(self.files)

    def __getattr__(self, name: str) -> Any:
        if name in ("files", "cache") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.files, name)

    @property
    def strict(self) -> bool:
        return bool(self.files.strict)

    @strict.setter
    def strict(self, value: bool) -> None:
        self.files.strict = value

    def _decode(self, index: int) -> Item:
        image, i, reason = self.files[index]
        slot = int(self.cache.slot_of[index])
        if slot >= 0 and image is None:
            self.cache.mark_failed(slot)
        elif image is not None and slot >= 0 and self._fits(image):
            self.cache.write(slot, image.contiguous().numpy())
        return image, i, reason

    def _fits(self, image: Tensor) -> bool:
        layout = self.cache.layout
        return tuple(image.shape) == layout.shape and str(image.dtype).replace("torch.", "") == layout.dtype

    def __getitem__(self, index: int) -> Item:
        slot = int(self.cache.slot_of[index])
        if slot >= 0 and bool(self.cache.marked(np.asarray([slot]))[0]):
            return torch.from_numpy(self.cache.read(slot)), index, None
        return self._decode(index)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """One batch (the loader's collate function passes a :class:`Batch` through)."""
        idx = np.asarray(indices, dtype=np.int64)
        slots = self.cache.slot_of[idx]
        hit = slots >= 0
        if hit.any():
            hit[hit] = self.cache.marked(slots[hit])
        layout = self.cache.layout
        if hit.all() and torch.utils.data.get_worker_info() is None:  # numpy's fancy indexing: the fastest read
            return Batch(torch.from_numpy(self.cache.read_many(slots)), torch.from_numpy(idx), [])
        out = _batch_tensor((len(idx), *layout.shape), getattr(torch, layout.dtype))
        if hit.all():
            self.cache.read_into(slots, out.numpy())
            return Batch(out, torch.from_numpy(idx), [])
        keep = np.ones(len(idx), dtype=bool)
        skipped: List[Tuple[str, str]] = []
        out_np = out.numpy()
        for k in np.flatnonzero(hit):
            self.cache.read_into(slots[k:k + 1], out_np[k:k + 1])
        for k in np.flatnonzero(~hit):
            image, index, reason = self.files[int(idx[k])]
            slot = int(slots[k])
            if image is None:
                keep[k] = False
                skipped.append((self.files.describe(index), str(reason)))
                if slot >= 0:
                    self.cache.mark_failed(slot)
            elif not self._fits(image):  # outside the layout (never cached): the batch cannot hold it either
                raise RuntimeError(f"{self.files.describe(index)} decoded to {tuple(image.shape)} {image.dtype}, "
                                   f"the other images to {layout.shape} {layout.dtype}; a batch needs one shape")
            else:
                out[k] = image  # the one (C, H, W) copy a collate makes anyway; the record is written from it
                if slot >= 0:
                    self.cache.write(slot, out_np[k])
        if not keep.all():
            out = out[torch.from_numpy(keep)]
        return Batch(out, torch.from_numpy(idx[keep]), skipped)

    def describe(self, index: int) -> str:
        return self.files.describe(index)

    def complete(self) -> bool:
        """Every item is at hand (a record, or a file known to be unreadable): the loader then reads the
        batches in a thread of its own process instead of worker processes (see :mod:`.prefetch`)."""
        return self.cache.complete() and bool(np.all(self.cache.slot_of >= 0))

    def sync(self) -> None:
        """See :meth:`ImageCache.sync`."""
        self.cache.sync()

    def close(self) -> None:
        """See :meth:`ImageCache.close`."""
        self.cache.close()


def _batch_tensor(shape: Tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """An empty tensor, in shared memory inside a DataLoader worker (sending it then copies nothing,
    as ``default_collate`` does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel, device="cpu")
    return torch.empty(0, dtype=dtype).new(storage).resize_(shape)


# ============================================================================ choosing
def _probe_layout(files: ImageFiles) -> Optional[CacheLayout]:
    """The layout of the first readable images (dataset attributes ``channels``/``dtype`` when it has them)."""
    h, w = files.load_size
    channels, dtype = getattr(files, "channels", None), getattr(files, "dtype", None)
    if isinstance(channels, int) and dtype is not None:
        return CacheLayout(channels, h, w, str(dtype).replace("torch.", ""))
    for index in range(min(len(files), 32)):
        image = files[index][0]
        if image is not None:
            return CacheLayout(int(image.shape[0]), int(image.shape[1]), int(image.shape[2]),
                               str(image.dtype).replace("torch.", ""))
    return None


def cache_key(root: str, layout: CacheLayout, node: Optional[int] = None) -> str:
    """The folder name of a cache: readable part + a hash of the data folder, layout, decoder (and machine).

    Example:
        >>> cache_key("/data/photos", CacheLayout(3, 256, 256, "uint8"))[:25]
        'photos-256x256-3ch-uint8-'
    """
    what = json.dumps([os.path.abspath(root), list(layout), decoder_id(), VERSION, node])
    digest = hashlib.sha256(what.encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(os.path.abspath(root)).name)[:40] or "data"
    machine = f"-node{node}" if node is not None else ""
    return f"{name}-{layout.height}x{layout.width}-{layout.channels}ch-{layout.dtype}{machine}-{digest}"


def attach_cache(dataset: Dataset, cache: CacheArg, run_dir: Path, *, leader: bool = True,
                 gather: Callable[[Any], List[Any]] = lambda obj: [obj], node: Optional[int] = None,
                 say: Callable[[str], None] = print) -> Dataset:
    """``dataset`` reading through a cache of decoded images, or ``dataset`` itself; says which in one line.

    Args:
        dataset: the training data; only image files (:class:`ImageFiles`) are cached (arrays in memory
            need no cache, a user's Dataset may not be deterministic).
        cache: ``"auto"`` (``RUN_DIR/cache/``, used only when it needs at most half the free disk space),
            ``"off"`` / ``None``, or a folder ``DIR`` (used whenever it fits; may be shared by runs).
        run_dir: RUN_DIR.
        leader: this process prepares the cache (the main process; under torchrun local rank 0 of each
            machine); the others then attach to what their machine's leader prepared (or use no cache when it
            uses none). Every process must call this, with the same arguments but ``leader``.
        gather: every process's object, in rank order (torchrun's ``all_gather_object``); called once, after
            the leader has prepared, to hand its decision to the other processes of its machine.
        node: the machine's index under torchrun on several machines (each machine gets its own cache).
        say: where the one-line message goes (the leader's).

    Raises:
        CacheError: ``DIR`` cannot be written, or lacks the space (one line naming what to do).

    Example:
        >>> attach_cache(torch.utils.data.TensorDataset(torch.zeros(2)), "auto", Path("."), say=print)
        ... # doctest: +ELLIPSIS
        <torch.utils.data.dataset.TensorDataset object at ...>
    """
    mode = "off" if cache is None else os.fspath(cache)
    if mode == "off" or not isinstance(dataset, ImageFiles) or len(dataset) == 0:
        gather(None)
        return dataset
    explicit = mode != "auto"
    base = Path(mode) if explicit else Path(run_dir) / "cache"
    root = os.fspath(dataset.root) if dataset.root is not None else os.path.commonpath(dataset.paths)
    if os.path.isfile(root):
        root = os.path.dirname(root)
    outcome: Optional[ImageCache] = None
    failure: Optional[str] = None
    if leader:
        try:
            outcome = _prepare(dataset, root, base, explicit, node, say)
        except CacheError as error:  # raised on every process, after the others heard of it
            failure = str(error)
    mine = None if outcome is None else [os.fspath(outcome.folder), list(outcome.layout)]
    decisions = gather([node, leader, mine, failure])
    failures = [d[3] for d in decisions if d is not None and d[3]]
    if failures:
        if outcome is not None:
            outcome.close()
        raise CacheError(failures[0])
    if not leader:
        found = [d[2] for d in decisions if d is not None and d[0] == node and d[1]]
        if found and found[0] is not None:
            folder, layout = Path(found[0][0]), CacheLayout(*found[0][1])
            outcome = ImageCache.attach(folder, dataset.paths, root, layout, dataset.load_size)
    return dataset if outcome is None else CachedImages(dataset, outcome)


def attach_run_cache(dataset: Dataset, cache: CacheArg, run_dir: Path, world: Any, overwrite: bool,
                     say: Callable[[str], None]) -> Dataset:
    """:func:`attach_cache` for a run of ``pretrain`` (``world``: its processes, :class:`byol_wrap.job.world.World`):
    ``overwrite`` first removes the run's own cache in ``RUN_DIR/cache`` (never a ``--cache DIR`` elsewhere);
    under torchrun the first process of each machine prepares that machine's cache.
    """
    if not (cache is None or isinstance(cache, (str, os.PathLike))):
        raise CacheError(f"--cache must be auto, off or a folder, got {cache!r}")
    if overwrite and world.main:
        removed = remove_run_cache(run_dir)
        if removed:
            say(f"cache: removed the run's own cache ({', '.join(p.name for p in removed)})")
    world.barrier()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
    node = int(os.environ.get("GROUP_RANK", world.rank // max(1, local))) if local < world.size else None
    return attach_cache(dataset, cache, run_dir, leader=world.local_rank == 0, gather=world.gather, node=node,
                        say=say)


def _prepare(dataset: ImageFiles, root: str, base: Path, explicit: bool, node: Optional[int],
             say: Callable[[str], None]) -> Optional[ImageCache]:
    layout = _probe_layout(dataset)
    if layout is None:
        say("cache: off (none of the first images could be decoded)")
        return None
    folder = base / cache_key(root, layout, node)
    try:
        prove_writable(base)
    except OSError as error:
        if explicit:
            raise CacheError(f"cannot write the image cache to {base}: {error.strerror or error}; choose "
                             f"another --cache DIR, or --cache off") from error
        say(f"cache: off: cannot write to {base} ({error.strerror or error}); decoding every epoch")
        return None
    need = len(dataset) * layout.record_bytes + len(dataset) * 90  # records, marks and index
    have = 0
    with contextlib.suppress(OSError):
        have = (folder / RECORDS).stat().st_blocks * 512
    free = shutil.disk_usage(base).free
    more = max(0, need - have)
    if more > (free if explicit else AUTO_SHARE * free):
        if explicit:
            raise CacheError(f"the image cache needs {_gib(more)} more in {base}, which has {_gib(free)} free; "
                             f"free some space, choose another --cache DIR, or --cache off")
        say(f"cache: off: the decoded images need {_gib(need)}, more than half of the {_gib(free)} free in "
            f"{base}; decoding every epoch (give --cache DIR on a larger disk, or --cache off to silence this)")
        return None
    try:
        cache, report = ImageCache.open(folder, dataset.paths, root, layout, dataset.load_size)
    except BlockingIOError as error:
        say(f"cache: off: {folder} is {error.strerror}; decoding every epoch")
        return None
    except OSError as error:
        if explicit:
            raise CacheError(f"cannot prepare the image cache in {folder}: {error.strerror or error}; choose "
                             f"another --cache DIR, or --cache off") from error
        say(f"cache: off: cannot prepare {folder} ({error.strerror or error}); decoding every epoch")
        return None
    changes = [f"{report[k]} {k}" for k in ("changed", "vanished", "new") if report[k]]
    if report["unsynced"]:
        changes.append(f"{report['unsynced']} written after the last sync (a killed run)")
    detail = (f"; since it was written: {', '.join(changes)} (e.g. {'; '.join(report['examples'][:2])}): those "
              f"are decoded again" if changes and report["examples"] else
              f"; {', '.join(changes)}: decoded again" if changes else "")
    state = ("new: the first epoch decodes and fills it" if report["cached"] == 0 else
             f"{report['cached']} of {len(dataset)} images cached")
    say(f"cache: {_gib(need)} of decoded images ({layout.height}x{layout.width}, {layout.channels} channels, "
        f"{layout.dtype}) in {folder}, {_gib(free)} free; {state}{detail}")
    return cache


def remove_run_cache(run_dir: Path) -> List[Path]:
    """Delete the caches in ``RUN_DIR/cache/`` (what ``--overwrite`` removes; a ``--cache DIR`` elsewhere is
    never touched). Only byol-wrap's cache files are removed; returns the folders emptied.

    Example:
        >>> remove_run_cache(Path("/nonexistent/run"))
        []
    """
    base = Path(run_dir) / "cache"
    removed: List[Path] = []
    if not base.is_dir():
        return removed
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and ((p / INDEX).exists() or (p / RECORDS).exists())):
        for name in CACHE_FILES:
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        for leftover in folder.glob(f".{INDEX}.*.tmp"):
            leftover.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
        removed.append(folder)
    with contextlib.suppress(OSError):
        base.rmdir()
    return removed
