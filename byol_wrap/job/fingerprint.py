"""What the training data looked like when a run started: file list, sizes and modification times.

A run records a fingerprint of its data in ``checkpoints/last.pt``; a resumed run compares it with the
data as it is now, without reading any image again (one ``stat`` per file), and says what changed: files
added, removed, or modified (another size or modification time). Changed data means the resumed losses no
longer match an uninterrupted run's, so ``pretrain`` refuses to continue unless ``allow_data_change=True``
(``--allow-data-change``).

Folders of images are fingerprinted file by file; a ``.npz`` as one file. Data in memory (a tensor, the
built-in digits, a ``Dataset`` of yours) has no fingerprint (``None``) and is not checked.

The fingerprint is plain data that ``torch.load(weights_only=True)`` reads: the paths as one string
(separated by NUL, which no file name holds) and two int64 tensors.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.png").write_bytes(b"1"); _ = (folder / "b.png").write_bytes(b"22")
    >>> before = fingerprint_files([str(folder / "a.png"), str(folder / "b.png")])
    >>> _ = (folder / "b.png").write_bytes(b"333")
    >>> change = compare_fingerprints(before, fingerprint_files([str(folder / "a.png"), str(folder / "b.png")]))
    >>> change.counts()
    '1 file modified'
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import torch

__all__ = ["fingerprint_files", "fingerprint_data", "compare_fingerprints", "DataChange"]

_SEPARATOR = "\0"


def fingerprint_files(paths: Sequence[str]) -> Dict[str, Any]:
    """``{"kind": "files", "paths": str, "sizes": int64 tensor, "mtimes": int64 tensor (ns)}`` of ``paths``.

    A file that vanished between the scan and this call gets size and time ``-1``.
    """
    sizes = torch.empty(len(paths), dtype=torch.int64)
    mtimes = torch.empty(len(paths), dtype=torch.int64)
    for i, path in enumerate(paths):
        try:
            info = os.stat(path)
            sizes[i], mtimes[i] = info.st_size, info.st_mtime_ns
        except OSError:
            sizes[i], mtimes[i] = -1, -1
    return {"kind": "files", "paths": _SEPARATOR.join(os.fspath(p) for p in paths), "sizes": sizes,
            "mtimes": mtimes}


def fingerprint_data(data: Any, dataset: Any) -> Optional[Dict[str, Any]]:
    """The fingerprint of a run's data: its image files (a folder), the one file (a ``.npz``), or ``None``
    (data in memory: a tensor, the digits, a Dataset).

    Example:
        >>> fingerprint_data("digits", None) is None
        True
    """
    paths = getattr(dataset, "paths", None)
    if isinstance(paths, list) and all(isinstance(p, str) for p in paths):
        return fingerprint_files(paths)
    if isinstance(data, (str, os.PathLike)) and os.path.isfile(data):
        return fingerprint_files([os.fspath(data)])
    return None


def _entries(fingerprint: Dict[str, Any]) -> Dict[str, tuple]:
    text = fingerprint.get("paths", "")
    paths = text.split(_SEPARATOR) if text else []
    sizes, mtimes = fingerprint["sizes"].tolist(), fingerprint["mtimes"].tolist()
    return {p: (s, m) for p, s, m in zip(paths, sizes, mtimes)}


@dataclass
class DataChange:
    """The files added, removed and modified between two fingerprints (each list sorted)."""

    added: List[str] = field(default_factory=list)
    removed: List[str] = field(default_factory=list)
    modified: List[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def counts(self) -> str:
        """``"16 files added, 1 file removed"``: the counts only."""
        parts = []
        for what, items in (("added", self.added), ("removed", self.removed), ("modified", self.modified)):
            if items:
                parts.append(f"{len(items)} file{'s' if len(items) != 1 else ''} {what}")
        return ", ".join(parts)

    def describe(self, examples: int = 2) -> str:
        """The counts with a few example paths each: ``"16 files added (e.g. a.png, b.png)"``."""
        parts = []
        for what, items in (("added", self.added), ("removed", self.removed), ("modified", self.modified)):
            if items:
                shown = ", ".join(items[:examples]) + (", ..." if len(items) > examples else "")
                parts.append(f"{len(items)} file{'s' if len(items) != 1 else ''} {what} (e.g. {shown})")
        return "; ".join(parts)


def compare_fingerprints(saved: Optional[Dict[str, Any]], current: Optional[Dict[str, Any]]) -> DataChange:
    """What changed from ``saved`` to ``current`` (no change when either is ``None``: nothing to compare)."""
    if not saved or not current or saved.get("kind") != "files" or current.get("kind") != "files":
        return DataChange()
    before, now = _entries(saved), _entries(current)
    return DataChange(
        added=sorted(p for p in now if p not in before),
        removed=sorted(p for p in before if p not in now),
        modified=sorted(p for p, value in now.items() if p in before and before[p] != value),
    )
