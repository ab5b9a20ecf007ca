"""Projector and predictor heads: Linear -> BatchNorm1d -> ReLU -> Linear."""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn


def use_sync_batchnorm(sync_batchnorm: Optional[bool] = None, device: Optional[torch.device] = None) -> bool:
    """Resolve the ``sync_batchnorm`` option: ``None`` means "when distributed with >1 rank".

    With ``device`` on CPU, ``None`` resolves to ``False`` (with a warning when distributed):
    torch has no SyncBatchNorm kernels for CPU, and DistributedDataParallel refuses
    SyncBatchNorm layers in a CPU module.

    Example:
        >>> use_sync_batchnorm(False)
        False
    """
    if sync_batchnorm is not None:
        return bool(sync_batchnorm)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed and device is not None and torch.device(device).type == "cpu":
        warnings.warn(
            "torch has no SyncBatchNorm for CPU: the BYOL projector and predictor use BatchNorm1d with each "
            "process's own batch statistics. Build the learner on its GPU (BYOL(net.to(device), ...)) to sync them.",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return distributed


class MLP(nn.Sequential):
    """The paper's projector/predictor: ``Linear(dim, hidden) -> BN -> ReLU -> Linear(hidden, out)``.

    Args:
        dim: input size (the representation size for the projector, the projection size
            for the predictor).
        projection_size: output size (256 in the paper).
        hidden_size: hidden size (4096 in the paper).
        sync_batchnorm: use ``nn.SyncBatchNorm`` (``None``: only when torch.distributed is
            initialised with more than one rank).

    Example:
        >>> import torch
        >>> head = MLP(512, 256, 4096)
        >>> head(torch.randn(8, 512)).shape
        torch.Size([8, 256])
    """

    def __init__(
        self,
        dim: int,
        projection_size: int = 256,
        hidden_size: int = 4096,
        sync_batchnorm: Optional[bool] = None,
    ) -> None:
        for name, value in (("dim", dim), ("projection_size", projection_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        norm = nn.SyncBatchNorm if use_sync_batchnorm(sync_batchnorm) else nn.BatchNorm1d
        super().__init__(
            nn.Linear(dim, hidden_size),
            norm(hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, projection_size),
        )
