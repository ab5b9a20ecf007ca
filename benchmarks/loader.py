"""The loader alone (no model): images/s per worker core from decoding, from the first epoch that also writes the
image cache, from cached epochs, and the physical limit (a plain numpy memmap read of the same bytes).

For each view size (128 and 224 px: load sizes 146 and 256) and each worker count (1 and 2), one round measures,
in this order, with byol-wrap's own ``ImageLoader`` (batches of 64, the run's seeded shuffled order):

- ``decode``: one epoch decoded from the JPEGs, no cache;
- ``first``: one epoch through an empty cache: decoded, and each image's bytes written to the cache;
- ``cached``: epochs read back from the (now full) cache: the loader then reads in a thread of its own
  process (no worker processes: one core, whatever ``workers`` says);
- ``memmap``: the same records read out of a ``numpy.memmap`` into a new batch array (``records[slots]``) in
  the same batch order, in this process, on one core (no DataLoader): what reading the bytes costs at all
  (``memmap_loop``: the same copied record by record, for reference).

Rounds repeat the whole sequence (interleaved); the rates are medians over rounds, the ratios medians of each
round's ratio (its two passes ran back to back). Rates count images after the first batch of
each pass (worker start-up excluded). Per worker core = images/s / workers (cached and memmap: one core). Then: how many
cores each path needs for 2,000 and 10,000 images/s (an H100 on a ResNet-50 needs about 1,400-1,900).

The folder is given (``benchmarks/photo_folder.py`` makes one of real photos); it is repeated through hard
links to ``--images`` files (the same JPEG under several names costs the same to decode and gets its own record).
Without a folder, generated JPEGs (smooth noise, 500 x 375) are used, and the output says so.

Usage:
    python -m benchmarks.photo_folder /tmp/photos300
    OMP_NUM_THREADS=1 python -m benchmarks.loader /tmp/photos300 --rounds 3
    python -m benchmarks.loader --quick             # smoke test: generated images, workers 0, one round
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from byol_wrap.job.data import ImageFiles, default_load_size, make_loader, open_images
from byol_wrap.job.data.cache import RECORDS, CachedImages, attach_cache

RESULTS = Path(__file__).resolve().parent / "results" / "loader"
TARGETS = (2000, 10000)


def machine_line() -> str:
    """``lscpu``'s model name and CPU count (platform's when lscpu is missing)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        info = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}
        return (f"{info.get('Model name', '?')}, {info.get('CPU(s)', '?')} CPUs ({info.get('Thread(s) per core', '?')}"
                f" thread(s) per core), {info.get('L3 cache', '?')} L3, {platform.system()} {platform.release()}")
    except (OSError, subprocess.CalledProcessError):
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def generated_jpegs(folder: Path, count: int) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        low = torch.rand(1, 3, 6, 8, generator=g)
        image = torch.nn.functional.interpolate(low, size=(375, 500), mode="bicubic", align_corners=False)
        image = image + 0.04 * torch.randn(image.shape, generator=g)
        array = (image[0].clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{i:05d}.jpg", quality=90)


def linked_folder(source: Path, target: Path, count: int) -> List[str]:
    """``count`` names in ``target`` for the images of ``source``, repeated through hard links (copies where
    links are refused)."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"{source} holds no .jpg/.png images")
    target.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        src = files[i % len(files)]
        dst = target / f"{i:05d}{src.suffix.lower()}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    return [str(p) for p in sorted(target.iterdir())]


def timed_pass(dataset: Any, workers: int, batch: int, epochs: int, seed: int = 0) -> Dict[str, float]:
    """Images/s over ``epochs`` epochs of a fresh loader, counting from the first batch on."""
    loader = make_loader(dataset, batch, workers=workers, seed=seed, epoch=0, drop_last=False)
    images, start = 0, None
    begun = time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for b in loader:
            if start is None:
                start = time.perf_counter()
                continue
            images += len(b.images)
    end = time.perf_counter()
    loader.close()
    return {"images_per_s": images / max(end - (start or begun), 1e-9), "seconds": end - begun}


def memmap_pass(records: Path, shape: Sequence[int], slots: np.ndarray, order: List[List[int]],
                fancy: bool = True) -> Dict[str, float]:
    """The limit: each batch's records read out of a numpy memmap into a new array, in this process, with
    ``records[slots[batch]]`` (numpy's fancy indexing; ``fancy=False``: a loop copying record by record)."""
    mm = np.memmap(records, dtype=np.uint8, mode="r", shape=tuple(shape))
    images, start = 0, None
    for batch in order:
        rows = slots[np.asarray(batch)]
        if fancy:
            x = mm[rows]
        else:
            x = np.empty((len(rows), *shape[1:]), dtype=np.uint8)
            for k, slot in enumerate(rows.tolist()):
                x[k] = mm[slot]
        torch.from_numpy(x)
        if start is None:
            start = time.perf_counter()
            continue
        images += int(x.shape[0])
    end = time.perf_counter()
    del mm
    return {"images_per_s": images / max(end - (start or end), 1e-9)}


def epoch_order(n: int, batch: int, epochs: int, seed: int = 0) -> List[List[int]]:
    from byol_wrap.job.data.loader import EpochBatchSampler

    sampler = EpochBatchSampler(n, batch, seed=seed, drop_last=False)
    out: List[List[int]] = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out += list(sampler)
    return out


def run(args: argparse.Namespace) -> Dict[str, Any]:
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="byol-wrap-loader-"))
    try:
        if args.folder is not None:
            source, what = args.folder, f"{args.folder} (real photos, repeated through hard links)"
        else:
            source, what = work / "generated", "GENERATED JPEGs (smooth noise, 500x375, quality 90): no folder given"
            generated_jpegs(source, min(args.images, 120))
        paths = linked_folder(source, work / "images", args.images)
        print(f"images: {len(paths)} from {what}", flush=True)
        results: Dict[str, Dict[str, List[float]]] = {}
        for round_ in range(args.rounds):
            for view in args.views:
                load = int(default_load_size(view))
                for workers in args.workers:
                    key = f"{view}px/{workers}w"
                    rows = results.setdefault(key, {"decode": [], "first": [], "cached": [], "memmap": [],
                                                    "memmap_loop": []})
                    files = open_images(str(work / "images"), load)
                    assert isinstance(files, ImageFiles)
                    rows["decode"].append(timed_pass(files, workers, args.batch, 1)["images_per_s"])
                    run_dir = work / "run"
                    shutil.rmtree(run_dir, ignore_errors=True)
                    cached = attach_cache(files, "auto", run_dir, say=lambda line: None)
                    if not isinstance(cached, CachedImages):
                        raise SystemExit("the cache was not used (disk space?)")
                    rows["first"].append(timed_pass(cached, workers, args.batch, 1)["images_per_s"])
                    cached.sync()
                    if cached.cache.filled() < len(paths):  # unreadable files are never cached
                        print(f"note: the first epoch cached {cached.cache.filled()} of {len(paths)} images (the "
                              f"others cannot be decoded)", flush=True)
                    rows["cached"].append(timed_pass(cached, workers, args.batch, args.cached_epochs)["images_per_s"])
                    layout = cached.cache.layout
                    order = epoch_order(len(paths), args.batch, args.cached_epochs)
                    for name, fancy in (("memmap", True), ("memmap_loop", False)):
                        rows[name].append(memmap_pass(cached.cache.folder / RECORDS, (cached.cache.slots,
                                                      *layout.shape), cached.cache.slot_of, order,
                                                      fancy)["images_per_s"])
                    cached.close()
                    print(f"round {round_} {key}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items()),
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"images": len(paths), "source": what, "results": results}


