"""per_view_batchnorm against separate passes, one per view (an independent computation)."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from byol_wrap.core.batchnorm import batchnorm_layers, inside_batchnorm, per_view_batchnorm, uses_batch_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


class ScaledBatchNorm2d(nn.BatchNorm2d):
    """A user subclass with its own forward (output scaled by 2)."""

    def forward(self, x):
        return 2 * super().forward(x)


def state_vars(net):
    """Every module's instance dictionary keys and the identity of each value."""
    return {name: {k: id(v) for k, v in vars(m).items()} for name, m in net.named_modules()}


def assert_close_rel(actual, expected, name, rel=1e-4, floor=0.0):
    """|actual - expected| <= rel * max(max|expected|, floor), numbers in the message.

    ``floor``: the magnitude of the largest gradient of the net, for tensors whose exact value is
    zero (a bias before a BatchNorm) and whose computed value is rounding noise.
    """
    scale = max(expected.detach().abs().max().item(), floor, 1e-6)
    err = (actual.detach() - expected.detach()).abs().max().item()
    assert err <= rel * scale, f"{name}: max error {err:.3e} vs scale {scale:.3e} (rel {rel})"


def run_views(net, views, one_pass):
    """Outputs of ``net`` on each view: one batch under per_view_batchnorm, or one call per view."""
    if one_pass:
        with per_view_batchnorm(net, num_views=len(views)):
            return net(torch.cat(views)).chunk(len(views))
    return [net(v) for v in views]


def compare(net, views, rel=1e-4):
    """Same outputs, input and parameter gradients, buffers as separate passes."""
    net.zero_grad(set_to_none=True)
    other = copy.deepcopy(net)
    inputs_a = [v.clone().requires_grad_() for v in views]
    inputs_b = [v.clone().requires_grad_() for v in views]
    out_a = run_views(net, inputs_a, one_pass=True)
    out_b = run_views(other, inputs_b, one_pass=False)
    weights = [torch.randn_like(o) for o in out_b]
    sum((o * w).sum() for o, w in zip(out_a, weights)).backward()
    sum((o * w).sum() for o, w in zip(out_b, weights)).backward()
    for i, (a, b) in enumerate(zip(out_a, out_b)):
        assert_close_rel(a, b, f"output of view {i}", rel)
    for i, (a, b) in enumerate(zip(inputs_a, inputs_b)):
        assert_close_rel(a.grad, b.grad, f"input gradient of view {i}", rel)
    params_b = dict(other.named_parameters())
    largest = max((p.grad.abs().max().item() for p in other.parameters() if p.grad is not None), default=0.0)
    for name, p in net.named_parameters():
        if p.grad is not None or params_b[name].grad is not None:
            assert_close_rel(p.grad, params_b[name].grad, f"gradient of {name}", rel, floor=largest)
    buffers_b = dict(other.named_buffers())
    for name, buf in net.named_buffers():
        if buf.is_floating_point():
            assert_close_rel(buf, buffers_b[name], f"buffer {name}", rel)
        else:
            assert torch.equal(buf, buffers_b[name]), (name, buf, buffers_b[name])


def views_2d(n=4, channels=3, size=8, num_views=2):
    g = torch.Generator().manual_seed(0)
    # different statistics per view, so mixing them would show
    return [torch.randn(n, channels, size, size, generator=g) * (1 + v) + 3 * v for v in range(num_views)]


