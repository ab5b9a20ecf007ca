"""examples/scaleout/accelerate_byol.py on CPU: EMA through accelerator.unwrap_model, once per optimizer step."""
import math

import pytest
import torch

pytest.importorskip("accelerate", reason="pip install accelerate (in the [test] extra)")

from byol_wrap import unwrap

import accelerate_byol  # examples/scaleout, on pytest's pythonpath
from helpers import assert_close_scaled

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--cpu", "--synthetic", "48", "--arch", "tiny", "--image-size", "16", "--batch-size", "4",
        "--projection-hidden-size", "32", "--projection-size", "16", "--base-lr", "1.0", "--accumulate", "2",
        "--max-steps", "3"]


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one global state per process; each test builds its own Accelerator."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_ema_through_unwrap_model_once_per_optimizer_step(precision):
    args = accelerate_byol.parse_args(TINY + ["--mixed-precision", precision])
    accelerator, model, optimizer, scheduler, loader, steps = accelerate_byol.build(args)
    learner = accelerator.unwrap_model(model)
    assert unwrap(model) is learner
    initial_target = [p.detach().clone() for p in learner.target_parameters()]
    snapshots = []  # online weights right after each real optimizer step
    optimizer.optimizer.register_step_post_hook(
        lambda *_: snapshots.append([p.detach().clone() for p in learner.online_parameters()]))
    taken = accelerate_byol.train(accelerator, model, optimizer, scheduler, loader, steps, args)

    assert steps == taken == 3 and len(snapshots) == 3 and learner.ema_step == 3
    assert scheduler.last_epoch == 3
    expected = initial_target
    for k, online in enumerate(snapshots):
        tau = 1 - (1 - 0.996) * (math.cos(math.pi * k / 3) + 1) / 2  # the paper's schedule, by hand
        expected = [tau * t + (1 - tau) * o for t, o in zip(expected, online)]
    for got, want in zip(learner.target_parameters(), expected):
        assert_close_scaled(got, want, rtol=1e-6)
    assert all(p.dtype == torch.float32 for p in learner.parameters())
    assert not torch.equal(snapshots[0][0], snapshots[-1][0])
