"""The processes of a run: rank, world size and device under torchrun, and the collectives the run needs.

Without torchrun (``WORLD_SIZE`` unset) every collective is the identity, so the same code runs in one process.

Example:
    >>> world = World("cpu")
    >>> world.main, world.size, world.gather("x"), world.mean(2.0)
    (True, 1, ['x'], 2.0)
"""
from __future__ import annotations

import os
from typing import Any, List, Optional

import torch

from .checkpoint import RunError


class World:
    """torchrun's environment: rank, world size, the device of this process."""

    def __init__(self, device: Optional[str]) -> None:
        import torch.distributed as dist

        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.size > 1
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except RuntimeError as error:
            raise RunError(f"--device {device!r} is not a device torch knows (cpu, cuda, cuda:1, mps...)") from error
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RunError(f"--device {device} asked for, but torch sees no CUDA device here; use --device cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.local_rank if self.distributed else torch.cuda.current_device())
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.initialised_here = False
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.initialised_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def gather(self, obj: Any) -> List[Any]:
        """``obj`` of every rank (rank order); ``[obj]`` without torchrun."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        objects: List[Any] = [None] * self.size
        dist.all_gather_object(objects, obj)
        return objects

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one."""
        if not self.distributed:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(value)
        return bool(value.item() > 0)

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (``value`` itself without torchrun)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(total)
        return float(total.item()) / self.size

    def close(self) -> None:
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()
