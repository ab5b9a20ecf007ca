"""The job layer's input pipeline and monitoring, measured.

1. images/s of the training loop (the trainer's: loader -> BYOL step -> Adam -> EMA) reading a
   folder of JPEGs (written from the CIFAR data, upscaled to 96 px and to 224 px) with the default
   worker count, vs the same loop on the same images already decoded in memory as uint8 tensors;
   same model, batch and load size, the two interleaved round by round in one run (medians over
   rounds). At 96 px the folder loop also runs with other worker counts (the default's choice).
2. the cost of monitoring (projection hook, collapse metric, metrics.jsonl row and flush,
   progress-bar update, training.png at each checkpoint) as a share of a step: each piece timed
   on its own and spread over its cadence (the trainer's defaults: a row every 10 steps, a plot
   every 100), and the monitored loop vs the plain one, interleaved.
3. the scan of 100k files: ``find_images`` over 100k empty ``*.jpg`` files in 100 folders (it
   must not open them).

Run from the repository root::

    python -m benchmarks.pipeline --data ../shared/data/cifar10_small.npz     # < 10 min on 2 busy cores
    python -m benchmarks.pipeline --quick --out /tmp/pipeline                 # smoke test, seconds

Results: ``benchmarks/results/pipeline/pipeline.{json,md}`` (``--out`` to change the folder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

from byol_wrap import BYOL
from byol_wrap.core.optim import byol_param_groups
from byol_wrap.job import data as D
from byol_wrap.job.models import build_model, default_hidden_layer

ROOT = Path(__file__).resolve().parents[1]
DATA_ENV = "BYOL_WRAP_DATA"
RESULTS = ROOT / "benchmarks" / "results" / "pipeline"


# ----------------------------------------------------------------------------- data
def source_images(path: Optional[str], count: int) -> torch.Tensor:
    """``count`` uint8 (N, 3, 32, 32) images from the .npz's x_train, or synthetic ones."""
    chosen = path or os.environ.get(DATA_ENV)
    if chosen:
        if not Path(chosen).is_file():
            raise SystemExit(f"no data file at {chosen}; pass --data PATH/cifar10_small.npz (or set {DATA_ENV}) "
                             f"or leave both out for synthetic images")
        return D.load_npz_images(chosen)[:count]
    generator = torch.Generator().manual_seed(0)
    base = torch.randint(0, 256, (count, 3, 8, 8), generator=generator, dtype=torch.uint8)
    return torch.nn.functional.interpolate(base.float(), size=32, mode="bilinear").round().to(torch.uint8)


def write_jpegs(images: torch.Tensor, folder: Path, side: int) -> float:
    """The images upscaled to ``side`` px (bicubic) as JPEGs (quality 90) in 10 subfolders; seconds taken."""
    from PIL import Image

    start = time.perf_counter()
    for i, image in enumerate(images):
        sub = folder / f"{i % 10:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((side, side), Image.BICUBIC)
        picture.save(sub / f"{i:06d}.jpg", quality=90)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------- training loop
class Trainer:
    """The trainer's step on a fixed model: BYOL (default augmentations) + Adam with byol_param_groups."""

    def __init__(self, model: str, image_size: int, device: torch.device, precision: str, seed: int = 0) -> None:
        torch.manual_seed(seed)
        net = build_model(model, image_size=image_size)
        self.learner = BYOL(net, image_size=image_size, hidden_layer=default_hidden_layer(model, net),
                            total_steps=10_000).to(device)
        self.optimizer = torch.optim.Adam(byol_param_groups(self.learner, 3e-4))
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)

    def step(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.learner(images)
        bool(torch.isfinite(loss.detach()))  # the trainer's divergence check (a sync)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.learner.update_moving_average()
        return loss.detach()


def batches(loader: D.ImageLoader, epoch: int) -> Iterator[torch.Tensor]:
    """The loader's batches from epoch ``epoch`` on, endlessly (a fresh iterator per epoch, as in the trainer)."""
    while True:
        loader.set_epoch(epoch)
        for batch in loader:
            yield batch.images
        epoch += 1


def timed_round(trainer: Trainer, source: Iterator[torch.Tensor], steps: int,
                after_step: Optional[Callable[[int, torch.Tensor], None]] = None) -> Dict[str, float]:
    """``steps`` steps; images/s over the round and the share of it spent waiting for data."""
    wait = 0.0
    images = 0
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        x = next(source)
        wait += time.perf_counter() - t0
        loss = trainer.step(x)
        images += x.shape[0]
        if after_step is not None:
            after_step(i + 1, loss)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"images_per_s": images / seconds, "data_wait": wait / seconds, "seconds": seconds}


