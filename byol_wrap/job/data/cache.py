"""An exact cache of decoded images: the first epoch decodes and keeps each image's bytes, later epochs read them.

The decoded image at the load size is the same in every epoch (resize and centre crop are deterministic; all
randomness happens later, on the device), so it can be kept: one fixed-size record per image in a file that
DataLoader workers read back at memory speed (a plain copy out of the page cache, 20-50x faster than decoding
a JPEG; figures in BENCHMARKS.md). The tensors are the decoder's own bytes: a cached epoch is bit-identical
to a decoded one, and a resumed run stays exact whatever the cache holds.

A cache folder (``RUN_DIR/cache/<key>/`` or ``DIR/<key>/``; the key names the data folder, the load size, the
record layout and the decoder, so one ``DIR`` may serve several runs and load sizes) holds:

- ``index.json``: the layout every record shares (load size, channels, dtype, record bytes), the decoder
  (its version and Pillow's/libjpeg's: another decoder means another key), and per file ``[path relative to
  the data folder, size, modification time (ns), inode, slot]``; written atomically.
- ``records.bin``: ``slots x record bytes``, the images in ``(C, H, W)`` order; space reserved up front.
- ``marks.u8``: one byte per slot: 0 empty, 1 written (not yet known to be on disk), 2 written and fsync'd,
  3 the file could not be decoded (decoded again, and skipped again, whenever it is met).
- ``lock``: held (``fcntl.lockf``) by the run using the cache; it holds that run's process id.

Kill safety. A record is written (``pwrite``) before its mark is set, so a process killed mid-write leaves
mark 0 and the record is decoded again. :meth:`ImageCache.sync` (called at every checkpoint and at the end)
fsyncs the records before turning their marks 1 into 2; on opening, records still marked 1 (written after
the last sync: a killed run's last minutes) are decoded again, so even a power loss cannot leave a record
that claims to be complete but is not. Marks of files that changed are cleared (and fsync'd) before the new
index is written. Files that changed (size, modification time or inode), vanished or appeared since the
index was written are noticed from a ``stat`` of each file, without reading any image, and said in one line.

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
import errno
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..io import atomic_write_text, fsync_dir
from .datasets import ImageFiles, Item
from .jpeg import jpeg_decoder_version
from .loader import Batch

FORMAT = "byol-wrap-image-cache"
VERSION = 1
INDEX, RECORDS, MARKS, LOCK = "index.json", "records.bin", "marks.u8", "lock"
CACHE_FILES = (INDEX, RECORDS, MARKS, LOCK)
EMPTY, WRITTEN, SYNCED, FAILED = 0, 1, 2, 3
AUTO_SHARE = 0.5      # "auto" uses at most this share of the free disk space
LOCK_WAIT_S = 10.0    # how long to wait for a cache a finishing run still holds
CacheArg = Union[str, "os.PathLike[str]", None]

__all__ = ["CacheError", "CacheLayout", "ImageCache", "CachedImages", "attach_cache", "decoder_id",
           "remove_run_cache", "FORMAT", "VERSION"]


class CacheError(ValueError):
    """A cache that cannot be used as asked (``--cache DIR`` unwritable or too small); one line saying what to do."""


class CacheLayout(NamedTuple):
    """What every record of one cache holds: ``channels x height x width`` values of ``dtype`` (a numpy name)."""

    channels: int
    height: int
    width: int
    dtype: str

    @property
    def record_bytes(self) -> int:
        return self.channels * self.height * self.width * np.dtype(self.dtype).itemsize

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def decoder_id() -> str:
    """The decoder the records come from: byol-wrap's ``read_image`` and the libraries under it.

    A cache written by another decoder has another key (it is never read back as if it were this one's).

    Example:
        >>> decoder_id().startswith("read_image/")
        True
    """
    parts = [f"read_image/{VERSION}"]
    try:
        import PIL
        from PIL import features

        parts.append(f"Pillow {PIL.__version__}")
        for lib in ("libjpeg_turbo", "jpg", "zlib", "libtiff", "webp"):
            with contextlib.suppress(Exception):
                version = features.version(lib)
                if version:
                    parts.append(f"{lib} {version}")
    except ImportError:  # pragma: no cover - the job needs Pillow
        pass
    fast = jpeg_decoder_version()
    if fast:
        parts.append(fast)
    return "; ".join(parts)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def _stat(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (int(info.st_size), int(info.st_mtime_ns), int(info.st_ino))


def _reserve(fd: int, size: int) -> None:
    """Give the file ``size`` bytes, with the disk blocks reserved where the file system can (a full disk
    then shows here, not in the middle of an epoch)."""
    current = os.fstat(fd).st_size
    if current < size:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
            os.ftruncate(fd, size)
    elif current > size:
        os.ftruncate(fd, size)


# ============================================================================ the store
class ImageCache:
    """One cache folder: the index, the records, their marks. Open it with :meth:`open` (the process that
    checks and prepares it) or :meth:`attach` (other processes, once it is prepared).

    ``slot_of[i]`` is the record of dataset item ``i`` (``-1``: not cached, e.g. outside the layout).
    Worker processes reopen the files lazily (the object pickles without them).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "a.raw").write_bytes(b"x")
        >>> cache, report = ImageCache.open(folder / "c", [str(folder / "a.raw")], str(folder),
        ...                                 CacheLayout(1, 2, 2, "uint8"), (2, 2))
        >>> cache.write(0, np.arange(4, dtype=np.uint8).reshape(1, 2, 2)), cache.read(0).tolist()
        (True, [[[0, 1], [2, 3]]])
        >>> report["new"], cache.filled()
        (1, 1)
    """

    def __init__(self, folder: Path, layout: CacheLayout, slot_of: np.ndarray, slots: int, leader: bool) -> None:
        self.folder, self.layout, self.slot_of, self.slots, self.leader = folder, layout, slot_of, slots, leader
        self._pid: Optional[int] = None
        self._fd: Optional[int] = None
        self._records: Optional[np.memmap] = None
        self._marks: Optional[np.memmap] = None
        self._lock_fd: Optional[int] = None
        self.write_failed: Optional[str] = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, folder: Path, paths: Sequence[str], root: str, layout: CacheLayout, load_size: Tuple[int, int],
             lock: bool = True) -> Tuple[ImageCache, Dict[str, Any]]:
        """Create or reuse the cache in ``folder`` for ``paths`` (files under ``root``), as its leader.

        Takes the lock (raises ``BlockingIOError`` naming the holder after :data:`LOCK_WAIT_S`), compares the
        index with a ``stat`` of every file, clears the marks of changed files, drops vanished ones, gives new
        ones slots (reusing freed ones), decodes-again records written after the last sync, writes the new
        index and reserves the records' space. ``report`` says what was found (counts and examples).
        """
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = _take_lock(folder / LOCK) if lock else None
        try:
            return cls._open_locked(folder, paths, root, layout, load_size, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    @classmethod
    def _open_locked(cls, folder: Path, paths: Sequence[str], root: str, layout: CacheLayout,
                     load_size: Tuple[int, int], lock_fd: Optional[int]) -> Tuple[ImageCache, Dict[str, Any]]:
        from ..io import remove_temporary_files

        remove_temporary_files(folder / INDEX)
        header = _header(layout, load_size)
        old = _read_index(folder / INDEX, header)
        entries: Dict[str, List[int]] = {} if old is None else {e[0]: e[1:] for e in old["entries"]}
        old_slots = 0 if old is None else int(old["slots"])
        marks_path = folder / MARKS
        marks = np.zeros(old_slots, dtype=np.uint8)
        if old is not None and marks_path.exists() and marks_path.stat().st_size >= old_slots:
            marks = np.fromfile(marks_path, dtype=np.uint8, count=old_slots)
        report: Dict[str, Any] = {"changed": 0, "vanished": 0, "new": 0, "unsynced": 0, "examples": [],
                                  "fresh": old is None, "cached": 0}
        keys = [_relative(p, root) for p in paths]
        current = set(keys)
        free: List[int] = []
        clear: List[int] = []
        for key, value in entries.items():
            if key not in current:
                report["vanished"] += 1
                free.append(value[3])
                clear.append(value[3])
                if len(report["examples"]) < 1:
                    report["examples"].append(f"{key} vanished")
        free.sort(reverse=True)
        slot_of = np.full(len(paths), -1, dtype=np.int64)
        new_entries: List[List[Any]] = []
        next_slot = old_slots
        for i, (path, key) in enumerate(zip(paths, keys)):
            stat = _stat(path)
            if stat is None:
                continue  # unreadable now: decoding reports it (and it is not cached)
            if key in entries:
                size, mtime, inode, slot = entries[key]
                if (size, mtime, inode) != stat:
                    report["changed"] += 1
                    clear.append(slot)
                    if len(report["examples"]) < 2:
                        report["examples"].append(f"{key} changed")
            else:
                report["new"] += 1 if old is not None else 0
                if free:
                    slot = free.pop()
                else:
                    slot, next_slot = next_slot, next_slot + 1
                clear.append(slot)
            slot_of[i] = slot
            new_entries.append([key, *stat, slot])
        slots = max(next_slot, 1)
        if old is not None and report["new"] and len(report["examples"]) < 3:
            first_new = next(k for k in keys if k not in entries)
            report["examples"].append(f"{first_new} new")
        marks = np.concatenate([marks, np.zeros(max(0, slots - len(marks)), dtype=np.uint8)])[:slots]
        report["unsynced"] = int((marks == WRITTEN).sum())
        marks[marks == WRITTEN] = EMPTY     # written after the last sync: maybe not on disk; decoded again
        if clear:
            marks[np.asarray(clear, dtype=np.int64)] = EMPTY
        used = slot_of[slot_of >= 0]
        report["cached"] = int((marks[used] == SYNCED).sum()) if used.size else 0
        # marks first (cleared, fsync'd), then the index that maps files to them, then the space for records
        _write_file(marks_path, marks.tobytes())
        fd = os.open(folder / RECORDS, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _reserve(fd, slots * layout.record_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)
        index = dict(header, slots=slots, root=os.path.abspath(root), written=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime()),
                     entries=new_entries)
        atomic_write_text(folder / INDEX, json.dumps(index, separators=(",", ":")) + "\n")
        cache = cls(folder, layout, slot_of, slots, leader=True)
        cache._lock_fd = lock_fd
        return cache, report

    @classmethod
    def attach(cls, folder: Path, paths: Sequence[str], root: str, layout: CacheLayout,
               load_size: Tuple[int, int]) -> ImageCache:
        """The cache a leader prepared in ``folder``, for a process that only reads and writes records."""
        index = _read_index(folder / INDEX, _header(layout, load_size))
        if index is None:
            raise RuntimeError(f"the image cache in {folder} was not prepared (no usable {INDEX})")
        slots_by_key = {e[0]: int(e[4]) for e in index["entries"]}
        slot_of = np.asarray([slots_by_key.get(_relative(p, root), -1) for p in paths], dtype=np.int64)
        return cls(folder, layout, slot_of, int(index["slots"]), leader=False)

    # ------------------------------------------------------------------ records
    def _files(self) -> Tuple[int, np.memmap, np.memmap]:
        if self._pid != os.getpid() or self._fd is None or self._records is None or self._marks is None:
            self._fd = os.open(self.folder / RECORDS, os.O_RDWR)
            self._records = np.memmap(self.folder / RECORDS, dtype=np.dtype(self.layout.dtype), mode="r",
                                      shape=(self.slots, *self.layout.shape))
            self._marks = np.memmap(self.folder / MARKS, dtype=np.uint8, mode="r+", shape=(self.slots,))
            self._pid = os.getpid()
        return self._fd, self._records, self._marks

    def marked(self, slots: np.ndarray) -> np.ndarray:
        """True where the record of ``slots`` is complete (``slots`` >= 0)."""
        _, _, marks = self._files()
        m = np.asarray(marks[slots])
        return np.asarray((m == WRITTEN) | (m == SYNCED), dtype=bool)

    def mark_failed(self, slot: int) -> None:
        """Note that the file of ``slot`` could not be decoded (its item is decoded, and skipped, again)."""
        _, _, marks = self._files()
        if marks[slot] == EMPTY:
            marks[slot] = FAILED

    def complete(self) -> bool:
        """Whether every file of this run has a record or is known to be unreadable."""
        used = self.slot_of[self.slot_of >= 0]
        _, _, marks = self._files()
        return bool(np.all(np.asarray(marks[used]) != EMPTY))

    def read(self, slot: int) -> np.ndarray:
        """The record of ``slot`` (a copy, ``(C, H, W)``)."""
        _, records, _ = self._files()
        return np.array(records[slot])

    def read_many(self, slots: np.ndarray) -> np.ndarray:
        """The records of ``slots``, in that order, as a new array ``(len(slots), C, H, W)``."""
        _, records, _ = self._files()
        return np.asarray(records[slots])

    def read_into(self, slots: np.ndarray, out: np.ndarray) -> None:
        """Copy the records of ``slots`` into ``out`` (``(len(slots), C, H, W)``), in that order."""
        _, records, _ = self._files()
        for k, slot in enumerate(slots.tolist()):  # one memcpy each (np.take with out= was slower here)
            out[k] = records[slot]

    def write(self, slot: int, image: np.ndarray) -> bool:
        """Store ``image`` (``(C, H, W)`` of the layout) in ``slot``: the bytes first, then the mark.

        A failed write (a full disk, an I/O error) is said once on stderr and turns writing off in this
        process (the run goes on decoding); returns whether the record was stored.
        """
        if self.write_failed is not None:
            return False
        fd, _, marks = self._files()
        data = np.ascontiguousarray(image)
        try:
            written = os.pwrite(fd, data.data, slot * self.layout.record_bytes)
            if written != self.layout.record_bytes:
                raise OSError(errno.EIO, f"short write ({written} of {self.layout.record_bytes} bytes)")
        except OSError as error:
            self.write_failed = f"{error.strerror or error}"
            print(f"byol-wrap: cannot write the image cache {self.folder / RECORDS} ({self.write_failed}); "
                  f"this process goes on decoding without caching", file=sys.stderr, flush=True)
            return False
        marks[slot] = WRITTEN
        return True

    def filled(self) -> int:
        """How many of this run's files have a complete record."""
        used = self.slot_of[self.slot_of >= 0]
        return int(self.marked(used).sum()) if used.size else 0

    def sync(self) -> None:
        """Make the records written so far durable: fsync them, then mark them 2 and fsync the marks
        (the leader does it; a no-op elsewhere). Called at every checkpoint and by :meth:`close`."""
        if not self.leader:
            return
        fd, _, marks = self._files()
        written = np.flatnonzero(np.asarray(marks) == WRITTEN)  # snapshot before the fsync: all of these are
        if written.size == 0:                                   # already in the page cache
            return
        os.fsync(fd)
        marks[written] = SYNCED
        marks.flush()

    def close(self) -> None:
        """Sync (leader), close the files and release the lock."""
        with contextlib.suppress(OSError, ValueError):
            self.sync()
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = self._records = self._marks = None
        self._pid = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_pid=None, _fd=None, _records=None, _marks=None, _lock_fd=None, leader=False)
        return state


