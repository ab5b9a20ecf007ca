"""Runs under torchrun for tests/test_distributed.py (not collected by pytest itself).

Each rank writes what it observed to ``--out``; the test process compares the ranks.

1. ``examples/scaleout/ddp_torchrun.py`` trains a few steps (DDP without find_unused_parameters).
2. Control: DDP around a learner whose unused-parameter list was emptied must fail.
3. SyncBatchNorm in backbone (convert_sync_batchnorm), projector and predictor
   (``sync_batchnorm=True``): DDP on 2 ranks x B against one process on the 2B images.
   torch has SyncBatchNorm kernels only for GPUs (``nn.SyncBatchNorm`` raises on CPU
   inputs, and DistributedDataParallel refuses SyncBatchNorm layers in a CPU module), so
   on CPU its forward is replaced by :func:`cpu_sync_batchnorm_forward`, written here from
   the definition of cross-process batch normalisation, and DDP's device check is
   skipped; on GPUs the real ``nn.SyncBatchNorm`` runs.
4. ``examples/scaleout/lightning_byol.py`` with Lightning's DDP strategy in the same processes.
"""
from __future__ import annotations

import argparse
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from byol_wrap import BYOL, unwrap

import ddp_torchrun  # examples/scaleout, on the PYTHONPATH that test_distributed.py sets
from scaleout_common import TinyCNN

EXAMPLE_ARGS = ["--synthetic", "64", "--arch", "tiny", "--image-size", "16", "--batch-size", "8",
                "--max-steps", "3", "--projection-hidden-size", "32", "--projection-size", "16", "--log-every", "1"]


def cpu_sync_batchnorm_forward(self: nn.SyncBatchNorm, x: Tensor) -> Tensor:
    """Batch normalisation over the union of every rank's batch, differentiable (CPU stand-in).

    mean and (biased) variance are sums over all ranks divided by the total count; the
    differentiable all_reduce sends each rank's gradient contributions to the others,
    as SyncBatchNorm's backward does. Running statistics use the unbiased variance.
    """
    if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
        return _BatchNorm.forward(self, x)
    channels = x.shape[1]
    dims = [0, *range(2, x.ndim)]
    shape = (1, channels) + (1,) * (x.ndim - 2)
    count = torch.tensor([x.numel() / channels], dtype=x.dtype)
    sums = dist_fn.all_reduce(torch.cat([x.sum(dims), count]))
    total = sums[-1]
    mean = sums[:channels] / total
    var = dist_fn.all_reduce((x - mean.view(shape)).pow(2).sum(dims)) / total
    if self.track_running_stats:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * total / (total - 1), self.momentum)
    y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    return y * self.weight.view(shape) + self.bias.view(shape)


def part_example(out: str, rank: int, world: int, device: torch.device) -> None:
    model = ddp_torchrun.train(ddp_torchrun.parse_args(EXAMPLE_ARGS), rank, world, device)
    learner = unwrap(model)
    torch.save(
        {
            "params": {k: v.detach().cpu() for k, v in learner.named_parameters()},
            "buffers": {k: v.detach().cpu() for k, v in learner.named_buffers()},
            "ema_step": learner.ema_step,
            "head_norms": sorted({type(m).__name__ for m in (*learner.projector, *learner.predictor)
                                  if isinstance(m, _BatchNorm)}),
            "find_unused_parameters": model.find_unused_parameters,
            "parameters_to_ignore": sorted(model.parameters_to_ignore),
        },
        os.path.join(out, f"example_rank{rank}.pt"),
    )


def part_control(out: str, rank: int, device: torch.device) -> None:
    torch.manual_seed(0)
    learner = BYOL(TinyCNN().to(device), image_size=16, hidden_layer="pool", projection_size=16,
                   projection_hidden_size=32)
    learner._ddp_params_and_buffers_to_ignore = []
    model = DistributedDataParallel(learner, device_ids=[device.index] if device.type == "cuda" else None)
    x = torch.rand(4, 3, 16, 16, device=device)
    error = ""
    try:
        for _ in range(2):
            model(x).backward()
    except RuntimeError as e:
        error = str(e)
    torch.save({"error": error}, os.path.join(out, f"control_rank{rank}.pt"))


def build_syncbn_pair(device: torch.device, synced_views: str = "auto", plain_views: str = "auto"):
    """(learner with SyncBatchNorm everywhere, the same weights with plain BatchNorm), with the
    given ``view_batching`` each."""
    kwargs = dict(image_size=16, hidden_layer="pool", projection_size=16, projection_hidden_size=32,
                  augment_fn=lambda x: x, augment_fn2=lambda x: x.flip(-1), normalize=None)
    torch.manual_seed(1)
    synced = BYOL(TinyCNN().to(device), sync_batchnorm=True, view_batching=synced_views, **kwargs)
    torch.manual_seed(1)
    plain = BYOL(TinyCNN().to(device), sync_batchnorm=False, view_batching=plain_views, **kwargs)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(synced)
    return synced, plain


