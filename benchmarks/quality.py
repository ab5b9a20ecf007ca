"""Representation quality: BYOL pretraining of a small CNN, then weighted kNN top-1 on held-out rows.

Every run: ``common.SmallCNN(width)`` (``hidden_layer="flatten"``), heads of
``--projection-hidden-size`` hidden / 256 out, Adam without weight decay, batches of
``--batch-size`` drawn with replacement from the split's pretraining rows, 32 px. The kNN
accuracy (weighted, temperature 0.1, cosine similarity of un-augmented images' features,
k = a tenth of the bank) is taken every ``--eval-every`` steps on the split's **bank** and
**query** rows, which are disjoint from its pretraining rows and from the test split.

Splits (``--splits``; fixed permutations, independent of the run's seed):

- ``cifar-a``: the CIFAR subset's 10 000 training rows in 5 folds of 2 000; pretrain on
  folds 2-4, bank fold 1, queries fold 0;
- ``cifar-b``: pretrain on folds 0-2, bank fold 3, queries fold 4 (queries disjoint from A's);
- ``digits``: scikit-learn's 1 797 digits, 8x8 grey upscaled (bilinear) to 32 px RGB; pretrain
  997, bank 400, queries 400;
- ``synthetic``: tiny random images (smoke runs).

Contestants (``--contestants``) are ``NAME[:key=value,...]``: ``random`` (no training),
``byol-wrap`` (keys ``lr`` 3e-4, ``pred`` 1 = predictor lr scale through
``byol_param_groups``, ``tau`` 0.996, ``schedule`` cosine|constant: cosine passes
``total_steps`` = the budget), ``byol-pytorch`` / ``byol-pytorch-classic`` (key ``lr``).
Budgets (``--steps``): a contestant whose schedule depends on the budget (cosine) gets one run
per budget; any other contestant gets one run of the longest budget, and the shorter budgets
are read from its curve (the same run up to that step).

Results: one JSON line per (split, contestant, budget, seed) appended to ``--out`` right after
the run; rerunning the same command skips the rows already there (resumable). ``--report``
writes the Markdown tables, ``--plot`` the curves, ``--test`` evaluates saved encoders of one
contestant on the CIFAR test split (bank: all 10 000 training rows).

Examples (from the repository root)::

    python -m benchmarks.quality --cifar ../shared/data/cifar10_small.npz --splits cifar-a cifar-b digits \\
        --contestants random byol-wrap byol-wrap:pred=10 byol-wrap:schedule=constant \\
        --steps 200 --seeds 0 1 2 --out benchmarks/results/quality/runs.jsonl
    python -m benchmarks.quality --report benchmarks/results/quality/runs.jsonl --steps 100 200 \\
        --md benchmarks/results/quality/summary.md --png benchmarks/results/quality/knn_vs_steps.png
    python -m benchmarks.quality --test --cifar ../shared/data/cifar10_small.npz --splits cifar-a cifar-b \\
        --contestants random byol-wrap --steps 200 --encoders benchmarks/results/quality/encoders \\
        --out benchmarks/results/quality/test.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from benchmarks.common import (
    RESULTS_DIR,
    SmallCNN,
    load_data,
    machine_description,
    make_learner,
    normalize_images,
    resolve_data_path,
    run_steps,
)
from byol_wrap import BYOL
from byol_wrap.core.knn import embed, knn_accuracy
from byol_wrap.core.optim import byol_param_groups

OUT_DIR = RESULTS_DIR / "quality"
SPLITS = ("cifar-a", "cifar-b", "digits", "synthetic")
NAMES = ("random", "byol-wrap", "byol-pytorch", "byol-pytorch-classic")
DEFAULTS = {"lr": 3e-4, "pred": 1.0, "tau": 0.996, "schedule": "cosine"}
SPLIT_SEED = 1234  # the folds' permutation; fixed, independent of the runs' seeds


# ---------------------------------------------------------------------------- contestants
def parse_contestant(spec: str) -> Dict[str, Any]:
    """``"byol-wrap:pred=10,lr=1e-3"`` -> the name and every option (defaults filled in).

    Raises:
        ValueError: unknown name, key or value.

    Example:
        >>> parse_contestant("byol-wrap:pred=10")["pred"]
        10.0
    """
    name, _, options = spec.partition(":")
    if name not in NAMES:
        raise ValueError(f"unknown contestant {name!r} in {spec!r}; choose from {', '.join(NAMES)}")
    config: Dict[str, Any] = {"name": name, **DEFAULTS}
    if name.startswith("byol-pytorch"):
        config.update(tau=0.99, schedule="constant")  # byol-pytorch has no schedule; its tau is 0.99
    for item in filter(None, options.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in DEFAULTS or (name != "byol-wrap" and key != "lr"):
            raise ValueError(f"bad option {item!r} in {spec!r}; byol-wrap takes {', '.join(DEFAULTS)}, "
                             f"byol-pytorch only lr")
        if key == "schedule":
            if value not in ("cosine", "constant"):
                raise ValueError(f"schedule must be cosine or constant, got {value!r} in {spec!r}")
            config[key] = value
        else:
            config[key] = float(value)
    return config


def depends_on_budget(config: Dict[str, Any]) -> bool:
    """Whether a run of B steps differs from the first B steps of a longer run (the cosine tau)."""
    return config["name"] == "byol-wrap" and config["schedule"] == "cosine"


# ---------------------------------------------------------------------------- data
def _folds(n: int, parts: int) -> List[Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return list(order.chunk(parts))


def digits_images() -> Tuple[Tensor, Tensor]:
    """scikit-learn's digits (0-16 grey, 8x8) as uint8 ``(1797, 3, 32, 32)`` and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).mul(255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return x, torch.from_numpy(digits.target).long()


