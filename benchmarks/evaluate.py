"""Issue 21: ``byol-wrap eval`` of the default runs against the untrained baseline, 3 seeds.

For each data set and seed: ``byol-wrap pretrain`` (a subprocess, the command as a user runs it), then
``byol_wrap.job.evaluate`` of its ``encoder.pt`` on the same data's labelled training split (kNN bank and
probe training) and its own test split, timed. One JSON line per (data, seed) is appended to ``--out``
right after the evaluation; rerunning skips the rows already there.

- ``digits``: ``byol-wrap pretrain --out RUN --seed S`` (the built-in default: digits, byol_wrap/small_cnn,
  300 steps); evaluated on the digits' 1438 / 359 split;
- ``cifar``: ``byol-wrap pretrain cifar10_small.npz --out RUN --steps N --batch-size B --seed S`` (small_cnn,
  32 px, Adam 3e-4; default 150 steps of 64, what the loaded 2-core machine allowed); evaluated on its
  10 000 training / 2 000 test rows.

Example (from the repository root)::

    python -m benchmarks.evaluate --cifar ../shared/data/cifar10_small.npz --seeds 0 1 2 --data cifar digits \\
        --runs /tmp/eval_runs --reuse --out benchmarks/results/evaluate/runs.jsonl
    python -m benchmarks.evaluate --report benchmarks/results/evaluate/runs.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load average {load:.2f}")


def _done(out: Path) -> set:
    if not out.exists():
        return set()
    return {(row["data"], row["seed"]) for row in map(json.loads, out.read_text().splitlines()) if row}


def _finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a finished run (its encoder.pt and a checkpoint marked finished)."""
    import torch

    checkpoint = run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "encoder.pt").is_file() or not checkpoint.is_file():
        return False
    return bool(torch.load(checkpoint, weights_only=True, map_location="cpu").get("finished", False))


def run(args: argparse.Namespace) -> None:
    from byol_wrap.job.evaluate import evaluate, format_table

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    for seed in args.seeds:  # seeds outside: an interrupted benchmark still covers both data sets
        for data in args.data:
            label = f"{data}-{args.tag}" if args.tag else data
            if (label, seed) in done:
                continue
            run_dir = Path(args.runs) / f"{label}_seed{seed}"
            command = [sys.executable, "-m", "byol_wrap", "pretrain"]
            if data == "cifar":
                command += [args.cifar, "--steps", str(args.cifar_steps), "--batch-size", str(args.cifar_batch_size)]
            command += ["--out", str(run_dir), "--seed", str(seed), "--no-progress", "--overwrite"]
            if args.threads:
                command += ["--threads", str(args.threads)]
            started = time.perf_counter()
            pretrain_seconds: Any = None
            if args.reuse and _finished(run_dir):
                print(f"reusing the finished run {run_dir}", flush=True)
            else:
                subprocess.run(command, check=True, cwd=ROOT)
                pretrain_seconds = time.perf_counter() - started
            machine = _machine()
            cpu_started = time.process_time()
            report = evaluate(run_dir / "encoder.pt", "digits" if data == "digits" else args.cifar, seed=seed,
                              out=run_dir / "eval" / "report.json", progress=False)
            eval_cpu_seconds = time.process_time() - cpu_started
            print(format_table(report), flush=True)
            row: Dict[str, Any] = {"data": label, "seed": seed, "command": " ".join(command[1:]),
                                   "pretrain_seconds": pretrain_seconds, "machine": machine,
                                   "results": {name: {"knn20": r["knn_top1"]["20"], "knn200": r["knn_top1"]["200"],
                                                      "probe": r["linear_probe"]["top1"], "C": r["linear_probe"]["C"]}
                                               for name, r in report["results"].items()},
                                   "eval_seconds": report["seconds"], "eval_cpu_seconds": eval_cpu_seconds,
                                   "train_images": report["train_images"],
                                   "test_images": report["test_images"]}
            with out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


def _mean_sd(values: List[float]) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    lines = ["| data | net | kNN k=20 | kNN k=200 | linear probe | probe - kNN20 | eval time (s) | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for data in sorted({r["data"] for r in rows}, key=lambda d: (d != "digits", d)):
        group = [r for r in rows if r["data"] == data]
        for net in ("encoder", "untrained"):
            res = [r["results"][net] for r in group]
            gaps = [x["probe"] - x["knn20"] for x in res]
            seconds = statistics.mean(r["eval_seconds"]["total"] for r in group)
            cpu = [r["eval_cpu_seconds"] for r in group if "eval_cpu_seconds" in r]
            cpu_text = f", CPU {statistics.mean(cpu):.0f}" if cpu else ""
            lines.append(f"| {data} | {net} | {_mean_sd([x['knn20'] for x in res])} | "
                         f"{_mean_sd([x['knn200'] for x in res])} | {_mean_sd([x['probe'] for x in res])} | "
                         f"{_mean_sd(gaps)} | wall {seconds:.0f}{cpu_text} (both nets) | {len(group)} |")
    lines.append("")
    lines.append("Per seed (encoder / untrained, %): " + "; ".join(
        f"{r['data']} seed {r['seed']}: kNN20 {100 * r['results']['encoder']['knn20']:.1f}/"
        f"{100 * r['results']['untrained']['knn20']:.1f}, probe {100 * r['results']['encoder']['probe']:.1f}/"
        f"{100 * r['results']['untrained']['probe']:.1f} (C {r['results']['encoder']['C']:g})" for r in rows))
    lines.append("")
    lines.append("Eval time split (mean s): " + "; ".join(
        f"{data}: " + ", ".join(f"{k} {statistics.mean(r['eval_seconds'][k] for r in rows if r['data'] == data):.1f}"
                                for k in ("load", "features", "knn", "linear_probe", "total"))
        for data in sorted({r["data"] for r in rows})))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", default=os.environ.get("BYOL_WRAP_DATA", "../shared/data/cifar10_small.npz"))
    parser.add_argument("--data", nargs="+", default=["digits", "cifar"], choices=["digits", "cifar"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cifar-steps", type=int, default=150)
    parser.add_argument("--cifar-batch-size", type=int, default=64)
    parser.add_argument("--runs", default="/tmp/byol_wrap_eval_runs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evaluate" / "runs.jsonl"))
    parser.add_argument("--tag", default="", help="suffix of the data label and run folders (another budget)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads for pretraining and evaluation (default: torch's choice)")
    parser.add_argument("--report", default=None, metavar="RUNS_JSONL")
    parser.add_argument("--reuse", action="store_true",
                        help="evaluate a finished run already in --runs instead of pretraining it again")
    args = parser.parse_args()
    if args.report:
        print(report(Path(args.report)))
    else:
        run(args)


if __name__ == "__main__":
    main()