def part_syncbn(out: str, rank: int, world: int, device: torch.device, name: str = "syncbn",
                synced_views: str = "auto", plain_views: str = "auto") -> None:
    saved = nn.SyncBatchNorm.forward, DistributedDataParallel._passing_sync_batchnorm_handle
    if device.type == "cpu":
        nn.SyncBatchNorm.forward = cpu_sync_batchnorm_forward
        DistributedDataParallel._passing_sync_batchnorm_handle = lambda self, module: None
    try:
        _compare_syncbn(out, rank, world, device, name, synced_views, plain_views)
    finally:
        nn.SyncBatchNorm.forward, DistributedDataParallel._passing_sync_batchnorm_handle = saved


def _compare_syncbn(out: str, rank: int, world: int, device: torch.device, name: str, synced_views: str,
                    plain_views: str) -> None:
    synced, reference = build_syncbn_pair(device, synced_views, plain_views)
    norm_types = {name: type(m).__name__ for name, m in synced.named_modules() if isinstance(m, _BatchNorm)}
    model = DistributedDataParallel(synced, device_ids=[device.index] if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(2)
    batches = [torch.rand(2 * 4, 3, 16, 16, generator=generator).to(device) for _ in range(2)]
    opt_ddp = torch.optim.SGD(model.parameters(), lr=0.5)
    opt_ref = torch.optim.SGD(reference.parameters(), lr=0.5)
    record = {"norm_types": norm_types, "steps": []}
    for full in batches:
        mine = full[rank * 4:(rank + 1) * 4]  # this rank's B of the 2B images
        loss = model(mine)
        opt_ddp.zero_grad()
        loss.backward()  # DDP averages gradients over the ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        ref_loss = reference(full)  # one process, all 2B images
        opt_ref.zero_grad()
        ref_loss.backward()
        record["steps"].append({
            "loss": mean_loss.item() / world,
            "ref_loss": ref_loss.item(),
            "grads": {k: p.grad.detach().cpu().clone() for k, p in synced.named_parameters() if p.grad is not None},
            "ref_grads": {k: p.grad.detach().cpu().clone() for k, p in reference.named_parameters()
                          if p.grad is not None},
        })
        opt_ddp.step()
        opt_ref.step()
        synced.update_moving_average()
        reference.update_moving_average()
    record["state"] = {k: v.detach().cpu() for k, v in synced.state_dict().items() if isinstance(v, Tensor)}
    record["ref_state"] = {k: v.detach().cpu() for k, v in reference.state_dict().items() if isinstance(v, Tensor)}
    torch.save(record, os.path.join(out, f"{name}_rank{rank}.pt"))


def part_lightning(out: str, rank: int) -> None:
    """examples/scaleout/lightning_byol.py with Lightning's DDP strategy inside these torchrun processes."""
    import lightning

    import lightning_byol

    seen = {}

    class RecordWrapper(lightning.Callback):
        def on_train_start(self, trainer, module):
            wrapper = trainer.strategy.model
            seen.update(wrapper=type(wrapper).__name__,
                        find_unused_parameters=getattr(wrapper, "find_unused_parameters", None),
                        parameters_to_ignore=sorted(getattr(wrapper, "parameters_to_ignore", [])))

    trainer, module = lightning_byol.main(
        ["--synthetic", "64", "--arch", "tiny", "--image-size", "16", "--batch-size", "4", "--projection-size", "16",
         "--projection-hidden-size", "32", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp",
         "--max-steps", "2"],
        callbacks=[RecordWrapper()])
    torch.save(
        dict(seen, params={k: v.detach().cpu() for k, v in module.learner.named_parameters()},
             ema_step=module.learner.ema_step, global_step=trainer.global_step, world_size=trainer.world_size),
        os.path.join(out, f"lightning_rank{rank}.pt"),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--parts", default="example,control,syncbn,onepass,lightning")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="torch has no SyncBatchNorm for CPU")
    rank, world, device = ddp_torchrun.init_distributed()
    try:
        parts = args.parts.split(",")
        if "example" in parts:
            part_example(args.out, rank, world, device)
        if "control" in parts:
            part_control(args.out, rank, device)
        if "syncbn" in parts:
            part_syncbn(args.out, rank, world, device)
        if "onepass" in parts:  # both views in one batch, SyncBatchNorm synced per view, vs one forward per view
            part_syncbn(args.out, rank, world, device, "onepass", synced_views="one_pass", plain_views="per_view")
        if "lightning" in parts:
            part_lightning(args.out, rank)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