def compare_pipelines(images32: torch.Tensor, side: int, args: argparse.Namespace, work: Path,
                      worker_counts: Sequence[int], log: Callable[[str], None]) -> Dict[str, Any]:
    """Folder of JPEGs vs in-memory uint8, same loop, interleaved rounds."""
    folder = work / f"jpeg{side}"
    write_seconds = write_jpegs(images32, folder, side)
    load = D.default_load_size(side)
    files = D.open_images(folder, load)
    decode_start = time.perf_counter()
    decoded = torch.stack([D.read_image(p, load) for p in files.paths])  # the same images, decoded once
    decode_ms = 1000 * (time.perf_counter() - decode_start) / len(files)
    memory = D.ImageTensors(decoded, name="decoded")
    device = torch.device(args.device)
    trainer = Trainer(args.model, side, device, args.precision)
    pin = device.type == "cuda"
    sources = {"memory": batches(D.make_loader(memory, args.batch_size, seed=0, pin_memory=pin), 0)}
    loaders = []
    for workers in worker_counts:
        loader = D.make_loader(files, args.batch_size, workers=workers, seed=0, pin_memory=pin)
        loaders.append(loader)
        sources[f"folder_w{workers}"] = batches(loader, 0)
    log(f"{side} px: {len(files)} JPEGs written in {write_seconds:.1f} s, decoded at {load} px in "
        f"{decode_ms:.2f} ms/image (one process); model {args.model}, batch {args.batch_size}, "
        f"{args.steps if side <= 96 else args.steps_large} steps x {args.rounds} rounds per pipeline")
    steps = args.steps if side <= 96 else args.steps_large
    for source in sources.values():  # warm-up: workers started, first batches, allocator
        timed_round(trainer, source, 1)
    rounds: Dict[str, List[Dict[str, float]]] = {name: [] for name in sources}
    names = list(sources)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            result = timed_round(trainer, sources[name], steps)
            rounds[name].append(result)
            log(f"  round {r + 1} {name:>10}: {result['images_per_s']:7.1f} images/s, "
                f"data wait {100 * result['data_wait']:4.1f}%")
    for loader in loaders:
        loader.close()
    summary = {name: {"images_per_s": statistics.median(x["images_per_s"] for x in runs),
                      "data_wait": statistics.median(x["data_wait"] for x in runs),
                      "rounds": [round(x["images_per_s"], 2) for x in runs]} for name, runs in rounds.items()}
    default = f"folder_w{D.default_workers()}"
    if default not in summary:
        default = f"folder_w{worker_counts[0]}"
    ratio = summary[default]["images_per_s"] / summary["memory"]["images_per_s"]
    log(f"  {side} px median: memory {summary['memory']['images_per_s']:.1f} images/s, "
        + ", ".join(f"{n} {s['images_per_s']:.1f}" for n, s in summary.items() if n != "memory")
        + f"; default ({default}) / memory = {ratio:.3f}")
    return {"side": side, "load_size": load, "images": len(files), "jpeg_write_s": write_seconds,
            "decode_ms_per_image": decode_ms, "steps_per_round": steps, "pipelines": summary,
            "default_pipeline": default, "ratio_default_to_memory": ratio}