@pytest.mark.parametrize("norm,shape", [
    (lambda: nn.BatchNorm1d(3), (5, 3)),
    (lambda: nn.BatchNorm1d(3), (5, 3, 7)),
    (lambda: nn.BatchNorm2d(3), (5, 3, 4, 4)),
    (lambda: nn.BatchNorm3d(3), (5, 3, 2, 3, 3)),
    (lambda: nn.BatchNorm2d(3, momentum=None), (5, 3, 4, 4)),  # cumulative average: uses num_batches_tracked
    (lambda: nn.BatchNorm2d(3, affine=False), (5, 3, 4, 4)),
    (lambda: ScaledBatchNorm2d(3), (5, 3, 4, 4)),
])
@pytest.mark.parametrize("num_views", [2, 3])
def test_single_layer_equals_separate_passes(norm, shape, num_views):
    torch.manual_seed(0)
    layer = norm()
    if layer.weight is not None:
        nn.init.normal_(layer.weight)
        nn.init.normal_(layer.bias)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(*shape, generator=g) * (v + 1) + v for v in range(num_views)]
    compare(layer, views)
    # two steps: the running statistics keep following separate passes
    compare(layer, [v.flip(0) for v in views])


def test_mixed_statistics_would_differ():
    """Control: without the context the same batch gives a different result."""
    layer = nn.BatchNorm2d(3)
    views = views_2d()
    mixed = layer(torch.cat(views)).chunk(2)
    separate = copy.deepcopy(layer)
    assert (mixed[0] - separate(views[0])).abs().max() > 0.1


def test_conv_net_with_batchnorm_1d_and_2d():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2),
                        ScaledBatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
                        nn.BatchNorm1d(5))
    compare(net, views_2d())


def test_eval_mode_layers_untouched_but_batch_statistics_without_running_stats_are_split():
    torch.manual_seed(0)
    tracked = nn.BatchNorm2d(3).eval()
    untracked = nn.BatchNorm2d(3, track_running_stats=False).eval()  # uses batch statistics in eval too
    assert not uses_batch_statistics(tracked) and uses_batch_statistics(untracked)
    views = views_2d()
    with per_view_batchnorm(tracked, untracked):
        out_tracked = tracked(torch.cat(views))
        out_untracked = untracked(torch.cat(views))
    torch.testing.assert_close(out_tracked, torch.cat([tracked(v) for v in views]))
    torch.testing.assert_close(out_untracked, torch.cat([untracked(v) for v in views]))
    # eval mode: any batch size goes through
    with per_view_batchnorm(tracked):
        tracked(torch.rand(3, 3, 4, 4))


def test_never_sets_anything_on_a_module_also_after_an_exception():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    before = state_vars(net)
    with per_view_batchnorm(net) as layers:
        assert layers == [net[1]]
        assert state_vars(net) == before  # nothing patched: the split lives in this thread's torch function mode
        net(torch.cat(views_2d()))
    assert state_vars(net) == before
    with pytest.raises(ZeroDivisionError), per_view_batchnorm(net):
        1 / 0
    assert state_vars(net) == before
    # an error from a layer (odd batch) inside the block restores too
    with pytest.raises(ValueError, match="does not split into 2 views"), per_view_batchnorm(net):
        net(torch.rand(5, 3, 8, 8))
    assert state_vars(net) == before
    assert type(net[1]).forward is nn.BatchNorm2d.forward


def test_an_instance_level_forward_is_left_alone_and_split_inside():
    layer = nn.BatchNorm1d(3)
    calls = []

    def patched(x):
        calls.append(x.shape[0])
        return nn.BatchNorm1d.forward(layer, x)

    layer.forward = patched
    views = [torch.randn(4, 3), torch.randn(4, 3) * 3 + 2]
    with per_view_batchnorm(layer):
        out = layer(torch.cat(views))
    assert calls == [8]  # called once, on the whole batch; its F.batch_norm ran per view
    assert vars(layer)["forward"] is patched
    reference = nn.BatchNorm1d(3)
    torch.testing.assert_close(out, torch.cat([reference(v) for v in views]))


def test_nets_without_batchnorm_are_untouched():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.LayerNorm([4, 6, 6]), nn.Flatten())
    before = state_vars(net)
    x = torch.rand(6, 3, 8, 8)
    with per_view_batchnorm(net) as layers:
        assert layers == []
        assert state_vars(net) == before
        out = net(x)
    torch.testing.assert_close(out, net(x), rtol=0, atol=0)
    assert state_vars(net) == before


