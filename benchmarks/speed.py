"""Step time and memory of byol-wrap vs plain PyTorch ("ideal") and byol-pytorch, in one process.

A step is: both views through the online encoder + projector + predictor, the target
encoder + projector (no grad), the symmetric loss, backward, Adam step, EMA update.
All contestants get the same input batch; augmentation is off (identity) except for
``byol-wrap+aug`` (the default Kornia augmentations). Steps are timed round-robin (one
step of each contestant in turn, repeated), so a change in the machine's load hits every
contestant alike; the ratios of two steps of the same round are summarised by their
median ("paired ratios").

Contestants:
    ideal          plain PyTorch, one pass per view, fused EMA (``torch._foreach_lerp_``)
    ideal-concat   the same with both views as one batch (BatchNorm statistics mixed)
    ideal-channels-last    ``ideal`` with channels-last (NHWC) views
    byol-wrap      BYOL(...) defaults except augmentation off (``view_batching="auto"``: one pass
                   up to 48 x 48 px, one forward per view above; ``memory_format="auto"``:
                   channels-last views on the CPU). Results saved before 16:20 UTC on 2026-11-25
                   ran one pass at every size; results saved before 18:00 UTC on 2026-11-25 had
                   no channels-last views (today's ``byol-wrap-preserve``)
    byol-wrap-preserve     ``memory_format="preserve"`` (the views' layout as given: NCHW)
    byol-wrap-one-pass     ``view_batching="one_pass"`` (one batch, per-view BatchNorm statistics)
    byol-wrap-per-view     ``view_batching="per_view"`` (one forward per view)
    byol-wrap-concat       ``view_batching="concat"`` (one batch, statistics mixed)
    byol-pytorch   lucidrains' byol-pytorch at its defaults (simplicial embedding), augmentation off
    byol-pytorch-classic   byol-pytorch with ``use_simplicial_embeddings=False``
    byol-wrap+aug  byol-wrap with its default augmentations (for their share of a step);
                   with it, ``augment-only`` (T and T' on the batch, nothing else) joins each round

Peak memory is measured in a fresh subprocess per contestant: the growth of the
process's peak resident set size (``VmHWM``, reset once the model is built) over two
training steps.

Example (from the repository root)::

    python -m benchmarks.speed --threads 2 --sizes 32 64 96 --batch-size 64 --steps 15
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from benchmarks.common import RESULTS_DIR, SmallCNN, machine_description, make_learner, median, write_json
from byol_wrap.core.ema import ema_update_

SPEED_CONTESTANTS = ("ideal", "ideal-concat", "ideal-channels-last", "byol-wrap", "byol-wrap-preserve",
                     "byol-wrap-one-pass", "byol-wrap-per-view",
                     "byol-wrap-concat", "byol-pytorch", "byol-pytorch-classic", "byol-wrap+aug")
DEFAULT_CONTESTANTS = ("ideal", "ideal-channels-last", "byol-wrap", "byol-wrap-preserve", "byol-wrap-one-pass",
                       "byol-wrap-per-view", "byol-pytorch", "byol-wrap+aug")
MEMORY_CONTESTANTS = ("ideal", "ideal-concat", "byol-wrap", "byol-wrap-per-view", "byol-wrap-concat",
                      "byol-pytorch-classic")


def make_backbone(arch: str) -> nn.Module:
    """``resnet18`` (torchvision, random weights) or ``smallcnn`` (for smoke runs)."""
    if arch == "resnet18":
        return torchvision.models.resnet18()
    if arch == "smallcnn":
        return SmallCNN(8)
    raise ValueError(f"unknown arch {arch!r}; use resnet18 or smallcnn")


def hidden_layer_of(arch: str) -> str:
    return "avgpool" if arch == "resnet18" else "flatten"


def representation_size(arch: str) -> int:
    return 512 if arch == "resnet18" else SmallCNN(8).feature_size


def mlp(dim: int, out: int, hidden: int) -> nn.Sequential:
    """The paper's head, written out in plain PyTorch."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


