"""BYOL with Hugging Face accelerate: one script for CPU, one GPU, many GPUs and machines.

Configure once (``accelerate config``) or pass the options on the command line:

    accelerate launch --multi_gpu --num_processes 8 --mixed_precision bf16 examples/scaleout/accelerate_byol.py \\
        --data cifar10_small.npz
    accelerate launch --multi_gpu --num_machines 2 --machine_rank 0 --main_process_ip HOST \\
        --main_process_port 29500 --num_processes 16 examples/scaleout/accelerate_byol.py --data cifar10_small.npz

CPU, a smoke test on random images, in one process or (gloo, via torchrun) in two:

    python examples/scaleout/accelerate_byol.py --cpu --synthetic 256 --arch tiny --batch-size 16 \\
        --projection-hidden-size 64 --max-steps 5 --accumulate 2
    torchrun --standalone --nproc_per_node=2 examples/scaleout/accelerate_byol.py --cpu --synthetic 256 --arch tiny \\
        --batch-size 16 --projection-hidden-size 64 --max-steps 5 --accumulate 2

What matters for BYOL with accelerate:

* ``accelerator.prepare`` may wrap the learner (DDP, mixed precision): the EMA goes
  through ``accelerator.unwrap_model(model).update_moving_average()`` (or
  ``byol_wrap.unwrap(model)``);
* under ``accelerator.accumulate`` the EMA and the learning-rate schedule advance only
  when ``accelerator.sync_gradients`` is true, i.e. once per optimizer step.
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional, Tuple

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from byol_wrap import BYOL, paper_optimizer_and_scheduler

# scaleout_common.py sits next to this script (a script's folder is on sys.path when it runs)
from scaleout_common import add_common_args, build_backbone, load_images, total_steps


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--cpu", action="store_true", help="run on CPU even with a GPU")
    parser.add_argument("--mixed-precision", default=None, choices=["no", "bf16", "fp16"],
                        help="default: accelerate's configuration")
    parser.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    parser.add_argument("--log-every", type=int, default=10)
    return parser.parse_args(argv)


def build(args: argparse.Namespace):
    """``(accelerator, model, optimizer, scheduler, loader, steps)``, the model prepared by accelerate."""
    accelerator = Accelerator(gradient_accumulation_steps=args.accumulate, mixed_precision=args.mixed_precision,
                              cpu=args.cpu)
    set_seed(args.seed)  # the same initial weights in every process
    dataset = load_images(args.data, args.synthetic, args.image_size, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.workers)
    world_size = accelerator.num_processes
    steps = total_steps(len(dataset) // (args.batch_size * world_size) // args.accumulate, args.epochs, args.max_steps)
    net, hidden_layer = build_backbone(args.arch)
    # built after Accelerator() (which starts torch.distributed) and on its device, so that
    # sync_batchnorm=None gives SyncBatchNorm heads on multi-GPU runs
    learner = BYOL(
        net.to(accelerator.device),
        image_size=args.image_size,
        hidden_layer=hidden_layer,
        projection_size=args.projection_size,
        projection_hidden_size=args.projection_hidden_size,
        total_steps=steps,
    )
    optimizer, scheduler = paper_optimizer_and_scheduler(
        learner, batch_size=args.batch_size * world_size * args.accumulate, total_steps=steps,
        warmup_steps=args.warmup_steps, base_lr=args.base_lr,
    )
    # the scheduler stays outside prepare(): it is stepped by hand once per optimizer step
    model, optimizer, loader = accelerator.prepare(learner, optimizer, loader)
    return accelerator, model, optimizer, scheduler, loader, steps


def train(accelerator: Accelerator, model, optimizer, scheduler, loader, steps: int, args: argparse.Namespace) -> int:
    """The training loop; returns the number of optimizer steps taken."""
    torch.manual_seed(args.seed + accelerator.process_index)  # different augmentations per process
    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device}, {steps} optimizer steps")
    step = 0
    for _ in range(args.epochs):
        for (images,) in loader:
            with accelerator.accumulate(model):
                loss = model(images)
                accelerator.backward(loss)
                optimizer.step()  # skipped by accelerate while accumulating
                optimizer.zero_grad()
            if accelerator.sync_gradients:  # an optimizer step happened
                scheduler.step()
                tau = accelerator.unwrap_model(model).update_moving_average()
                step += 1
                if step % args.log_every == 0 or step == steps:
                    mean_loss = accelerator.reduce(loss.detach(), reduction="mean")
                    accelerator.print(f"step {step}/{steps}  loss {mean_loss.item():.4f}  tau {tau:.5f}")
                if step >= steps:
                    return step
    return step


def main(argv: Optional[List[str]] = None) -> Tuple[Accelerator, torch.nn.Module]:
    args = parse_args(argv)
    accelerator, model, optimizer, scheduler, loader, steps = build(args)
    train(accelerator, model, optimizer, scheduler, loader, steps, args)
    accelerator.wait_for_everyone()
    if args.out and accelerator.is_main_process:
        os.makedirs(args.out, exist_ok=True)
        learner = accelerator.unwrap_model(model)
        torch.save(learner.net.state_dict(), os.path.join(args.out, "encoder.pt"))
        torch.save(learner.state_dict(), os.path.join(args.out, "learner.pt"))
        accelerator.print(f"saved {args.out}/encoder.pt and learner.pt")
    return accelerator, model


if __name__ == "__main__":
    main()
