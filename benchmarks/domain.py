"""Domain imagery (issue 19): grey, 16-bit and multi-band runs of the command against converted ones and random init.

Data (``prepare``, from the CIFAR-10 subset; file names ``NNNNN_LABEL.ext``; ``train/`` = the first
``--train`` training rows, ``test/`` = the 2 000 test rows):

- ``grey16``: luminance ``g`` (8 bits, ``round(0.299 R + 0.587 G + 0.114 B)``) as 16-bit PNG
  ``256 g + u``, ``u`` uniform noise in 0..255: only the top 8 bits carry signal;
- ``grey8``: ``g`` as 8-bit grey PNG (the same signal in 8 bits);
- ``rgb8``: ``g`` replicated into an 8-bit RGB PNG (what the photo pipeline takes);
- ``low16``: 16-bit PNG ``30000 + 2 g + v``, ``v`` uniform in {0, 1}: the signal lies in the low 9 bits;
- ``low8``: ``low16`` as the old command made it 8 bits (``round(x / 257)``), as 8-bit PNG;
- ``bands4``: 4-band 16-bit TIFF (planar): bands 1-3 the image blurred (3x3 box, twice; 257 x
  the 8-bit value), band 4 the gradient magnitude of the unblurred luminance (x 64, clipped):
  detail the first three bands do not carry;
- ``bands3``: bands 1-3 of ``bands4`` as 8-bit RGB PNG (``round(x / 257)``, exact).

``quality``: for each (config, seed): ``byol_wrap.pretrain`` on ``CONFIG/train`` (small_cnn, 32 px,
batch ``--batch-size``, ``--steps`` steps, Adam 3e-4, projection hidden size ``--hidden``, workers 0),
then ``embed_images`` of ``train`` (bank) and ``test`` (queries) with the run's ``encoder.pt`` and
weighted kNN top-1 (k 200, temperature 0.1). ``random`` rows: the same command with 1 step at
lr 1e-12 (the initial weights). One JSON line per run, appended; reruns skip rows already there.

``loader``: images/s of the job's file dataset (decode + resize to the load size) over 256x256 files:
8-bit RGB PNG vs 16-bit grey PNG, 16-bit 4-band TIFF and 16-bit 13-band TIFF, in interleaved rounds.

Examples (from the repository root)::

    python -m benchmarks.domain prepare --cifar ../shared/data/cifar10_small.npz --root /tmp/domain --train 5000
    python -m benchmarks.domain quality --root /tmp/domain --configs grey16 rgb8 grey8 --seeds 0 1 2 \\
        --out benchmarks/results/domain/runs.jsonl
    python -m benchmarks.domain report benchmarks/results/domain/runs.jsonl
    python -m benchmarks.domain loader --root /tmp/domain-loader --out benchmarks/results/domain/loader.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, machine_description

OUT_DIR = RESULTS_DIR / "domain"
CONFIGS = ("grey16", "grey8", "rgb8", "low16", "low8", "bands4", "bands3")


# ---------------------------------------------------------------------------- data
def _luma(x: np.ndarray) -> np.ndarray:
    """8-bit luminance of uint8 (N, H, W, 3) images."""
    return np.rint(x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114).clip(0, 255).astype(np.uint8)


def _box_blur(x: np.ndarray) -> np.ndarray:
    """3x3 box blur over the spatial axes of (N, H, W, C) float images, edges replicated."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    return sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0


def _gradient(g: np.ndarray) -> np.ndarray:
    f = g.astype(np.float64)
    gy, gx = np.gradient(f, axis=(1, 2))
    return np.sqrt(gx * gx + gy * gy)


def prepare(cifar: Path, root: Path, train: int, seed: int = 0) -> None:
    import tifffile
    from PIL import Image

    with np.load(cifar, allow_pickle=False) as npz:
        splits = {"train": (npz["x_train"][:train], npz["y_train"][:train]), "test": (npz["x_test"], npz["y_test"])}
    rng = np.random.default_rng(seed)
    for split, (x, y) in splits.items():
        g = _luma(x)
        noise = rng.integers(0, 256, size=g.shape, dtype=np.uint16)
        grey16 = g.astype(np.uint16) * 256 + noise
        low16 = 30000 + 2 * g.astype(np.uint16) + rng.integers(0, 2, size=g.shape, dtype=np.uint16)
        low8 = np.rint(low16 / 257.0).astype(np.uint8)
        blurred = np.rint(_box_blur(_box_blur(x.astype(np.float64)))).clip(0, 255).astype(np.uint8)
        edge = np.clip(_gradient(g) * 64, 0, 65535).astype(np.uint16)
        bands4 = np.concatenate([blurred.astype(np.uint16) * 257, edge[..., None]], axis=-1)
        for config in CONFIGS:
            (root / config / split).mkdir(parents=True, exist_ok=True)
        for i, label in enumerate(y.tolist()):
            name = f"{i:05d}_{label}"
            Image.fromarray(grey16[i]).save(root / "grey16" / split / f"{name}.png")
            Image.fromarray(g[i], "L").save(root / "grey8" / split / f"{name}.png")
            Image.fromarray(np.repeat(g[i][..., None], 3, axis=-1), "RGB").save(root / "rgb8" / split / f"{name}.png")
            Image.fromarray(low16[i]).save(root / "low16" / split / f"{name}.png")
            Image.fromarray(low8[i], "L").save(root / "low8" / split / f"{name}.png")
            tifffile.imwrite(root / "bands4" / split / f"{name}.tif", bands4[i].transpose(2, 0, 1),
                             photometric="minisblack", planarconfig="separate")
            Image.fromarray(blurred[i], "RGB").save(root / "bands3" / split / f"{name}.png")
    print(f"wrote {', '.join(CONFIGS)} under {root} ({train} train, {len(splits['test'][1])} test images each)")