# ----------------------------------------------------------------------------- pretrain itself
def pretrain_rates(side: int, args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    """``byol_wrap.pretrain`` on the JPEG folder vs on the same images decoded in memory (uint8 tensor):
    images/s from its metrics.jsonl (median of the logged windows after the first), interleaved runs."""
    import contextlib
    import io as _io

    from byol_wrap import pretrain

    folder = work / f"jpeg{side}"
    load = D.default_load_size(side)
    files = D.open_images(folder, load)
    decoded = torch.stack([D.read_image(p, load) for p in files.paths])
    inputs = {"memory": decoded, "folder": folder}
    rates: Dict[str, List[float]] = {name: [] for name in inputs}
    waits: Dict[str, List[float]] = {name: [] for name in inputs}
    names = list(inputs)
    for r in range(args.rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out = work / f"pretrain_{name}_{r}"
            with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
                pretrain(inputs[name], out, model=args.model, image_size=side, batch_size=args.batch_size,
                         steps=args.pretrain_steps, log_every=args.pretrain_log_every,
                         checkpoint_every=args.pretrain_steps, device=args.device, precision=args.precision,
                         progress=False)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            rows = [row for row in rows if "images_per_s" in row][1:] or rows[-1:]  # first window: start-up
            rates[name].append(statistics.median(row["images_per_s"] for row in rows))
            waits[name].append(statistics.median(row.get("data_wait", 0.0) for row in rows))
            log(f"  pretrain round {r + 1} {name:>6}: {rates[name][-1]:7.1f} images/s, "
                f"data wait {100 * waits[name][-1]:4.1f}%")
    summary = {name: {"images_per_s": statistics.median(rates[name]), "data_wait": statistics.median(waits[name]),
                      "rounds": [round(v, 2) for v in rates[name]]} for name in inputs}
    ratio = summary["folder"]["images_per_s"] / summary["memory"]["images_per_s"]
    log(f"  pretrain {side} px median: memory {summary['memory']['images_per_s']:.1f} images/s, folder "
        f"{summary['folder']['images_per_s']:.1f} (default workers); folder / memory = {ratio:.3f}")
    return {"side": side, "steps": args.pretrain_steps, "log_every": args.pretrain_log_every, "pipelines": summary,
            "ratio_folder_to_memory": ratio}


# ----------------------------------------------------------------------------- monitoring
REPEAT_SCALE = {"value": 1.0}


def time_call(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` calls (fewer in --quick mode)."""
    times = []
    for _ in range(max(1, int(repeat * REPEAT_SCALE["value"]))):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def monitoring_cost(images32: torch.Tensor, args: argparse.Namespace, work: Path,
                    log: Callable[[str], None]) -> Dict[str, Any]:
    """Per-piece costs of the trainer's monitoring, spread over their cadence, as a share of a step;
    and the monitored loop vs the plain loop (interleaved)."""
    try:
        from byol_wrap.job import monitor as M
    except ImportError:  # pragma: no cover - monitor.py is J2's; TODO(lead) if it moved
        return {"error": "byol_wrap.job.monitor not importable"}
    side = args.monitor_size
    decoded = D.resize_center_crop(images32, D.default_load_size(side))
    device = torch.device(args.device)
    trainer = Trainer(args.model, side, device, args.precision)
    source = batches(D.make_loader(D.ImageTensors(decoded), args.batch_size, seed=0), 0)
    run_dir = work / "monitor_run"
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    metrics = M.MetricsLog(run_dir)
    metrics.start()
    recorder = M.ProjectionRecorder(trainer.learner.projector)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed at the end of this function
    from tqdm.auto import tqdm

    bar = tqdm(total=10**6, file=devnull, unit="step", dynamic_ncols=True, smoothing=0.1)
    log_every, plot_every = args.log_every, args.plot_every
    state = {"step": 0}

    def monitored(step: int, loss: torch.Tensor) -> None:  # what the trainer does after a step
        state["step"] += 1
        projections = recorder.take()
        bar.update(1)
        if state["step"] % log_every == 0:
            row = {"step": state["step"], "epoch": 0, "loss": loss.item(), "tau": trainer.learner.tau, "lr": 3e-4,
                   "images_per_s": 100.0, "data_wait": 0.01, "skipped": 0,
                   "collapse": M.collapse_metric(projections) if projections is not None else None}
            metrics.append(row)
            metrics.flush(force=False)
            bar.set_postfix(M.bar_postfix(row), refresh=False)
        if state["step"] % plot_every == 0:
            M.plot_training(metrics, run_dir / "plots" / "training.png")

    # pieces, timed alone
    timed_round(trainer, source, 2)
    projections = torch.randn(args.batch_size, 256)
    full_row = {"step": 1, "epoch": 0, "loss": 0.5, "tau": 0.996, "lr": 3e-4, "images_per_s": 100.0,
                "data_wait": 0.01, "collapse": 0.8, "skipped": 0}
    for i in range(1000 if not args.quick else 50):  # a long run's worth of rows for the plot and the flush
        metrics.append({"step": i + 1, "loss": 1.0 / (i + 1), "tau": 0.996, "lr": 3e-4, "collapse": 0.8})
    pieces = {
        "hook_take_per_step": time_call(lambda: (recorder._hook(None, None, projections), recorder.take()), 200),
        "bar_update_per_step": time_call(lambda: bar.update(1), 200),
        "collapse_metric": time_call(lambda: M.collapse_metric(projections), 50),
        "row_append_and_postfix": time_call(lambda: (metrics.append(dict(full_row)),
                                                     bar.set_postfix(M.bar_postfix(full_row), refresh=False)), 50),
        "flush_1000_rows": time_call(lambda: metrics.flush(force=True), 5),
        "plot_training_1000_rows": time_call(lambda: M.plot_training(metrics, run_dir / "plots" / "training.png"),
                                             3),
    }
    metrics.rows = metrics.rows[:0]
    step_seconds = statistics.median(timed_round(trainer, source, args.monitor_steps)["seconds"] / args.monitor_steps
                                     for _ in range(args.rounds))
    per_step = (pieces["hook_take_per_step"] + pieces["bar_update_per_step"]
                + (pieces["collapse_metric"] + pieces["row_append_and_postfix"]) / log_every
                + pieces["flush_1000_rows"] / max(1.0, metrics.flush_seconds / step_seconds)
                + pieces["plot_training_1000_rows"] / plot_every)
    share = per_step / step_seconds
    log(f"monitoring at {side} px, batch {args.batch_size}: step {1000 * step_seconds:.1f} ms; pieces (ms): "
        + ", ".join(f"{k} {1000 * v:.3f}" for k, v in pieces.items())
        + f"; spread over a row every {log_every} and a plot every {plot_every} steps: "
          f"{1000 * per_step:.3f} ms/step = {100 * share:.2f}% of a step")
    # the monitored loop vs the plain loop (noisy at the 1% level on a shared machine)
    ab: Dict[str, List[float]] = {"plain": [], "monitored": []}
    for r in range(args.rounds if not args.quick else 0):
        for name in (("plain", "monitored") if r % 2 == 0 else ("monitored", "plain")):
            result = timed_round(trainer, source, args.monitor_steps, monitored if name == "monitored" else None)
            ab[name].append(result["seconds"] / args.monitor_steps)
    recorder.remove()
    bar.close()
    devnull.close()
    metrics.close()
    plain = statistics.median(ab["plain"]) if ab["plain"] else float("nan")
    watched = statistics.median(ab["monitored"]) if ab["monitored"] else float("nan")
    log(f"  A/B: plain {1000 * plain:.1f} ms/step, monitored {1000 * watched:.1f} ms/step "
        f"({100 * (watched / plain - 1):+.2f}%, {args.rounds} interleaved rounds of {args.monitor_steps} steps)")
    return {"image_size": side, "step_seconds": step_seconds, "pieces_seconds": pieces, "log_every": log_every,
            "plot_every": plot_every, "monitoring_seconds_per_step": per_step, "share_of_step": share,
            "ab_plain_seconds_per_step": plain, "ab_monitored_seconds_per_step": watched,
            "ab_rounds": {k: [round(v, 5) for v in vals] for k, vals in ab.items()}}


# ----------------------------------------------------------------------------- scan
def scan_cost(count: int, work: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    """find_images over ``count`` empty .jpg files in 100 folders (it must not open them), vs rglob."""
    root = work / "scan"
    start = time.perf_counter()
    per_folder = max(1, count // 100)
    for f in range(100):
        folder = root / f"{f:03d}"
        folder.mkdir(parents=True)
        for i in range(per_folder):
            open(folder / f"{i:06d}.jpg", "wb").close()
    create = time.perf_counter() - start
    runs, path_runs = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        found = D.find_image_paths(root)  # what open_images uses
        runs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        as_paths = D.find_images(root)
        path_runs.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rglob = sorted(p for p in root.rglob("*") if p.suffix.lower() in D.IMAGE_EXTENSIONS)
    rglob_s = time.perf_counter() - t0
    if not len(found) == len(as_paths) == len(rglob) == 100 * per_folder:
        raise RuntimeError(f"scan found {len(found)}/{len(as_paths)}/{len(rglob)} of {100 * per_folder} files")
    log(f"scan: {len(found)} files found in {statistics.median(runs):.3f} s by find_image_paths (open_images' "
        f"scan), {statistics.median(path_runs):.3f} s by find_images (Path objects); medians of 3, warm cache; "
        f"Path.rglob + sort: {rglob_s:.3f} s; creating the files took {create:.1f} s")
    return {"files": len(found), "find_image_paths_seconds": statistics.median(runs),
            "find_images_seconds": statistics.median(path_runs), "runs": runs, "path_runs": path_runs,
            "rglob_sorted_seconds": rglob_s, "create_seconds": create}


# ----------------------------------------------------------------------------- main
def markdown(result: Dict[str, Any]) -> str:
    lines = [f"# Input pipeline and monitoring ({result['machine']})", "",
             f"`{result['command']}`", "",
             f"Model `{result['args']['model']}`, batch {result['args']['batch_size']}, training process on "
             f"{result['args']['threads']} torch thread(s), default decoding workers {result['default_workers']}; "
             f"load average {result.get('load_average_start', float('nan')):.1f} at the start and "
             f"{result.get('load_average_end', float('nan')):.1f} at the end (a shared machine). Interleaved rounds, "
             f"medians.", "",
             "| images | load size | pipeline | images/s (median) | data wait | ratio to memory |",
             "| --- | --- | --- | --- | --- | --- |"]
    for entry in result["pipelines"]:
        memory = entry["pipelines"]["memory"]["images_per_s"]
        for name, s in entry["pipelines"].items():
            label = "in memory (uint8)" if name == "memory" else f"JPEG folder, {name.split('_w')[1]} workers"
            if name == entry["default_pipeline"]:
                label += " (default)"
            lines.append(f"| {entry['side']} px | {entry['load_size']} | {label} | {s['images_per_s']:.1f} | "
                         f"{100 * s['data_wait']:.1f}% | {s['images_per_s'] / memory:.3f} |")
    pre = result.get("pretrain", {})
    if "pipelines" in pre:
        memory, folder = pre["pipelines"]["memory"], pre["pipelines"]["folder"]
        lines += ["", f"`byol_wrap.pretrain` itself at {pre['side']} px ({pre['steps']} steps per run, images/s from "
                      f"metrics.jsonl after the first window): in memory {memory['images_per_s']:.1f}"
                      f", JPEG folder {folder['images_per_s']:.1f} images/s, ratio "
                      f"**{pre['ratio_folder_to_memory']:.3f}**."]
    mon = result.get("monitoring", {})
    if "share_of_step" in mon:
        ab_ratio = mon["ab_monitored_seconds_per_step"] / mon["ab_plain_seconds_per_step"]
        lines += ["", f"Monitoring at {mon['image_size']} px: {1000 * mon['monitoring_seconds_per_step']:.3f} ms per "
                      f"step of {1000 * mon['step_seconds']:.1f} ms = **{100 * mon['share_of_step']:.2f}%** (pieces "
                      f"timed alone, a row every {mon['log_every']} and a plot every {mon['plot_every']} steps); "
                      f"A/B loop: {100 * (ab_ratio - 1):+.2f}%."]
    scan = result.get("scan")
    if scan:
        lines += ["", f"Scan: {scan['files']} files in {scan['find_image_paths_seconds']:.3f} s (`find_image_paths`, "
                      f"what `open_images` runs), {scan['find_images_seconds']:.3f} s (`find_images`, Path objects); "
                      f"warm cache."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help=f"CIFAR-like .npz (x_train uint8 NHWC); default ${DATA_ENV}, else synthetic")
    parser.add_argument("--images", type=int, default=256, help="images written per folder")
    parser.add_argument("--sizes", default="96,224", help="JPEG sides (= view sizes), comma-separated")
    parser.add_argument("--model", default="byol_wrap/small_cnn:8")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="steps per round at <= 96 px")
    parser.add_argument("--steps-large", type=int, default=2, help="steps per round above 96 px")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-sweep", default="1,2", help="worker counts tried at the smallest size")
    parser.add_argument("--pretrain-steps", type=int, default=24,
                        help="steps of each byol_wrap.pretrain run at the smallest size (0: skip that part)")
    parser.add_argument("--pretrain-log-every", type=int, default=4)
    parser.add_argument("--monitor-size", type=int, default=96)
    parser.add_argument("--monitor-steps", type=int, default=6)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--plot-every", type=int, default=100)
    parser.add_argument("--scan-files", type=int, default=100_000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="32", choices=["32", "bf16", "16"])
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of the training process on CPU (default 1: on the busy 2-core machine "
                             "2 threads spin-wait against the decoding workers, measured 0.7 s vs 15 s per step)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="pipeline")
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds (tiny sizes and counts)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.sizes, args.batch_size, args.steps, args.steps_large = 24, "24", 8, 1, 1
        args.rounds, args.worker_sweep, args.monitor_size, args.monitor_steps = 1, str(D.default_workers()), 24, 2
        args.log_every, args.plot_every, args.scan_files = 1, 2, 500
        args.pretrain_steps, args.pretrain_log_every = 2, 1
        args.model = "byol_wrap/small_cnn:4"
        REPEAT_SCALE["value"] = 0.05
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines: List[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    images32 = source_images(args.data, args.images)
    sizes = [int(s) for s in args.sizes.split(",")]
    sweep = sorted({int(w) for w in args.worker_sweep.split(",")} | {D.default_workers()})
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"{args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
    log(f"machine: {machine}; default workers: {D.default_workers()}; torch threads: {torch.get_num_threads()}; "
        f"load average at start: {os.getloadavg()[0]:.1f}")
    result: Dict[str, Any] = {"machine": machine, "command": "python -m benchmarks.pipeline "
                              + " ".join(argv if argv is not None else sys.argv[1:]),
                              "default_workers": D.default_workers(), "args": vars(args), "pipelines": []}
    result["load_average_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="byol_pipeline_") as tmp:
        work = Path(tmp)
        for i, side in enumerate(sizes):
            counts = sweep if i == 0 else [D.default_workers()]
            result["pipelines"].append(compare_pipelines(images32, side, args, work, counts, log))
        if args.pretrain_steps > 0:
            log(f"byol_wrap.pretrain at {sizes[0]} px, {args.pretrain_steps} steps per run, {args.rounds} rounds:")
            try:
                result["pretrain"] = pretrain_rates(sizes[0], args, work, log)
            except Exception as error:  # the trainer is developed alongside; keep the other figures
                log(f"  pretrain failed: {type(error).__name__}: {error}")
                result["pretrain"] = {"error": f"{type(error).__name__}: {error}"}
        result["monitoring"] = monitoring_cost(images32, args, work, log)
        result["scan"] = scan_cost(args.scan_files, work, log)
    result["load_average_end"] = os.getloadavg()[0]
    log(f"load average at the end: {result['load_average_end']:.1f}")
    from byol_wrap.job.io import atomic_write_text

    atomic_write_text(out / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / f"{args.name}.md", markdown(result))
    atomic_write_text(out / f"{args.name}.log", "\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
