"""BYOL(view_batching=...): the one-pass path against one forward per view (the paper's computation)."""
import copy
import warnings

import pytest
import torch
from torch import nn

from byol_wrap import BYOL

from helpers import assert_close_scaled, magnitude

pytestmark = pytest.mark.usefixtures("one_thread")


class HalfShiftBatchNorm2d(nn.BatchNorm2d):
    """A user BatchNorm subclass with its own forward."""

    def forward(self, x):
        return super().forward(x) + 0.5


def custom_bn_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), HalfShiftBatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2), HalfShiftBatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def no_bn_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def resnet18():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet18()


def timm_mobilenet():
    timm = pytest.importorskip("timm")
    return timm.create_model("mobilenetv3_small_050", pretrained=False)


NETS = {
    "torchvision_resnet18": (resnet18, "avgpool", 32),
    "timm_batchnormact": (timm_mobilenet, "flatten", 32),
    "custom_bn_subclass": (custom_bn_net, None, 16),
    "without_bn": (no_bn_net, None, 16),
}


def pair(make, layer, size, **kwargs):
    """The same learner twice: one pass with per-view BatchNorm, and one forward per view."""
    torch.manual_seed(0)
    options = dict(image_size=size, hidden_layer=layer, projection_size=16, projection_hidden_size=32, **kwargs)
    one_pass = BYOL(make(), view_batching="one_pass", **options)
    per_view = copy.deepcopy(one_pass)
    per_view.view_batching = "per_view"
    return one_pass, per_view


def network_vars(learner):
    """The instance attributes (names and identities) of every module of the four networks."""
    return {f"{prefix}.{n}": {k: id(v) for k, v in vars(m).items()}
            for prefix in ("net", "projector", "predictor", "target_net", "target_projector")
            for n, m in getattr(learner, prefix).named_modules()}


def step(learner, x, seed):
    torch.manual_seed(seed)  # the same augmentations for both learners
    loss = learner(x)
    learner.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def compare_steps(one_pass, per_view, size, steps=2, rtol=1e-4):
    """Loss, every gradient, and after an SGD + EMA step every parameter and buffer agree."""
    x = torch.rand(6, 3, size + 4, size + 4, generator=torch.Generator().manual_seed(1))
    initial = {n: p.detach().clone() for n, p in per_view.named_parameters()}
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (one_pass, per_view)]
    for i in range(steps):
        loss_a, loss_b = step(one_pass, x, seed=i), step(per_view, x, seed=i)
        assert_close_scaled(loss_a, loss_b, rtol=rtol, msg=f"step {i}: loss")
        grads_b = {n: p.grad for n, p in per_view.named_parameters() if p.grad is not None}
        grads_a = {n: p.grad for n, p in one_pass.named_parameters() if p.grad is not None}
        assert grads_a.keys() == grads_b.keys() and grads_a
        scale = magnitude(*grads_b.values())
        for name, grad in grads_a.items():
            assert_close_scaled(grad, grads_b[name], rtol=rtol, scale=scale, msg=f"step {i}: gradient of {name}")
        for opt, learner in zip(opts, (one_pass, per_view)):
            opt.step()
            if learner.use_momentum:
                learner.update_moving_average()
    buffers_b = dict(per_view.named_buffers())
    for name, value in one_pass.named_buffers():
        if value.is_floating_point():
            # a running mean is on the scale of the activations' spread (it can be 0 in exact arithmetic)
            spread = buffers_b.get(name.replace("running_mean", "running_var"), value).abs().max().sqrt().item()
            assert_close_scaled(value, buffers_b[name], rtol=rtol, scale=max(magnitude(buffers_b[name]), spread),
                                msg=f"buffer {name}")
        else:
            assert torch.equal(value, buffers_b[name]), (name, value, buffers_b[name])
    # parameters: their change over the steps, on the scale of the largest change
    changes_b = {n: p.detach() - initial[n] for n, p in per_view.named_parameters()}
    scale = magnitude(*changes_b.values())
    for name, value in one_pass.named_parameters():
        assert_close_scaled(value.detach() - initial[name], changes_b[name], rtol=rtol, scale=scale,
                            msg=f"change of parameter {name}")


@pytest.mark.parametrize("name", sorted(NETS))
def test_one_pass_equals_one_forward_per_view(name):
    # float64: the two paths sum in another order, and in float32 BatchNorm over a few samples (1 x 1 maps of
    # ResNet-18 at 32 px) amplifies that rounding after an SGD step beyond 1e-4 for some inputs; in float64 the
    # two agree to better than 1e-10, so a real difference in the statistics cannot hide under the tolerance
    make, layer, size = NETS[name]
    one_pass, per_view = pair(lambda: make().double(), layer, size)
    before = network_vars(one_pass)
    compare_steps(one_pass, per_view, size, rtol=1e-8)
    assert network_vars(one_pass) == before  # nothing left behind on any layer