def make_split(name: str, cifar: Optional[Dict[str, Tensor]]) -> Dict[str, Tensor]:
    """Pretraining rows, kNN bank and kNN queries of split ``name`` (see the module docstring)."""
    if name in ("cifar-a", "cifar-b"):
        if cifar is None:
            raise SystemExit("the cifar splits need --cifar PATH/cifar10_small.npz (or $BYOL_WRAP_DATA)")
        x, y = cifar["x_train"], cifar["y_train"]
        f = _folds(x.shape[0], 5)
        train, bank, query = ((f[2], f[3], f[4]), f[1], f[0]) if name == "cifar-a" else ((f[0], f[1], f[2]), f[3], f[4])
        train = torch.cat(train)
    elif name == "digits":
        x, y = digits_images()
        order = _folds(x.shape[0], 1)[0]
        train, bank, query = order[:-800], order[-800:-400], order[-400:]
    elif name == "synthetic":
        data = load_data(None, (96, 64))
        x, y = data["x_train"], data["y_train"]
        train, bank, query = torch.arange(0, 48), torch.arange(48, 72), torch.arange(72, 96)
    else:
        raise ValueError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
    return {"train": x[train], "bank_x": x[bank], "bank_y": y[bank], "query_x": x[query], "query_y": y[query]}