class IdealStep:
    """A hand-written BYOL step doing exactly the work of one training step, nothing else.

    The encoder is the backbone truncated at the hidden layer (ResNet-18 with
    ``fc = Identity`` and ``flatten`` of the pooled map), so no hook, no extra layer.
    """

    def __init__(self, arch: str, concat: bool, projection_size: int = 256, hidden: int = 4096,
                 tau: float = 0.996, channels_last: bool = False) -> None:
        backbone = make_backbone(arch)
        backbone.fc = nn.Identity()
        self.encoder = backbone
        self.projector = mlp(representation_size(arch), projection_size, hidden)
        self.predictor = mlp(projection_size, projection_size, hidden)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.online = list(self.encoder.parameters()) + list(self.projector.parameters())
        self.target = list(self.target_encoder.parameters()) + list(self.target_projector.parameters())
        self.optimizer = torch.optim.Adam(self.online + list(self.predictor.parameters()), lr=1e-3)
        self.concat = concat
        self.tau = tau
        self.channels_last = channels_last

    @staticmethod
    def _loss(q: Tensor, z: Tensor) -> Tensor:
        return 2 - 2 * (F.normalize(q, dim=-1) * F.normalize(z, dim=-1)).sum(dim=-1)

    def __call__(self, x: Tensor) -> None:
        view1, view2 = x, x  # augmentation off, as for the other contestants
        if self.channels_last:
            view1 = view2 = x.contiguous(memory_format=torch.channels_last)
        if self.concat:
            both = torch.cat((view1, view2))
            q1, q2 = self.predictor(self.projector(self.encoder(both))).chunk(2)
            with torch.no_grad():
                z1, z2 = self.target_projector(self.target_encoder(both)).chunk(2)
        else:
            q1 = self.predictor(self.projector(self.encoder(view1)))
            q2 = self.predictor(self.projector(self.encoder(view2)))
            with torch.no_grad():
                z1 = self.target_projector(self.target_encoder(view1))
                z2 = self.target_projector(self.target_encoder(view2))
        loss = (self._loss(q1, z2) + self._loss(q2, z1)).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.target, self.online, 1 - self.tau)


