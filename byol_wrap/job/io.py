"""Crash-safe file writes and safe ``torch.load`` for everything the job layer writes.

A write goes to a temporary file in the destination's folder, is flushed and fsync'd,
then ``os.replace``-d over the destination and the folder is fsync'd: a reader (or a run
killed with ``kill -9`` mid-write) sees either the old file or the new one, never a mix.
The temporary file is removed if the write fails.

API:
    atomic_write(path, writer)        writer(binary file object) writes the content
    atomic_write_bytes(path, data)    bytes
    atomic_write_text(path, text)     str, UTF-8
    atomic_save(obj, path)            torch.save
    load_torch_file(path, what)       torch.load(weights_only=True, map_location="cpu") with clear errors
    safe_torch_load                   alias of load_torch_file
    remove_temporary_files(path)      delete the temporary files a killed writer of ``path`` left behind

Example:
    >>> import tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> path = atomic_save({"step": 3}, folder + "/last.pt")
    >>> load_torch_file(path, "checkpoint")["step"]
    3
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Optional, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["FileWriteError", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_save",
           "load_torch_file", "safe_torch_load", "fsync_dir", "temporary_files", "remove_temporary_files"]


def fsync_dir(folder: PathLike) -> None:
    """fsync a folder so a rename inside it survives a power loss (a no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_files(path: PathLike) -> list[Path]:
    """The temporary files :func:`atomic_write` makes for ``path`` (``.<name>.<8 random characters>.tmp``
    in its folder) that a writer killed mid-write (``kill -9``) left behind; sorted. Nothing else matches:
    a user's ``.<name>.draft.tmp`` or ``<name>.bak`` is not one of them."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")  # mkstemp: 8 random characters
    return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file())


def remove_temporary_files(path: PathLike) -> int:
    """Delete :func:`temporary_files` of ``path`` (call it at start-up, before writing); returns how many.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / ".last.pt.abc123_x.tmp").write_bytes(b"half")
        >>> remove_temporary_files(folder / "last.pt"), sorted(folder.iterdir())
        (1, [])
    """
    removed = 0
    for leftover in temporary_files(path):
        try:
            leftover.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def prove_writable(folder: PathLike) -> None:
    """Create ``folder`` (and its parents) and write and remove an empty file in it; OSError if that fails.

    Example:
        >>> prove_writable(tempfile.mkdtemp())
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".byol-wrap-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, writer: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically: ``writer(f)`` fills a temporary binary file in the same folder,
    which is flushed, fsync'd and ``os.replace``-d over ``path``; the folder is then fsync'd.

    If ``writer`` raises (or the process is interrupted), the temporary file is removed and an
    existing ``path`` is left untouched; a failed write (full disk...) raises :class:`FileWriteError`
    naming ``path``. The folder must exist. Returns ``Path(path)``.

    Example:
        >>> import tempfile
        >>> p = atomic_write(tempfile.mkdtemp() + "/a.bin", lambda f: f.write(b"abc"))
        >>> p.read_bytes()
        b'abc'
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:  # no space (or inode) left, permissions
        raise FileWriteError(path, error) from error
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        cause = _os_error_in(error)
        if cause is not None and not isinstance(error, FileWriteError):
            raise FileWriteError(path, cause) from error
        raise
    fsync_dir(folder)
    return path


class FileWriteError(OSError):
    """A file could not be written (a full disk, a quota, permissions, an I/O error); the file as it was
    before, if any, is untouched. ``filename`` is the file, ``strerror`` the system's reason.

    :func:`atomic_write` raises it for whatever a failed write really raises: an ``OSError`` from the
    file, or the ``RuntimeError`` torch's zip writer makes of one (``torch.save``).

    Example:
        >>> str(FileWriteError("run/encoder.pt", OSError(28, "No space left on device")))
        'could not write run/encoder.pt: No space left on device'
    """

    def __init__(self, path: PathLike, cause: OSError) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause), os.fspath(path))

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror}"


def _os_error_in(error: BaseException) -> Optional[OSError]:
    """The OSError behind ``error``: itself, or one in its ``__cause__``/``__context__`` chain (torch's
    zip writer raises ``RuntimeError('[enforce fail at inline_container.cc...]')`` from the OSError of
    the file's ``write``)."""
    seen = 0
    current: Optional[BaseException] = error
    while current is not None and seen < 16:
        if isinstance(current, OSError):
            return current
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data`` (see :func:`atomic_write`).

    Example:
        >>> import tempfile
        >>> atomic_write_bytes(tempfile.mkdtemp() + "/x.bin", b"\\x00\\x01").stat().st_size
        2
    """
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` encoded as UTF-8 (see :func:`atomic_write`).

    Example:
        >>> import tempfile
        >>> atomic_write_text(tempfile.mkdtemp() + "/skipped.txt", "a.jpg\\tempty file\\n").read_text()
        'a.jpg\\tempty file\\n'
    """
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (see :func:`atomic_write`).

    Example:
        >>> import tempfile, torch
        >>> p = atomic_save({"w": torch.ones(2)}, tempfile.mkdtemp() + "/w.pt")
        >>> torch.load(p, weights_only=True)["w"]
        tensor([1., 1.])
    """
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


class UnreadableFileError(ValueError, RuntimeError):
    """A file given to byol-wrap is not what it should be (truncated, foreign, another kind of byol-wrap file).

    A ValueError, since it is bad input (the command line reports it in one line with exit code 2), and a
    RuntimeError, as earlier versions raised.
    """


def load_torch_file(
    path: PathLike,
    what: str = "file",
    hint: str = "delete it or replace it with a complete copy",
) -> Any:
    """``torch.load(path, weights_only=True, map_location="cpu")`` with messages a user can act on.

    Args:
        path: the file.
        what: what the file is, for the messages (``"checkpoint"``, ``"encoder"``, ``"weights"``).
        hint: what to do about an unreadable file, appended to the message.

    Raises:
        FileNotFoundError: ``"<what> <path> does not exist"``.
        RuntimeError: ``"<what> <path> is not a readable byol-wrap file (truncated or foreign?):
            <reason>; <hint>"`` for a truncated, empty or foreign file, or one holding objects that
            ``weights_only=True`` refuses (arbitrary pickled classes).

    Example:
        >>> import tempfile
        >>> bad = Path(tempfile.mkdtemp()) / "last.pt"
        >>> _ = bad.write_bytes(b"not a checkpoint")
        >>> try:
        ...     load_torch_file(bad, "checkpoint")
        ... except RuntimeError as error:
        ...     print(str(error).split(":")[0].endswith("(truncated or foreign?)"))
        True
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (PermissionError, MemoryError):
        raise
    except Exception as error:  # truncated zip, pickle garbage, refused globals, empty file...
        if path.stat().st_size == 0:
            reason = "the file is empty (0 bytes)"
        elif type(error).__name__ == "UnpicklingError":  # torch's own text advises weights_only=False: not here
            reason = "torch.load(weights_only=True) refuses it (not a file of tensors saved by torch.save)"
        else:
            reason = _first_line(error)
        raise UnreadableFileError(
            f"{what} {path} is not a readable byol-wrap file (truncated or foreign?): {reason}; {hint}"
        ) from error


#: The name used in the team plan; same function.
safe_torch_load = load_torch_file