def _labels(paths: Sequence[str]) -> torch.Tensor:
    return torch.tensor([int(Path(p).stem.split("_")[1]) for p in paths], dtype=torch.int64)


# ---------------------------------------------------------------------------- quality
def run_one(root: Path, config: str, seed: int, steps: int, batch_size: int, hidden: int, random_init: bool,
            work: Path) -> Dict[str, Any]:
    from byol_wrap import pretrain
    from byol_wrap.core.knn import knn_accuracy
    from byol_wrap.job.encoder import embed_images

    run_dir = work / f"{config}-{seed}-{'random' if random_init else steps}"
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    encoder = pretrain(str(root / config / "train"), out=run_dir, model="byol_wrap/small_cnn", image_size=32,
                       batch_size=batch_size, steps=1 if random_init else steps, lr=1e-12 if random_init else None,
                       projection_hidden_size=hidden, workers=0, seed=seed, progress=False, device="cpu")
    seconds = time.perf_counter() - start
    features = {}
    for split in ("train", "test"):
        out = run_dir / f"{split}.npz"
        embed_images(encoder, str(root / config / split), out, workers=0, progress=False)
        with np.load(out, allow_pickle=False) as npz:
            features[split] = (torch.from_numpy(npz["embeddings"]), _labels(npz["paths"].tolist()))
    accuracy = knn_accuracy(features["train"][0], features["train"][1], features["test"][0], features["test"][1])
    meta = torch.load(encoder, weights_only=True)["meta"]
    row = {"config": config, "seed": seed, "steps": 0 if random_init else steps, "contestant":
           "random" if random_init else "byol", "knn": accuracy, "seconds": seconds,
           "channels": meta.get("channels"), "pixel_format": meta.get("pixel_format"),
           "normalize": meta.get("normalize"), "bank": len(features["train"][1]), "queries": len(features["test"][1])}
    shutil.rmtree(run_dir, ignore_errors=True)
    return row


def quality(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["config"], row["seed"], row["contestant"], row["steps"]))
    work = Path(tempfile.mkdtemp(prefix="byol-domain-"))
    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        for config in args.configs:
            random_init = config.endswith(":random")
            name = config.split(":")[0]
            key = (name, seed, "random" if random_init else "byol", 0 if random_init else args.steps)
            if key in done:
                continue
            row = run_one(Path(args.root), name, seed, args.steps, args.batch_size, args.hidden, random_init, work)
            row["machine"] = machine_description()
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    groups: Dict[Tuple[str, str, int], Dict[int, float]] = {}
    for row in rows:
        groups.setdefault((row["config"], row["contestant"], row["steps"]), {})[row["seed"]] = row["knn"]
    lines = ["| config | contestant | steps | kNN top-1 per seed | mean |", "| --- | --- | --- | --- | --- |"]
    for (config, contestant, steps), by_seed in sorted(groups.items()):
        values = [by_seed[s] for s in sorted(by_seed)]
        lines.append(f"| {config} | {contestant} | {steps} | {', '.join(f'{v:.2%}' for v in values)} | "
                     f"{statistics.mean(values):.2%} |")
    text = "\n".join(lines)
    print(text)
    return text


PAIRS = (("grey16", "rgb8"), ("bands4", "bands3"), ("low16", "low8"), ("grey16", "grey8"))


def _paired(a: Dict[int, float], b: Dict[int, float]) -> Tuple[List[int], List[float]]:
    seeds = sorted(set(a) & set(b))
    return seeds, [100 * (a[s] - b[s]) for s in seeds]


def _interval(diffs: List[float]) -> str:
    """Mean difference, its standard error and a 95 % t-interval over seeds (points)."""
    from scipy.stats import t as student_t  # scipy comes with scikit-learn ([train])

    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return f"{mean:+.2f}"
    se = statistics.stdev(diffs) / len(diffs) ** 0.5
    half = float(student_t.ppf(0.975, len(diffs) - 1)) * se
    return f"{mean:+.2f} (SE {se:.2f}; 95 % CI {mean - half:+.2f} to {mean + half:+.2f})"