class LibraryStep:
    """One training step of a library contestant (forward, backward, Adam, EMA)."""

    def __init__(self, name: str, arch: str, image_size: int, hidden: int = 4096) -> None:
        self.learner = make_learner(
            name.replace("+aug", ""), make_backbone(arch), image_size, hidden_layer_of(arch), None,
            projection_hidden_size=hidden, augment=name.endswith("+aug"),
        )
        self.learner.train()
        self.optimizer = torch.optim.Adam([p for p in self.learner.parameters() if p.requires_grad], lr=1e-3)

    def __call__(self, x: Tensor) -> None:
        loss = self.learner(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.learner.update_moving_average()


def build(name: str, arch: str, image_size: int, hidden: int = 4096) -> Callable[[Tensor], None]:
    """Contestant ``name`` as a callable doing one training step on a batch."""
    torch.manual_seed(0)
    if name.startswith("ideal"):
        return IdealStep(arch, concat=name.endswith("concat"), hidden=hidden,
                         channels_last=name.endswith("channels-last"))
    return LibraryStep(name, arch, image_size, hidden)


def time_steps(names: Sequence[str], arch: str, image_size: int, batch_size: int, steps: int,
               warmup: int, hidden: int = 4096) -> Dict[str, List[float]]:
    """Seconds per step of every contestant, measured round-robin."""
    x = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    runners = {name: build(name, arch, image_size, hidden) for name in names}
    if "byol-wrap+aug" in runners:
        learner = runners["byol-wrap+aug"].learner  # type: ignore[attr-defined]

        def augment_only(batch: Tensor) -> None:
            learner.augment1(batch)
            learner.augment2(batch)

        runners["augment-only"] = augment_only
    times: Dict[str, List[float]] = {name: [] for name in runners}
    for repeat in range(warmup + steps):
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            elapsed = time.perf_counter() - start
            if repeat >= warmup:
                times[name].append(elapsed)
        print(f"{image_size}px round {repeat + 1}/{warmup + steps}: "
              + ", ".join(f"{name} {1e3 * t[-1]:.0f} ms" for name, t in times.items() if t), flush=True)
    return times


def augment_stage_times(image_size: int, batch_size: int, repeats: int) -> Dict[str, Dict[str, float]]:
    """Median milliseconds of each stage of the default T and T' on a batch (which stage dominates)."""
    from byol_wrap.core.augment import default_augmentations

    x = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    out: Dict[str, Dict[str, float]] = {}
    for view, pipeline in zip(("T", "T'"), default_augmentations(image_size)):
        stages: Dict[str, List[float]] = {}
        for _ in range(repeats):
            y = x
            for i, stage in enumerate(pipeline):
                start = time.perf_counter()
                y = stage(y)
                stages.setdefault(f"{i}:{type(stage).__name__}", []).append(time.perf_counter() - start)
        out[view] = {name: 1e3 * median(values) for name, values in stages.items()}
    return out


def time_ema(arch: str, repeats: int, hidden: int = 4096) -> Dict[str, float]:
    """Median seconds of one EMA update over backbone + projector: fused vs loops."""
    torch.manual_seed(0)
    online = list(make_backbone(arch).parameters()) + list(mlp(representation_size(arch), 256, hidden).parameters())
    target = [p.detach().clone() for p in online]
    lucid_target = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in online]
    tau = 0.996

    def fused() -> None:
        ema_update_(target, online, tau)

    @torch.no_grad()
    def inplace_loop() -> None:
        for t, o in zip(target, online):
            t.mul_(tau).add_(o, alpha=1 - tau)

    def lucid_loop() -> None:  # what byol-pytorch's update_moving_average does
        for o, t in zip(online, lucid_target):
            t.data = t.data * tau + (1 - tau) * o.data

    results: Dict[str, List[float]] = {"fused": [], "inplace-loop": [], "byol-pytorch-loop": []}
    for _ in range(repeats):
        for name, fn in (("fused", fused), ("inplace-loop", inplace_loop), ("byol-pytorch-loop", lucid_loop)):
            start = time.perf_counter()
            fn()
            results[name].append(time.perf_counter() - start)
    return {name: median(values) for name, values in results.items()}


def _status_kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status``, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status (peak memory needs Linux)")


def memory_child(name: str, arch: str, image_size: int, batch_size: int, hidden: int = 4096) -> Dict[str, float]:
    """Peak-RSS growth (MiB) over two steps of ``name``, after building it (run in a fresh process).

    The peak (``VmHWM``) is reset to the current RSS through ``/proc/self/clear_refs``
    once the model is built, so imports and construction do not count; ``ru_maxrss`` is
    not usable here because a child process inherits its parent's value.
    """
    x = torch.rand(batch_size, 3, image_size, image_size)
    run = build(name, arch, image_size, hidden)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    run(x)
    run(x)
    peak = _status_kib("VmHWM")
    return {"peak_growth_mib": (peak - before) / 1024.0, "base_mib": before / 1024.0}


def measure_memory(names: Sequence[str], arch: str, image_size: int, batch_size: int,
                   threads: int, hidden: int = 4096) -> Dict[str, Dict[str, float]]:
    """Run :func:`memory_child` for each contestant in its own subprocess."""
    out = {}
    for name in names:
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--arch", arch,
                   "--sizes", str(image_size), "--batch-size", str(batch_size), "--threads", str(threads),
                   "--projection-hidden-size", str(hidden)]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
        out[name] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