def _relative(path: str, root: str) -> str:
    prefix = root.rstrip(os.sep) + os.sep
    return path[len(prefix):] if path.startswith(prefix) else os.path.abspath(path)


def _header(layout: CacheLayout, load_size: Tuple[int, int]) -> Dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "decoder": decoder_id(), "load_size": list(load_size),
            "channels": layout.channels, "height": layout.height, "width": layout.width, "dtype": layout.dtype,
            "record_bytes": layout.record_bytes}


def _read_index(path: Path, header: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The index at ``path`` when it is complete and written for ``header``'s layout and decoder, else None."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or any(index.get(k) != v for k, v in header.items()):
        return None
    entries = index.get("entries")
    slots = index.get("slots")
    if not isinstance(entries, list) or not isinstance(slots, int):
        return None
    if not all(isinstance(e, list) and len(e) == 5 and isinstance(e[0], str) and 0 <= int(e[4]) < slots
               for e in entries):
        return None
    return index


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` in place (the marks file: other processes map it) and fsync it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        os.ftruncate(fd, len(data))
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def _take_lock(path: Path) -> Optional[int]:
    """Hold ``path`` with ``fcntl.lockf`` (per process: DataLoader workers do not inherit it, a killed run
    releases it at once). Raises ``BlockingIOError`` saying which process holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN) or time.monotonic() > deadline:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
                os.close(fd)
                raise BlockingIOError(errno.EAGAIN, f"in use by another run (process {holder})") from error
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


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


def _prepare(dataset: ImageFiles, root: str, base: Path, explicit: bool, node: Optional[int],
             say: Callable[[str], None]) -> Optional[ImageCache]:
    layout = _probe_layout(dataset)
    if layout is None:
        say("cache: off (none of the first images could be decoded)")
        return None
    folder = base / cache_key(root, layout, node)
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / f".byol-wrap-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
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
