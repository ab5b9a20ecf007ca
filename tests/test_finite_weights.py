"""The fused finite-weight check before each EMA update (issue 18, item 12).

References: ``torch.isfinite`` on each tensor (an independent, exact computation) and the
target copied before the call.
"""
import pytest
import torch
from torch import nn

from byol_wrap import BYOL
from byol_wrap.core.checks import NonFiniteError, all_finite

# the EMA is called here without training steps, on purpose
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::byol_wrap.core.ema.MovingAverageWarning")]


def make_learner(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    learner = BYOL(net, image_size=8, hidden_layer="4", projection_size=4, projection_hidden_size=8,
                   augment_fn=lambda x: x)
    return learner.to(dtype)


def exact(tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


@pytest.mark.parametrize("where", ["net.0.weight", "net.1.bias", "net.5.weight", "projector.0.weight",
                                   "projector.3.bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_any_nonfinite_online_weight_raises_before_the_target_changes(where, bad):
    learner = make_learner()
    parameters = dict(learner.named_parameters())
    with torch.no_grad():
        parameters[where].view(-1)[-1] = bad
    target_before = [t.clone() for t in learner.target_parameters()]
    assert not exact(learner.online_parameters())
    with pytest.raises(NonFiniteError, match=r"update_moving_average\(\) refused") as info:
        learner.update_moving_average()
    assert where in str(info.value), str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(target_before, learner.target_parameters()))
    assert learner.ema_step == 0


def test_large_finite_weights_are_no_false_alarm():
    """A 2-norm overflows for finite values above ~1e19 (float32); those must still pass."""
    learner = make_learner()
    with torch.no_grad():
        learner.net[5].weight.fill_(3e37)
        learner.projector[0].weight[0, 0] = -3.4e38
    assert exact(learner.online_parameters())
    assert not bool(torch.isfinite(torch.linalg.vector_norm(learner.net[5].weight)))  # the norm did overflow
    learner.update_moving_average()
    assert learner.ema_step == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(dtype):
    tensors = [torch.full((50,), 1000.0, dtype=dtype), torch.ones(3, 3, dtype=dtype)]
    assert all_finite(tensors) == exact(tensors) is True  # float16: the 2-norm (~7e3) stays in range in float32
    tensors[1][1, 2] = float("nan")
    assert all_finite(tensors) == exact(tensors) is False


def test_matches_isfinite_on_random_mixes():
    g = torch.Generator().manual_seed(0)
    specials = [float("nan"), float("inf"), float("-inf"), 3e38, -3e38, 0.0]
    for trial in range(200):
        tensors = [torch.randn(int(n), generator=g) for n in torch.randint(0, 40, (5,), generator=g)]
        tensors.append(torch.arange(4))  # integer tensors are not weights: ignored
        for t in tensors[:-1]:
            if t.numel() and torch.rand((), generator=g) < 0.3:
                t[int(torch.randint(0, t.numel(), (), generator=g))] = specials[int(torch.randint(0, 6, (),
                                                                                                   generator=g))]
        assert all_finite(tensors) == exact(tensors), (trial, tensors)
    assert all_finite([]) is True