PAIRS = {
    "a_wrap_vs_ideal": ("byol-wrap", "ideal"),
    "a_wrap_per_view_vs_ideal": ("byol-wrap-per-view", "ideal"),
    "a_wrap_vs_ideal_concat": ("byol-wrap", "ideal-concat"),
    "a_wrap_vs_ideal_channels_last": ("byol-wrap", "ideal-channels-last"),
    "b_wrap_preserve_vs_byol_pytorch": ("byol-wrap-preserve", "byol-pytorch"),
    "channels_last_vs_preserve_wrap": ("byol-wrap", "byol-wrap-preserve"),
    "b_wrap_per_view_vs_byol_pytorch": ("byol-wrap-per-view", "byol-pytorch"),
    "one_pass_vs_per_view_wrap": ("byol-wrap-one-pass", "byol-wrap-per-view"),
    "b_wrap_one_pass_vs_byol_pytorch": ("byol-wrap-one-pass", "byol-pytorch"),
    "a_wrap_concat_vs_ideal_concat": ("byol-wrap-concat", "ideal-concat"),
    "b_wrap_vs_byol_pytorch": ("byol-wrap", "byol-pytorch"),
    "b_wrap_vs_byol_pytorch_classic": ("byol-wrap", "byol-pytorch-classic"),
    "b_wrap_concat_vs_byol_pytorch_classic": ("byol-wrap-concat", "byol-pytorch-classic"),
    "per_view_vs_concat_wrap": ("byol-wrap-per-view", "byol-wrap-concat"),
    "one_pass_vs_concat_wrap": ("byol-wrap-one-pass", "byol-wrap-concat"),
    "per_view_vs_concat_ideal": ("ideal", "ideal-concat"),
    "wrap_without_vs_with_augmentation": ("byol-wrap", "byol-wrap+aug"),
    "c_augment_share_direct": ("augment-only", "byol-wrap+aug"),
}


