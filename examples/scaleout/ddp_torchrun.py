"""BYOL with torchrun and DistributedDataParallel: NCCL on GPUs, gloo on CPU.

One process per GPU on one machine:

    torchrun --standalone --nproc_per_node=8 examples/scaleout/ddp_torchrun.py --data cifar10_small.npz --batch-size 256

Two CPU processes (gloo), a smoke test of the whole stack on random images:

    torchrun --standalone --nproc_per_node=2 examples/scaleout/ddp_torchrun.py --synthetic 256 --arch tiny \\
        --batch-size 16 --projection-hidden-size 64 --max-steps 5

Several machines (the same command on each; HOST is the first machine's address):

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-id=byol --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        examples/scaleout/ddp_torchrun.py --data cifar10_small.npz --batch-size 256

What matters for BYOL under DDP (each point is marked in the code below):

1. Build the learner after ``init_process_group``, from the same seed on every rank.
   ``sync_batchnorm=None`` then gives the projector and predictor SyncBatchNorm (with more
   than one process; on CPU, where torch has no SyncBatchNorm, per-process statistics).
2. On GPUs, ``nn.SyncBatchNorm.convert_sync_batchnorm`` also syncs the backbone's
   BatchNorm (online and target), as in the paper.
3. ``DistributedDataParallel(learner)`` needs no ``find_unused_parameters=True``: the
   learner lists the backbone parameters it leaves unused (e.g. ``fc``) in
   ``_ddp_params_and_buffers_to_ignore``, which DDP reads.
4. ``byol_wrap.unwrap(model).update_moving_average()`` after every optimizer step, on
   every rank, so the targets stay identical.
5. The learning rate scales with the global batch (per-process batch x processes).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import socket
import time
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from byol_wrap import BYOL, paper_optimizer_and_scheduler, unwrap

# scaleout_common.py sits next to this script (a script's folder is on sys.path when it runs)
from scaleout_common import add_common_args, build_backbone, load_images, total_steps

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none", help="torch.autocast dtype")
    parser.add_argument("--backend", default=None, help="nccl or gloo (default: nccl with CUDA, else gloo)")
    parser.add_argument("--log-every", type=int, default=10)
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: Optional[str] = None) -> Tuple[int, int, torch.device]:
    """``(rank, world_size, device)`` after ``init_process_group`` from torchrun's environment.

    Run without torchrun, it starts a group of one process (handy for debugging).
    """
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"))
    return dist.get_rank(), dist.get_world_size(), device


def build_model(args: argparse.Namespace, device: torch.device, steps: int) -> DistributedDataParallel:
    """The learner, with SyncBatchNorm where torch supports it, wrapped in DDP."""
    torch.manual_seed(args.seed)  # (1) the same initial weights on every rank
    net, hidden_layer = build_backbone(args.arch)
    learner = BYOL(
        net.to(device),
        image_size=args.image_size,
        hidden_layer=hidden_layer,
        projection_size=args.projection_size,
        projection_hidden_size=args.projection_hidden_size,
        total_steps=steps,  # the tau schedule spans the same steps as the learning rate
    )
    if device.type == "cuda":
        learner = nn.SyncBatchNorm.convert_sync_batchnorm(learner)  # (2) the backbone's BatchNorm too
    # (3) no find_unused_parameters=True needed
    return DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None)


def train(args: argparse.Namespace, rank: int, world_size: int, device: torch.device) -> DistributedDataParallel:
    """Train for ``--epochs`` (or ``--max-steps``) and return the DDP-wrapped learner."""
    dataset = load_images(args.data, args.synthetic, args.image_size, args.seed)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True,
                        num_workers=args.workers, pin_memory=device.type == "cuda")
    steps = total_steps(len(loader), args.epochs, args.max_steps)
    model = build_model(args, device, steps)
    optimizer, scheduler = paper_optimizer_and_scheduler(  # (5) the global batch sets the learning rate
        model, batch_size=args.batch_size * world_size, total_steps=steps, warmup_steps=args.warmup_steps,
        base_lr=args.base_lr,
    )
    amp_dtype = AMP_DTYPES[args.amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(args.seed + rank)  # different augmentations on every rank
    if rank == 0:
        print(f"{world_size} process(es) on {device.type}, {steps} steps of {args.batch_size} x {world_size} images")

    step, start = 0, time.time()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        for (images,) in loader:
            images = images.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                loss = model(images)  # float32 even under autocast
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            tau = unwrap(model).update_moving_average()  # (4) every rank, once per optimizer step
            step += 1
            if step % args.log_every == 0 or step == steps:
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                if rank == 0:
                    print(f"step {step}/{steps}  loss {mean_loss.item() / world_size:.4f}  tau {tau:.5f}  "
                          f"lr {scheduler.get_last_lr()[0]:.4g}  {time.time() - start:.1f}s", flush=True)
            if step >= steps:
                break
        if step >= steps:
            break

    if rank == 0 and args.out:
        os.makedirs(args.out, exist_ok=True)
        learner = unwrap(model)
        torch.save(learner.net.state_dict(), os.path.join(args.out, "encoder.pt"))
        torch.save({"learner": learner.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict()}, os.path.join(args.out, "checkpoint.pt"))
        print(f"saved {args.out}/encoder.pt and checkpoint.pt")
    return model


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    rank, world_size, device = init_distributed(args.backend)
    try:
        train(args, rank, world_size, device)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
