"""The paper's optimisation recipe (byol_wrap.core.optim) against hand-computed values."""
import math

import pytest
import torch
from torch import nn

from byol_wrap import BYOL, byol_param_groups, paper_optimizer_and_scheduler
from byol_wrap.core.ema import cosine_tau
from byol_wrap.core.optim import lars_optimizer, scaled_lr, warmup_cosine, warmup_cosine_scheduler, weight_decay_groups

from helpers import assert_close_scaled

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.LayerNorm(4), nn.Linear(4, 3),
    )


def tiny_learner(**kwargs) -> BYOL:
    torch.manual_seed(0)
    return BYOL(tiny_net(), image_size=8, hidden_layer="5", projection_size=4, projection_hidden_size=8, **kwargs)


def test_weight_decay_groups_split_by_hand():
    learner = tiny_learner()
    decay, no_decay = weight_decay_groups(learner, 1e-3)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    n, proj, pred = learner.net, learner.projector, learner.predictor
    # written out by hand: conv / linear weights decay; biases, BN and LayerNorm parameters do not
    expected_decay = [n[0].weight, n[6].weight, proj[0].weight, proj[3].weight, pred[0].weight, pred[3].weight]
    expected_no_decay = [
        n[0].bias, n[1].weight, n[1].bias, n[5].weight, n[5].bias, n[6].bias,
        proj[0].bias, proj[1].weight, proj[1].bias, proj[3].bias,
        pred[0].bias, pred[1].weight, pred[1].bias, pred[3].bias,
    ]
    assert ids(decay["params"]) == ids(expected_decay)
    assert ids(no_decay["params"]) == ids(expected_no_decay)
    assert decay["weight_decay"] == 1e-3 and no_decay["weight_decay"] == 0.0
    assert decay["always_adapt"] and not no_decay["always_adapt"]
    # the target network (no gradient) is in neither group
    target = ids(learner.target_parameters())
    assert not target & (ids(decay["params"]) | ids(no_decay["params"]))


def test_byol_param_groups_give_the_predictor_ten_times_the_rate():
    learner = tiny_learner()
    groups = byol_param_groups(learner, lr=1e-3, weight_decay=0.1)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    pred = learner.predictor
    by_rate = {}
    for group in groups:
        by_rate.setdefault(round(group["lr"], 12), set()).update(ids(group["params"]))
    # written out by hand: every predictor parameter at 1e-2, the encoder and projector at 1e-3
    predictor = [pred[0].weight, pred[0].bias, pred[1].weight, pred[1].bias, pred[3].weight, pred[3].bias]
    assert by_rate[1e-2] == ids(predictor)
    assert by_rate[1e-3] == ids(list(learner.net.parameters()) + list(learner.projector.parameters()))
    assert not ids(learner.target_parameters()) & (by_rate[1e-2] | by_rate[1e-3])
    # weight decay only on the predictor's weight matrices (and the others' weights)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {id(pred[0].weight), id(pred[3].weight)} <= decayed and id(pred[0].bias) not in decayed


def test_byol_param_groups_drive_a_real_adam_step():
    learner = tiny_learner()
    # eps tiny: Adam's first step is then lr * sign(gradient) even for the smallest gradients
    opt = torch.optim.Adam(byol_param_groups(learner, lr=1e-3, predictor_lr_scale=10.0), eps=1e-30)
    before_pred = learner.predictor[3].bias.detach().clone()
    before_proj = learner.projector[3].bias.detach().clone()
    learner(torch.rand(4, 3, 8, 8)).backward()
    opt.step()
    # Adam's first step moves every coordinate with a non-zero gradient by exactly lr (sign of the gradient)
    moved_pred = (learner.predictor[3].bias - before_pred).abs()
    moved_proj = (learner.projector[3].bias - before_proj).abs()
    assert torch.allclose(moved_pred[moved_pred > 0], torch.tensor(1e-2), rtol=1e-3)
    assert torch.allclose(moved_proj[moved_proj > 0], torch.tensor(1e-3), rtol=1e-3)


