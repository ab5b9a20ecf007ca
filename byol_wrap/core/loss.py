"""The BYOL regression loss: 2 - 2 cos(q, z), computed in float32."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-sample BYOL loss ``||q/|q| - z/|z|||^2 = 2 - 2 cos(q, z)``.

    Both inputs are l2-normalised along the last dimension. The computation runs in
    float32 even inside ``torch.autocast`` (the normalisation is unstable in half
    precision), and ``target`` is detached: it is the stop-gradient side.

    Args:
        prediction: online predictions ``q``, shape ``(N, D)``.
        target: target projections ``z'``, shape ``(N, D)``.

    Returns:
        A float32 tensor of shape ``(N,)`` with values in ``[0, 4]``.

    Example:
        >>> q, z = torch.randn(8, 256), torch.randn(8, 256)
        >>> byol_loss(q, z).shape
        torch.Size([8])
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        q = F.normalize(prediction.float(), dim=-1)
        z = F.normalize(target.detach().float(), dim=-1)
        return 2 - 2 * (q * z).sum(dim=-1)


def symmetric_byol_loss(q1: Tensor, q2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
    """The symmetrised BYOL loss of the paper, averaged over the batch.

    ``q1`` (prediction of view 1) regresses the target projection of view 2 and
    ``q2`` that of view 1; the two per-sample losses are summed, then averaged.

    Example:
        >>> q1, q2, z1, z2 = (torch.randn(4, 16) for _ in range(4))
        >>> float(symmetric_byol_loss(q1, q2, z1, z2)) <= 8.0
        True
    """
    return (byol_loss(q1, z2) + byol_loss(q2, z1)).mean()
