"""What the finite checks cost per training step (``BYOL(check_finite=True)``, the default).

Two learners, identical but for ``check_finite``, run full training steps (default
augmentations, both views through online and target, backward, Adam, EMA update) in
interleaved rounds (order alternating), so a load change on the machine hits both alike;
reported is the median over rounds of the ratio of round times, checks on / off. Because a
ratio of ~1.00 is within the noise of a shared machine, the checks are also timed on their
own (input check, BatchNorm snapshot, loss check, EMA weight check, each at the step's real
tensors): that figure in milliseconds is the cost per step, the ratio confirms it.

Usage:
    python -m benchmarks.finite_checks --out benchmarks/results/finite_checks/cpu.json
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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [measure(m, args.batch_size, args.image_size, args.rounds, args.steps_per_round, device,
                       args.projection_hidden_size) for m in args.models]
    payload = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"torch.get_num_threads()={torch.get_num_threads()}, torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "command": " ".join([os.path.basename(sys.executable), "benchmarks/finite_checks.py", *sys.argv[1:]]),
        "results": results,
    }
    text = json.dumps(payload, indent=2) + "\n"
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
