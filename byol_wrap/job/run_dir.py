"""RUN_DIR itself: created and proved writable before a run, removed again when a failed start left it empty.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "a" / "run"
    >>> created = first_missing(out)
    >>> check_writable(out); remove_if_empty(out, created); out.parent.exists()
    False
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .checkpoint import RunError
from .io import prove_writable


def check_writable(out: Path) -> None:
    """Create RUN_DIR and prove it writable, or raise one clear line."""
    try:
        prove_writable(out)
    except OSError as error:
        raise RunError(f"cannot write to RUN_DIR {out}: {error.strerror or error}; choose another --out") from error


def first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` (itself or a parent) that does not exist yet, else None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def remove_if_empty(out: Path, created: Path) -> None:
    """Remove RUN_DIR and the parents this call created (up to ``created``) that a failure left empty."""
    folder = out
    while True:
        try:
            folder.rmdir()  # fails (and keeps the folder) unless it is empty
        except OSError:
            return
        if folder == created or folder.parent == folder:
            return
        folder = folder.parent


def inside_message(out: Path, data: object) -> str:
    """What to say when RUN_DIR lies inside the data folder (its files are then left out of the scan), else "".

    Example:
        >>> inside_message(Path("/a/b/run"), "/a/c")
        ''
    """
    try:
        inside = Path(data).is_dir() and out.resolve().is_relative_to(Path(data).resolve())  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return ""
    return f"RUN_DIR {out} is inside the data folder {data}: its files are left out of the training data" \
        if inside else ""
