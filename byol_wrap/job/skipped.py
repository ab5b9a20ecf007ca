"""The files a run could not use: ``skipped.txt``, capped warnings, and a stop when most files fail.

Skipping stays linear in the number of files: each ``(path, reason)`` is de-duplicated with a dict (not a
search of a list), and ``skipped.txt`` is rewritten at checkpoints and at the end of the run rather than
after every batch. On stderr, each kind of reason (the text before its first ``:``, e.g.
``UnidentifiedImageError``) is shown for its first :data:`WARNINGS_PER_KIND` files; then one line says
that further ones are only counted (the count is in the progress bar, ``metrics.jsonl``, the summary and
``skipped.txt``).

When more than half of the first :data:`FIRST_FILES` files a run tries cannot be decoded, the data is
most likely not what the user meant (a folder of something else, a disk gone bad): :meth:`SkipReport.too_many`
tells the run to stop with a clear error instead of crawling through it.

Example:
    >>> report = SkipReport(warn=print)
    >>> report.add([("a.jpg", "empty file (0 bytes)"), ("a.jpg", "empty file (0 bytes)")])
    skipped a.jpg: empty file (0 bytes)
    1
    >>> len(report), report.text()
    (1, 'a.jpg\\tempty file (0 bytes)\\n')
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

__all__ = ["SkipReport", "WARNINGS_PER_KIND", "FIRST_FILES"]

WARNINGS_PER_KIND = 5
FIRST_FILES = 1000


def _kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip() or reason


class SkipReport:
    """Skipped ``(path, reason)`` pairs in the order met, each once; see the module docstring.

    Args:
        items: pairs already recorded (a resumed run's checkpoint); not warned about again.
        warn: prints one line on stderr (``None``: silent).
        warnings_per_kind: lines per kind of reason before they are only counted.
    """

    def __init__(self, items: Iterable[Tuple[str, str]] = (), warn: Optional[Callable[[str], None]] = None,
                 warnings_per_kind: int = WARNINGS_PER_KIND) -> None:
        self._items: Dict[Tuple[str, str], None] = dict.fromkeys((str(p), str(r)) for p, r in items)
        self.warn = warn
        self.warnings_per_kind = warnings_per_kind
        self._warned: Dict[str, int] = {}
        self.dirty = False
        self.attempted = 0  # files tried in this session (for too_many)
        self.failed = 0
        self._checked = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def items(self) -> List[Tuple[str, str]]:
        return list(self._items)

    def add(self, pairs: Iterable[Tuple[str, str]], quiet: bool = False) -> int:
        """Record ``pairs``; warn about new ones (capped per kind; ``quiet``: not at all); return how many
        were new."""
        new = 0
        for path, reason in pairs:
            key = (str(path), str(reason))
            if key in self._items:
                continue
            self._items[key] = None
            new += 1
            self.dirty = True
            if self.warn is None or quiet:
                continue
            kind = _kind(key[1])
            shown = self._warned.get(kind, 0)
            if shown < self.warnings_per_kind:
                self.warn(f"skipped {key[0]}: {key[1]}")
            elif shown == self.warnings_per_kind:
                self.warn(f"skipped more files for the same reason ({kind}); not shown one by one: the count is in "
                          f"the progress bar and the list in skipped.txt")
            self._warned[kind] = shown + 1
        return new

    def observe(self, attempted: int, failed: int) -> None:
        """Count files tried and failed in one batch (for :meth:`too_many`)."""
        self.attempted += attempted
        self.failed += failed

    def too_many(self, available: int, first: int = FIRST_FILES) -> Optional[bool]:
        """Decided once, when the first ``min(first, available)`` files were tried: whether more than half of
        them failed (``available``: the files this process reads per epoch); ``None`` before and after that
        call."""
        if self._checked or self.attempted < max(1, min(first, available)):
            return None
        self._checked = True
        return 2 * self.failed > self.attempted

    def too_many_message(self, data: object, listing: object) -> str:
        """The error when :meth:`too_many` said so: the counts, an example, where the list is."""
        path, reason = next(iter(self._items), ("?", "?"))
        return (f"{self.failed} of the first {self.attempted} files could not be decoded (e.g. {path}: {reason}): "
                f"is {data} the data you meant? The list is in {listing}; remove or repair those files, or give "
                f"--strict to stop at the first one")

    def text(self) -> str:
        return "".join(f"{path}\t{reason}\n" for path, reason in self._items)

    def write(self, path: os.PathLike[str] | str, force: bool = False) -> bool:
        """Rewrite ``skipped.txt`` atomically when something was added since the last write (or ``force``);
        returns whether it wrote. Nothing is written while no file was ever skipped and none exists."""
        from .io import atomic_write_text

        if not (self.dirty or force) or (not self._items and not os.path.exists(path)):
            return False
        atomic_write_text(path, self.text())
        self.dirty = False
        return True

    def summary(self, limit: int = 3) -> str:
        """``"120 files skipped (100 UnidentifiedImageError, 20 empty file (0 bytes))"``."""
        counts: Dict[str, int] = {}
        for _, reason in self._items:
            counts[_kind(reason)] = counts.get(_kind(reason), 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{n} {kind}" for kind, n in top[:limit]) + (", ..." if len(top) > limit else "")
        return f"{len(self)} file{'s' if len(self) != 1 else ''} skipped ({shown})"
