"""When a run writes its checkpoint: every tenth of the run and every few minutes of wall time, whichever first.

A step interval alone is a poor promise on slow hardware: a 40-step ResNet-18 run on a CPU takes a quarter of
an hour, and a step interval of 100 would checkpoint it only at its end. So a checkpoint is also due when
``minutes`` of wall time passed since the last one (default :data:`CHECKPOINT_MINUTES`); a kill then loses
at most that much work. The kNN evaluation runs only at the step-interval checkpoints.

Example:
    >>> schedule = CheckpointSchedule(total_steps=40, every=None, minutes=0)
    >>> schedule.every, [step for step in range(1, 41) if schedule.due(step)]
    (4, [4, 8, 12, 16, 20, 24, 28, 32, 36, 40])
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

from .arguments import positive_int
from .checkpoint import RunError

__all__ = ["CHECKPOINT_MINUTES", "CheckpointSchedule"]

CHECKPOINT_MINUTES = 10.0


class CheckpointSchedule:
    """Which steps get a checkpoint.

    Args:
        total_steps: the run's length (its last step always gets one).
        every: steps between checkpoints (``None``: a tenth of the run, at least 1).
        minutes: wall time after which a checkpoint is due at the next step (``0``: steps only).
        agree: makes every process take the time-triggered decision of one (``World.any`` under torchrun).
    """

    def __init__(self, total_steps: int, every: Optional[int], minutes: Any = CHECKPOINT_MINUTES,
                 agree: Optional[Callable[[bool], bool]] = None) -> None:
        self.total_steps = total_steps
        self.every = positive_int("checkpoint_every", every or max(1, round(total_steps / 10)))
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes >= 0:
            raise RunError(f"--checkpoint-minutes must be a number >= 0 (0: by steps only), got {minutes!r}")
        self.seconds = 60.0 * float(minutes)
        self.agree = agree
        self.done()

    def done(self) -> None:
        """A checkpoint was just written (or the run started): the wall-time interval starts again."""
        self.last = time.monotonic()

    def by_steps(self, step: int) -> bool:
        """Whether ``step`` is a step-interval checkpoint (where the kNN evaluation runs)."""
        return step % self.every == 0

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after ``step``."""
        if self.by_steps(step) or step == self.total_steps:
            return True
        late = bool(self.seconds) and time.monotonic() - self.last >= self.seconds
        return self.agree(late) if self.agree is not None else late
