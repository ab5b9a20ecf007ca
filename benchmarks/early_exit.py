"""How much early exit saves when the representation is taken from an inner layer.

For each net, one BYOL learner runs full training steps (default augmentations, two
views through the online and the target network, backward, SGD step, EMA update) with
``early_exit`` on and off, alternating, in the same process; the reported figure is the
ratio of the median step times. Before timing, one step is run both ways from the same
seed and the losses and every gradient are compared for exact equality.

Usage:
    python -m benchmarks.early_exit                      # prints a markdown report
    python -m benchmarks.early_exit --out benchmarks/results/early_exit/early_exit.md   # appends to the file
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch
import torchvision
from torch import Tensor, nn

from byol_wrap import BYOL


class TrunkWithHeavyHead(nn.Module):
    """A cheap convolutional trunk (the representation) under an expensive dense head,
    like a segmentation or detection model whose backbone is what you pretrain."""

    def __init__(self, head_width: int = 256, head_depth: int = 6) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.trunk = nn.Sequential(block(3, 32, 2), block(32, 64, 2), block(64, 128, 1))
        layers: List[nn.Module] = [block(128, head_width, 1)]
        layers += [block(head_width, head_width, 1) for _ in range(head_depth - 1)]
        self.head = nn.Sequential(*layers, nn.Conv2d(head_width, 21, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.trunk(x))


def nets(image_size: int) -> Dict[str, Tuple[Callable[[], nn.Module], str, str]]:
    """name -> (constructor, hidden_layer, what early exit skips)."""
    table = {
        "trunk + heavy head (custom)": (TrunkWithHeavyHead, "trunk", "6 conv layers of 256 channels + classifier"),
        "torchvision resnet18": (torchvision.models.resnet18, "layer2", "layer3, layer4, fc"),
    }
    try:
        import timm

        table["timm vit_tiny_patch16_224"] = (
            lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image_size),
            "blocks.5", "blocks 6-11, norm, head",
        )
    except ImportError:  # timm is optional here
        pass
    return table


def identical_step(learner: BYOL, images: Tensor) -> bool:
    """Loss and every gradient bit-identical with and without early exit, same seed."""
    results = []
    for early_exit in (True, False):
        learner.extractor.early_exit = early_exit
        learner.zero_grad(set_to_none=True)
        torch.manual_seed(123)
        loss = learner(images)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() if p.grad is not None else None for p in learner.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    same_grads = all(
        (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b))
        for a, b in zip(grads_a, grads_b)
    )
    return bool(torch.equal(loss_a, loss_b)) and same_grads


def time_steps(learner: BYOL, images: Tensor, repeats: int, warmup: int) -> Dict[bool, List[float]]:
    """Step times (s) for early_exit on/off, alternating the order every repeat."""
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.01)
    times: Dict[bool, List[float]] = {True: [], False: []}
    for rep in range(warmup + repeats):
        for early_exit in ((True, False) if rep % 2 == 0 else (False, True)):
            learner.extractor.early_exit = early_exit
            start = time.perf_counter()
            loss = learner(images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            learner.update_moving_average()
            if rep >= warmup:
                times[early_exit].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=None, help="also write the markdown report here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    images = torch.rand(args.batch_size, 3, args.image_size, args.image_size)
    command = "python -m benchmarks.early_exit " + " ".join(sys.argv[1:])
    lines = [
        "## Early exit",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {os.cpu_count()}-core CPU, shared with other jobs, noisy; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}.  ",
        f"One BYOL training step (default augmentations, batch {args.batch_size}, {args.image_size}x{args.image_size}, "
        f"projector 4096-256, SGD, EMA), median of {args.repeats} steps per setting, settings alternated "
        f"in one process.",
        "",
        "| net | hidden_layer | skipped by early exit | step, early exit (ms) | step, full net (ms) | "
        "speed-up | loss and gradients identical |",
        "| --- | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for name, (make, layer, skipped) in nets(args.image_size).items():
        torch.manual_seed(0)
        learner = BYOL(make(), image_size=args.image_size, hidden_layer=layer)
        same = identical_step(learner, images[: min(8, args.batch_size)])
        times = time_steps(learner, images, args.repeats, args.warmup)
        early, full = statistics.median(times[True]), statistics.median(times[False])
        row = (f"| {name} | `{layer}` | {skipped} | {early * 1e3:.0f} | {full * 1e3:.0f} | "
               f"{full / early:.2f}x | {'yes' if same else 'NO'} |")
        lines.append(row)
        print(row, flush=True)
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as handle:  # appends, so several runs can share one file
            handle.write(report)


if __name__ == "__main__":
    main()
