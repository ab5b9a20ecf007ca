"""Threads: the one-pass learner and per_view_batchnorm change nothing another thread can see.

References are computed single-threaded before the threads start, from deep copies: in
training mode a BatchNorm layer's output depends on the batch only, not on its running
statistics, so every call in every thread must reproduce its reference exactly.
"""
import copy
import threading

import pytest
import torch
from torch import nn

from byol_wrap import BYOL
from byol_wrap.core.batchnorm import per_view_batchnorm, unsplittable_layers

pytestmark = pytest.mark.usefixtures("one_thread")

ROUNDS = 40


def state_vars(net):
    """Every module's instance dictionary keys and the identity of each value, hooks included."""
    return {name: ({k: id(v) for k, v in vars(m).items()}, dict(m._forward_hooks), dict(m._forward_pre_hooks))
            for name, m in net.named_modules()}


def small_net():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
                         nn.BatchNorm1d(5))


def run_threads(*targets):
    """Start every target at once (a barrier), join, re-raise the first error of any thread."""
    barrier = threading.Barrier(len(targets))
    errors = []

    def wrap(fn):
        def run():
            try:
                barrier.wait()
                fn()
            except BaseException as error:  # noqa: BLE001 - _EarlyExit included: it must not escape either
                errors.append(error)
        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def views(n=4, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, size, size, generator=g) * (1 + v) + 3 * v for v in range(2)]


def test_per_view_blocks_in_two_threads_and_the_users_own_calls_in_a_third():
    torch.manual_seed(0)
    net = small_net()
    before = state_vars(net)
    x = torch.cat(views())
    user_x = torch.randn(6, 3, 8, 8) * 2 + 1
    reference = copy.deepcopy(net)
    with torch.no_grad():
        expected_split = torch.cat([reference(v) for v in x.chunk(2)])  # one pass per view, by hand
        expected_user = reference(user_x)  # the whole batch's statistics, as without any block
    assert (expected_split - reference(x)).abs().max() > 0.1  # control: the split matters
    got = {"a": [], "b": [], "user": []}

    def learner_like(key):
        def run():
            for _ in range(ROUNDS):
                with torch.no_grad(), per_view_batchnorm(net):
                    got[key].append(net(x))
        return run

    def user():
        for _ in range(ROUNDS):
            with torch.no_grad():
                got["user"].append(net(user_x))

    run_threads(learner_like("a"), learner_like("b"), user)
    for key in ("a", "b"):
        assert len(got[key]) == ROUNDS
        for out in got[key]:
            err = (out - expected_split).abs().max().item()
            assert err <= 1e-6 * expected_split.abs().max().item(), f"thread {key}: max error {err:.3e}"
    for out in got["user"]:
        err = (out - expected_user).abs().max().item()
        assert err <= 1e-6 * expected_user.abs().max().item(), f"the user's net(x): max error {err:.3e}"
    assert state_vars(net) == before  # nothing set on, or left on, any module
    # after the threads, the user's net is the plain net
    with torch.no_grad():
        torch.testing.assert_close(net(user_x), expected_user, rtol=1e-6, atol=0)


class Holder(nn.Module):
    """The user's net with an inner hidden layer, so the learner puts a forward hook on it."""

    def __init__(self):
        super().__init__()
        self.body = small_net()[:8]
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_learner_calls_in_two_threads_and_the_users_net_in_a_third():
    torch.manual_seed(0)
    net = Holder()
    learner = BYOL(net, image_size=8, hidden_layer="body.7", projection_size=4, projection_hidden_size=8,
                   augment_fn=lambda t: t, augment_fn2=lambda t: t.flip(-1), view_batching="one_pass")
    before = state_vars(net)
    x = torch.rand(4, 3, 8, 8)
    user_x = torch.rand(6, 3, 8, 8)
    reference = copy.deepcopy(learner)
    reference.view_batching = "per_view"  # one forward per view: the computation one pass must equal
    with torch.no_grad():
        expected_loss = reference(x)
        expected_user = reference.net(user_x)
    got = {"a": [], "b": [], "user": []}

    def learner_calls(key):
        def run():
            for _ in range(ROUNDS // 2):
                with torch.no_grad():
                    got[key].append(learner(x))
        return run

    def user():
        for _ in range(ROUNDS):
            with torch.no_grad():
                got["user"].append(net(user_x))  # runs to the end: the learner's early-exit hook is not its

    run_threads(learner_calls("a"), learner_calls("b"), user)
    for key in ("a", "b"):
        for loss in got[key]:
            assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5), (key, loss.item(),
                                                                                  expected_loss.item())
    assert len(got["user"]) == ROUNDS
    for out in got["user"]:
        assert out.shape == (6, 3)
        err = (out - expected_user).abs().max().item()
        assert err <= 1e-6 * expected_user.abs().max().item(), f"the user's net(x): max error {err:.3e}"
    assert state_vars(net) == before
    with torch.no_grad():
        torch.testing.assert_close(learner(x), expected_loss, rtol=1e-5, atol=0)


def test_nested_blocks_split_once():
    layer = nn.BatchNorm1d(3)
    reference = copy.deepcopy(layer)
    parts = [torch.randn(4, 3) * (1 + v) + v for v in range(2)]
    with per_view_batchnorm(layer), per_view_batchnorm(layer):
        out = layer(torch.cat(parts))
    torch.testing.assert_close(out, torch.cat([reference(v) for v in parts]))
    assert int(layer.num_batches_tracked) == 2  # one per view, as two passes count
    for a, b in zip(layer.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b)


class OwnMathBatchNorm(nn.BatchNorm1d):
    """A subclass that computes batch statistics without F.batch_norm."""

    def forward(self, x):
        self.num_batches_tracked.add_(1)
        return (x - x.mean(0)) / (x.var(0, unbiased=False) + self.eps).sqrt()


def test_a_layer_that_cannot_be_split_is_an_error_not_a_silent_mix():
    layer = OwnMathBatchNorm(3)
    with pytest.raises(RuntimeError, match=r"could not split OwnMathBatchNorm\(3\).*view_batching='per_view'"), \
            per_view_batchnorm(nn.Sequential(layer)):
        layer(torch.randn(8, 3))
    # the same layer used in another thread meanwhile is not this block's concern
    other = OwnMathBatchNorm(3)
    with per_view_batchnorm(other):
        run_threads(lambda: other(torch.randn(8, 3)))


def test_syncbatchnorm_across_processes_is_refused_at_entry(monkeypatch):
    net = nn.Sequential(nn.Linear(3, 3), nn.SyncBatchNorm(3))
    assert unsplittable_layers(net) == []  # no process group: an ordinary BatchNorm, split as one
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(torch.distributed, "group", type("G", (), {"WORLD": None}))
    assert unsplittable_layers(net) == ["SyncBatchNorm(3)"]
    before = state_vars(net)
    with pytest.raises(ValueError, match="cannot split SyncBatchNorm"), per_view_batchnorm(net):
        pass
    assert state_vars(net) == before
    net.eval()
    assert unsplittable_layers(net) == []  # eval mode synchronises nothing
