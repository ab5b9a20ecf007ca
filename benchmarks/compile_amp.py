"""Step time of a BYOL training step under torch.compile, channels_last and bf16 autocast.

Variants: ``eager`` (float32), ``channels_last`` (learner and images), ``bf16``
(``torch.autocast`` with bfloat16), ``compile`` (``torch.compile(learner)``, inductor), and
``compile-nohook``: the backbone's ``fc`` replaced by ``nn.Identity`` and read at its output
(``hidden_layer=-1``), so that no temporary hook breaks the compiled graph.

A step is what a training loop does per batch: both augmented views, online and target
forward passes, the loss, backward, an optimizer step and the EMA update. Every variant
trains its own copy of the same learner on the same random uint8 images (the images'
content does not change the time). Variants run in interleaved rounds so that a busy
machine slows them alike; the table reports the median step time of each and its ratio to
eager float32, measured in the same process.

    python -m benchmarks.compile_amp --arch resnet18 --image-size 32 --batch-size 64 \\
        --machine "2-core CPU, shared, noisy" --out benchmarks/results/compile_amp/compile_amp.md
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torchvision

from byol_wrap import BYOL, unwrap

VARIANTS = ("eager", "channels_last", "bf16", "compile", "compile+channels_last", "compile-nohook",
            "compile-nohook+channels_last")


def without_hook(learner: BYOL) -> BYOL:
    """The same backbone with its classifier replaced by ``nn.Identity``, read at its output
    (``hidden_layer=-1``): no temporary hook, hence fewer graph breaks under torch.compile."""
    net = copy.deepcopy(learner.net)
    net.fc = torch.nn.Identity()
    return BYOL(net, image_size=learner.input_shape[1:], hidden_layer=-1,
                projection_size=learner.projector[-1].out_features,
                projection_hidden_size=learner.projector[0].out_features)


def make_step(learner: BYOL, variant: str, device: torch.device) -> Callable[[torch.Tensor], float]:
    """A closure running one training step of ``variant`` on its own copy of ``learner``."""
    learner = without_hook(learner) if "nohook" in variant else copy.deepcopy(learner)
    channels_last = "channels_last" in variant
    if channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    model = torch.compile(learner) if variant.startswith("compile") else learner
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.01, momentum=0.9)
    autocast = variant == "bf16"

    def step(images: torch.Tensor) -> float:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = model(images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        unwrap(model).update_moving_average()
        return loss.item()

    return step


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--projection-hidden-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--machine", default="unspecified machine", help="described in the output")
    parser.add_argument("--out", default=None, help="markdown file for the table")
    parser.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    net = getattr(torchvision.models, args.arch)(weights=None).to(device)
    learner = BYOL(net, image_size=args.image_size, hidden_layer="avgpool",
                   projection_hidden_size=args.projection_hidden_size)
    images = torch.randint(0, 256, (args.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8,
                           device=device)

    steps: Dict[str, Callable[[torch.Tensor], float]] = {}
    first_step: Dict[str, float] = {}
    for variant in variants:  # the first call of a compiled variant compiles it
        steps[variant] = make_step(learner, variant, device)
        start = time.perf_counter()
        steps[variant](images)
        steps[variant](images)
        first_step[variant] = time.perf_counter() - start
        print(f"{variant}: first two steps {first_step[variant]:.1f}s", flush=True)

    times: Dict[str, List[float]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants:
            for _ in range(args.steps):
                start = time.perf_counter()
                steps[variant](images)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[variant].append(time.perf_counter() - start)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)

    base = statistics.median(times[variants[0]])
    command = "python -m benchmarks.compile_amp " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## BYOL step time: torch.compile, channels_last, bf16 autocast",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {args.machine}; {device.type}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}.",
        f"Setup: {args.arch} (random weights), {args.image_size}x{args.image_size} images, batch {args.batch_size}, "
        f"projector/predictor hidden size {args.projection_hidden_size}, the paper's augmentations, SGD + EMA; "
        f"median of {args.rounds} interleaved rounds x {args.steps} steps per variant.",
        "",
        f"| variant | median step (s) | vs {variants[0]} | min / max step (s) "
        f"| first two steps (s, incl. compilation) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for variant in variants:
        median = statistics.median(times[variant])
        lines.append(f"| {variant} | {median:.3f} | {median / base:.2f}x | {min(times[variant]):.3f} / "
                     f"{max(times[variant]):.3f} | {first_step[variant]:.1f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a" if args.append else "w") as f:
            f.write(("\n" if args.append else "") + table)


if __name__ == "__main__":
    main()