def summarise(payload: Dict[str, Any]) -> str:
    lines = ["| view (load) | workers | decode /core | first epoch + write /core | cached (1 core) | memmap (1 core) | "
             "cached / decode per core | cached / memmap | first-epoch time / decode |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    cores: Dict[str, Dict[str, float]] = {}
    for key, rows in payload["results"].items():
        view, workers_text = key.split("/")
        workers = max(1, int(workers_text.rstrip("w")))
        med = {k: statistics.median(v) for k, v in rows.items()}
        per = {k: (v if k.startswith("memmap") or k == "cached" else v / workers) for k, v in med.items()}
        load = default_load_size(int(view.rstrip("px")))

        def paired(a: str, b: str, scale: float = 1.0, rows: Dict[str, List[float]] = rows) -> float:
            """The median over rounds of a/b, each round's pair measured back to back."""
            return statistics.median(scale * x / y for x, y in zip(rows[a], rows[b]))

        lines.append(f"| {view} ({load}) | {workers_text.rstrip('w')} | {per['decode']:.0f} | {per['first']:.0f} | "
                     f"{per['cached']:.0f} | {per['memmap']:.0f} | {paired('cached', 'decode', workers):.0f}x | "
                     f"{paired('cached', 'memmap'):.2f} | {paired('decode', 'first'):.3f}x |")
        if workers_text == "1w" or workers_text == "0w":
            cores[view] = per
    lines += ["", "Cores needed (from the 1-worker rates per core):", "",
              "| view | path | " + " | ".join(f"{t:,} images/s" for t in TARGETS) + " |",
              "| --- | --- | " + " | ".join("---" for _ in TARGETS) + " |"]
    for view, per in cores.items():
        for path in ("decode", "cached", "memmap"):
            lines.append(f"| {view} | {path} | " + " | ".join(f"{t / per[path]:.2g}" for t in TARGETS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, nargs="?", default=None,
                        help="a folder of photos (default: generated JPEGs, said in the output)")
    parser.add_argument("--images", type=int, default=1200, help="images per epoch (the folder repeated)")
    parser.add_argument("--views", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cached-epochs", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 images, 32 px view, workers 0, 1 round")
    parser.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    parser.add_argument("--from-json", type=Path, default=None, help="only redo the tables of a saved run")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        payload["table"] = summarise(payload)
        print(payload["table"])
        args.from_json.write_text(json.dumps(payload, indent=2) + "\n")
        args.from_json.with_suffix(".md").write_text(
            f"# Loader benchmark\n\nCommand: `{payload['command']}`\n\nMachine: {payload['machine']}\n\n"
            f"Images: {payload['images']} from {payload['source']}\n\n{payload['table']}")
        return payload
    if args.quick:
        args.images, args.views, args.workers, args.batch, args.rounds, args.cached_epochs = 40, [32], [0], 8, 1, 2
    payload = run(args)
    payload.update(command="python -m benchmarks.loader " + " ".join(sys.argv[1:] if argv is None else argv),
                   machine=machine_line(), torch=torch.__version__,
                   started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), batch=args.batch,
                   omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    table = summarise(payload)
    payload["table"] = table
    print(f"\nmachine: {payload['machine']}\nimages: {payload['images']} from {payload['source']}\n\n{table}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(f"# Loader benchmark\n\nCommand: `{payload['command']}`\n\nMachine: "
                                           f"{payload['machine']}\n\nImages: {payload['images']} from "
                                           f"{payload['source']}\n\n{table}")
    return payload


if __name__ == "__main__":
    main()