def compare(paths: Sequence[Path]) -> str:
    """Paired by seed, per budget: each native run against its converted twin and against random init."""
    groups: Dict[Tuple[str, str, int], Dict[int, float]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                steps = row["steps"] if row["contestant"] == "byol" else 0
                groups.setdefault((row["config"], row["contestant"], steps), {})[row["seed"]] = row["knn"]
    lines = ["| steps | native | against | seeds | native mean | against mean | difference, points | native >= |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    budgets = sorted({steps for (_, contestant, steps) in groups if contestant == "byol"})
    done = set()
    for steps in budgets:
        for native, other in PAIRS:
            for against, key in ((other, (other, "byol", steps)), (f"{native}, random init", (native, "random", 0))):
                if (steps, native, against) in done:
                    continue
                done.add((steps, native, against))
                mine, theirs = groups.get((native, "byol", steps), {}), groups.get(key, {})
                seeds, diffs = _paired(mine, theirs)
                if not seeds:
                    continue
                lines.append(f"| {steps} | {native} | {against} | {len(seeds)} | "
                             f"{statistics.mean(mine[s] for s in seeds):.2%} | "
                             f"{statistics.mean(theirs[s] for s in seeds):.2%} | {_interval(diffs)} | "
                             f"{sum(d >= 0 for d in diffs)} of {len(diffs)} |")
    text = "\n".join(lines)
    print(text)
    return text


# ---------------------------------------------------------------------------- loader speed
def loader_speed(args: argparse.Namespace) -> None:
    import tifffile
    from PIL import Image

    from byol_wrap.job.data import open_images
    from byol_wrap.job.data.channels import detect_format

    root = Path(args.root)
    rng = np.random.default_rng(0)
    side, count = args.side, args.count
    kinds = {"png8-rgb": ".png", "png16-grey": ".png", "tiff16-4band": ".tif", "tiff16-13band": ".tif"}
    for kind, ext in kinds.items():
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"{i:04d}{ext}"
            if path.exists():
                continue
            if kind == "png8-rgb":
                Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB").save(path)
            elif kind == "png16-grey":
                Image.fromarray(rng.integers(0, 65536, (side, side), dtype=np.uint16)).save(path)
            else:
                bands = 4 if kind == "tiff16-4band" else 13
                tifffile.imwrite(path, rng.integers(0, 65536, (bands, side, side), dtype=np.uint16),
                                 photometric="minisblack", planarconfig="separate")
    datasets = {}
    for kind in kinds:
        paths = open_images(str(root / kind), args.load_size).paths  # type: ignore[attr-defined]
        fmt, message = detect_format(paths)
        print(f"{kind}: {message}")
        datasets[kind] = open_images(str(root / kind), args.load_size, fmt=fmt)
    times: Dict[str, List[float]] = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind, dataset in datasets.items():
            start = time.perf_counter()
            for i in range(len(dataset)):
                item = dataset[i]
                if item[0] is None:
                    raise RuntimeError(f"{kind}: {item[2]}")
            times[kind].append(len(dataset) / (time.perf_counter() - start))
    base = times["png8-rgb"]
    result = {"command": " ".join(sys.argv), "machine": machine_description(), "side": side,
              "load_size": args.load_size, "images_per_round": count, "rounds": args.rounds,
              "images_per_s": {k: statistics.median(v) for k, v in times.items()},
              "ratio_to_png8_rgb": {k: statistics.median([a / b for a, b in zip(v, base)]) for k, v in times.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--cifar", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--train", type=int, default=5000)
    q = commands.add_parser("quality")
    q.add_argument("--root", required=True)
    q.add_argument("--configs", nargs="+", default=["grey16", "rgb8", "grey16:random"],
                   help=f"names from {', '.join(CONFIGS)}; NAME:random for the random-init row")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--steps", type=int, default=200)
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--hidden", type=int, default=1024)
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--out", default=str(OUT_DIR / "runs.jsonl"))
    r = commands.add_parser("report")
    r.add_argument("path")
    c = commands.add_parser("compare", help="native against converted and random init, paired by seed")
    c.add_argument("paths", nargs="+")
    s = commands.add_parser("loader")
    s.add_argument("--root", required=True)
    s.add_argument("--side", type=int, default=256)
    s.add_argument("--load-size", type=int, default=224)
    s.add_argument("--count", type=int, default=100)
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--out", default=str(OUT_DIR / "loader.json"))
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    if args.command == "prepare":
        prepare(Path(args.cifar), Path(args.root), args.train)
    elif args.command == "quality":
        quality(args)
    elif args.command == "report":
        report(Path(args.path))
    elif args.command == "compare":
        compare([Path(p) for p in args.paths])
    else:
        loader_speed(args)


if __name__ == "__main__":
    main()
