"""The image cache's files: one fixed-size record per image, their marks, the index, the lock.

A cache folder (``RUN_DIR/cache/<key>/`` or ``DIR/<key>/``; the key names the data folder, the load size, the
record layout and the decoder, so one ``DIR`` may serve several runs and load sizes) holds:

- ``index.json``: the layout every record shares (load size, channels, dtype, record bytes), the decoder
  (its version and Pillow's/libjpeg's/simplejpeg's: another decoder means another key), and per file ``[path
  relative to the data folder, size, modification time (ns), inode, slot]``; written atomically.
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
index was written are noticed from a ``stat`` of each file, without reading any image.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.raw").write_bytes(b"x")
    >>> cache, report = ImageCache.open(folder / "c", [str(folder / "a.raw")], str(folder),
    ...                                 CacheLayout(2, 1, 1, "uint16"), (1, 1))
    >>> cache.write(0, np.array([[[7]], [[65535]]], dtype=np.uint16)), cache.read(0).ravel().tolist()
    (True, [7, 65535])
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..io import atomic_write_text, fsync_dir
from .decode import decoder_id

FORMAT = "byol-wrap-image-cache"
VERSION = 1
INDEX, RECORDS, MARKS, LOCK = "index.json", "records.bin", "marks.u8", "lock"
CACHE_FILES = (INDEX, RECORDS, MARKS, LOCK)
EMPTY, WRITTEN, SYNCED, FAILED = 0, 1, 2, 3
LOCK_WAIT_S = 10.0    # how long to wait for a cache a finishing run still holds

__all__ = ["CacheLayout", "ImageCache", "FORMAT", "VERSION", "INDEX", "RECORDS", "MARKS", "LOCK",
           "CACHE_FILES"]


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

    Example: see the module's.
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
        try:
            os.fsync(fd)
        except OSError as error:  # the records stay marked 1: the next run decodes them again; training goes on
            print(f"byol-wrap: cannot sync the image cache {self.folder / RECORDS} ({error.strerror or error}); "
                  f"its newest records will be decoded again by the next run", file=sys.stderr, flush=True)
            return
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
