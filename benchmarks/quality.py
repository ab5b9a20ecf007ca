"""Representation quality: BYOL pretraining of a small CNN, then weighted kNN top-1.

Every contestant gets the same backbone (``common.SmallCNN``), data, Adam optimizer, batch
size and number of steps; the encoder features (``hidden_layer="flatten"``) of
un-augmented test images are classified by weighted kNN (k=200, temperature 0.1, cosine
similarity) against the train split.

Contestants: ``random`` (no training), ``byol-wrap`` (defaults, ``total_steps`` = steps,
Adam over ``learner.parameters()``), ``byol-wrap-recipe`` (the same learner, Adam over
``byol_param_groups(learner, lr)``: the predictor at 10 x lr, the README's advice),
``byol-wrap-concat`` (``concat_views=True``), ``byol-pytorch`` (its defaults) and
``byol-pytorch-classic`` (``use_simplicial_embeddings=False``).

Examples (from the repository root)::

    python -m benchmarks.quality --data ../shared/data/cifar10_small.npz --steps 150 \\
        --lrs 3e-4 2e-3 --seeds 0 1 --out benchmarks/results/quality_short.json
    python -m benchmarks.quality --data ../shared/data/cifar10_small.npz --steps 600 --eval-every 150 \\
        --contestants byol-wrap byol-pytorch-classic --lrs 2e-3 --seeds 0 --out benchmarks/results/quality_curve.json
    python -m benchmarks.quality --plot benchmarks/results/quality_curve.json benchmarks/results/quality_short.json \\
        --png benchmarks/results/quality_curve.png
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from benchmarks.common import (
    CONTESTANTS,
    RESULTS_DIR,
    load_data,
    machine_description,
    resolve_data_path,
    train_and_eval,
    write_json,
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="path to cifar10_small.npz (default: $BYOL_WRAP_DATA)")
    parser.add_argument("--synthetic", action="store_true", help="use small synthetic data (smoke runs)")
    parser.add_argument("--synthetic-sizes", type=int, nargs=2, default=[512, 256], metavar=("TRAIN", "TEST"))
    parser.add_argument("--contestants", nargs="+", default=["random", "byol-wrap", "byol-pytorch",
                                                             "byol-pytorch-classic"], choices=CONTESTANTS)
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per contestant")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 2e-3], help="Adam learning rates")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--width", type=int, default=32, help="SmallCNN width (features = 8 x width)")
    parser.add_argument("--projection-hidden-size", type=int, default=1024)
    parser.add_argument("--eval-every", type=int, default=0, help="kNN every N steps as well (a curve)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "quality.json", help="JSON results file")
    parser.add_argument("--plot", type=Path, nargs="+", help="only plot these result files (no training)")
    parser.add_argument("--plot-min-steps", type=int, default=0, help="plot only runs of at least this many steps")
    parser.add_argument("--png", type=Path, default=RESULTS_DIR / "quality_curve.png")
    return parser.parse_args(argv)


def summarize(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean, spread (min-max and sample std) of the final kNN per (contestant, lr, steps)."""
    groups: Dict[tuple, List[float]] = {}
    for run in runs:
        groups.setdefault((run["contestant"], run["lr"], run["steps"]), []).append(100 * run["knn_top1"])
    rows = []
    for (name, lr, steps), values in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        rows.append({
            "contestant": name, "lr": lr, "steps": steps, "n_seeds": len(values),
            "mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values),
        })
    return rows


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """The summary as a Markdown table (kNN top-1 in %)."""
    lines = ["| contestant | Adam lr | steps | seeds | kNN top-1 mean (%) | std | min-max |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lr = "-" if r["contestant"] == "random" else f"{r['lr']:g}"
        lines.append(f"| {r['contestant']} | {lr} | {r['steps']} | {r['n_seeds']} | {r['mean']:.1f} | "
                     f"{r['std']:.1f} | {r['min']:.1f}-{r['max']:.1f} |")
    return "\n".join(lines)


def plot(files: Sequence[Path], png: Path, min_steps: int = 0) -> None:
    """kNN accuracy against steps, mean over seeds (band: min-max), one colour per contestant
    and one line style per learning rate. Every curve starts at step 0 from the random-init
    accuracy of the same seeds (a trained contestant starts from exactly that network)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [run for file in files for run in json.loads(Path(file).read_text())["runs"]]
    start = {run["seed"]: 100 * run["knn_top1"] for run in runs if run["contestant"] == "random"}
    groups: Dict[tuple, Dict[int, List[float]]] = {}
    for run in runs:
        if run["contestant"] == "random" or run["steps"] < min_steps:
            continue
        points = groups.setdefault((run["contestant"], run["lr"], run["steps"]), {})
        if run["seed"] in start:
            points.setdefault(0, []).append(start[run["seed"]])
        for step, accuracy in run["curve"]:
            points.setdefault(step, []).append(100 * accuracy)
    colours = {name: f"C{i}" for i, name in enumerate(CONTESTANTS)}
    lrs = sorted({key[1] for key in groups})
    lengths = sorted({key[2] for key in groups}, reverse=True)
    styles = ["-", "--", ":", "-."]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (name, lr, steps), points in sorted(groups.items()):
        xs = sorted(points)
        mean = [statistics.mean(points[x]) for x in xs]
        n = max(len(v) for v in points.values())
        style = styles[lrs.index(lr) % len(styles)] if len(lrs) > 1 else styles[lengths.index(steps) % len(styles)]
        ax.plot(xs, mean, style, marker="o", color=colours[name], label=f"{name}, lr {lr:g}, {steps}-step run ({n} seed{'s' * (n > 1)})")
        if n > 1:
            ax.fill_between(xs, [min(points[x]) for x in xs], [max(points[x]) for x in xs],
                            color=colours[name], alpha=0.12)
    if start:
        level = statistics.mean(start.values())
        ax.axhline(level, color="gray", linestyle=":", label=f"random init (mean {level:.1f})")
    ax.set_xlabel("optimizer steps (batch %s)" % ",".join(sorted({str(r["batch_size"]) for r in runs})))
    ax.set_ylabel("weighted kNN top-1 (%)")
    ax.set_title("BYOL on cifar10_small, SmallCNN, CPU (k=200, T=0.1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.plot:
        plot(args.plot, args.png, args.plot_min_steps)
        return {}
    if args.threads:
        torch.set_num_threads(args.threads)
    path = None if args.synthetic else resolve_data_path(args.data)
    if path is None and not args.synthetic:
        raise SystemExit("give --data PATH (or set BYOL_WRAP_DATA), or --synthetic")
    data = load_data(path, tuple(args.synthetic_sizes))
    payload: Dict[str, Any] = {
        "command": "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_description(), "data": str(path) if path else "synthetic",
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "runs": [],
    }
    for seed in args.seeds:
        for lr in args.lrs:
            for name in args.contestants:
                if name == "random" and lr != args.lrs[0]:
                    continue  # no training: one evaluation per seed is enough
                run = train_and_eval(name, data, 0 if name == "random" else args.steps, lr, seed,
                                     batch_size=args.batch_size, width=args.width,
                                     projection_hidden_size=args.projection_hidden_size, eval_every=args.eval_every)
                print(f"== {name} lr={lr:g} seed={seed}: kNN top-1 {100 * run['knn_top1']:.2f}% "
                      f"({run['train_seconds']} s training)", flush=True)
                payload["runs"].append(run)
                payload["summary"] = summarize(payload["runs"])
                write_json(args.out, payload)  # after every run, so a cut-short job keeps its results
    print(markdown_table(payload.get("summary", [])))
    return payload


if __name__ == "__main__":
    main()