def test_one_pass_simsiam_variant():
    one_pass, per_view = pair(custom_bn_net, None, 16, use_momentum=False)
    compare_steps(one_pass, per_view, 16)


def test_concat_mixes_the_statistics():
    """Control: the concatenated batch with shared statistics is a different computation."""
    one_pass, per_view = pair(custom_bn_net, None, 16)
    concat = copy.deepcopy(per_view)
    concat.view_batching = "concat"
    x = torch.rand(6, 3, 20, 20)
    assert abs(step(concat, x, 0).item() - step(per_view, x, 0).item()) > 1e-4


def test_default_and_options():
    net = custom_bn_net()
    assert BYOL(net, image_size=16, hidden_layer=None, projection_hidden_size=8).view_batching == "one_pass"
    learner = BYOL(net, image_size=16, hidden_layer=None, projection_hidden_size=8, view_batching="per_view")
    assert learner.view_batching == "per_view" and not learner.concat_views
    assert "view_batching='per_view'" in repr(learner)
    # "auto" picks the faster of two identical computations by the view size (measured on a CPU)
    big = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert BYOL(big, image_size=32, hidden_layer=None, projection_hidden_size=8).view_batching == "one_pass"
    assert BYOL(big, image_size=64, hidden_layer=None, projection_hidden_size=8).view_batching == "per_view"
    assert BYOL(big, image_size=96, hidden_layer=None, projection_hidden_size=8,
                view_batching="one_pass").view_batching == "one_pass"
    with pytest.raises(ValueError, match="view_batching must be one of"):
        BYOL(net, image_size=16, hidden_layer=None, view_batching="fast")
    with pytest.warns(DeprecationWarning, match='view_batching="concat"'):
        learner = BYOL(net, image_size=16, hidden_layer=None, projection_hidden_size=8, concat_views=True)
    assert learner.view_batching == "concat" and learner.concat_views
    with pytest.warns(DeprecationWarning):
        assert BYOL(net, image_size=16, hidden_layer=None, projection_hidden_size=8,
                    concat_views=False).view_batching == "one_pass"
    with pytest.raises(ValueError, match="contradicts"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        BYOL(net, image_size=16, hidden_layer=None, concat_views=True, view_batching="per_view")


def test_hidden_layer_inside_a_batchnorm_module():
    """timm's BatchNormAct2d: only its normalisation is split per view, so one pass may read its act."""
    pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    def make():
        return nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())

    assert BYOL(make(), image_size=16, hidden_layer="1.act", projection_hidden_size=8).view_batching == "one_pass"
    one_pass, per_view = pair(lambda: make().double(), "1.act", 16)
    compare_steps(one_pass, per_view, 16, rtol=1e-8)


def test_one_pass_under_torch_compile():
    """The compiled one-pass learner (aot_eager on CPU) against the eager per-view learner."""
    one_pass, per_view = pair(custom_bn_net, None, 16, augment_fn=lambda x: x, augment_fn2=lambda x: x.flip(-1),
                              normalize=None)
    compiled = torch.compile(one_pass, backend="aot_eager")
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    loss_a, loss_b = compiled(x), per_view(x)
    loss_a.backward()
    loss_b.backward()
    assert_close_scaled(loss_a, loss_b, rtol=1e-4, msg="loss")
    grads_b = dict(per_view.named_parameters())
    scale = magnitude(*(p.grad for p in per_view.parameters() if p.grad is not None))
    for name, p in one_pass.named_parameters():
        if p.grad is not None:
            assert_close_scaled(p.grad, grads_b[name].grad, rtol=1e-4, scale=scale, msg=name)
    for (name, a), b in zip(one_pass.named_buffers(), per_view.buffers()):
        assert_close_scaled(a, b, rtol=1e-4, msg=name)
    assert all("forward" not in vars(m) for m in one_pass.modules())


def test_one_pass_under_bfloat16_autocast():
    one_pass, per_view = pair(custom_bn_net, None, 16, augment_fn=lambda x: x, augment_fn2=lambda x: x.flip(-1),
                              normalize=None)
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_a, loss_b = one_pass(x), per_view(x)
    # bf16 matmuls round to 8 bits of mantissa: the batch shapes differ, so compare at bf16 resolution
    assert_close_scaled(loss_a.float(), loss_b.float(), rtol=2e-2, msg="loss under bf16 autocast")
    for (name, a), b in zip(one_pass.named_buffers(), per_view.buffers()):
        if a.is_floating_point():
            assert_close_scaled(a, b, rtol=2e-2, msg=name)