@torch.no_grad()
def knn_eval(net: SmallCNN, bank_x: Tensor, bank_y: Tensor, query_x: Tensor, query_y: Tensor,
             k: Optional[int] = None) -> float:
    """Weighted kNN top-1 (0-1) of ``net``'s features; k defaults to a tenth of the bank (at most 200)."""
    was_training = net.training
    net.eval()
    try:
        encode = lambda x: net.forward_features(normalize_images(x))  # noqa: E731
        bank, query = embed(encode, bank_x), embed(encode, query_x)
    finally:
        net.train(was_training)
    k = k or max(1, min(200, bank_x.shape[0] // 10))
    return knn_accuracy(bank, bank_y, query, query_y, k=k, temperature=0.1)


# ---------------------------------------------------------------------------- one run
def run_one(spec: str, split: Dict[str, Tensor], steps: int, seed: int, evals: Sequence[int], batch_size: int,
            width: int, projection_hidden_size: int, encoder_path: Optional[Path] = None) -> Dict[str, Any]:
    """Pretrain contestant ``spec`` for ``steps`` steps; kNN at step 0 and at every step in ``evals``."""
    config = parse_contestant(spec)
    torch.manual_seed(seed)
    random.seed(seed)  # byol-pytorch's RandomApply draws from Python's random
    net = SmallCNN(width)
    score = lambda: round(100 * knn_eval(net, split["bank_x"], split["bank_y"], split["query_x"],  # noqa: E731
                                         split["query_y"]), 2)
    curve: List[Tuple[int, float]] = [(0, score())]
    started = time.perf_counter()
    if config["name"] != "random" and steps > 0:
        if config["name"] == "byol-wrap":
            learner = BYOL(net, image_size=32, hidden_layer="flatten", projection_hidden_size=projection_hidden_size,
                           moving_average_decay=config["tau"],
                           total_steps=steps if config["schedule"] == "cosine" else None)
            optimizer = torch.optim.Adam(byol_param_groups(learner, config["lr"], predictor_lr_scale=config["pred"]))
        else:
            learner = make_learner(config["name"], net, 32, "flatten", steps, projection_hidden_size)
            optimizer = torch.optim.Adam([p for p in learner.parameters() if p.requires_grad], lr=config["lr"])
        wanted = set(evals) | {steps}

        def after_step(step: int, loss: Tensor) -> None:
            if step in wanted:
                curve.append((step, score()))
                print(f"{spec} steps={steps} seed={seed} step {step}: loss {loss.item():.4f} kNN {curve[-1][1]:.2f} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)

        run_steps(learner, optimizer, split["train"], steps, batch_size, seed, after_step)
    seconds = time.perf_counter() - started
    if encoder_path is not None:
        encoder_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = encoder_path.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, encoder_path)
    return {"contestant": spec, "config": config, "steps": steps if config["name"] != "random" else 0,
            "seed": seed, "batch_size": batch_size, "width": width, "projection_hidden_size": projection_hidden_size,
            "curve": curve, "knn": curve[-1][1], "train_seconds": round(seconds, 1)}


def row_key(row: Dict[str, Any]) -> Tuple:
    return (row["split"], row["contestant"], row["steps"], row["seed"], row["batch_size"], row["width"],
            row["projection_hidden_size"])


def read_rows(path: Path) -> List[Dict[str, Any]]:
    """The JSON lines of ``path`` (a torn last line from a killed run is ignored)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def append_row(path: Path, row: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as file:
        file.write(json.dumps(row) + "\n")
        file.flush()
        os.fsync(file.fileno())


def plan(contestants: Sequence[str], budgets: Sequence[int]) -> List[Tuple[str, int]]:
    """(contestant, steps) runs needed for ``budgets``: one per budget for cosine, else the longest only."""
    runs = []
    for spec in contestants:
        config = parse_contestant(spec)
        if config["name"] == "random":
            runs.append((spec, 0))
        elif depends_on_budget(config):
            runs += [(spec, b) for b in sorted(budgets, reverse=True)]
        else:
            runs.append((spec, max(budgets)))
    return runs


# ---------------------------------------------------------------------------- reporting
def value_at(rows: List[Dict[str, Any]], split: str, spec: str, budget: int) -> Dict[int, float]:
    """kNN (%) per seed of ``spec`` on ``split`` at ``budget`` steps (own run, or the longer run's curve)."""
    config = parse_contestant(spec)
    out: Dict[int, float] = {}
    for row in rows:
        if row["split"] != split or row["contestant"] != spec:
            continue
        if config["name"] == "random":
            out[row["seed"]] = row["knn"]
        elif depends_on_budget(config):
            if row["steps"] == budget:
                out[row["seed"]] = row["knn"]
        else:
            points = dict(row["curve"])
            if budget in points and row["seed"] not in out:
                out[row["seed"]] = points[budget]
    return out


def fmt(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.mean(values):.1f} ({min(values):.1f} to {max(values):.1f}, n={len(values)})"


def fmt_diff(values: Sequence[float]) -> str:
    if not values:
        return "-"
    sign = lambda v: f"{v:+.1f}"  # noqa: E731
    return f"{sign(statistics.mean(values))} ({sign(min(values))} to {sign(max(values))})"


def inside_longest(rows: List[Dict[str, Any]], split: str, spec: str, step: int) -> Tuple[int, Dict[int, float]]:
    """kNN (%) per seed at ``step`` of ``spec``'s longest run on ``split`` (and that run's length)."""
    runs = [r for r in rows if r["split"] == split and r["contestant"] == spec]
    if not runs:
        return 0, {}
    longest = max(r["steps"] for r in runs)
    out = {}
    for r in runs:
        points = dict(r["curve"])
        if r["steps"] == longest and step in points:
            out[r["seed"]] = points[step]
    return longest, out


def report(rows: List[Dict[str, Any]], baseline: str, budgets: Optional[Sequence[int]] = None) -> str:
    """Markdown: per split and budget, mean (min to max) over seeds, and the per-seed difference to ``baseline``.

    A budget-dependent (cosine) contestant without its own run of a budget appears at that step of
    its longest run, next to the baseline at the same step of its longest run."""
    lines = []
    splits = list(dict.fromkeys(r["split"] for r in rows))
    specs = list(dict.fromkeys(r["contestant"] for r in rows))
    budgets = sorted(budgets or {r["steps"] for r in rows if r["steps"] > 0})
    for split in splits:
        lines += [f"### {split}", "",
                  "| contestant | budget (steps) | kNN top-1 %: mean (min to max, seeds) | minus " + baseline +
                  ", same seed: mean (min to max) |", "| --- | --- | --- | --- |"]
        for budget in budgets:
            base = value_at(rows, split, baseline, budget) or inside_longest(rows, split, baseline, budget)[1]
            inside = []
            for spec in specs:
                is_random = parse_contestant(spec)["name"] == "random"
                values = value_at(rows, split, spec, budget)
                if not values:
                    if depends_on_budget(parse_contestant(spec)):
                        inside.append(spec)
                    continue
                if is_random and budget != budgets[0]:
                    continue
                diffs = [values[s] - base[s] for s in values if s in base] if spec != baseline and not is_random else []
                lines.append(f"| {spec} | {'-' if is_random else budget} | "
                             f"{fmt(list(values.values()))} | {fmt_diff(diffs) if diffs else ''} |")
            for spec in list(dict.fromkeys(([baseline] if inside else []) + inside)):
                longest, values = inside_longest(rows, split, spec, budget)
                if not values:
                    continue
                _, base_inside = inside_longest(rows, split, baseline, budget)
                diffs = [values[s] - base_inside[s] for s in values if s in base_inside] if spec != baseline else []
                lines.append(f"| {spec}, step {budget} of its {longest}-step run | {budget} | "
                             f"{fmt(list(values.values()))} | {fmt_diff(diffs) if diffs else ''} |")
        lines.append("")
    return "\n".join(lines)


def compact_table(rows: List[Dict[str, Any]], baseline: str, budget: int) -> str:
    """One Markdown table for ``budget``: a row per contestant, a column per split; each cell the mean
    (min-max) over seeds and, below the baseline, the same-seed difference to it."""
    splits = list(dict.fromkeys(r["split"] for r in rows))
    specs = list(dict.fromkeys(r["contestant"] for r in rows))
    lines = [f"| {budget} steps | " + " | ".join(splits) + " |", "| --- |" + " --- |" * len(splits)]
    for spec in specs:
        is_random = parse_contestant(spec)["name"] == "random"
        cells = []
        for split in splits:
            values = value_at(rows, split, spec, budget)
            base = value_at(rows, split, baseline, budget) or inside_longest(rows, split, baseline, budget)[1]
            label = ""
            if not values and depends_on_budget(parse_contestant(spec)):
                longest, values = inside_longest(rows, split, spec, budget)
                label = f" (step {budget} of {longest})" if values else ""
            if not values:
                cells.append("-")
                continue
            v = list(values.values())
            cell = f"{statistics.mean(v):.1f} ({min(v):.1f}-{max(v):.1f}, n={len(v)}){label}"
            diffs = [values[s] - base[s] for s in values if s in base]
            if spec != baseline and not is_random and diffs:
                cell += f"; {fmt_diff(diffs)}"
            cells.append(cell)
        lines.append(f"| {spec} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: List[Dict[str, Any]], png: Path) -> None:
    """kNN against steps, one panel per split: the mean over seeds of each contestant's longest run
    (band: min to max over seeds), and the shorter cosine runs as points with min-max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [s for s in SPLITS if any(r["split"] == s for r in rows)]
    specs = [s for s in dict.fromkeys(r["contestant"] for r in rows) if parse_contestant(s)["name"] != "random"]
    colours = {spec: f"C{i}" for i, spec in enumerate(specs)}
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.2), squeeze=False)
    for ax, split in zip(axes[0], splits):
        for spec in specs:
            runs = [r for r in rows if r["split"] == split and r["contestant"] == spec]
            if not runs:
                continue
            longest = max(r["steps"] for r in runs)
            points: Dict[int, List[float]] = {}
            for r in runs:
                if r["steps"] == longest:
                    for step, acc in r["curve"]:
                        points.setdefault(step, []).append(acc)
            xs = sorted(points)
            n = len(points[xs[-1]])
            ax.plot(xs, [statistics.mean(points[x]) for x in xs], "-o", markersize=3, color=colours[spec],
                    label=f"{spec} ({longest}-step run, {n} seeds)")
            ax.fill_between(xs, [min(points[x]) for x in xs], [max(points[x]) for x in xs], color=colours[spec],
                            alpha=0.15)
            for short in sorted({r["steps"] for r in runs if r["steps"] != longest}):
                finals = [r["knn"] for r in runs if r["steps"] == short]
                mean = statistics.mean(finals)
                ax.errorbar([short], [mean], yerr=[[mean - min(finals)], [max(finals) - mean]], fmt="s",
                            color=colours[spec], capsize=3, label=f"{spec}, own {short}-step run")
        start = [r["knn"] for r in rows if r["split"] == split and parse_contestant(r["contestant"])["name"] == "random"]
        if start:
            ax.axhline(statistics.mean(start), color="gray", linestyle=":", label=f"random init ({len(start)} seeds)")
        ax.set_title(split)
        ax.set_xlabel(f"optimizer steps (batch {rows[0]['batch_size']})")
        ax.set_ylabel("weighted kNN top-1 on held-out rows (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("BYOL, SmallCNN(%d), CPU: mean over seeds, band = min to max" % rows[0]["width"], fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


# ---------------------------------------------------------------------------- main
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", "--data", dest="cifar", help="path to cifar10_small.npz (default: $BYOL_WRAP_DATA)")
    parser.add_argument("--splits", nargs="+", default=["cifar-a"], choices=SPLITS)
    parser.add_argument("--contestants", nargs="+", default=["random", "byol-wrap"],
                        help="NAME[:key=value,...], see above")
    parser.add_argument("--steps", type=int, nargs="+",
                        help="budgets (optimizer steps; default 200; with --report: the budgets to show, default all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=16, help="SmallCNN width (features = 8 x width)")
    parser.add_argument("--projection-hidden-size", type=int, default=1024)
    parser.add_argument("--eval-every", type=int, default=50, help="kNN every N steps (and at every budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "runs.jsonl", help="JSON lines, appended")
    parser.add_argument("--encoders", type=Path, help="save each run's encoder here (for --test)")
    parser.add_argument("--report", type=Path, nargs="+", help="only report these JSONL files (no training)")
    parser.add_argument("--baseline", default="byol-wrap", help="contestant the differences are taken to")
    parser.add_argument("--md", type=Path, help="write the report here (with --report)")
    parser.add_argument("--png", type=Path, help="plot the curves here (with --report)")
    parser.add_argument("--test", action="store_true",
                        help="evaluate the saved encoders (--encoders) of --contestants at --steps on the CIFAR test "
                             "split, bank = all training rows; appends to --out")
    return parser.parse_args(argv)


def encoder_file(folder: Path, split: str, spec: str, steps: int, seed: int) -> Path:
    safe = spec.replace(":", "_").replace(",", "_").replace("=", "")
    return folder / f"{split}__{safe}__{steps}__seed{seed}.pt"


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    args = parse_args(argv)
    if args.report:
        rows = [r for f in args.report for r in read_rows(f)]
        text = report(rows, args.baseline, args.steps)
        budgets = sorted(args.steps or {r["steps"] for r in rows if r["steps"] > 0})
        text = "\n\n".join([compact_table(rows, args.baseline, b) for b in budgets] + [text])
        print(text)
        if args.md:
            args.md.parent.mkdir(parents=True, exist_ok=True)
            args.md.write_text(text + "\n")
        if args.png:
            plot(rows, args.png)
        return rows
    torch.set_num_threads(args.threads)
    args.steps = args.steps or [200]
    for spec in args.contestants:
        parse_contestant(spec)  # fail before any training
    command = "python -m benchmarks.quality " + " ".join(sys.argv[1:] if argv is None else argv)
    need_cifar = args.test or any(s.startswith("cifar") for s in args.splits)
    path = resolve_data_path(args.cifar) if need_cifar else None
    cifar = load_data(path) if path is not None else None
    if args.test:
        return test_encoders(args, cifar, command)
    splits = {name: make_split(name, cifar) for name in args.splits}
    done = {row_key(r) for r in read_rows(args.out)}
    new = []
    for seed in args.seeds:
        for split_name, split in splits.items():
            for spec, steps in plan(args.contestants, args.steps):
                key = (split_name, spec, steps, seed, args.batch_size, args.width, args.projection_hidden_size)
                if key in done:
                    continue
                evals = list(range(args.eval_every, steps + 1, args.eval_every)) if args.eval_every else []
                evals += [b for b in args.steps if b <= steps]
                enc = encoder_file(args.encoders, split_name, spec, steps, seed) if args.encoders else None
                row = run_one(spec, split, steps, seed, evals, args.batch_size, args.width,
                              args.projection_hidden_size, enc)
                row.update(split=split_name, command=command, machine=machine_description(),
                           finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
                append_row(args.out, row)
                print(f"== {split_name} {spec} steps={steps} seed={seed}: kNN {row['knn']:.2f} % "
                      f"({row['train_seconds']} s)", flush=True)
                new.append(row)
    return new


def test_encoders(args: argparse.Namespace, cifar: Optional[Dict[str, Tensor]], command: str) -> List[Dict[str, Any]]:
    """kNN on the CIFAR test split (bank = all training rows) of the saved encoders, once."""
    if cifar is None or args.encoders is None:
        raise SystemExit("--test needs --cifar and --encoders")
    new = []
    for seed in args.seeds:
        for split in args.splits:
            for spec, steps in plan(args.contestants, args.steps):
                file = encoder_file(args.encoders, split, spec, steps, seed)
                if not file.exists():
                    print(f"no encoder {file}, skipped", flush=True)
                    continue
                net = SmallCNN(args.width)
                net.load_state_dict(torch.load(file, weights_only=True))
                acc = 100 * knn_eval(net, cifar["x_train"], cifar["y_train"], cifar["x_test"], cifar["y_test"], k=200)
                row = {"split": f"{split}>test", "contestant": spec, "config": parse_contestant(spec), "steps": steps,
                       "seed": seed, "batch_size": args.batch_size, "width": args.width,
                       "projection_hidden_size": args.projection_hidden_size, "curve": [[steps, round(acc, 2)]],
                       "knn": round(acc, 2), "command": command, "machine": machine_description()}
                append_row(args.out, row)
                print(f"== test {split} {spec} steps={steps} seed={seed}: kNN {acc:.2f} %", flush=True)
                new.append(row)
    return new


if __name__ == "__main__":
    main()
