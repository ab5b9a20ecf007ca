"""update_moving_average(): extra calls warn once; tau past total_steps stays 1.0 (issue 18, item 11)."""
import math
import warnings

import pytest
import torch
from torch import nn

from byol_wrap import BYOL
from byol_wrap.core.ema import MovingAverageWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def make_learner(**kwargs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    learner = BYOL(net, image_size=8, hidden_layer=None, projection_size=4, projection_hidden_size=8,
                   augment_fn=lambda x: x, augment_fn2=lambda x: x.flip(-1), **kwargs)
    return learner, torch.optim.SGD(learner.parameters(), lr=0.1)


def train_step(learner, opt, forwards=1):
    opt.zero_grad()
    for _ in range(forwards):
        learner(torch.rand(4, 3, 8, 8)).backward()
    opt.step()


def ema_warnings(record):
    return [w for w in record if issubclass(w.category, MovingAverageWarning)]


def test_once_per_step_and_gradient_accumulation_do_not_warn():
    learner, opt = make_learner()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for forwards in (1, 1, 3, 2):  # accumulation: several forwards per call is fine
            train_step(learner, opt, forwards)
            learner.update_moving_average()
    assert ema_warnings(record) == []
    assert learner.ema_step == 4


def test_two_calls_per_step_warn_once_with_a_clear_message():
    assert issubclass(MovingAverageWarning, UserWarning)
    learner, opt = make_learner(total_steps=10)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            train_step(learner, opt)
            learner.update_moving_average()
            learner.update_moving_average()  # the mistake
    found = ema_warnings(record)
    assert len(found) == 1, [str(w.message) for w in found]
    message = str(found[0].message)
    print(message)
    assert "without a training forward" in message and "once per optimizer step" in message
    assert "call 2 of the tau schedule" in message
    assert found[0].filename == __file__  # points at the caller's line
    assert learner.ema_step == 6  # the calls still count: the warning does not change what they do


@pytest.mark.parametrize("how", ["before_any_forward", "no_grad_forward", "embedding"])
def test_forwards_that_are_no_training_step_do_not_count(how):
    learner, _ = make_learner()
    x = torch.rand(4, 3, 8, 8)
    if how == "no_grad_forward":
        with torch.no_grad():
            learner(x)
    elif how == "embedding":
        learner(x, return_embedding=True)
    with pytest.warns(MovingAverageWarning):
        learner.update_moving_average()


def test_training_in_eval_mode_counts():
    """A loss with gradients in eval mode (frozen BatchNorm statistics) is a training step too."""
    learner, opt = make_learner()
    learner.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MovingAverageWarning)
        for _ in range(2):
            train_step(learner, opt)
            learner.update_moving_average()


def test_tau_past_total_steps_stays_one_and_the_target_stops():
    learner, opt = make_learner(moving_average_decay=0.9, total_steps=3)
    taus, moved = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("error", MovingAverageWarning)
        for _ in range(6):
            train_step(learner, opt)
            before = [t.clone() for t in learner.target_parameters()]
            taus.append(learner.update_moving_average())
            moved.append(any(not torch.equal(a, b) for a, b in zip(before, learner.target_parameters())))
    expected = [1 - 0.1 * (math.cos(math.pi * k / 3) + 1) / 2 for k in range(3)] + [1.0, 1.0, 1.0]
    assert taus == pytest.approx(expected, rel=1e-12)
    assert taus[3:] == [1.0, 1.0, 1.0]  # exactly 1.0
    assert moved == [True, True, True, False, False, False]
    assert learner.ema_step == 6
