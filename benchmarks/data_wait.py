"""The data-wait share in ``metrics.jsonl``, with and without the image cache: the same run twice.

``pretrain`` logs ``data_wait``: the share of the time the training loop waited for its next batch. This runs
the same pretraining (same seed, same arguments) with ``cache="off"`` and with ``cache="auto"``, and reports
per epoch the mean ``data_wait`` and images/s of each; it also checks that the losses are identical (the cache
is exact). The difference shows where decoding is slower than the step, as on a GPU; on this benchmark's CPU
the step is made cheap instead: a tiny net (one strided convolution, :func:`tiny_net`) at the 224 px view's
load size (256: no DCT scaling for 500 x 375 photos), with the decoding in the training process
(``--workers 0``, a machine with no core to spare for it).

Usage:
    python -m benchmarks.photo_folder /tmp/photos300
    python -m benchmarks.data_wait /tmp/photos300 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

RESULTS = Path(__file__).resolve().parent / "results" / "loader"


def tiny_net() -> Any:
    """One 8x8 stride-8 convolution to 16 channels, average-pooled: a step that costs little next to decoding.

    Example:
        >>> import torch
        >>> tiny_net()(torch.zeros(2, 3, 64, 64)).shape
        torch.Size([2, 16])
    """
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def rows(out: Path) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def per_epoch(metrics: List[Dict[str, Any]], steps_per_epoch: int) -> List[Dict[str, float]]:
    """Mean data_wait and images/s of the logged rows of each epoch (by step number)."""
    epochs: Dict[int, List[Dict[str, Any]]] = {}
    for row in metrics:
        if "data_wait" in row and row.get("step"):
            epochs.setdefault((int(row["step"]) - 1) // steps_per_epoch, []).append(row)
    return [{"epoch": e, "data_wait": statistics.mean(r["data_wait"] for r in rs),
             "images_per_s": statistics.mean(r["images_per_s"] for r in rs)} for e, rs in sorted(epochs.items())]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--model", default="benchmarks.data_wait:tiny_net")
    parser.add_argument("--out", type=Path, default=RESULTS / "data_wait.json")
    args = parser.parse_args(argv)
    from byol_wrap.job.data import batches_per_epoch, find_image_paths
    from byol_wrap.job.train import pretrain

    images = len(find_image_paths(args.folder))
    steps_per_epoch = batches_per_epoch(images, args.batch_size)
    work = Path(tempfile.mkdtemp(prefix="byol-wrap-data-wait-"))
    results: Dict[str, Any] = {}
    try:
        for cache in ("off", "auto"):
            started = time.perf_counter()
            pretrain(args.folder, out=work / cache, model=args.model, image_size=args.image_size,
                     batch_size=args.batch_size, epochs=args.epochs, workers=args.workers, threads=1, cache=cache,
                     projection_size=64, projection_hidden_size=256, log_every=1, progress=False, seed=0)
            metrics = rows(work / cache)
            results[cache] = {"seconds": time.perf_counter() - started, "epochs": per_epoch(metrics, steps_per_epoch),
                              "losses": [r["loss"] for r in metrics if "loss" in r]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    same = results["off"]["losses"] == results["auto"]["losses"]
    payload = {"command": "python -m benchmarks.data_wait " + " ".join(sys.argv[1:] if argv is None else argv),
               "folder": str(args.folder), "images": images, "steps_per_epoch": steps_per_epoch,
               "setup": f"{args.model}, {args.image_size} px views, batch {args.batch_size}, {args.workers} worker(s), "
                        f"1 training thread, heads 256->64", "same_losses": same, "results": results,
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    lines = ["| epoch | data_wait, cache off | data_wait, cache auto | images/s off | images/s auto |",
             "| --- | --- | --- | --- | --- |"]
    for off, auto in zip(results["off"]["epochs"], results["auto"]["epochs"]):
        lines.append(f"| {off['epoch'] + 1} | {off['data_wait']:.2f} | {auto['data_wait']:.2f} | "
                     f"{off['images_per_s']:.1f} | {auto['images_per_s']:.1f} |")
    payload["table"] = "\n".join(lines) + "\n"
    print(f"{payload['setup']}; {images} images; identical losses: {same}\n\n{payload['table']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


if __name__ == "__main__":
    main()
