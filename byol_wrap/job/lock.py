"""One run per folder: an exclusive lock on RUN_DIR for the life of a run.

The lock is an OS file lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) on ``RUN_DIR/.byol-wrap.lock``.
The operating system releases it when the process ends in any way (``kill -9`` included), so a dead run
never leaves a stale lock behind; the file itself only says which process holds the lock (its PID and
host), for the message a second command gets. A second ``byol-wrap pretrain`` into the same folder
stops at once with one line naming that process (exit code 2); under ``torchrun`` rank 0 holds the lock.

The file is removed when the lock is released; a process that locked a file which was removed and
replaced in the meantime notices (the inode differs) and tries again, so two processes never both
believe they hold the lock.

Example:
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with RunLock(folder) as lock:
    ...     try:
    ...         RunLock(folder).acquire()
    ...     except RunDirLocked as error:
    ...         print("in use by process", error.pid == os.getpid())
    in use by process True
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Optional, Set, Tuple, Union

__all__ = ["LOCK_NAME", "RunLock", "RunDirLocked", "lock_holder"]

LOCK_NAME = ".byol-wrap.lock"

# The descriptors of the locks this process holds. A forked child (a DataLoader worker) inherits them, and a
# flock lasts while any copy is open: a worker that outlives a killed run would keep its folder locked. So
# children close their copies at once; the lock stays with the process that took it.
_HELD: Set[int] = set()


def _close_inherited_locks() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class RunDirLocked(ValueError):
    """RUN_DIR is in use by another run (``pid`` and ``host`` name it, when known).

    A ValueError: the command line prints it as one line and exits with code 2.
    """

    def __init__(self, run_dir: Path, pid: Optional[int], host: Optional[str]) -> None:
        here = host is None or host == socket.gethostname()
        who = (f"process {pid}" + ("" if here else f" on {host}")) if pid else "another process"
        super().__init__(f"RUN_DIR {run_dir} is in use by another byol-wrap run ({who} holds its lock "
                         f"{run_dir / LOCK_NAME}); wait for that run to end, stop it, or choose another --out")
        self.pid = pid
        self.host = host


def lock_holder(run_dir: Union[str, os.PathLike[str]]) -> Tuple[Optional[int], Optional[str]]:
    """``(pid, host)`` written in RUN_DIR's lock file by its holder (``(None, None)`` when unknown).

    The file is read as text and only parsed as two fields: nothing in it runs or decides anything.
    """
    try:
        with open(Path(run_dir) / LOCK_NAME, "rb") as handle:
            text = handle.read(256).decode("utf-8", "replace")
    except OSError:
        return None, None
    fields = dict(part.split("=", 1) for part in text.split() if "=" in part)
    pid = fields.get("pid", "")
    return (int(pid) if pid.isdigit() else None), (fields.get("host") or None)


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except (BlockingIOError, PermissionError):
        return False
    except OSError as error:  # a file system without flock (some network mounts): say so rather than hang
        raise OSError(error.errno, f"cannot lock {LOCK_NAME} ({error.strerror}); RUN_DIR must be on a file "
                                   f"system that supports file locks") from error


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            pass
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


class RunLock:
    """An exclusive, non-blocking lock on a run folder (see the module docstring).

    ``acquire()`` raises :class:`RunDirLocked` at once when another process holds it; ``release()``
    (or leaving the ``with`` block) removes the lock file and frees the lock. The folder must exist.

    Example:
        >>> import tempfile
        >>> lock = RunLock(tempfile.mkdtemp()).acquire()
        >>> lock.held, (lock.run_dir / LOCK_NAME).exists()
        (True, True)
        >>> lock.release(); (lock.run_dir / LOCK_NAME).exists()
        False
    """

    def __init__(self, run_dir: Union[str, os.PathLike[str]]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        for _ in range(100):  # retried only when the holder removed the file between our open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _try_lock(fd):
                    raise RunDirLocked(self.run_dir, *lock_holder(self.run_dir))
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    self._fd = fd
                    _HELD.add(fd)
                    self._write_owner(fd)
                    return self
                _unlock(fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise RunDirLocked(self.run_dir, *lock_holder(self.run_dir))  # pragma: no cover - a lock storm

    @staticmethod
    def _write_owner(fd: int) -> None:
        # best effort: the lock holds without this text, which only serves the message of a second command
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
        except (OSError, AttributeError):
            pass

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if fd not in _HELD:
            return  # a forked child's copy of its parent's lock, closed at the fork: the parent's to release
        _HELD.discard(fd)
        try:
            try:
                os.unlink(self.path)  # while still holding it: see the module docstring
            except OSError:
                pass
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
