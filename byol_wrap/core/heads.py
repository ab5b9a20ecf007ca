"""Projector and predictor heads: Linear -> BatchNorm1d -> ReLU -> Linear."""
from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from torch import nn

from ._deprecation import deprecated_alias, reject_unknown, warn_renamed


def resolve_sync_batchnorm(sync_batchnorm: Optional[bool] = None, device: Optional[torch.device] = None) -> bool:
    """Resolve the ``sync_batchnorm`` option: ``None`` means "when distributed with >1 rank".

    With ``device`` on CPU, ``None`` resolves to ``False`` (with a warning when distributed):
    torch has no SyncBatchNorm kernels for CPU, and DistributedDataParallel refuses
    SyncBatchNorm layers in a CPU module.

    Example:
        >>> resolve_sync_batchnorm(False)
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
            stacklevel=4,
        )
        return False
    return distributed


use_sync_batchnorm = deprecated_alias(resolve_sync_batchnorm, "use_sync_batchnorm")

_OLD_KEYWORDS = {"dim": "input_dim", "projection_size": "output_dim", "hidden_size": "hidden_dim"}


class MLP(nn.Sequential):
    """The paper's projector/predictor: ``Linear -> BatchNorm1d -> ReLU -> Linear``.

    Args:
        input_dim: input size (the representation size for the projector, the projection
            size for the predictor).
        hidden_dim: hidden size (4096 in the paper).
        output_dim: output size (256 in the paper).
        sync_batchnorm: use ``nn.SyncBatchNorm`` (``None``: only when torch.distributed is
            initialised with more than one rank).

    ``hidden_dim``, ``output_dim`` and ``sync_batchnorm`` are keyword-only. The old names
    ``dim``/``projection_size``/``hidden_size`` and the old positional order
    ``MLP(dim, projection_size, hidden_size, sync_batchnorm)`` still work, with a
    DeprecationWarning.

    Example:
        >>> import torch
        >>> head = MLP(512, hidden_dim=4096, output_dim=256)
        >>> head(torch.randn(8, 512)).shape
        torch.Size([8, 256])
    """

    def __init__(
        self,
        input_dim: Optional[int] = None,
        *old_positional: Any,
        hidden_dim: int = 4096,
        output_dim: int = 256,
        sync_batchnorm: Optional[bool] = None,
        **old_keywords: Any,
    ) -> None:
        sizes: Dict[str, Any] = {"input_dim": input_dim, "hidden_dim": hidden_dim, "output_dim": output_dim,
                                 "sync_batchnorm": sync_batchnorm}
        if old_positional:
            if len(old_positional) > 3:
                raise TypeError(f"MLP takes at most 4 positional arguments, got {1 + len(old_positional)}")
            warnings.warn(
                "MLP(dim, projection_size, hidden_size, sync_batchnorm) with positional sizes is deprecated; "
                "the sizes are read in that old order. Write MLP(input_dim, hidden_dim=..., output_dim=...)",
                DeprecationWarning, stacklevel=2,
            )
            for name, value in zip(("output_dim", "hidden_dim", "sync_batchnorm"), old_positional):
                sizes[name] = value
        renamed = [old for old in _OLD_KEYWORDS if old in old_keywords]
        if renamed:
            warn_renamed(f"MLP({'=, '.join(renamed)}=)", f"{'=, '.join(_OLD_KEYWORDS[old] for old in renamed)}=")
        for old in renamed:
            sizes[_OLD_KEYWORDS[old]] = old_keywords.pop(old)
        reject_unknown(old_keywords, "MLP()")
        for name in ("input_dim", "hidden_dim", "output_dim"):
            value = sizes[name]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        norm = nn.SyncBatchNorm if resolve_sync_batchnorm(sizes["sync_batchnorm"]) else nn.BatchNorm1d
        super().__init__(
            nn.Linear(sizes["input_dim"], sizes["hidden_dim"]),
            norm(sizes["hidden_dim"]),
            nn.ReLU(inplace=True),
            nn.Linear(sizes["hidden_dim"], sizes["output_dim"]),
        )