def test_shared_layers_once_and_nested_roots():
    shared = nn.BatchNorm1d(3)
    a, b = nn.Sequential(nn.Linear(3, 3), shared), nn.Sequential(shared, nn.Linear(3, 3))
    assert batchnorm_layers(a, b, shared) == [shared]
    with per_view_batchnorm(a, b, shared):
        out = shared(torch.cat([torch.zeros(2, 3), torch.ones(2, 3)]))
    assert out.abs().max() == 0  # each view constant: normalised to zero (not wrapped twice: not 4 chunks)
    assert "forward" not in vars(shared)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_views"), per_view_batchnorm(nn.BatchNorm1d(2), num_views=0):
        pass
    with pytest.raises(TypeError, match="nn.Module"), per_view_batchnorm(torch.zeros(2)):
        pass
    layer = nn.BatchNorm1d(2)
    with per_view_batchnorm(layer, num_views=1) as layers:  # one view: nothing to split
        assert layers == [] and "forward" not in vars(layer)


def test_timm_batchnorm_act():
    timm = pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    layer = BatchNormAct2d(4, act_layer=nn.ReLU)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    compare(layer, views_2d(channels=4))
    torch.manual_seed(0)
    net = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    assert {type(m).__name__ for m in batchnorm_layers(net)} == {"BatchNormAct2d"}
    compare(net, views_2d(n=3, size=32), rel=2e-3)


def test_torchvision_resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=8)
    compare(net, views_2d(n=3, size=32), rel=2e-3)


def test_inside_batchnorm():
    pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    net = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU))
    assert inside_batchnorm(net, "1.act") == "1"
    assert inside_batchnorm(net, "1") is None and inside_batchnorm(net, None) is None


def test_torch_compile_full_graph():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3), nn.BatchNorm1d(3))
    reference = copy.deepcopy(net)
    views = views_2d()

    def one_pass(module, x):
        with per_view_batchnorm(module):
            return module(x)

    before = state_vars(net)
    out = torch.compile(one_pass, backend="aot_eager", fullgraph=True)(net, torch.cat(views))
    assert state_vars(net) == before
    torch.testing.assert_close(out, torch.cat([reference(v) for v in views]), rtol=1e-5, atol=1e-5)
    for a, b in zip(net.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b)
    # a compiled net called inside and then outside the context: guards notice the change
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.cat(views)
    with per_view_batchnorm(net):
        inside = compiled(x)
    outside = compiled(x)
    torch.testing.assert_close(inside, torch.cat([copy.deepcopy(net)(v) for v in views]), rtol=1e-5, atol=1e-5)
    assert (inside - outside).abs().max() > 1e-3  # outside the context the statistics mix again


def test_autocast_bfloat16():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3),
                        nn.BatchNorm1d(3))
    reference = copy.deepcopy(net)
    views = views_2d()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with per_view_batchnorm(net):
            out = net(torch.cat(views))
        expected = torch.cat([reference(v) for v in views])
    assert out.dtype == expected.dtype
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    for a, b in zip(net.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b)


def test_channels_last_is_kept():
    layer = nn.BatchNorm2d(3)
    x = torch.cat(views_2d()).contiguous(memory_format=torch.channels_last)
    with per_view_batchnorm(layer):
        out = layer(x)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_is_a_batchnorm_subclass_check_not_a_name_check():
    class NotBatchNorm(nn.Module):  # named like one, but not a _BatchNorm
        def forward(self, x):
            return x

    NotBatchNorm.__name__ = "BatchNorm2d"
    assert batchnorm_layers(nn.Sequential(NotBatchNorm())) == []
    assert all(isinstance(m, _BatchNorm) for m in batchnorm_layers(nn.SyncBatchNorm(2)))
