"""Finding the image files under a folder: recursive, sorted, hidden files skipped, no file opened.

Example:
    >>> find_image_paths(".", extensions=(".no-such-extension",))
    []
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Sequence, Tuple, Union

IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def find_images(root: Union[str, os.PathLike[str]], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[Path]:
    """Every image file under ``root``, recursively, sorted (so runs repeat).

    Extensions are matched case-insensitively; hidden files and folders (name starting with
    ``.``) are skipped; no file is opened. Symlinked folders are followed once (loops are cut).
    ``root`` may be one image file. The order is a tree listing's: folder by folder, names
    sorted. :func:`find_image_paths` returns the same as strings, faster for large folders
    (building ``Path`` objects is most of the cost; timings in BENCHMARKS.md).

    Raises:
        FileNotFoundError: ``root`` does not exist.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> for name in ("b/x.PNG", "a.jpg", ".hidden/c.jpg", "notes.txt"):
        ...     (root / name).parent.mkdir(exist_ok=True); (root / name).touch()
        >>> [p.relative_to(root).as_posix() for p in find_images(root)]
        ['a.jpg', 'b/x.PNG']
    """
    return [Path(p) for p in find_image_paths(root, extensions)]


def find_image_paths(root: Union[str, os.PathLike[str]], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """:func:`find_images` as strings (what the datasets store).

    Example:
        >>> find_image_paths(".", extensions=(".no-such-extension",))
        []
    """
    root_path = Path(root)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not root_path.exists():
        raise FileNotFoundError(f"data path {root_path} does not exist")
    if root_path.is_file():
        return [os.fspath(root_path)] if root_path.name.lower().endswith(exts) else []
    found: List[str] = []
    _scan(os.fspath(root_path), exts, set(), found)
    return found


def _scan(folder: str, exts: Tuple[str, ...], seen: set, found: List[str]) -> None:
    """Depth-first, names sorted within each folder: the order of a sorted tree listing."""
    try:
        info = os.stat(folder)
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return
        seen.add(key)
        with os.scandir(folder) as iterator:
            entries = sorted((e for e in iterator if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        try:
            if entry.name.lower().endswith(exts) and entry.is_file():
                found.append(entry.path)
            elif entry.is_dir():
                _scan(entry.path, exts, seen, found)
        except OSError:
            continue
