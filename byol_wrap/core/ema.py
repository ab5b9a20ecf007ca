"""The target network's exponential moving average and the paper's tau schedule."""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, List

import torch
from torch import Tensor

from ._deprecation import reject_unknown, renamed_keyword

PAPER_MOVING_AVERAGE_DECAY = 0.996


class MovingAverageWarning(UserWarning):
    """``BYOL.update_moving_average()`` called more often than the learner ran training forwards.

    Each call is one step of the tau schedule, so extra calls make the target follow the
    online network faster than the schedule says. Warned once per learner.
    """


class UpdateCalls:
    """Whether a learner ran a training forward since its last ``update_moving_average()``.

    ``BYOL`` calls :meth:`forward` in each loss forward (a training forward when gradients
    are on, in training or eval mode; a loss under ``torch.no_grad()`` trains nothing) and
    :meth:`update_called` in each ``update_moving_average()``. A call with no training
    forward since the previous call, or since construction, warns once with
    :class:`MovingAverageWarning`: two calls per optimizer step would run the tau schedule
    twice as fast. Gradient accumulation (several forwards per call) is fine. One object per
    learner, shared (not copied) by ``DataParallel``'s replicas, so a forward there counts.

    Example:
        >>> calls = UpdateCalls()
        >>> calls.forward()
        >>> calls.update_called(step=0)  # one training forward, one call: no warning
    """

    def __init__(self) -> None:
        self.since_update = False
        self.warned = False

    def forward(self) -> None:
        if torch.is_grad_enabled():
            self.since_update = True

    def update_called(self, step: int) -> None:
        """Record a call (``step``: the schedule step it runs); warn once if nothing trained since the last."""
        if not self.since_update and not self.warned:
            self.warned = True
            warnings.warn(
                f"update_moving_average() was called without a training forward of the learner since its previous "
                f"call (or since it was built); this is call {step + 1} of the tau schedule. Each call is one "
                f"schedule step, so two calls per optimizer step move the target twice as fast as the schedule "
                f"says. Call it once per optimizer step, after optimizer.step(). Warned once per learner.",
                MovingAverageWarning, stacklevel=3)
        self.since_update = False


def cosine_tau(
    step: int, total_steps: int, moving_average_decay: float = PAPER_MOVING_AVERAGE_DECAY, **deprecated: Any
) -> float:
    """The paper's decay schedule ``tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2``.

    ``tau`` starts at ``moving_average_decay`` (the paper's ``tau_base``) for ``k = 0`` and
    rises to 1 at ``k = K``; steps past ``K`` keep ``tau = 1.0`` exactly (the target then no
    longer moves). The old keyword ``base_tau``
    still works, with a DeprecationWarning.

    Example:
        >>> cosine_tau(0, 100, 0.99)
        0.99
        >>> cosine_tau(100, 100, 0.99)
        1.0
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be a positive int, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    moving_average_decay = renamed_keyword(deprecated, "base_tau", "moving_average_decay", moving_average_decay,
                                           PAPER_MOVING_AVERAGE_DECAY, "cosine_tau")
    reject_unknown(deprecated, "cosine_tau()")
    if not 0.0 <= moving_average_decay <= 1.0:
        raise ValueError(f"moving_average_decay must lie in [0, 1], got {moving_average_decay}")
    k = min(step, total_steps)
    return 1.0 - (1.0 - moving_average_decay) * (math.cos(math.pi * k / total_steps) + 1.0) / 2.0


@torch.no_grad()
def ema_update_(target: Iterable[Tensor], online: Iterable[Tensor], tau: float) -> None:
    """In place: ``xi <- tau * xi + (1 - tau) * theta`` for every pair of tensors.

    Uses the fused multi-tensor ``torch._foreach_lerp_`` (one kernel launch per
    device/dtype group instead of one per parameter).

    Example:
        >>> t, o = [torch.zeros(3)], [torch.ones(3)]
        >>> ema_update_(t, o, tau=0.9)
        >>> t[0]
        tensor([0.1000, 0.1000, 0.1000])
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    targets: List[Tensor] = list(target)
    onlines: List[Tensor] = list(online)
    if len(targets) != len(onlines):
        raise ValueError(f"target has {len(targets)} tensors but online has {len(onlines)}")
    for t, o in zip(targets, onlines):
        if t.shape != o.shape:
            raise ValueError(f"shape mismatch between target {tuple(t.shape)} and online {tuple(o.shape)}")
    if not targets or tau == 1.0:
        return
    # lerp(xi, theta, w) = xi + w (theta - xi) = (1 - w) xi + w theta, with w = 1 - tau
    torch._foreach_lerp_(targets, [o.detach() for o in onlines], 1.0 - tau)
