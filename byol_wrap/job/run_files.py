"""What a run owns in RUN_DIR, and nothing else: its file names, its marker, its temporary files.

A run writes these files, under these names only (:data:`RUN_FILES`), plus TensorBoard events under
``tensorboard/`` and, while a write is under way, a temporary file ``.<name>.<8 random characters>.tmp``
beside the file written (see :func:`byol_wrap.job.io.atomic_write`). When a run starts afresh it writes the
marker ``.byol-wrap-run`` into RUN_DIR, listing those names: the folder's run files are then known to be a
byol-wrap run's, for instance those of a run killed before its first checkpoint.

- A fresh run into a folder that holds run files it cannot claim (a ``metrics.jsonl`` or plots of
  something else, with no marker and no checkpoint) is refused, as a finished run is: ``--overwrite``
  replaces them, or choose another ``--out``.
- ``--overwrite`` deletes :data:`RUN_FILES`, the TensorBoard events and the run's own temporary files;
  a resumed run deletes only the temporary files a killed write left. A file of the user's under any
  other name (``last.pt.bak``, ``.draft.tmp``, ``plots/notes.png``, ``notes.txt``...) is never touched.

Example:
    >>> import tempfile, pathlib
    >>> run_dir = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (run_dir / "metrics.jsonl").write_text("{}")
    >>> foreign_run_files(run_dir)
    ['metrics.jsonl']
    >>> _ = claim(run_dir); foreign_run_files(run_dir)
    []
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import List, Set, Union

__all__ = ["RUN_FILES", "MARKER", "is_own_temporary_file", "own_temporary_files", "remove_own_temporary_files",
           "foreign_run_files", "claim", "is_claimed", "delete_run_files"]

PathLike = Union[str, "os.PathLike[str]"]

RUN_FILES = ("checkpoints/last.pt", "encoder.pt", "metrics.jsonl", "skipped.txt", "plots/training.png",
             "plots/augmentations.png")
MARKER = ".byol-wrap-run"
TENSORBOARD = "tensorboard"
# tempfile.mkstemp's random part: 8 characters of "abcdefghijklmnopqrstuvwxyz0123456789_"
_RANDOM = r"[a-z0-9_]{8}"


def _temporary_of(path: Path) -> str:
    """The name a temporary file ``.<name>.<8 random characters>.tmp`` stands for ("" for other names)."""
    match = re.fullmatch(rf"\.(.+)\.{_RANDOM}\.tmp", path.name)
    return match.group(1) if match else ""


def is_own_temporary_file(path: PathLike) -> bool:
    """Whether ``path`` is a temporary file that a killed write of one of :data:`RUN_FILES` (or of the
    marker) leaves: ``.<name>.<8 random characters>.tmp``, judged by its name only.

    Example:
        >>> is_own_temporary_file("run/checkpoints/.last.pt.k3x_9abz.tmp"), is_own_temporary_file("run/.draft.tmp")
        (True, False)
    """
    return _temporary_of(Path(path)) in {Path(name).name for name in RUN_FILES + (MARKER,)}


def own_temporary_files(run_dir: PathLike) -> List[Path]:
    """The run's temporary files in RUN_DIR, each beside the file it was writing, sorted."""
    run_dir = Path(run_dir)
    found: Set[Path] = set()
    for name in RUN_FILES + (MARKER,):
        target = run_dir / name
        if target.parent.is_dir():
            found.update(p for p in target.parent.iterdir() if _temporary_of(p) == target.name and p.is_file())
    return sorted(found)


def remove_own_temporary_files(run_dir: PathLike) -> List[Path]:
    """Delete :func:`own_temporary_files` (left by a write that a kill interrupted); returns them."""
    removed = []
    for path in own_temporary_files(run_dir):
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def is_claimed(run_dir: PathLike) -> bool:
    """Whether a byol-wrap run started in RUN_DIR (its marker is there)."""
    return (Path(run_dir) / MARKER).is_file()


def claim(run_dir: PathLike, overwrite: bool = False) -> str:
    """Write the marker at a fresh start: this folder's :data:`RUN_FILES` are a byol-wrap run's (atomically).
    Returns what to say when a run started here before and wrote no checkpoint (else ``""``)."""
    from .io import atomic_write_text

    again = is_claimed(run_dir) and not overwrite
    text = json.dumps({"format": "byol-wrap-run-dir", "files": list(RUN_FILES), "tensorboard": TENSORBOARD},
                      indent=1) + "\n"
    atomic_write_text(Path(run_dir) / MARKER, text)
    return f"no checkpoint in {run_dir} yet: starting from step 0" if again else ""


def foreign_run_files(run_dir: PathLike) -> List[str]:
    """The run file names present in a folder that no byol-wrap run claims (no marker, no checkpoint):
    a fresh run there would replace files of something else.

    Example:
        >>> foreign_run_files("/nonexistent/folder")
        []
    """
    run_dir = Path(run_dir)
    if is_claimed(run_dir) or (run_dir / RUN_FILES[0]).exists():
        return []
    return [name for name in RUN_FILES[1:] if (run_dir / name).exists()]


def delete_run_files(run_dir: PathLike) -> List[Path]:
    """Delete the files a run writes into ``run_dir`` (``--overwrite``), and nothing else; returns them.

    Example:
        >>> delete_run_files("/nonexistent/run")
        []
    """
    run_dir = Path(run_dir)
    candidates = [run_dir / name for name in RUN_FILES] + own_temporary_files(run_dir)
    events = run_dir / TENSORBOARD
    if events.is_dir():
        candidates += sorted(events.glob("events.out.tfevents.*"))
    deleted = []
    for path in candidates:
        if path.is_file():
            path.unlink()
            deleted.append(path)
    return deleted
