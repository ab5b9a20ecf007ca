"""BYOL as a PyTorch Lightning ``LightningModule``.

One GPU, or all GPUs of a machine with DDP (``--devices 8``; Lightning launches the processes):

    python examples/scaleout/lightning_byol.py --data cifar10_small.npz --devices 8 --sync-batchnorm \\
        --precision bf16-mixed

CPU, a smoke test on random images:

    python examples/scaleout/lightning_byol.py --synthetic 256 --arch tiny --accelerator cpu --batch-size 16 \\
        --projection-hidden-size 64 --max-steps 5 --accumulate 2

Several machines: the same command on each, with ``--num-nodes N`` and Lightning's cluster
environment (SLURM, or ``MASTER_ADDR``/``MASTER_PORT``/``NODE_RANK`` set by hand).

What matters for BYOL in Lightning:

* the target's EMA runs in ``optimizer_step``, after the optimizer stepped: Lightning calls
  that hook once per optimizer step, so with ``accumulate_grad_batches=k`` the EMA runs
  once every k batches, as the learning rate does;
* the target network and the EMA step count are part of the ``LightningModule``'s state,
  so Lightning checkpoints save and restore them (tau resumes where it stopped);
* Lightning's DDP wraps the ``LightningModule``, not the learner: the learner's list of
  unused backbone parameters is handed over with ``ddp_params_to_ignore``;
* ``Trainer(sync_batchnorm=True)`` (``--sync-batchnorm``, GPUs only) turns every
  BatchNorm of backbone, target and heads into SyncBatchNorm.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import lightning as L
import torch
from torch.utils.data import DataLoader

from byol_wrap import BYOL, ddp_params_to_ignore, paper_optimizer_and_scheduler

# scaleout_common.py sits next to this script (a script's folder is on sys.path when it runs)
from scaleout_common import add_common_args, build_backbone, load_images, total_steps


class LitBYOL(L.LightningModule):
    """BYOL pretraining of a backbone with the paper's LARS recipe.

    Args:
        total_steps: optimizer steps of the run (``Trainer(max_steps=...)``); the
            learning-rate and tau schedules both span them.
        batch_size: the global batch per optimizer step (per device x devices x
            accumulation), for the learning-rate scaling.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        image_size: int = 32,
        total_steps: int = 1000,
        batch_size: int = 256,
        base_lr: float = 0.2,
        warmup_steps: Optional[int] = None,
        projection_size: int = 256,
        projection_hidden_size: int = 4096,
        moving_average_decay: float = 0.996,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        net, hidden_layer = build_backbone(arch)
        self.learner = BYOL(
            net,
            image_size=image_size,
            hidden_layer=hidden_layer,
            projection_size=projection_size,
            projection_hidden_size=projection_hidden_size,
            moving_average_decay=moving_average_decay,
            total_steps=total_steps,
        )
        # Lightning's DDP wraps this module: tell it which backbone parameters BYOL never uses
        self._ddp_params_and_buffers_to_ignore = ddp_params_to_ignore(self)

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        loss = self.learner(images)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tau", self.learner.tau)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # runs once per optimizer step (not per batch under gradient accumulation)
        super().optimizer_step(*args, **kwargs)
        self.learner.update_moving_average()

    def configure_optimizers(self) -> Dict[str, Any]:
        optimizer, scheduler = paper_optimizer_and_scheduler(
            self.learner,
            batch_size=self.hparams.batch_size,
            total_steps=self.hparams.total_steps,
            warmup_steps=self.hparams.warmup_steps,
            base_lr=self.hparams.base_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    parser.add_argument("--devices", type=int, default=1, help="devices per machine")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--strategy", default="auto", help="auto, ddp, ddp_spawn, ...")
    parser.add_argument("--precision", default="32-true", help="32-true, bf16-mixed, 16-mixed")
    parser.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    parser.add_argument("--sync-batchnorm", action="store_true", help="SyncBatchNorm everywhere (GPUs)")
    parser.add_argument("--resume", default=None, help="a Lightning checkpoint to continue from")
    parser.add_argument("--log-every", type=int, default=10)
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None, callbacks: Optional[list] = None) -> Tuple[L.Trainer, LitBYOL]:
    """Train and return ``(trainer, module)``; ``callbacks`` are added to the Trainer."""
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    dataset = load_images(args.data, args.synthetic, args.image_size, args.seed)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)
    world_size = args.devices * args.num_nodes
    batches_per_process = len(dataset) // (args.batch_size * world_size)
    steps = total_steps(batches_per_process // args.accumulate, args.epochs, args.max_steps)
    module = LitBYOL(
        arch=args.arch,
        image_size=args.image_size,
        total_steps=steps,
        batch_size=args.batch_size * world_size * args.accumulate,
        base_lr=args.base_lr,
        warmup_steps=args.warmup_steps,
        projection_size=args.projection_size,
        projection_hidden_size=args.projection_hidden_size,
    )
    trainer = L.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=args.strategy,
        precision=args.precision,
        sync_batchnorm=args.sync_batchnorm,
        accumulate_grad_batches=args.accumulate,
        max_steps=steps,
        max_epochs=args.epochs,
        default_root_dir=args.out,
        logger=args.out is not None,
        enable_checkpointing=args.out is not None,
        enable_progress_bar=args.out is not None,
        enable_model_summary=False,
        log_every_n_steps=args.log_every,
        callbacks=callbacks,
    )
    trainer.fit(module, loader, ckpt_path=args.resume)
    if args.out and trainer.is_global_zero:
        torch.save(module.learner.net.state_dict(), os.path.join(args.out, "encoder.pt"))
        print(f"saved {args.out}/encoder.pt; Lightning checkpoints under {args.out}")
    return trainer, module


if __name__ == "__main__":
    main()
