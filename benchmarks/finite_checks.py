"""What the finite checks cost per training step (``BYOL(check_finite=True)``, the default).

Two learners, identical but for ``check_finite``, run full training steps (default
augmentations, both views through online and target, backward, Adam, EMA update) in
interleaved rounds (order alternating), so a load change on the machine hits both alike;
reported is the median over rounds of the ratio of round times, checks on / off. Because a
ratio of ~1.00 is within the noise of a shared machine, the checks are also timed on their
own (input check, BatchNorm snapshot, loss check, EMA weight check, each at the step's real
tensors): that figure in milliseconds is the cost per step, the ratio confirms it.

The EMA part (issue 18) times the target update over ResNet-18 + projector parameters as
``BYOL.update_moving_average`` does it, fused ``ema_update_`` with the finite-weight check
(``checks.all_finite``), against per-parameter loops (byol-pytorch's ``t.data = t.data * tau
+ (1 - tau) * o.data``, and an in-place ``mul_``/``add_`` loop), the fused update without any
check, and with the previous check (a ``torch.aminmax`` per tensor). The contestants run in
interleaved rounds (order reversed every other round); reported are medians and the median
(quartiles) of the per-round ratios loop / contestant.

Usage:
    python -m benchmarks.finite_checks --out benchmarks/results/finite_checks/cpu.json
    python -m benchmarks.finite_checks --ema-only --ema-rounds 60 --out benchmarks/results/finite_checks/ema.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch
import torchvision
from torch import nn

from benchmarks.common import SmallCNN
from byol_wrap import BYOL
from byol_wrap.core import checks
from byol_wrap.core.ema import ema_update_
from byol_wrap.core.heads import MLP
from byol_wrap.job.io import atomic_write_text


def models() -> Dict[str, Callable[[], nn.Module]]:
    return {
        "small_cnn_w32": lambda: SmallCNN(32),
        "resnet18": lambda: torchvision.models.resnet18(),
    }


HIDDEN = {"small_cnn_w32": "flatten", "resnet18": "avgpool"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make(name: str, check_finite: bool, image_size: int, device: torch.device, hidden_size: int = 4096):
    torch.manual_seed(0)
    learner = BYOL(models()[name](), image_size=image_size, hidden_layer=HIDDEN[name],
                   projection_hidden_size=hidden_size, check_finite=check_finite).to(device)
    return learner, torch.optim.Adam(learner.parameters(), lr=3e-4)


def step(learner: BYOL, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    loss = learner(x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    learner.update_moving_average()


def time_checks_alone(learner: BYOL, x: torch.Tensor, repeats: int, device: torch.device) -> Dict[str, float]:
    """Milliseconds per call of each check on this learner's real tensors."""
    loss = learner(x).detach()
    online = learner.online_parameters()
    named = list(learner.named_parameters())
    parts: Dict[str, Callable[[], Any]] = {
        "input_check": lambda: checks.check_input_batch(x.float() if not x.is_floating_point() else x),
        "batchnorm_snapshot": lambda: [t.clone() for t in checks.batchnorm_buffers(learner)],
        "loss_check": lambda: checks.check_loss(loss, named),
        "ema_weight_check": lambda: checks.all_finite(online),
    }
    out = {}
    for name, fn in parts.items():
        fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        out[name] = (time.perf_counter() - start) / repeats * 1e3
    out["total"] = sum(out.values())
    return out