def test_byol_param_groups_reject_bad_arguments():
    with pytest.raises(TypeError, match="BYOL"):
        byol_param_groups(nn.Linear(2, 2), lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        byol_param_groups(tiny_learner(), lr=0.0)
    with pytest.raises(ValueError, match="predictor_lr_scale"):
        byol_param_groups(tiny_learner(), lr=1e-3, predictor_lr_scale=-1.0)


def test_lars_step_matches_hand_computation():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    opt = lars_optimizer(layer, lr=0.5, weight_decay=0.01, momentum=0.9, trust_coefficient=1e-3)
    layer(torch.randn(7, 5)).pow(2).sum().backward()
    gw, gb = layer.weight.grad.clone(), layer.bias.grad.clone()
    opt.step()
    # LARS (You et al. 2017): trust = eta |w| / (|g| + wd |w|), update = lr * trust * (g + wd w)
    trust = 1e-3 * w0.norm() / (gw.norm() + 0.01 * w0.norm() + 1e-8)
    assert_close_scaled(layer.weight, w0 - 0.5 * trust * (gw + 0.01 * w0), rtol=1e-6)
    # the bias: plain SGD, neither decayed nor adapted
    assert_close_scaled(layer.bias, b0 - 0.5 * gb, rtol=1e-6)


def test_warmup_cosine_values():
    # total 10, warmup 2: 1/2, 2/2, then (1 + cos(pi * (k - 2) / 8)) / 2
    expected = [0.5, 1.0, 1.0, (1 + math.cos(math.pi / 8)) / 2, (1 + math.cos(math.pi * 2 / 8)) / 2]
    assert [warmup_cosine(k, 10, 2) for k in range(5)] == pytest.approx(expected)
    assert warmup_cosine(6, 10, 2) == pytest.approx(0.5)
    assert warmup_cosine(10, 10, 2) == 0.0 and warmup_cosine(50, 10, 2) == 0.0
    assert warmup_cosine(10, 10, 2, final_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(6, 10, 2, final_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(0, 4, 0) == 1.0
    for bad in [dict(total_steps=0, warmup_steps=0), dict(total_steps=10, warmup_steps=11),
                dict(total_steps=10, warmup_steps=2, final_ratio=2.0)]:
        with pytest.raises(ValueError):
            warmup_cosine(0, **bad)


def test_scheduler_follows_the_function():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = warmup_cosine_scheduler(opt, total_steps=6, warmup_steps=3)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warmup 1/3, 2/3, 3/3 of 2.0; the cosine starts at the peak on step 3 and reaches 0 on step 6
    expected = [2 / 3, 4 / 3, 2.0, 2.0, 2.0 * 0.5 * (1 + math.cos(math.pi / 3)),
                2.0 * 0.5 * (1 + math.cos(2 * math.pi / 3)), 0.0]
    assert lrs == pytest.approx(expected)


def test_paper_optimizer_ties_lr_and_tau_schedules():
    assert scaled_lr(4096) == pytest.approx(3.2) and scaled_lr(256, base_lr=0.3) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="total_steps=50"):
        paper_optimizer_and_scheduler(tiny_learner(), batch_size=64, total_steps=50)  # learner has no total_steps
    learner = tiny_learner(total_steps=50)
    with pytest.raises(ValueError, match="total_steps=50"):
        paper_optimizer_and_scheduler(learner, batch_size=64, total_steps=40)
    opt, sched = paper_optimizer_and_scheduler(learner, batch_size=64, total_steps=50, warmup_steps=5)
    peak = 0.2 * 64 / 256
    assert opt.param_groups[0]["lr"] == pytest.approx(peak / 5)
    assert opt.param_groups[0]["weight_decay"] == 1.5e-6 and opt.param_groups[1]["weight_decay"] == 0.0
    x = torch.rand(4, 3, 8, 8)
    for k in range(3):
        assert learner.tau == pytest.approx(cosine_tau(k, 50, 0.996))
        assert opt.param_groups[0]["lr"] == pytest.approx(peak * (k + 1) / 5)
        loss = learner(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        learner.update_moving_average()
    assert learner.ema_step == sched.last_epoch == 3
    # default warmup: 1% of the steps (10 of the paper's 1000 epochs)
    _, sched = paper_optimizer_and_scheduler(tiny_learner(total_steps=1000), batch_size=256, total_steps=1000)
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 / 10)
