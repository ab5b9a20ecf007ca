"""Cost of recording unreadable files as a run meets them (issue 18, item 9).

Compares, batch by batch over ``--files`` unreadable files, the 0.2 bookkeeping (de-duplication by a
search of a list, ``skipped.txt`` rewritten and fsynced after every batch) with
:class:`byol_wrap.job.skipped.SkipReport` (a dict, ``skipped.txt`` written at checkpoints), interleaved
in the same process. Only the bookkeeping is timed: decoding a broken file costs the same in both.

    python -m benchmarks.skipping --files 100000 --batch 128 --checkpoint-every 100 \
        --out benchmarks/results/skipping/skipping.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

from byol_wrap.job.io import atomic_write_text
from byol_wrap.job.skipped import SkipReport


def old_way(pairs: List[Tuple[str, str]], batch: int, path: Path) -> float:
    """0.2's ``_skipped``: ``pair not in list`` and a fsynced rewrite of skipped.txt per batch."""
    skipped: List[Tuple[str, str]] = []
    start = time.perf_counter()
    for i in range(0, len(pairs), batch):
        for pair in pairs[i:i + batch]:
            if pair not in skipped:
                skipped.append(pair)
        atomic_write_text(path, "".join(f"{p}\t{r}\n" for p, r in skipped))
    return time.perf_counter() - start


def new_way(pairs: List[Tuple[str, str]], batch: int, path: Path, checkpoint_every: int) -> float:
    report = SkipReport(warn=lambda line: None)
    start = time.perf_counter()
    for step, i in enumerate(range(0, len(pairs), batch), start=1):
        report.add(pairs[i:i + batch])
        if step % checkpoint_every == 0:
            report.write(path)
    report.write(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--checkpoint-every", type=int, default=100, help="batches between skipped.txt writes")
    parser.add_argument("--old-limit", type=int, default=20_000,
                        help="files given to the 0.2 way (quadratic: 100k takes hours), extrapolated beyond")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    reason = "UnidentifiedImageError: not an image Pillow can read (wrong extension, or a damaged header)"
    pairs = [(f"/data/broken/{i:07d}.jpg", reason) for i in range(args.files)]
    results: Dict[str, object] = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                                  "files": args.files, "batch": args.batch, "checkpoint_every": args.checkpoint_every}
    rows = []
    for n in sorted({min(args.files, k) for k in (5_000, 10_000, args.old_limit, args.files)}):
        new = new_way(pairs[:n], args.batch, folder / "new.txt", args.checkpoint_every)
        old = old_way(pairs[:n], args.batch, folder / "old.txt") if n <= args.old_limit else None
        rows.append({"files": n, "new_s": new, "new_files_per_s": n / new,
                     "old_s": old, "old_files_per_s": (n / old) if old else None})
        print(rows[-1], flush=True)
    results["rows"] = rows
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
