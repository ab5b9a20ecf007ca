"""Finding the image files under a folder: recursive, sorted, hidden files skipped, no file opened.

Example:
    >>> find_image_paths(".", extensions=(".no-such-extension",))
    []
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".npy", ".dcm",
                                     ".dicom")


def find_images(root: Union[str, os.PathLike[str]], extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[Path]:
    """Every image file under ``root``, recursively, sorted (so runs repeat).

    Extensions are matched case-insensitively; hidden files and folders (name starting with
    ``.``) are skipped; no file is opened. Symlinked folders are followed once (loops are cut),
    except links to a system root or to a folder above the data folder (:func:`link_not_followed`).
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


def find_image_paths(root: Union[str, os.PathLike[str]], extensions: Sequence[str] = IMAGE_EXTENSIONS,
                     exclude: Sequence[Union[str, os.PathLike[str]]] = (),
                     problems: Optional[List[Tuple[str, str]]] = None) -> List[str]:
    """:func:`find_images` as strings (what the datasets store).

    Args:
        exclude: folders left out of the scan (a run's own RUN_DIR inside the data folder); compared
            by identity (device and inode), so a link to them is left out too.
        problems: when given, gets a ``(path, reason)`` pair for every folder that cannot be read
            (permissions) and every symbolic link not followed (see :func:`link_not_followed`).

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
    seen = set()
    for folder in exclude:
        try:
            info = os.stat(folder)
            seen.add((info.st_dev, info.st_ino))
        except OSError:
            pass
    found: List[str] = []
    _scan(os.fspath(root_path), exts, seen, found, problems if problems is not None else [],
          os.path.realpath(root_path))
    return found


def link_not_followed(link: str, data_root: str) -> Optional[str]:
    """Why a symbolic link to a folder is not followed, or ``None`` (it is followed).

    The rule: links are followed wherever they lead (a data folder often links in image folders kept
    elsewhere), once each (loops are cut), except a link to a system root or to a folder that holds
    the data folder: ``/`` (a drive's root on Windows), a top-level folder (``/usr``, ``/home``,
    ``/proc``...), the home folder, or any folder above the data folder. Following those would search a
    whole system (or the data folder again, and all around it); they are listed in ``skipped.txt``.

    Example:
        >>> link_not_followed("/", "/srv/data")[:40]
        'symbolic link to /, a system root: not f'
    """
    target = os.path.realpath(link)
    parent = os.path.dirname(target)
    if parent == target or os.path.dirname(parent) == parent:
        return f"symbolic link to {target}, a system root: not followed (link the image folder itself)"
    if target == os.path.realpath(os.path.expanduser("~")):
        return f"symbolic link to {target}, the home folder: not followed (link the image folder itself)"
    if data_root == target or data_root.startswith(target.rstrip(os.sep) + os.sep):
        return f"symbolic link to {target}, which holds the data folder: not followed"
    return None


def _scan(folder: str, exts: Tuple[str, ...], seen: set, found: List[str], problems: List[Tuple[str, str]],
          data_root: str) -> None:
    """Depth-first, names sorted within each folder: the order of a sorted tree listing."""
    try:
        info = os.stat(folder)
        key = (info.st_dev, info.st_ino)
        if key in seen:
            return
        seen.add(key)
        with os.scandir(folder) as iterator:
            entries = sorted((e for e in iterator if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as error:
        problems.append((folder, f"folder cannot be read: {error.strerror or error}"))
        return
    for entry in entries:
        try:
            if entry.name.lower().endswith(exts) and entry.is_file():
                found.append(entry.path)
            elif entry.is_dir():
                if entry.is_symlink():
                    reason = link_not_followed(entry.path, data_root)
                    if reason is not None:
                        problems.append((entry.path, reason))
                        continue
                _scan(entry.path, exts, seen, found, problems, data_root)
        except OSError as error:
            problems.append((entry.path, f"cannot be read: {error.strerror or error}"))
