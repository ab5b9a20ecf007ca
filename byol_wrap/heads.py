"""Projector and predictor heads: Linear -> BatchNorm1d -> ReLU -> Linear."""
from __future__ import annotations

import warnings
from typing import Optional

import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def use_sync_batchnorm(sync_batchnorm: Optional[bool] = None) -> bool:
    """Resolve the ``sync_batchnorm`` option: ``None`` means "when distributed with >1 rank".

    Example:
        >>> use_sync_batchnorm(False)
        False
    """
    if sync_batchnorm is not None:
        return bool(sync_batchnorm)
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNormWithCPUFallback(nn.SyncBatchNorm):
    """``nn.SyncBatchNorm`` that normalises with the local batch on CPU.

    torch has SyncBatchNorm kernels for GPUs only: ``nn.SyncBatchNorm`` raises on CPU
    inputs once torch.distributed is initialised. ``sync_batchnorm=None`` uses this class
    so that a multi-process CPU run (gloo) still trains, with a warning that each process
    normalises with its own batch statistics. On GPU it is ``nn.SyncBatchNorm``.

    Example:
        >>> bn = SyncBatchNormWithCPUFallback(8)
        >>> bn(torch.randn(4, 8)).shape
        torch.Size([4, 8])
    """

    _warned = False

    def forward(self, input: Tensor) -> Tensor:
        if input.device.type != "cpu":
            return super().forward(input)
        if self.training and use_sync_batchnorm(None) and not SyncBatchNormWithCPUFallback._warned:
            SyncBatchNormWithCPUFallback._warned = True
            warnings.warn(
                "SyncBatchNorm has no CPU implementation in torch: on CPU, the BatchNorm layers of the BYOL "
                "projector and predictor use each process's own batch statistics",
                RuntimeWarning,
                stacklevel=2,
            )
        return _BatchNorm.forward(self, input)


class MLP(nn.Sequential):
    """The paper's projector/predictor: ``Linear(dim, hidden) -> BN -> ReLU -> Linear(hidden, out)``.

    Args:
        dim: input size (the representation size for the projector, the projection size
            for the predictor).
        projection_size: output size (256 in the paper).
        hidden_size: hidden size (4096 in the paper).
        sync_batchnorm: use ``nn.SyncBatchNorm`` (``None``: only when torch.distributed is
            initialised with more than one rank, and then with local statistics for CPU
            inputs, see :class:`SyncBatchNormWithCPUFallback`).

    Example:
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
        norm = nn.BatchNorm1d
        if use_sync_batchnorm(sync_batchnorm):
            norm = nn.SyncBatchNorm if sync_batchnorm else SyncBatchNormWithCPUFallback
        super().__init__(
            nn.Linear(dim, hidden_size),
            norm(hidden_size),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_size, projection_size),
        )