def measure(name: str, batch_size: int, image_size: int, rounds: int, steps_per_round: int,
            device: torch.device, hidden_size: int = 4096) -> Dict[str, Any]:
    on, opt_on = make(name, True, image_size, device, hidden_size)
    off, opt_off = make(name, False, image_size, device, hidden_size)
    x = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(1)).to(device)
    for learner, opt in ((on, opt_on), (off, opt_off)):  # warm-up
        step(learner, opt, x)
    times: Dict[bool, List[float]] = {True: [], False: []}
    ratios = []
    for r in range(rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        this_round = {}
        for checked in order:
            learner, opt = (on, opt_on) if checked else (off, opt_off)
            sync(device)
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step(learner, opt, x)
            sync(device)
            this_round[checked] = (time.perf_counter() - start) / steps_per_round
            times[checked].append(this_round[checked])
        ratios.append(this_round[True] / this_round[False])
    alone = time_checks_alone(on, x, 20, device)
    step_off_ms = statistics.median(times[False]) * 1e3
    return {
        "model": name, "batch_size": batch_size, "image_size": image_size, "device": str(device),
        "projection_hidden_size": hidden_size,
        "rounds": rounds, "steps_per_round": steps_per_round,
        "step_ms_checks_on": round(statistics.median(times[True]) * 1e3, 2),
        "step_ms_checks_off": round(step_off_ms, 2),
        "median_ratio_on_off": round(statistics.median(ratios), 4),
        "ratio_quartiles": [round(q, 4) for q in statistics.quantiles(ratios, n=4)] if len(ratios) > 1 else ratios,
        "checks_alone_ms": {k: round(v, 3) for k, v in alone.items()},
        "checks_alone_percent_of_step": round(100 * alone["total"] / step_off_ms, 3),
    }


def aminmax_check(tensors: List[torch.Tensor]) -> bool:
    """The weight check before issue 18: a min/max and a stack per tensor, one sync per device."""
    by_device: Dict[torch.device, List[torch.Tensor]] = {}
    for t in tensors:
        if t.is_floating_point() and t.numel():
            by_device.setdefault(t.device, []).append(torch.stack(torch.aminmax(t.detach())).float())
    return all(bool(torch.isfinite(torch.stack(group)).all()) for group in by_device.values())


def quartiles(values: List[float]) -> List[float]:
    return [round(q, 3) for q in statistics.quantiles(values, n=4)] if len(values) > 1 else values


def measure_ema(rounds: int, device: torch.device, hidden_size: int = 4096) -> Dict[str, Any]:
    """The EMA update with and without the finite check, against per-parameter loops (interleaved)."""
    torch.manual_seed(0)
    online = list(torchvision.models.resnet18().parameters())
    online += list(MLP(512, hidden_dim=hidden_size, output_dim=256).parameters())
    online = [nn.Parameter(p.detach().to(device)) for p in online]
    target = [p.detach().clone() for p in online]
    lucid_target = [nn.Parameter(p.detach().clone(), requires_grad=False) for p in online]
    loop_target = [p.detach().clone() for p in online]
    tau = 0.996

    def fused_checked() -> None:  # what BYOL.update_moving_average runs with check_finite=True
        if not checks.all_finite(online):
            raise RuntimeError("non-finite weights in the benchmark")
        ema_update_(target, online, tau)

    def fused_aminmax() -> None:
        if not aminmax_check(online):
            raise RuntimeError("non-finite weights in the benchmark")
        ema_update_(target, online, tau)

    def fused() -> None:
        ema_update_(target, online, tau)

    def check_alone() -> None:
        checks.all_finite(online)

    def aminmax_check_alone() -> None:
        aminmax_check(online)

    def byol_pytorch_loop() -> None:
        for o, t in zip(online, lucid_target):
            t.data = t.data * tau + (1 - tau) * o.data

    @torch.no_grad()
    def inplace_loop() -> None:
        for t, o in zip(loop_target, online):
            t.mul_(tau).add_(o, alpha=1 - tau)

    contestants: Dict[str, Callable[[], Any]] = {
        "fused_with_check": fused_checked, "byol_pytorch_loop": byol_pytorch_loop, "inplace_loop": inplace_loop,
        "fused_without_check": fused, "fused_with_aminmax_check": fused_aminmax, "check_alone": check_alone,
        "aminmax_check_alone": aminmax_check_alone,
    }
    for fn in contestants.values():  # warm-up
        fn()
    times: Dict[str, List[float]] = {name: [] for name in contestants}
    for r in range(rounds):
        order = list(contestants.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)

    def ratios(loop: str, contestant: str) -> List[float]:
        return [a / b for a, b in zip(times[loop], times[contestant])]

    result: Dict[str, Any] = {
        "parameters": sum(p.numel() for p in online), "tensors": len(online), "device": str(device),
        "rounds": rounds, "median_ms": {k: round(statistics.median(v) * 1e3, 3) for k, v in times.items()},
    }
    for loop in ("byol_pytorch_loop", "inplace_loop"):
        for contestant in ("fused_with_check", "fused_without_check", "fused_with_aminmax_check"):
            values = ratios(loop, contestant)
            result[f"{loop}/{contestant}"] = {"median": round(statistics.median(values), 3),
                                              "quartiles": quartiles(values)}
    for check in ("check_alone", "aminmax_check_alone"):
        share = [c / f for c, f in zip(times[check], times["fused_without_check"])]
        result[f"{check}/fused_without_check"] = {"median": round(statistics.median(share), 3),
                                                  "quartiles": quartiles(share)}
    return result


def cpu_model() -> str:
    """The CPU's model name as lscpu shows it (from /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Any = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(models()), choices=list(models()))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--projection-hidden-size", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ema-rounds", type=int, default=40, help="rounds of the EMA comparison (0: skip it)")
    parser.add_argument("--ema-only", action="store_true", help="only the EMA comparison, no training steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [] if args.ema_only else [
        measure(m, args.batch_size, args.image_size, args.rounds, args.steps_per_round, device,
                args.projection_hidden_size) for m in args.models]
    payload: Dict[str, Any] = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start, "
                   f"torch.get_num_threads()={torch.get_num_threads()}, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "command": " ".join([os.path.basename(sys.executable), "benchmarks/finite_checks.py", *sys.argv[1:]]),
        "results": results,
    }
    if args.ema_rounds > 0:
        payload["ema"] = measure_ema(args.ema_rounds, device, args.projection_hidden_size)
    text = json.dumps(payload, indent=2) + "\n"
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