def ratios(t: Dict[str, float], memory: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """The issue's ratios from median step times (and memory, when measured)."""
    r: Dict[str, float] = {key: t[a] / t[b] for key, (a, b) in PAIRS.items() if a in t and b in t}
    if "byol-wrap+aug" in t and "byol-wrap" in t:
        r["c_augment_share_by_difference"] = 1 - t["byol-wrap"] / t["byol-wrap+aug"]

    def add_memory(key: str, a: str, b: str) -> None:
        # a peak that did not grow (tiny smoke runs) gives no meaningful ratio
        if a in memory and b in memory and memory[b]["peak_growth_mib"] > 0:
            r[key] = memory[a]["peak_growth_mib"] / memory[b]["peak_growth_mib"]

    for name in memory:
        if name != "ideal":
            add_memory(f"e_memory_{name}_vs_ideal", name, "ideal")
    add_memory("e_memory_wrap_concat_vs_ideal_concat", "byol-wrap-concat", "ideal-concat")
    return r


def paired_ratios(times: Dict[str, List[float]]) -> Dict[str, Dict[str, float]]:
    """Ratios of two contestants' step times taken within the same round, summarised.

    On a shared machine the load changes from one round to the next; a ratio of two
    steps run seconds apart cancels most of that. Returns median and quartiles per pair.

    Example:
        >>> paired_ratios({"byol-wrap": [2.0, 4.0], "ideal": [1.0, 2.0]})["a_wrap_vs_ideal"]["median"]
        2.0
    """
    out = {}
    for key, (a, b) in PAIRS.items():
        if a in times and b in times:
            values = sorted(x / y for x, y in zip(times[a], times[b]))
            quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
            out[key] = {"median": median(values), "q1": quartiles[0], "q3": quartiles[2], "n": len(values)}
    return out


def _load_average() -> List[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS does not give them)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet18", choices=["resnet18", "smallcnn"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per contestant (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--projection-hidden-size", type=int, default=4096, help="hidden size of both heads")
    parser.add_argument("--ema-repeats", type=int, default=50)
    parser.add_argument("--contestants", nargs="+", default=list(DEFAULT_CONTESTANTS), choices=SPEED_CONTESTANTS)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory subprocesses")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave as is)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "speed" / "speed.json")
    parser.add_argument("--no-ema", action="store_true", help="skip the EMA micro-benchmark")
    parser.add_argument("--augment-stages", type=int, default=0, metavar="REPEATS",
                        help="also time each stage of T and T' alone, REPEATS times per size")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.arch, args.sizes[0], args.batch_size,
                                        args.projection_hidden_size)))
        return {}
    payload: Dict[str, Any] = {
        "command": "python -m benchmarks.speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "load_average_before": _load_average(),
        "machine": machine_description(), "arch": args.arch, "batch_size": args.batch_size,
        "steps": args.steps, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sizes": {},
    }
    hidden = args.projection_hidden_size
    if args.memory_only:
        for size in args.sizes:
            memory = measure_memory([n for n in MEMORY_CONTESTANTS if n in args.contestants], args.arch, size,
                                    args.batch_size, args.threads, hidden)
            payload["sizes"][str(size)] = {"memory": memory, "ratios": ratios({}, memory)}
            write_json(args.out, payload)
            for name, value in memory.items():
                print(f"{size}px {name:>22}: peak +{value['peak_growth_mib']:.0f} MiB over {value['base_mib']:.0f} MiB")
        return payload
    if not args.no_ema:
        ema = time_ema(args.arch, args.ema_repeats, hidden)
        payload["ema_seconds"] = ema
        payload["d_ema_speedup_vs_inplace_loop"] = ema["inplace-loop"] / ema["fused"]
        payload["d_ema_speedup_vs_byol_pytorch_loop"] = ema["byol-pytorch-loop"] / ema["fused"]
        print(f"EMA: fused {1e3 * ema['fused']:.2f} ms, in-place loop {1e3 * ema['inplace-loop']:.2f} ms, "
              f"byol-pytorch loop {1e3 * ema['byol-pytorch-loop']:.2f} ms", flush=True)
    for size in args.sizes:
        if args.augment_stages:
            stages = augment_stage_times(size, args.batch_size, args.augment_stages)
            payload.setdefault("augment_stage_ms", {})[str(size)] = stages
            print(f"{size}px augmentation stages (ms): {json.dumps(stages)}", flush=True)
        times = time_steps(args.contestants, args.arch, size, args.batch_size, args.steps, args.warmup, hidden)
        medians = {name: median(values) for name, values in times.items()}
        minimums = {name: min(values) for name, values in times.items()}
        memory = {} if args.no_memory else measure_memory(
            [n for n in MEMORY_CONTESTANTS if n in args.contestants], args.arch, size, args.batch_size, args.threads, hidden)
        payload["sizes"][str(size)] = {"median_seconds": medians, "min_seconds": minimums, "all_seconds": times,
                                       "memory": memory, "ratios": ratios(medians, memory),
                                       "ratios_of_minimums": ratios(minimums, memory),
                                       "paired_ratios": paired_ratios(times),
                                       "load_average_after": _load_average()}
        write_json(args.out, payload)
        print(f"--- {args.arch} {size}px batch {args.batch_size}")
        for name, value in medians.items():
            mem = f", peak +{memory[name]['peak_growth_mib']:.0f} MiB" if name in memory else ""
            print(f"{name:>22}: {1e3 * value:8.1f} ms{mem}")
        for key, value in payload["sizes"][str(size)]["ratios"].items():
            print(f"{key:>40}: {value:.3f}")
        for key, value in payload["sizes"][str(size)]["paired_ratios"].items():
            print(f"{key:>40}: paired median {value['median']:.3f} (quartiles {value['q1']:.3f}-{value['q3']:.3f})")
        sys.stdout.flush()
    return payload


if __name__ == "__main__":
    main()
